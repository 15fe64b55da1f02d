"""Tests for ser2tcp._lean: modules Twisted imports but the daemon never uses
are loaded on first use only.  Each check runs in a fresh interpreter, since
this one has imported everything already."""

from __future__ import annotations

import sys
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from .helpers import clean_env, run


def python(code: str) -> str:
    result = run([sys.executable, "-c", textwrap.dedent(code)], env=clean_env())
    if result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}:\n{result.stderr}")
    return result.stdout


class DeferImportTests(SynchronousTestCase):
    def test_loaded_on_first_use_only(self) -> None:
        out = python(
            """
            import sys
            from ser2tcp._lean import defer_import
            defer_import("http.cookiejar")
            from http import cookiejar            # what Twisted's compat does
            print("urllib.request" in sys.modules)
            jar = cookiejar.CookieJar()           # first real use
            print("urllib.request" in sys.modules, type(jar).__name__)
            """
        )
        self.assertEqual(out.split(), ["False", "True", "CookieJar"])

    def test_already_imported_module_is_left_alone(self) -> None:
        out = python(
            """
            import http.cookiejar, sys
            before = sys.modules["http.cookiejar"]
            from ser2tcp._lean import defer_import
            defer_import("http.cookiejar")
            print(sys.modules["http.cookiejar"] is before)
            """
        )
        self.assertEqual(out.split(), ["True"])

    def test_unknown_module_is_ignored(self) -> None:
        out = python(
            """
            import sys
            from ser2tcp._lean import defer_import
            defer_import("no_such_module_here")
            print("no_such_module_here" in sys.modules)
            """
        )
        self.assertEqual(out.split(), ["False"])

    def test_console_script_skips_the_web_modules(self) -> None:
        # What the ser2tcp command imports before it runs the reactor.
        out = python(
            """
            import sys
            import ser2tcp.cli
            from twisted.internet import reactor
            import ser2tcp.service
            print(sorted(m for m in ("urllib.request", "http.client", "email.parser") if m in sys.modules))
            """
        )
        self.assertEqual(out.strip(), "[]")
