"""Client protocols: how a connection becomes a session of a port's hub.

:class:`RawClient` serves ``tcp``, ``ssl`` and ``socket`` servers: bytes pass
unchanged both ways.  Other protocols (TELNET) subclass it and change only
what goes on the wire.  A client's device data goes through its own
:class:`~ser2tcp.outbox.Outbox`, so one slow client never delays the others.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _log
from .admission import Admission, Refusal
from .config import ServerConfig
from .hub import PortHub
from .interface import IClientSession
from .outbox import Outbox
from .session import SessionLife
from .sockopts import set_keepalive

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


@implementer(IClientSession, IHalfCloseableProtocol)
class RawClient(SessionLife, Protocol):
    """A client whose bytes pass to and from the device unchanged."""

    factory: ClientFactory | None = None
    _half_closed: IDelayedCall | None = None

    def __init__(self, hub: PortHub, server: ServerConfig, clock: IReactorTime) -> None:
        self.hub = hub
        self.server = server
        self.clock = clock
        self.peer = "?"
        self.start_session(clock.seconds())

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self.peer = f"{self._peer_address()} {self.server.protocol.upper()}"
        self.outbox = Outbox(
            transport, self.clock, self.server.send_timeout, self.server.buffer_limit, self.dropped
        )
        transport.registerProducer(self.outbox, True)  # type: ignore[attr-defined]
        # Device data is small and latency-bound (a console echo): no Nagle.
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        set_keepalive(transport, self.server.keepalive)
        # The hot path: device data goes straight to the outbox.
        self.deliver = self.outbox.send  # type: ignore[method-assign]
        self.ready()

    def ready(self) -> None:
        """The connection is usable (for TLS: once the handshake is done)."""
        self.join()

    def admission(self) -> Admission | None:
        return self.factory.admission if self.factory is not None else None

    def _peer_address(self) -> str:
        transport = self.transport
        assert transport is not None
        peer = transport.getPeer()
        if isinstance(peer, UNIXAddress):  # Unix peers are unnamed: name the path
            return describe_peer(transport.getHost())
        return describe_peer(peer)

    def dataReceived(self, data: bytes) -> None:
        self.bytes_received += len(data)
        self.hub.from_client(self, data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._half_closed is not None:
            if self._half_closed.active():
                self._half_closed.cancel()
            self._half_closed = None
        self.leave()

    # IHalfCloseableProtocol

    def readConnectionLost(self) -> None:
        """The client shut down its sending side (``socat``, ``nc`` at the
        end of their input): it still wants the device's answer, so it stays
        a client for ``half_close`` seconds.  Not longer: a client that
        closed completely looks the same until we next write to it, and it
        must not hold the device open forever."""
        if self.outbox is None or self._half_closed is not None:
            return
        if self.server.half_close:
            self._half_closed = self.clock.callLater(self.server.half_close, self._end_half_close)
        else:
            self._end_half_close()

    def _end_half_close(self) -> None:
        self._half_closed = None
        assert self.outbox is not None
        self.outbox.finish()  # what was queued goes out, then FIN; connectionLost detaches

    def writeConnectionLost(self) -> None:
        pass  # we never shut down our sending side alone

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

    def notice(self, text: str) -> None:
        pass  # a program could take any byte for device data

    def abort(self, why: str) -> None:
        self.joined = False
        if self.outbox is not None:
            self.outbox.stopProducing()
        self.transport.abortConnection()  # type: ignore[union-attr]


class Refused(Protocol):
    """What a refused connection gets: nothing (or one line for a person),
    then the end.  Returned instead of ``None``, which would leave a TLS
    connection hanging."""

    def __init__(self, line: bytes | None, abort: bool) -> None:
        self.line = line
        self.abort = abort

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        if self.line:
            transport.write(self.line)
        if self.abort:
            transport.abortConnection()  # type: ignore[attr-defined]
        else:
            transport.loseConnection()


class ClientFactory(Factory):
    """Builds the protocol of one server for each accepted connection, once
    admission has let it in."""

    protocol_class: type[RawClient] = RawClient
    noisy = False  # no "Starting factory" lines: listeners log themselves

    def __init__(
        self, hub: PortHub, server: ServerConfig, clock: IReactorTime, admission: Admission | None = None
    ) -> None:
        self.hub = hub
        self.server = server
        self.clock = clock
        self.admission = admission if admission is not None else Admission(server)

    def buildProtocol(self, addr: Any) -> Protocol:
        try:
            self.admission.check(getattr(addr, "host", None))
        except Refusal as refusal:
            log.info(
                "Client {kind}: {peer} {proto} to {port} ({why})",
                kind=refusal.kind,
                peer=describe_peer(addr),
                proto=self.server.protocol.upper(),
                port=self.hub.name,
                why=refusal.why,
            )
            self.hub.stats.drops[refusal.kind] += 1
            line = self.refusal_line(f"port busy: {refusal.why}") if refusal.kind == "refused" else None
            # TLS: refused before the handshake, so without a byte.
            return Refused(line, abort=self.server.protocol == "ssl")
        protocol = self.protocol_class(self.hub, self.server, self.clock)
        protocol.factory = self
        self.admission.admitted(protocol)
        return protocol

    def refusal_line(self, why: str) -> bytes | None:
        """What a refused client is told: nothing, for programs."""
        return None
