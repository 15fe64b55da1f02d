"""The TELNET server protocol: a plain ``telnet host port`` is a serial terminal.

On connect the server asks for character mode (it will echo, both sides
suppress go-ahead) and BINARY both ways, so every key reaches the device at
once, is not echoed locally and passes unchanged.  It never sends DO LINEMODE.

Twisted's ``telnet.Telnet`` is kept for its RFC 1143 option state machine
(agree to what we support, refuse the rest, never loop); its byte handling is
replaced by :class:`~ser2tcp.telnet_codec.TelnetDecoder`, which is
transparent for CR, LF and NUL and never raises on odd input.
"""

from __future__ import annotations

from typing import Any

from twisted.conch import telnet
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from . import _log
from .config import ServerConfig
from .hub import PortHub
from .protocols import ClientFactory, RawClient
from .rfc2217 import COM_PORT_OPTION, ComPortServer
from .telnet_codec import TelnetDecoder, escape

log = _log.logger("telnet")

BINARY, ECHO, SGA = b"\x00", b"\x01", b"\x03"
#: Options we enable on our side / accept on the client's side.
LOCAL_OPTIONS = frozenset((BINARY, ECHO, SGA))
REMOTE_OPTIONS = frozenset((BINARY, SGA))

_last_chunk: bytes | None = None
_last_escaped = b""


def _escape_shared(data: bytes) -> bytes:
    """Escape once per device chunk however many TELNET clients get it."""
    global _last_chunk, _last_escaped
    if data is not _last_chunk:
        _last_chunk, _last_escaped = data, escape(data)
    return _last_escaped


class TelnetClient(RawClient, telnet.Telnet):
    com_port: ComPortServer | None = None
    _notify_modem = False

    def __init__(self, hub: PortHub, server: ServerConfig, clock: IReactorTime) -> None:
        RawClient.__init__(self, hub, server, clock)
        telnet.Telnet.__init__(self)
        self.decoder = TelnetDecoder()
        options = (COM_PORT_OPTION,) if server.rfc2217 else ()
        self.local_options = LOCAL_OPTIONS.union(options)
        self.remote_options = REMOTE_OPTIONS.union(options)

    def ready(self) -> None:
        self.deliver = self._deliver_escaped  # type: ignore[method-assign]
        self._negotiate(self.will(ECHO))
        self._negotiate(self.will(SGA).addCallback(lambda _: self._negotiate(self.do(SGA))))
        self._negotiate(self.do(BINARY).addCallback(lambda _: self._negotiate(self.will(BINARY))))
        RawClient.ready(self)

    def _negotiate(self, d: Any) -> None:
        # A client may refuse, or leave: neither is an error here.
        d.addErrback(lambda f: None)

    def _deliver_escaped(self, data: bytes) -> None:
        self.outbox.send(_escape_shared(data))  # type: ignore[union-attr]

    def _write(self, data: bytes) -> None:
        # Negotiation replies queue behind device data, in order.
        if self.outbox is not None:
            self.outbox.send(data)

    def dataReceived(self, data: bytes) -> None:
        self.bytes_received += len(data)
        for event in self.decoder.feed(data):
            if isinstance(event, bytes):
                self.hub.from_client(self, event)
            elif event[0] == "verb":
                self.commandReceived(bytes((event[1],)), bytes((event[2],)))
                if self._notify_modem:
                    # Now that our DO/WILL 44 is on the wire (Twisted writes
                    # it after enableLocal/enableRemote returned).
                    self._notify_modem = False
                    control = self.hub.control
                    if self.com_port is not None:
                        self.com_port.modem_changed(control.modem_lines() if control else {}, force=True)
            elif event[0] == "sb":
                payload = event[1]
                if payload[:1] == COM_PORT_OPTION and self.com_port is not None:
                    self.com_port.handle(payload[1:])
            elif _log.trace_data:
                log.debug("{peer}: TELNET command 0x{cmd:02x} ignored", peer=self.peer, cmd=event[1])

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.com_port is not None:
            self.hub.unwatch_modem(self.com_port.modem_changed)
        telnet.Telnet.connectionLost(self, reason)
        RawClient.connectionLost(self, reason)

    # option policy (RFC 1143 is Twisted's)

    def enableLocal(self, option: bytes) -> bool:
        if option == COM_PORT_OPTION and option in self.local_options:
            self._start_com_port()
        return option in self.local_options

    def enableRemote(self, option: bytes) -> bool:
        if option == COM_PORT_OPTION and option in self.remote_options:
            self._start_com_port()
        return option in self.remote_options

    def _start_com_port(self) -> None:
        """The client agreed to RFC 2217: answer its commands from now on,
        and tell it the modem lines at once (pyserial's cts/dsr raise until
        it has heard them once), then whenever they change."""
        if self.com_port is not None:
            return
        assert self.server.rfc2217 is not None
        self.com_port = ComPortServer(
            self.server.rfc2217,
            control=lambda: self.hub.control,
            send=lambda payload: self.requestNegotiation(payload[:1], payload[1:]),
            peer=self.peer,
            port_name=self.hub.name,
            suspend=self._suspend,
            note=self.hub.event,
        )
        self._notify_modem = True
        self.hub.watch_modem(self.com_port.modem_changed)

    def _suspend(self, on: bool) -> None:
        # FLOWCONTROL-SUSPEND/RESUME: hold device data for this client only.
        if self.outbox is not None:
            self.outbox.hold(on)

    def disableLocal(self, option: bytes) -> None:
        if option == COM_PORT_OPTION:
            self._stop_com_port()

    def disableRemote(self, option: bytes) -> None:
        if option == COM_PORT_OPTION:
            self._stop_com_port()

    def _stop_com_port(self) -> None:
        """The client turned RFC 2217 off: stop answering and watching."""
        if self.com_port is not None:
            self.hub.unwatch_modem(self.com_port.modem_changed)
            self.com_port = None
            self._notify_modem = False

    def notice(self, text: str) -> None:
        # A client that speaks RFC 2217 is a program (pyserial): its data
        # stream must stay the device's.
        if self.com_port is None:
            self._write(telnet_line(text))

    def refuse(self, why: str) -> None:
        # People read TELNET: tell them why, in one line.
        self._write(telnet_line(why))
        RawClient.refuse(self, why)


def telnet_line(why: str) -> bytes:
    """One line for the person at a TELNET client, IAC escaped."""
    return f"ser2tcp: {why}\r\n".encode(errors="replace").replace(b"\xff", b"\xff\xff")


class TelnetFactory(ClientFactory):
    protocol_class = TelnetClient

    def refusal_line(self, why: str) -> bytes | None:
        return telnet_line(why)
