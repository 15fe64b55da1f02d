"""Admission: whether a new connection may become a client of a port.

One place decides for every protocol (raw TCP, TELNET, TLS, Unix sockets),
when the connection is accepted and before anything is exchanged (for TLS,
before the handshake), so that a refused peer never opens the device nor
disturbs another client:

* ``allow``/``deny``: the peer's address against the server's networks;
* ``max_connections`` of the server and of the whole port, with
  ``on_full``: ``refuse`` the newcomer or ``kick_oldest``, replacing the
  longest-connected client of that server once the newcomer has joined.

Protocols only report their lifecycle (admitted, joined, released); what
happens at a limit is decided here.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as Typing

from .config import ServerConfig


class Member(Typing):
    """What admission needs of a client: its name, and a way to end it."""

    peer: Any  # how logs name it
    joined: bool

    def disconnect(self, why: str) -> None: ...


class PortCount:
    """Clients of all the servers of one port, against the port's limit."""

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.count = 0


class Refusal(Exception):
    """Why a connection is refused; ``kind`` is "denied" (allow/deny) or
    "refused" (a connection limit)."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(why)
        self.kind = kind
        self.why = why


class Admission:
    """The admission rules of one server, and its clients in order of arrival."""

    def __init__(self, server: ServerConfig, port: PortCount | None = None) -> None:
        self.server = server
        self.port = port if port is not None else PortCount()
        # Admitted and not yet gone, oldest first (a dict keeps order).
        self.members: dict[Member, None] = {}

    def check(self, host: str | None) -> None:
        """Raise :class:`Refusal` if a peer at ``host`` may not connect now."""
        rule = self.server.ipfilter.refusal(host or "") if self.server.ipfilter.active else None
        if rule is not None:
            raise Refusal("denied", rule)
        full = self._full(already=0)
        if full is not None and not (self.server.on_full == "kick_oldest" and self._oldest(None)):
            raise Refusal("refused", full)

    def admitted(self, member: Member) -> None:
        self.members[member] = None
        self.port.count += 1

    def joined(self, member: Member) -> None:
        """``member`` is a session of the port now: with ``kick_oldest``,
        end the oldest clients while a limit is exceeded.  Done only now, so
        that the port never loses its last client (and closes the device)
        on the way from one client to the next."""
        if self.server.on_full != "kick_oldest":
            return
        for _ in range(len(self.members)):
            if self._full(already=1) is None:
                return
            victim = self._oldest(member)
            if victim is None:
                return
            self.released(victim)
            victim.disconnect(f"replaced by a new connection from {member.peer}")

    def released(self, member: Member) -> None:
        """``member`` is gone (or leaving): it no longer counts."""
        if member in self.members:
            del self.members[member]
            self.port.count -= 1

    def _full(self, already: int) -> str | None:
        """Which limit one more client would exceed; ``already`` is 1 when
        that client is counted already."""
        limit = self.server.max_connections
        if limit and len(self.members) - already >= limit:
            return f"max_connections {limit} reached"
        limit = self.port.limit
        if limit and self.port.count - already >= limit:
            return f"the port's max_connections {limit} reached"
        return None

    def _oldest(self, other_than: Member | None) -> Member | None:
        return next((m for m in self.members if m is not other_than and m.joined), None)
