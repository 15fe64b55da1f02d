"""Which peers may connect: ``allow`` and ``deny`` lists of IP networks.

Pure data, no Twisted: the config validates the lists with it, and every
listener (serial servers now, HTTP later) asks it about each peer.  A peer
inside any ``deny`` network is refused; with an ``allow`` list, only peers
inside one of its networks are let in.  An IPv4-mapped IPv6 peer
(``::ffff:10.1.2.3``, as a ``::`` listener sees IPv4 clients) is the IPv4
address it maps, so one rule covers both kinds of listener.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def parse_network(text: str) -> Network:
    """``"10.0.0.0/8"``, ``"::1"`` or ``"2001:db8::/32"`` as a network.

    Host bits are allowed (``"10.1.2.3/8"`` is ``10.0.0.0/8``), as in the
    newer original ser2tcp; an IPv4-mapped IPv6 network is its IPv4 network.
    Raises ValueError with a message in the user's terms."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or network: {text!r}") from None
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None and network.prefixlen >= 96:
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}", strict=False)
    return network


def parse_address(text: str) -> Address | None:
    """A peer's address, IPv4-mapped IPv6 unmapped; None if it is not an IP."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class IpFilter:
    """The ``allow``/``deny`` rules of one listener."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @classmethod
    def from_lists(cls, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> IpFilter:
        return cls(tuple(map(parse_network, allow)), tuple(map(parse_network, deny)))

    @property
    def active(self) -> bool:
        return bool(self.allow or self.deny)

    def refusal(self, host: str) -> str | None:
        """Why ``host`` may not connect (the rule that refuses it), or None."""
        if not self.active:
            return None
        address = parse_address(host)
        if address is None:
            return f"{host} is not an IP address"
        for network in self.deny:
            if address in network:
                return f"deny {network}"
        if self.allow and not any(address in network for network in self.allow):
            return "not in allow"
        return None
