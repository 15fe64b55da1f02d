"""Scrollback: the last bytes a port's device sent, for clients that join late.

A tap beside the sessions (no flow control, never a reason to pause the
device).  The hub hands a joining client with ``replay`` the contents and
attaches it in the same reactor turn, so between the replayed bytes and the
live ones there is neither a gap nor a duplicate.

It keeps the device's chunks themselves (the very objects every client is
sent), not a copy: keeping a chunk costs a reference, and the bytes are
joined only when someone joins.
"""

from __future__ import annotations

from collections import deque

from zope.interface import implementer

from .interface import IDeviceTap


@implementer(IDeviceTap)
class Scrollback:
    """The last ``size`` bytes of device output."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._chunks: deque[bytes] = deque()
        self._total = 0  # bytes in _chunks
        self._skip = 0  # bytes of the oldest chunk that are no longer kept

    def device_data(self, data: bytes) -> None:
        chunks = self._chunks
        chunks.append(data)
        self._total += len(data)
        # Drop whole chunks that fell out; the oldest kept one may be cut.
        while self._total - len(chunks[0]) >= self.size:
            self._total -= len(chunks.popleft())
        self._skip = max(0, self._total - self.size)

    def event(self, text: str) -> None:
        pass  # scrollback is the device's bytes only

    def contents(self) -> bytes:
        return b"".join(self._chunks)[self._skip :]

    def clear(self) -> None:
        self._chunks.clear()
        self._total = self._skip = 0

    def close(self) -> None:
        self.clear()
