"""WebSocket clients: a browser terminal is one more session of a port.

Built on ``autobahn``.  A ``websocket`` server has no address of its own:
every HTTP server serves it at ``/ws/<endpoint>``, behind the same logins,
tokens, TLS and allow/deny as the rest of the HTTP side.  A client gets
every device byte in order as binary messages, through its own
:class:`~ser2tcp.outbox.Outbox` (so ``send_timeout`` and ``buffer_limit``
cut off a stalled tab), and what it sends goes to the device:

* binary messages: raw bytes, unchanged;
* text messages: UTF-8 bytes, unchanged, except a JSON object with a
  ``"control"`` key, which is a control (BREAK, DTR, RTS, baud rate; see
  :meth:`WsSession.control`), applied per the server's ``settings`` policy.

The server sends text messages too: the port's state on open and after a
change (``{"port": ..., "settings": ...}``), and notices for people
(``{"notice": "serial port lab1 lost: ..."}``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from . import _log
from .admission import Admission, Refusal
from .config import ServerConfig
from .hub import PortHub
from .interface import IClientSession
from .outbox import Outbox
from .rfc2217 import describe_settings
from .session import SessionLife

log = _log.logger("websocket")

#: Largest message a client may send (a paste is split into many by xterm).
MAX_MESSAGE = 64 * 1024
#: Longest BREAK or line pulse a client may ask for, in milliseconds.
MAX_PULSE_MS = 5000


class _Frames:
    """What the Outbox writes to: device data as binary messages, flow
    control and closing from the TCP connection underneath."""

    def __init__(self, session: WsSession) -> None:
        self.session = session
        self.tcp: Any = session.transport

    def write(self, data: bytes) -> None:
        self.session.sendMessage(data, isBinary=True)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.tcp.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.tcp.unregisterProducer()

    def loseConnection(self) -> None:
        self.session.sendClose(1000)

    def abortConnection(self) -> None:
        self.tcp.abortConnection()


@implementer(IClientSession)
class WsSession(SessionLife, WebSocketServerProtocol):  # type: ignore[misc]  # autobahn's bases differ
    factory: WsFactory

    def __init__(self) -> None:
        super().__init__()
        self.user: str | None = None
        self._admitted = False
        self._shown_state: str | None = None

    def tcp(self) -> Any:
        """The TCP connection under the WebSocket."""
        return self.transport

    # autobahn's callbacks

    def onConnect(self, request: Any) -> None:
        factory = self.factory
        address = self.tcp().getPeer()
        host = getattr(address, "host", "?")
        shown = f"[{host}]" if ":" in host else host
        self.peer = f"{shown}:{getattr(address, 'port', '?')} WEBSOCKET"
        self.hub, self.server = factory.hub, factory.server
        self.start_session(factory.clock.seconds())
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
            # A page of another site may not use the user's credentials here.
            log.info(
                "Client refused: {peer} (origin {origin} is another site)", peer=self.peer, origin=origin
            )
            raise ConnectionDeny(403, "origin not allowed")
        try:
            factory.admission.check(host)
        except Refusal as refusal:
            factory.hub.stats.drops[refusal.kind] += 1
            log.info(
                "Client {kind}: {peer} to {port} ({why})",
                kind=refusal.kind,
                peer=self.peer,
                port=factory.hub.name,
                why=refusal.why,
            )
            raise ConnectionDeny(503, f"port busy: {refusal.why}") from None
        factory.admission.admitted(self)
        self._admitted = True
        if self.user and _log.info:
            log.info("Client {peer}: authenticated as {user}", peer=self.peer, user=self.user)

    def onOpen(self) -> None:
        factory = self.factory
        self.outbox = Outbox(
            _Frames(self),  # type: ignore[arg-type]
            factory.clock,
            factory.server.send_timeout,
            factory.server.buffer_limit,
            self.dropped,
        )
        self.tcp().registerProducer(self.outbox, True)
        self.send_port_state()
        self.join()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.bytes_received += len(payload)
        if not isBinary and payload[:1] == b"{":
            try:
                message = json.loads(payload)
            except ValueError:
                message = None
            if isinstance(message, dict) and "control" in message:
                self.control(message)
                return
        self.factory.hub.from_client(self, payload)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if self.started:  # it got as far as onConnect
            self.leave()

    def admission(self) -> Admission | None:
        return self.factory.admission if self._admitted else None

    # controls

    def control(self, message: dict[str, Any]) -> None:
        """``{"control": "break", "ms": 250}``, ``{"control": "dtr", "value":
        false}`` (or ``rts``), ``{"control": "pulse", "line": "dtr", "ms":
        100}``, ``{"control": "baudrate", "value": 115200}``."""
        server, hub = self.factory.server, self.factory.hub
        what = message.get("control")
        if server.access == "ro" or server.settings != "apply":
            verdict = "ignored" if server.access == "ro" or server.settings == "ignore" else "rejected"
            log.info(
                "Client {peer}: control {what} {verdict} (server policy)",
                peer=self.peer,
                what=what,
                verdict=verdict,
            )
            if verdict == "rejected":
                self._send_json({"error": f"control {what} rejected by the server"})
            return
        control = hub.control
        if control is None:
            self._send_json({"error": "the device is not open"})
            return
        ms = message.get("ms", 250)
        ms = (
            min(max(int(ms), 1), MAX_PULSE_MS)
            if isinstance(ms, (int, float)) and not isinstance(ms, bool)
            else 250
        )
        value = message.get("value")
        if what == "break":
            control.set_line("break_condition", True)
            self.factory.clock.callLater(ms / 1000, _set_line, hub, "break_condition", False)
        elif what in ("dtr", "rts") and isinstance(value, bool):
            control.set_line(what, value)
            hub.event(f"{what} {'on' if value else 'off'} by {self.peer}")
        elif what == "pulse" and message.get("line") in ("dtr", "rts"):
            line = message["line"]
            control.set_line(line, False)
            self.factory.clock.callLater(ms / 1000, _set_line, hub, line, True)
            hub.event(f"{line} pulsed by {self.peer}")
        elif (
            what == "baudrate"
            and isinstance(value, int)
            and not isinstance(value, bool)
            and 0 < value < 2**31
        ):
            control.apply("baudrate", value)
            hub.event(f"settings changed by {self.peer}: {describe_settings(control.settings())}")
        else:
            self._send_json({"error": f"unknown control {json.dumps(message)[:80]}"})
            return
        log.info("Client {peer}: {what}", peer=self.peer, what=json.dumps(message)[:120])
        for session in list(hub.sessions):
            if isinstance(session, WsSession):
                session.send_port_state()

    def send_port_state(self) -> None:
        factory = self.factory
        hub = factory.hub
        control = hub.control
        settings = None
        if control is not None:
            settings = {**control.settings(), "dtr": control.dtr, "rts": control.rts}
        self._shown_state = hub.state.value
        self._send_json(
            {
                "port": hub.name,
                "state": hub.state.value,
                "access": factory.server.access,
                "controls": factory.server.settings if factory.server.access != "ro" else "none",
                "settings": settings,
            }
        )

    def _send_json(self, message: dict[str, Any]) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(json.dumps(message).encode(), isBinary=False)

    # IClientSession

    def deliver(self, data: bytes) -> None:
        assert self.outbox is not None
        self.outbox.send(data)

    def pause_reading(self) -> None:
        self.tcp().pauseProducing()

    def resume_reading(self) -> None:
        self.tcp().resumeProducing()
        # The hub resumes reading once the device is open: the page's
        # state line follows.
        if self._shown_state != self.factory.hub.state.value:
            self.send_port_state()

    def close(self, why: str) -> None:
        if self.outbox is not None:
            self.outbox.finish()

    def refuse(self, why: str) -> None:
        self.notice(why)
        self.close(why)

    def abort(self, why: str) -> None:
        if self.outbox is not None:
            self.outbox.stopProducing()
        self.tcp().abortConnection()

    def notice(self, text: str) -> None:
        self._send_json({"notice": text})


def _set_line(hub: PortHub, line: str, on: bool) -> None:
    control = hub.control
    if control is not None:
        control.set_line(line, on)


class WsFactory(WebSocketServerFactory):
    protocol = WsSession  # type: ignore[assignment]  # a protocol class is such a callable
    #: Who the HTTP request that is becoming a WebSocket was authenticated as.
    next_user: str | None = None

    def __init__(self, hub: PortHub, server: ServerConfig, clock: IReactorTime, admission: Admission) -> None:
        super().__init__()
        self.hub = hub
        self.server = server
        self.clock = clock
        self.admission = admission
        self.setProtocolOptions(
            maxMessagePayloadSize=MAX_MESSAGE,
            maxFramePayloadSize=MAX_MESSAGE,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=1,
            autoPingInterval=30,
            autoPingTimeout=30,
        )

    def buildProtocol(self, addr: Any) -> Any:
        session: Any = super().buildProtocol(addr)
        session.user, self.next_user = self.next_user, None
        return session


class WsResource(WebSocketResource):
    """``/ws/<endpoint>``: hands the HTTP connection over to a WsSession."""

    def __init__(self, factory: WsFactory) -> None:
        super().__init__(factory)
        self.ws_factory = factory

    def render(self, request: Any) -> Any:
        self.ws_factory.next_user = getattr(request, "ser2tcp_user", None)
        transport = request.channel.transport
        if transport is not None and getattr(transport, "producer", None) is request.channel:
            # The HTTP channel is the connection's producer; the session's
            # outbox takes its place.
            transport.unregisterProducer()
        return super().render(request)
