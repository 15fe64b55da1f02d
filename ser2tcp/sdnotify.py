"""systemd's notify protocol: a few datagrams to ``$NOTIFY_SOCKET``.

``READY=1`` once every listener is bound (``Type=notify`` units start what
depends on ser2tcp only then), ``STOPPING=1`` when it stops, a ``STATUS=``
line, and ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` from the reactor, so
that a hung event loop is restarted.  Without ``$NOTIFY_SOCKET`` it does
nothing and arms no timer."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime

from . import _log

log = _log.logger("systemd")


class Notifier:
    def __init__(self, clock: IReactorTime, environ: Mapping[str, str] = os.environ) -> None:
        self._clock = clock
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog: task.LoopingCall | None = None
        self._interval = 0.0
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._interval = int(usec) / 2e6

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, *fields: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as e:
            log.warn("systemd notify socket {address}: {why}", address=self._address, why=e.strerror or e)

    def ready(self, status: Callable[[], str]) -> None:
        """Every listener is bound: tell systemd, and start the watchdog."""
        self.send("READY=1", f"STATUS={status()}")
        if self.enabled and self._interval and self._watchdog is None:
            self._watchdog = task.LoopingCall(lambda: self.send("WATCHDOG=1", f"STATUS={status()}"))
            self._watchdog.clock = self._clock
            self._watchdog.start(self._interval, now=False)

    def reloading(self) -> None:
        """A reload starts; :meth:`ready` says when it is over."""
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        self.send("STOPPING=1")
