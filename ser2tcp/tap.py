"""The twistd/twist plugin: ``twist ser2tcp -c cfg.json``.

``Options`` takes the flags of the ``ser2tcp`` command, and validates the
config while parsing, so that a bad config stops ``twist``/``twistd`` with
one line before anything is daemonized or bound.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from twisted.python import usage

from . import __version__, _log
from .config import Config, ConfigError, StartupError, load_config
from .service import Ser2TcpService, build_service, install_startup_error_hook
from .usb import describe_usb_devices


def fail(message: str) -> NoReturn:
    """One line on stderr, exit code 1: how every bad config ends."""
    print(message, file=sys.stderr)
    raise SystemExit(1)


class Options(usage.Options):
    synopsis = "-c CONFIG [-v|-vv]"
    longdesc = "Share serial ports over TCP, TELNET, TLS and Unix sockets."

    def __init__(self) -> None:
        super().__init__()
        self["verbose"] = 0
        self["config"] = None
        self["configs"] = []
        self.config: Config | None = None

    def opt_config(self, path: str) -> None:
        """JSON config file (required; several with --check: one per daemon)"""
        self["configs"].append(path)
        self["config"] = path

    opt_c = opt_config

    def opt_verbose(self) -> None:
        """-v: INFO (connections, serial open/close); -vv: DEBUG with data"""
        self["verbose"] += 1

    opt_v = opt_verbose

    def opt_check(self) -> None:
        """Validate the config (-c) as a start would, print OK or the error, and exit"""
        self["check"] = True

    def opt_usb(self) -> None:
        """List USB serial devices (for "match") and exit"""
        sys.stdout.write(describe_usb_devices())
        raise SystemExit(0)

    opt_u = opt_usb

    def opt_version(self) -> None:
        """Print the version and exit"""
        print(f"ser2tcp {__version__}")
        raise SystemExit(0)

    opt_V = opt_version

    def postOptions(self) -> None:
        if self["config"] is None:
            raise usage.UsageError("the config file is required: -c CONFIG")
        if not all(self["configs"]):
            raise usage.UsageError("-c/--config: the path is empty")
        if self.get("check"):
            from .check import report_check

            raise SystemExit(report_check(self["configs"]))
        if len(self["configs"]) > 1:
            raise usage.UsageError("one config per daemon: several -c only with --check")
        try:
            self.config = load_config(self["config"])
        except ConfigError as e:
            fail(str(e))


def makeService(options: Options, reactor: Any = None) -> Ser2TcpService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    _log.set_verbosity(options["verbose"])
    _log.watch_accept_errors()
    install_startup_error_hook()
    assert options.config is not None
    try:
        service = build_service(options.config, reactor)
        service.probe()
    except (ConfigError, StartupError) as e:
        fail(str(e))
    return service
