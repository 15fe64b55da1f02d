"""Per-client send queue: the one place where slow clients are cut off.

An :class:`Outbox` is registered as a streaming producer on its client's
transport.  Twisted pauses it once the transport holds more than its
``bufferSize`` (64 KiB) and resumes it only when the transport has drained
completely.  While paused we queue device data ourselves, so that neither the
serial port nor any other client ever waits for this one, and we enforce:

* ``send_timeout``: paused for that long without draining: abort the client.
* ``buffer_limit``: our own queue would grow beyond it: abort the client.

A client is always aborted rather than given a stream with holes.  Twisted
calls ``pauseProducing`` on every write while over the threshold, so pausing
is idempotent.  ``abortConnection`` is used because ``loseConnection`` waits
for a flush that a stuck client never allows.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from zope.interface import implementer

from .fastpath import immediate_writer

#: Most bytes kept for a client that asked us to hold its data (RFC 2217
#: FLOWCONTROL-SUSPEND), whatever buffer_limit says.
HOLD_LIMIT = 1 << 20


@implementer(IPushProducer)
class Outbox:
    def __init__(
        self,
        transport: ITransport,
        clock: IReactorTime,
        send_timeout: float | None,
        buffer_limit: int | None,
        on_drop: Callable[[str], None],
    ) -> None:
        self._transport = transport
        self._write = immediate_writer(transport)
        self._clock = clock
        self._send_timeout = send_timeout
        self._buffer_limit = buffer_limit
        self._on_drop = on_drop
        self._queue: deque[bytes] = deque()
        self.queued = 0  # bytes in our queue (not counting Twisted's buffer)
        self.sent = 0  # bytes handed to this client (sent or queued), for status
        #: Why drop() cut the client off: "send_timeout" or "buffer_limit".
        self.drop_reason: str | None = None
        self.paused = False
        self.closed = False
        self._finishing = False
        self._held = False
        self._timer: IDelayedCall | None = None

    def send(self, data: bytes) -> None:
        """Hand ``data`` to the transport now, or queue it while paused."""
        if self.closed:
            return
        self.sent += len(data)
        if not self.paused:
            self._write(data)
            return
        limit = self._buffer_limit
        if self._held:
            limit = HOLD_LIMIT if limit is None else min(limit, HOLD_LIMIT)
        if limit is not None and self.queued + len(data) > limit:
            self.drop(f"buffer_limit of {limit} bytes exceeded", "buffer_limit")
            return
        self._queue.append(data)
        self.queued += len(data)

    def finish(self) -> None:
        """Close the connection once everything queued has been sent.

        A client that does not take it within ``send_timeout`` is aborted, as
        it would be while the connection is open.  The owner must call
        :meth:`stopProducing` from ``connectionLost`` to cancel that timer.
        """
        if self.closed or self._finishing:
            return
        self._finishing = True
        if self._timer is None:
            self._start_timer(5.0 if self._send_timeout is None else self._send_timeout)
        if not self._queue:
            self._lose()

    def drop(self, why: str, reason: str = "dropped") -> None:
        """Abort the connection now, discarding what is queued."""
        if self.closed:
            return
        self.drop_reason = reason
        self._close()
        self._on_drop(why)
        self._transport.abortConnection()  # type: ignore[attr-defined]

    def hold(self, on: bool) -> None:
        """Queue instead of sending, because the client asked to (RFC 2217
        FLOWCONTROL-SUSPEND).  A held client is treated as a slow one:
        ``send_timeout`` applies, and at most :data:`HOLD_LIMIT` bytes (or
        ``buffer_limit`` if smaller) are kept for it, so holding cannot make
        ser2tcp keep unbounded data."""
        if self.closed:
            return
        self._held = on
        if on:
            self.pauseProducing()
        else:
            self.resumeProducing()

    # IPushProducer, called by the transport

    def pauseProducing(self) -> None:
        if self.paused or self.closed:
            return
        self.paused = True
        if self._send_timeout is not None and self._timer is None:
            self._start_timer(self._send_timeout)

    def resumeProducing(self) -> None:
        if self.closed:
            return
        if self._held:  # drained, but the client asked us to hold on
            return
        self.paused = False
        if not self._finishing:
            self._cancel_timer()
        queue = self._queue
        write = self._write
        # Refill only until the transport pauses us again, so that the next
        # send_timeout measures the draining of one buffer, not of a backlog.
        while queue and not self.paused:
            data = queue.popleft()
            self.queued -= len(data)
            write(data)
        if self._finishing and not queue:
            self._lose()

    def stopProducing(self) -> None:
        self._close()

    def _lose(self) -> None:
        # A transport with a producer registered waits for it before closing.
        self._transport.unregisterProducer()  # type: ignore[attr-defined]
        self._transport.loseConnection()

    def _start_timer(self, seconds: float) -> None:
        self._timer = self._clock.callLater(seconds, self._expired, seconds)

    def _expired(self, seconds: float) -> None:
        self._timer = None
        self.drop(f"no send progress for {seconds:g} s (send_timeout)", "send_timeout")

    def _close(self) -> None:
        self.closed = True
        self._cancel_timer()
        self._queue.clear()
        self.queued = 0

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
