"""Client protocols: how a connection becomes a session of a port's hub.

:class:`RawClient` serves ``tcp``, ``ssl`` and ``socket`` servers: bytes pass
unchanged both ways.  Other protocols (TELNET) subclass it and change only
what goes on the wire.  A client's device data goes through its own
:class:`~ser2tcp.outbox.Outbox`, so one slow client never delays the others.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _log
from .config import ServerConfig
from .hub import PortHub
from .interface import IClientSession
from .outbox import Outbox

log = _log.logger("client")


def describe_peer(address: Any) -> str:
    """``host:port`` for IP peers, the socket path for Unix peers."""
    host = getattr(address, "host", None)
    if host is not None:
        if ":" in host:
            return f"[{host}]:{address.port}"
        return f"{host}:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name
        if isinstance(name, bytes):
            return name.decode(errors="replace")
        return name or "unix socket"
    return str(address)


@implementer(IClientSession)
class RawClient(Protocol):
    """A client whose bytes pass to and from the device unchanged."""

    outbox: Outbox | None = None
    joined = False

    def __init__(self, hub: PortHub, server: ServerConfig, clock: IReactorTime) -> None:
        self.hub = hub
        self.server = server
        self.clock = clock
        self.peer = "?"

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self.peer = f"{self._peer_address()} {self.server.protocol.upper()}"
        self.outbox = Outbox(
            transport, self.clock, self.server.send_timeout, self.server.buffer_limit, self._dropped
        )
        transport.registerProducer(self.outbox, True)  # type: ignore[attr-defined]
        # Device data is small and latency-bound (a console echo): no Nagle.
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        # The hot path: device data goes straight to the outbox.
        self.deliver = self.outbox.send  # type: ignore[method-assign]
        if _log.info:
            log.info("Client connected: {peer} to {port}", peer=self.peer, port=self.hub.name)
        self.ready()

    def ready(self) -> None:
        """The connection is usable (for TLS: once the handshake is done)."""
        self.join()

    def _peer_address(self) -> str:
        transport = self.transport
        assert transport is not None
        peer = transport.getPeer()
        if isinstance(peer, UNIXAddress):  # Unix peers are unnamed: name the path
            return describe_peer(transport.getHost())
        return describe_peer(peer)

    def join(self) -> None:
        """Become a session of the hub: from now on device data flows."""
        self.joined = True
        self.hub.attach(self)

    def dataReceived(self, data: bytes) -> None:
        self.hub.from_client(self, data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.outbox is not None:
            self.outbox.stopProducing()
        if self.joined:
            self.hub.detach(self)
        if _log.info:
            log.info("Client disconnected: {peer}", peer=self.peer)

    # IClientSession

    def deliver(self, data: bytes) -> None:
        assert self.outbox is not None
        self.outbox.send(data)

    def pause_reading(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def close(self, why: str) -> None:
        self.joined = False
        # Read again: its data now goes nowhere, but a TLS close waits for
        # the client's reply, and a paused connection would never see it leave.
        self.resume_reading()
        assert self.outbox is not None
        self.outbox.finish()

    def refuse(self, why: str) -> None:
        # A program could take any byte for device data: say nothing.
        self.close(why)

    def abort(self, why: str) -> None:
        self.joined = False
        if self.outbox is not None:
            self.outbox.stopProducing()
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _dropped(self, why: str) -> None:
        log.info("Client dropped: {peer}: {why}", peer=self.peer, why=why)


class ClientFactory(Factory):
    """Builds the protocol of one server for each accepted connection."""

    protocol_class: type[RawClient] = RawClient
    noisy = False  # no "Starting factory" lines: listeners log themselves

    def __init__(self, hub: PortHub, server: ServerConfig, clock: IReactorTime) -> None:
        self.hub = hub
        self.server = server
        self.clock = clock

    def buildProtocol(self, addr: Any) -> RawClient:
        return self.protocol_class(self.hub, self.server, self.clock)
