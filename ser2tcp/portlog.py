"""PortLog: everything a port's device sends, appended to a file.

A tap beside the sessions: no flow control toward it, never a reason to
pause the device.  Device data is buffered in memory and handed over in one
piece at most :data:`FLUSH_DELAY` seconds later (one timer, armed by data:
nothing runs while nothing moves) or once :data:`FLUSH_SIZE` bytes wait.

The writing itself is done by one thread for every log of the daemon, fed
in order by a bounded queue: a write can wait for the disk (page cache
full, a slow device), and the data path must never wait for the log.  One
timer for every log hands them their data together.  A disk slower than
the device loses log data (counted, one WARNING), never device data.

Rotation by size is Twisted's ``twisted.python.logfile.LogFile`` (binary,
``path.1`` ... ``path.<backups>``).  A full or failing disk suspends the log
with one WARNING; the data path never fails because of it, and ``reopen``
(SIGUSR1, after an external logrotate) resumes it.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import weakref
from typing import Any, Callable, Protocol

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
#: Bytes of all port logs together that may wait for the disk.
QUEUE_BYTES = 64 * 1024 * 1024


def timestamp(now: float) -> bytes:
    """ISO-8601 UTC with milliseconds and a space: ``2026-12-04T23:15:02.123Z ``."""
    seconds, millis = divmod(round(now * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode() + b".%03dZ " % millis


def _printable(text: str) -> bytes:
    """A marker's text on one line: control characters escaped."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text).encode("utf-8", "replace")


class Writer(Protocol):
    """Does a port log's file operations, in the order they are asked for,
    and reports a failure with ``failed(error, bytes_lost)``."""

    def write(self, data: bytes) -> bool:
        """Queue ``data``; False if it cannot be taken now (disk too slow)."""

    def reopen(self) -> None: ...

    def close(self) -> None: ...


class InlineWriter:
    """Writes at once, in the caller's thread (tests, and closing)."""

    def __init__(self, file: LogFile, failed: Callable[[OSError, int], None]) -> None:
        self.file = file
        self.failed = failed

    def write(self, data: bytes) -> bool:
        try:
            self.file.write(data)
        except OSError as e:
            self.failed(e, len(data))
        return True

    def reopen(self) -> None:
        try:
            self.file.reopen()
        except OSError as e:
            self.failed(e, 0)

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass


_REOPEN = object()


