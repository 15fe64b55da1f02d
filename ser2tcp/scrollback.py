"""Scrollback: the last bytes a port's device sent, for clients that join late.

A tap beside the sessions (no flow control, never a reason to pause the
device).  The hub hands a joining client with ``replay`` the contents and
attaches it in the same reactor turn, so between the replayed bytes and the
live ones there is neither a gap nor a duplicate.
"""

from __future__ import annotations

from zope.interface import implementer

from .interface import IDeviceTap


@implementer(IDeviceTap)
class Scrollback:
    """The last ``size`` bytes of device output."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._buffer = bytearray()

    def device_data(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        excess = len(buffer) - self.size
        if excess > 0:
            # Trimming once per chunk, not per byte: the cost is one memmove
            # of at most ``size`` bytes.
            del buffer[:excess]

    def event(self, text: str) -> None:
        pass  # scrollback is the device's bytes only

    def contents(self) -> bytes:
        return bytes(self._buffer)

    def clear(self) -> None:
        self._buffer.clear()

    def close(self) -> None:
        self.clear()
