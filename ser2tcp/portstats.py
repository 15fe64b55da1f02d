"""PortStats: what one port has done, for status pages and metrics.

Plain counters the hub adds to as data passes (one integer addition per
chunk on the hot path, nothing more); everything derived is computed when
someone asks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class PortStats:
    bytes_from_device: int = 0
    bytes_to_device: int = 0
    device_opens: int = 0
    device_open_failures: int = 0
    device_losses: int = 0
    #: Client input thrown away because the device was gone (``on_loss: hold``).
    discarded_while_held: int = 0
    #: The device path in use, and since when (reactor seconds); None when closed.
    device: str | None = None
    opened_at: float | None = None
    #: Clients that joined, by protocol ("tcp", "telnet", ...).
    connections: Counter[str] = field(default_factory=Counter)
    #: Clients cut off or turned away, by reason: send_timeout, buffer_limit,
    #: kicked, refused, denied, device_lost, open_failed.
    drops: Counter[str] = field(default_factory=Counter)

    def opened(self, device: str | None, now: float) -> None:
        self.device_opens += 1
        self.device = device
        self.opened_at = now

    def closed(self) -> None:
        self.device = None
        self.opened_at = None
