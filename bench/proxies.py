"""The proxies under test ("profiles") and how to start and stop them.

A profile knows how to tell whether its program is installed, its version,
and the command line (plus config file) that serves one pseudo-terminal on
one loopback port.  :class:`ProxyProcess` runs it: started by PID, stopped by
PID (SIGTERM, then SIGKILL after a deadline), always, even on errors.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness import FigureTimeout, free_port, is_listening

BENCH_DIR = Path(__file__).resolve().parent
ORIGINAL_VENV = BENCH_DIR / ".peers" / "ser2tcp-2.3.0"

#: Serial settings every profile uses; a pty ignores the rate anyway.
BAUDRATE = 115200


@dataclass(frozen=True)
class ServerOptions:
    """Per-figure knobs.  Only ser2tcp-style profiles have send_timeout and
    buffer_limit; the others ignore them (and the report says so)."""

    send_timeout: float = 5.0
    buffer_limit: int | None = None


@dataclass(frozen=True)
class Profile:
    """One proxy under test: how to find it, ask its version and run it on
    a given pty and port.  Data, not subclasses, so a new peer is one entry
    in :data:`PROFILES`."""

    name: str
    description: str
    #: the executable, or None when it is not installed
    find: Callable[[], str | None]
    #: writes the config (if any) into tmpdir and returns argv
    argv: Callable[[str, str, int, Path, ServerOptions], list[str]]
    version_argv: list[str] = field(default_factory=list)
    #: False for proxies that serve one client and exit (socat)
    multi_client: bool = True
    #: True when send_timeout/buffer_limit are honoured
    slow_client_options: bool = False
    #: True when the proxy serves /metrics, scraped once a second while it runs
    scrape: bool = False

    def executable(self) -> str | None:
        """The program's path, or None when it is not installed (skipped)."""
        return self.find()

    def version(self) -> str:
        """The program's own version string (first non-empty line)."""
        exe = self.find()
        if exe is None:
            return "not installed"
        try:
            out = subprocess.run(
                [exe, *self.version_argv],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"unknown ({e})"
        lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
        # socat prints a banner first; its "socat version 1.7.4.4 on ..." line says more
        for line in lines:
            if "version" in line:
                return line
        return lines[0] if lines else "unknown"


def _ser2tcp_config(
    pty: str, port: int, tmpdir: Path, opts: ServerOptions, console: bool = False, http: bool = False
) -> Path:
    """The JSON config; the original 2.3.0 reads the very same format.

    ``console``: the port also keeps a timestamped port log and 64 KiB of
    scrollback, the console-server features that sit on the data path."""
    server = {
        "protocol": "tcp",
        "address": "127.0.0.1",
        "port": port,
        "send_timeout": opts.send_timeout,
        "buffer_limit": opts.buffer_limit,
    }
    port_config: dict[str, object] = {"serial": {"port": pty, "baudrate": BAUDRATE}, "servers": [server]}
    if console:
        port_config["log"] = {"path": str(tmpdir / "port.log"), "timestamps": True}
        port_config["scrollback"] = 65536
    config: dict[str, object] = {"ports": [port_config]}
    if http:
        http_port = free_port()
        (tmpdir / "http_port").write_text(str(http_port))
        config["http"] = {"address": "127.0.0.1", "port": http_port}
    path = tmpdir / "ser2tcp.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _ser2tcp_argv(exe: str, pty: str, port: int, tmpdir: Path, opts: ServerOptions) -> list[str]:
    """No -v: logging each client would cost the daemon time we measure."""
    return [exe, "-c", str(_ser2tcp_config(pty, port, tmpdir, opts))]


def _ser2tcp_console_argv(exe: str, pty: str, port: int, tmpdir: Path, opts: ServerOptions) -> list[str]:
    return [exe, "-c", str(_ser2tcp_config(pty, port, tmpdir, opts, console=True))]


def _ser2tcp_http_argv(exe: str, pty: str, port: int, tmpdir: Path, opts: ServerOptions) -> list[str]:
    return [exe, "-c", str(_ser2tcp_config(pty, port, tmpdir, opts, http=True))]


class Scraper:
    """GET /metrics once a second, as Prometheus would, while a figure runs."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    answer.read()
                self.scrapes += 1
            except OSError:
                pass  # not listening yet, or stopping

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _socat_argv(exe: str, pty: str, port: int, tmpdir: Path, opts: ServerOptions) -> list[str]:
    # bind=127.0.0.1: loopback only.  Without fork socat serves one client.
    return [exe, f"TCP-LISTEN:{port},reuseaddr,bind=127.0.0.1", f"FILE:{pty},raw,echo=0"]


def _ser2net_argv(tuned: bool) -> Callable[[str, str, int, Path, ServerOptions], list[str]]:
    """ser2net 4's YAML (version 1 dialect, the one its man page shows)."""

    def argv(exe: str, pty: str, port: int, tmpdir: Path, opts: ServerOptions) -> list[str]:
        options = ["    max-connections: 1000"]
        if tuned:
            options += [
                "    dev-to-net-bufsize: 65536",
                "    net-to-dev-bufsize: 65536",
                "    chardelay: false",
            ]
        text = "\n".join(
            [
                "connection: &con1",
                f"  accepter: tcp,127.0.0.1,{port}",
                f"  connector: serialdev,{pty},{BAUDRATE}n81,local",
                "  options:",
                *options,
                "",
            ]
        )
        path = tmpdir / "ser2net.yaml"
        path.write_text(text)
        # -n: no fork; -d: foreground, messages on stdout; -u: no UUCP lock
        # files (a killed run would leave stale ones); -P: our own pid file;
        # -c: our config only (replaces /etc/ser2net/ser2net.yaml).
        return [exe, "-n", "-d", "-u", "-P", str(tmpdir / "ser2net.pid"), "-c", str(path)]

    return argv


def _which(name: str) -> Callable[[], str | None]:
    """Looked up at run time, so installing a peer later just works."""
    return lambda: shutil.which(name)


def _file(path: Path) -> Callable[[], str | None]:
    """A program at a fixed place (a virtualenv's console script)."""
    return lambda: str(path) if os.access(path, os.X_OK) else None


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            "ser2tcp",
            "this checkout: the ser2tcp console script next to sys.executable",
            _file(Path(sys.executable).parent / "ser2tcp"),
            _ser2tcp_argv,
            ["-V"],
            slow_client_options=True,
        ),
        Profile(
            "ser2tcp-console",
            "this checkout with a timestamped port log and 64 KiB scrollback on the port",
            _file(Path(sys.executable).parent / "ser2tcp"),
            _ser2tcp_console_argv,
            ["-V"],
            slow_client_options=True,
        ),
        Profile(
            "ser2tcp-http",
            "this checkout with an HTTP server whose /metrics is scraped once a second",
            _file(Path(sys.executable).parent / "ser2tcp"),
            _ser2tcp_http_argv,
            ["-V"],
            slow_client_options=True,
            scrape=True,
        ),
        Profile(
            "socat",
            "socat TCP-LISTEN:P,reuseaddr FILE:/dev/pts/N,raw,echo=0 (one client)",
            _which("socat"),
            _socat_argv,
            ["-V"],
            multi_client=False,
        ),
        Profile(
            "ser2net",
            "ser2net 4 as shipped (default options, max-connections 1000)",
            _which("ser2net"),
            _ser2net_argv(tuned=False),
            ["-v"],
        ),
        Profile(
            "ser2net-tuned",
            "ser2net 4 with 64 KiB buffers both ways and chardelay off",
            _which("ser2net"),
            _ser2net_argv(tuned=True),
            ["-v"],
        ),
        Profile(
            "ser2tcp-2.3.0",
            "the original ser2tcp 2.3.0 from PyPI, in bench/.peers/ser2tcp-2.3.0",
            _file(ORIGINAL_VENV / "bin" / "ser2tcp"),
            _ser2tcp_argv,
            ["-V"],
            slow_client_options=True,
        ),
    ]
}


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no libc to talk to
    _LIBC = None


