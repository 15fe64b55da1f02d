"""PortLog: everything a port's device sends, appended to a file.

A tap beside the sessions: no flow control toward it, never a reason to
pause the device.  Device data is buffered in memory and written in one
piece at most :data:`FLUSH_DELAY` seconds later (one timer, armed by data:
nothing runs while nothing moves) or once :data:`FLUSH_SIZE` bytes wait.

Rotation by size is Twisted's ``twisted.python.logfile.LogFile`` (binary,
``path.1`` ... ``path.<backups>``).  A full or failing disk suspends the log
with one WARNING; the data path never fails because of it, and ``reopen``
(SIGUSR1, after an external logrotate) resumes it.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.logfile import LogFile
from zope.interface import implementer

from . import _log
from .config import LogConfig
from .interface import IDeviceTap

log = _log.logger("portlog")

#: Most seconds between device data arriving and it being written.
FLUSH_DELAY = 0.5
#: Bytes that make a write happen at once.
FLUSH_SIZE = 64 * 1024


def timestamp(now: float) -> bytes:
    """ISO-8601 UTC with milliseconds and a space: ``2026-12-04T23:15:02.123Z ``."""
    seconds, millis = divmod(round(now * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode() + b".%03dZ " % millis


def _printable(text: str) -> bytes:
    """A marker's text on one line: control characters escaped."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text).encode("utf-8", "replace")


@implementer(IDeviceTap)
class PortLog:
    def __init__(
        self,
        config: LogConfig,
        clock: IReactorTime,
        port_name: str,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self._port = port_name
        self._now = now
        self._file: LogFile | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._timer: IDelayedCall | None = None
        self._line_start = True
        #: Set while the disk refuses writes: (why, bytes lost since).
        self._suspended: str | None = None
        self.lost = 0

    # lifecycle

    def open(self) -> None:
        """Open (or create) the file; OSError says why it cannot be."""
        directory, name = os.path.split(os.path.abspath(self.config.path))
        self._file = LogFile(
            name,
            directory,
            rotateLength=self.config.max_bytes or None,
            maxRotatedFiles=self.config.backups,
        )

    def reopen(self) -> None:
        """Write what is pending, then open the path again (logrotate moved
        the file away).  A suspended log resumes if the file opens."""
        self.flush()
        try:
            if self._file is None:
                self.open()
            else:
                self._file.reopen()
        except OSError as e:
            self._suspend(e)
            return
        if self._suspended is not None:
            log.info(
                "Port log of {port} resumed: {path} ({n} byte(s) lost meanwhile)",
                port=self._port,
                path=self.config.path,
                n=self.lost,
            )
            self._suspended = None
            self.lost = 0

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    # IDeviceTap

    def device_data(self, data: bytes) -> None:
        if not data:
            return
        if self.config.timestamps:
            stamp = timestamp(self._now())
            # Every line that starts in this chunk gets the chunk's time; a
            # line ending the chunk is stamped when its next byte arrives.
            if data[-1:] == b"\n":
                data = data[:-1].replace(b"\n", b"\n" + stamp) + b"\n"
            else:
                data = data.replace(b"\n", b"\n" + stamp)
            if self._line_start:
                data = stamp + data
            self._line_start = data[-1:] == b"\n"
        self._add(data)

    def event(self, text: str) -> None:
        if not self.config.timestamps:
            return  # the file is the device's bytes, exactly
        line = timestamp(self._now()) + b"[ser2tcp] " + _printable(text) + b"\n"
        if not self._line_start:
            line = b"\n" + line  # the device's line goes on after the marker
        self._line_start = True
        self._add(line)

    # writing

    def _add(self, data: bytes) -> None:
        if self._suspended is not None:
            self.lost += len(data)
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= FLUSH_SIZE:
            self.flush()
        elif self._timer is None:
            self._timer = self._clock.callLater(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        """Write what is pending now."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        if self._file is None:
            self.lost += len(data)
            return
        try:
            self._file.write(data)
        except OSError as e:
            self.lost += len(data)
            self._suspend(e)

    def _suspend(self, e: OSError) -> None:
        if self._suspended is None:
            self._suspended = e.strerror or str(e)
            log.warn(
                "Port log of {port} suspended: cannot write {path}: {why} (SIGUSR1 tries again)",
                port=self._port,
                path=self.config.path,
                why=self._suspended,
            )

    def __repr__(self) -> str:  # for log events that name it
        return f"<PortLog {self._port} {self.config.path}>"