class DiskThread:
    """The one thread that writes every port log of the process.

    A thread per log would cost a thread, its memory and its wake-ups per
    port: 256 of each on a lab host.  One thread, fed in order by one queue,
    does the file operations of every log; the reactor never waits for the
    disk.  It starts with the first log and then waits in its queue, which
    costs nothing while nothing moves.  At most ``limit`` bytes may wait for
    the disk: past that, writes are refused (the log counts them lost)."""

    def __init__(self, limit: int = QUEUE_BYTES) -> None:
        self._queue: queue.SimpleQueue[tuple[InlineWriter, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._limit = limit
        self._queued = 0

    def put(self, writer: InlineWriter, item: Any) -> bool:
        """Queue ``item`` (bytes, :data:`_REOPEN`, or an Event: close, then
        set it) for ``writer``; False if too much data waits already."""
        size = len(item) if isinstance(item, bytes) else 0
        with self._lock:
            if self._queued + size > self._limit:
                return False
            self._queued += size
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ser2tcp port logs", daemon=True)
                self._thread.start()
        self._queue.put((writer, item))
        return True

    def _run(self) -> None:
        while True:
            writer, item = self._queue.get()
            if item is _REOPEN:
                writer.reopen()
            elif isinstance(item, threading.Event):
                writer.close()
                item.set()
            else:
                writer.write(item)
                with self._lock:
                    self._queued -= len(item)


#: The writer thread of every port log.
DISK = DiskThread()


class ThreadWriter:
    """A port log's file operations, done in order by :data:`DISK`'s
    thread.  Failures are reported back in the reactor thread."""

    def __init__(
        self,
        file: LogFile,
        failed: Callable[[OSError, int], None],
        call_from_thread: Callable[..., Any],
        disk: DiskThread = DISK,
    ) -> None:
        self._inline = InlineWriter(file, self._report)
        self._failed = failed
        self._call = call_from_thread
        self._disk = disk

    def write(self, data: bytes) -> bool:
        return self._disk.put(self._inline, data)

    def reopen(self) -> None:
        if not self._disk.put(self._inline, _REOPEN):
            self._report(OSError("the disk is too slow to reopen the log now"), 0)

    def close(self) -> None:
        """Write what is queued, then close: waits for the disk (stopping),
        for a few seconds at most."""
        done = threading.Event()
        self._disk.put(self._inline, done)
        done.wait(5.0)

    def _report(self, error: OSError, lost: int) -> None:
        self._call(self._failed, error, lost)


class Flusher:
    """One timer for every port log on a clock: armed when a log first has
    data waiting, it hands what every log holds to the disk at once.  A
    timer (and a wake-up of the writer) per log would cost one per port."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._logs: dict[PortLog, None] = {}
        self._timer: IDelayedCall | None = None

    def due(self, port_log: PortLog) -> None:
        self._logs[port_log] = None
        if self._timer is None:
            self._timer = self._clock.callLater(FLUSH_DELAY, self._fire)

    def done(self, port_log: PortLog) -> None:
        self._logs.pop(port_log, None)
        if not self._logs and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        logs, self._logs = self._logs, {}
        for port_log in logs:
            port_log.flush()


_flushers: weakref.WeakKeyDictionary[Any, Flusher] = weakref.WeakKeyDictionary()


def flusher(clock: IReactorTime) -> Flusher:
    """The flush timer of every port log on ``clock``."""
    found = _flushers.get(clock)
    if found is None:
        found = _flushers[clock] = Flusher(clock)
    return found


@implementer(IDeviceTap)
class PortLog:
    def __init__(
        self,
        config: LogConfig,
        clock: IReactorTime,
        port_name: str,
        now: Callable[[], float] = time.time,
        threaded: bool = True,
    ) -> None:
        self.config = config
        self._clock = clock
        self._port = port_name
        self._now = now
        self._threaded = threaded
        self._writer: Writer | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flusher = flusher(clock)
        self._due = False
        self._line_start = True
        #: Why the log is suspended (the disk refused a write), or None.
        self._suspended: str | None = None
        self._behind = False
        #: Bytes that did not reach the file.
        self.lost = 0

    # lifecycle

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def open(self) -> None:
        """Open (or create) the file; OSError says why it cannot be."""
        directory, name = os.path.split(os.path.abspath(self.config.path))
        file = LogFile(
            name,
            directory,
            rotateLength=self.config.max_bytes or None,
            maxRotatedFiles=self.config.backups,
        )
        if self._threaded:
            call = getattr(self._clock, "callFromThread", None) or (lambda f, *a: f(*a))
            self._writer = ThreadWriter(file, self._failed, call)
        else:
            self._writer = InlineWriter(file, self._failed)

    def reopen(self) -> None:
        """Hand over what is pending, then open the path again (logrotate
        moved the file away).  A suspended log tries again."""
        self.flush()
        if self._writer is None:
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
        self._behind = False
        self._writer.reopen()

    def close(self) -> None:
        self.flush()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    # IDeviceTap

    def device_data(self, data: bytes) -> None:
        if not data:
            return
        if self.config.timestamps:
            stamp = timestamp(self._now())
            if self._line_start:
                self._add(stamp)
            # Every line that starts in this chunk gets the chunk's time; a
            # line ending the chunk is stamped when its next byte arrives.
            ends_line = data[-1:] == b"\n"
            data = data.replace(b"\n", b"\n" + stamp)
            if ends_line:
                data = data[: -len(stamp)]
            self._line_start = ends_line
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
        elif not self._due:
            self._due = True
            self._flusher.due(self)

    def flush(self) -> None:
        """Hand what is pending to the writer now."""
        if self._due:
            self._due = False
            self._flusher.done(self)
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        if self._writer is None or self._suspended is not None:
            self.lost += len(data)
        elif not self._writer.write(data):
            self.lost += len(data)
            if not self._behind:
                self._behind = True
                log.warn(
                    "Port log of {port}: the disk is slower than the device; log data is being lost ({path})",
                    port=self._port,
                    path=self.config.path,
                )

    def _failed(self, error: OSError, lost: int) -> None:
        self.lost += lost
        if self._suspended is None:
            self._suspended = error.strerror or str(error)
            log.warn(
                "Port log of {port} suspended: cannot write {path}: {why} (SIGUSR1 tries again)",
                port=self._port,
                path=self.config.path,
                why=self._suspended,
            )

    def __repr__(self) -> str:
        return f"<PortLog {self._port} {self.config.path}>"