def _die_with_parent() -> None:
    """In the child, between fork and exec: get SIGTERM if the benchmark
    itself dies, so that no proxy outlives a killed run.  libc is loaded in
    the parent beforehand so the child only makes one system call."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ProxyProcess:
    """One running proxy, serving ``pty`` on 127.0.0.1:``port``.

    Use as a context manager: the process is stopped on exit whatever
    happened inside.
    """

    def __init__(
        self, profile: Profile, pty: str, port: int, tmpdir: Path, opts: ServerOptions | None = None
    ) -> None:
        self.profile = profile
        self.port = port
        self.log_path = tmpdir / f"{profile.name}.log"
        exe = profile.executable()
        if exe is None:
            raise RuntimeError(f"{profile.name} is not installed")
        self.argv = profile.argv(exe, pty, port, tmpdir, opts or ServerOptions())
        self.proc: subprocess.Popen[bytes] | None = None
        self.scraper: Scraper | None = None
        self._tmpdir = tmpdir

    @property
    def pid(self) -> int:
        """The proxy's PID: /proc readings and signals use it."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> ProxyProcess:
        """Start and wait until it listens (read from /proc, not by connecting)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while not is_listening(self.port):
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"{self.profile.name} exited with {code}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise FigureTimeout(f"{self.profile.name} did not listen within {timeout:g} s")
            time.sleep(0.01)
        if self.profile.scrape:
            self.scraper = Scraper(int((self._tmpdir / "http_port").read_text()))
        return self

    def alive(self) -> bool:
        """Still running (socat exits once its client leaves)."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        if self.scraper is not None:
            self.scraper.stop()
            self.scraper = None
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        return proc.returncode

    def log_tail(self, size: int = 600) -> str:
        """The end of the proxy's output, for "error" results."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-size:].strip()

    def __enter__(self) -> ProxyProcess:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
