"""Reopener: try again and again to open an absent device, quietly.

Used by always-open ports and by ports that hold their clients while the
device is gone.  One timer at a time, armed only while the device is absent
(nothing runs while nothing moves), and one WARNING when the trouble starts
and one INFO when it ends, not a line per try.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from . import _log

log = _log.logger("hub")


class Reopenable(Protocol):
    name: str
    clock: IReactorTime

    def retry_open(self) -> None: ...


class Reopener:
    def __init__(self, port: Reopenable, interval: float) -> None:
        self.port = port
        self.interval = interval
        self.failures = 0
        self._timer: IDelayedCall | None = None

    @property
    def pending(self) -> bool:
        return self._timer is not None

    def failed(self, why: str, quiet: bool = False) -> None:
        """Opening failed (or the device was lost): try again later.
        ``quiet``: the caller has said why already."""
        if self.failures == 0 and not quiet:
            log.warn(
                "Serial {port}: cannot open: {why} (trying again every {interval:g} s)",
                port=self.port.name,
                why=why,
                interval=self.interval,
            )
        self.failures += 1
        if self._timer is None:
            self._timer = self.port.clock.callLater(self.interval, self._fire)

    def succeeded(self) -> None:
        if self.failures:
            log.info(
                "Serial {port}: device is back after {n} failed tr{ies}",
                port=self.port.name,
                n=self.failures,
                ies="y" if self.failures == 1 else "ies",
            )
        self.stop()

    def stop(self) -> None:
        self.failures = 0
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self.port.retry_open()
