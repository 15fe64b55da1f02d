"""Watching a port's modem lines (CTS, DSR, RI, CD) for RFC 2217 clients.

Nothing notifies a change, so the lines are polled, but only while someone
watches: a port nobody asks about costs no timer."""

from __future__ import annotations

from typing import Callable

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime

from .interface import ISerialControl

#: Seconds between two looks at the modem lines, while someone watches.
MODEM_POLL_INTERVAL = 0.5

Watcher = Callable[[dict[str, bool]], None]


class ModemWatch:
    def __init__(self, clock: IReactorTime, control: Callable[[], ISerialControl | None]) -> None:
        self._clock = clock
        self._control = control
        self._watchers: list[Watcher] = []
        self._poll: task.LoopingCall | None = None
        self._last: dict[str, bool] | None = None

    def watch(self, callback: Watcher) -> None:
        """Call ``callback(lines)`` whenever the lines change."""
        self._watchers.append(callback)
        if self._poll is None:
            self._last = None
            self._poll = task.LoopingCall(self._look)
            self._poll.clock = self._clock
            self._poll.start(MODEM_POLL_INTERVAL, now=False)

    def unwatch(self, callback: Watcher) -> None:
        if callback in self._watchers:
            self._watchers.remove(callback)
        if not self._watchers:
            self.stop()

    def stop(self) -> None:
        self._watchers.clear()
        if self._poll is not None:
            self._poll.stop()
            self._poll = None

    def _look(self) -> None:
        control = self._control()
        if control is None:
            return
        lines = control.modem_lines()
        if lines != self._last:
            self._last = lines
            for callback in list(self._watchers):
                callback(lines)
