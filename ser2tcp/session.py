"""What every kind of client does as a session of a port's hub, whatever
carries its bytes (a socket, TLS, a WebSocket): its identity and counters,
joining and leaving the port, being waited for, being cut off."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer

from . import _log
from .interface import IClientSession

if TYPE_CHECKING:
    from .admission import Admission
    from .config import ServerConfig
    from .hub import PortHub
    from .outbox import Outbox

log = _log.logger("client")

#: Client ids, unique in the daemon (all protocols).
client_ids = itertools.count(1)


class SessionLife:
    """Mixed into each client protocol; the protocol sets ``hub``,
    ``server``, ``peer`` and ``outbox`` and says which admission counts it."""

    hub: PortHub
    server: ServerConfig
    peer: Any  # how logs name it: "127.0.0.1:4242 TCP"
    outbox: Outbox | None = None
    started = False
    #: disconnect() was called: it is on its way out.
    leaving = False
    joined = False
    gone = False

    def start_session(self, now: float) -> None:
        #: How status and DELETE /api/clients name it.
        self.id = next(client_ids)
        self.started = True
        self.protocol = self.server.protocol
        self.connected_at = now
        self.bytes_received = 0
        self._gone_waiters: list[defer.Deferred[None]] = []

    def as_session(self) -> IClientSession:
        """This client as the hub knows it (each subclass declares it)."""
        return cast(IClientSession, self)

    def admission(self) -> Admission | None:
        """The admission that counts this client (None: none does)."""
        return None

    def join(self) -> None:
        """Become a session of the hub: from now on device data flows."""
        self.joined = True
        self.hub.attach(self.as_session(), self.server.access, self.server.replay)
        admission = self.admission()
        if admission is not None:
            admission.joined(self)
        if _log.info:
            n = len(self.hub.sessions)
            log.info(
                "Client connected: {peer} to {port} ({n} client{s})",
                peer=self.peer,
                port=self.hub.name,
                n=n,
                s="" if n == 1 else "s",
            )

    def leave(self) -> None:
        """The connection is closed (however): let go of everything."""
        admission = self.admission()
        if admission is not None:
            admission.released(self)
        if self.outbox is not None:
            self.outbox.stopProducing()
        if self.joined:
            self.hub.detach(self.as_session())
        if _log.info:
            log.info("Client disconnected: {peer}", peer=self.peer)
        self.gone = True
        waiters, self._gone_waiters = self._gone_waiters, []
        for d in waiters:
            d.callback(None)

    def when_gone(self) -> defer.Deferred[None]:
        if self.gone:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._gone_waiters.append(d)
        return d

    def disconnect(self, why: str) -> None:
        """End this session on purpose (another client took its place, an
        operator over HTTP): leave the port at once, tell a person why,
        close after flushing.  Once: a second request finds it leaving."""
        if self.leaving:
            return
        self.leaving = True
        admission = self.admission()
        if admission is not None:
            admission.released(self)  # no longer listed nor counted
        if self.joined:
            self.hub.detach(self.as_session())
        self.hub.stats.drops["kicked"] += 1
        if _log.info:
            log.info("Client disconnected: {peer}: {why}", peer=self.peer, why=why)
        self.refuse(why)

    def refuse(self, why: str) -> None:
        raise NotImplementedError

    def dropped(self, why: str) -> None:
        """Its outbox cut it off (send_timeout, buffer_limit)."""
        if self.outbox is not None and self.outbox.drop_reason:
            self.hub.stats.drops[self.outbox.drop_reason] += 1
        log.info("Client dropped: {peer}: {why}", peer=self.peer, why=why)
