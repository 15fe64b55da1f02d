"""PortHub: the clients of one serial port and the device they share.

The hub owns the port's lifecycle (open on the first client, close after the
last, forget the device when it is lost) and both data directions:

* device -> clients: every chunk goes to every client, in order;
* clients -> device: chunks are written as they come; while the device's
  write buffer is over its threshold, reading from *all* clients pauses, so a
  fast sender against a slow baud rate is flow-controlled by TCP, not by
  dropping bytes.

It touches no sockets and no serial port: clients are :class:`IClientSession`
and the device is an :class:`ISerialLink`, so it is tested with fakes.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, cast

from twisted.internet import defer, error
from twisted.internet.interfaces import IPushProducer, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _log
from .config import PortConfig, SerialConfig
from .fastpath import immediate_writer
from .interface import IClientSession, IDeviceTap, ISerialControl, ISerialLink
from .modem import ModemWatch
from .portstats import PortStats
from .reopen import Reopener
from .scrollback import Scrollback
from .serial_control import PYSERIAL_DEFAULTS, SETTINGS

log = _log.logger("hub")


def _in_effect(control: ISerialControl | None) -> dict[str, Any] | None:
    """The settings and modem lines of an open device, to reopen it with."""
    if control is None:
        return None
    try:
        state: dict[str, Any] = dict(control.settings())
    except Exception:  # a device that is gone may not answer
        return None
    state.update(dtr=control.dtr, rts=control.rts)
    return {k: v for k, v in state.items() if k in (*SETTINGS, "dtr", "rts")}


def _send_nothing(data: bytes) -> None:
    """The deliver method of a write-only session."""


class State(enum.Enum):
    CLOSED = "closed"
    OPENING = "opening"
    OPEN = "open"
    #: The device is gone (or not there yet) and is being reopened, while
    #: its clients wait (``on_loss: hold``).
    HELD = "held"
    CLOSING = "closing"


@implementer(IPushProducer)
class _ClientGate:
    """Registered on the device transport: pauses client reading while the
    device's write buffer is full.  A separate object from the hub so that
    Twisted's producer calls cannot be confused with anything else."""

    def __init__(self, hub: PortHub) -> None:
        self._hub = hub

    def pauseProducing(self) -> None:
        self._hub._set_device_busy(True)

    def resumeProducing(self) -> None:
        self._hub._set_device_busy(False)

    def stopProducing(self) -> None:
        pass  # the device is closing: connectionLost on its protocol follows


class _DeviceProtocol(Protocol):
    """The protocol attached to the device transport: forwards to the hub."""

    def __init__(self, hub: PortHub) -> None:
        self._hub = hub
        self.dataReceived = hub.from_device  # type: ignore[method-assign]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._hub._device_closed(self, reason)


class PortHub:
    def __init__(
        self, link: ISerialLink, clock: IReactorTime | None = None, config: PortConfig | None = None
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.link = link
        self.clock: IReactorTime = clock
        config = config if config is not None else PortConfig(serial=SerialConfig(), servers=())
        self.config = config
        self.name: str = config.name or cast(str, link.name)  # a zope Attribute: untyped
        self.keep_open = config.open == "always"
        self.hold = config.on_loss == "hold"
        self.stats = PortStats()
        self.taps: list[IDeviceTap] = []
        self.scrollback = Scrollback(config.scrollback) if config.scrollback else None
        if self.scrollback is not None:
            self.taps.append(self.scrollback)
        self._reopen = Reopener(self, config.reopen_interval)
        # Settings and lines in effect when the device was lost, to open it
        # again with (RFC 2217 clients may have changed them).
        self._in_effect: dict[str, Any] | None = None
        self._discarded_held = 0
        self.state = State.CLOSED
        # session -> its deliver method; insertion-ordered, with O(1)
        # membership for the client data path.
        self.sessions: dict[IClientSession, Callable[[bytes], None]] = {}
        # session.deliver of every session, for the hot loop.  A new list on
        # every change, so a client leaving during fan-out breaks nothing.
        self._deliver: list[Callable[[bytes], None]] = []
        self._device: ITransport | None = None
        self._protocol: _DeviceProtocol | None = None
        self._device_busy = False
        self._reading = False
        self._closing_on_purpose = False
        #: Open the device again once it is closed (a reload changed it).
        self._reopen_when_closed = False
        self._backlog: list[bytes] = []
        self._waiting_closed: list[defer.Deferred[None]] = []
        self._modem = ModemWatch(self.clock, lambda: self.control)
        # Read-only sessions -> bytes of input they sent that were discarded.
        self._discarded: dict[IClientSession, int] = {}

    def start(self) -> None:
        """The daemon started: an always-open port opens its device now."""
        if self.keep_open and self.state is State.CLOSED:
            self._open()

    def retry_open(self) -> None:
        """The reopen timer fired: try the absent device again."""
        if self.state in (State.CLOSED, State.HELD):
            self._open()

    # clients

    def attach(self, session: IClientSession, access: str = "rw", replay: bool = False) -> None:
        """A client joined: it reads once the device is open and not busy.

        ``access`` "ro": what it sends is discarded (counted); "wo": it is
        sent nothing from the device.  ``replay``: it gets the scrollback
        first, in this same reactor turn, so nothing is missed or doubled."""
        if replay and self.scrollback is not None and access != "wo":
            session.deliver(self.scrollback.contents())
        self.event(f"client {session.peer} connected")
        self.stats.connections[getattr(session, "protocol", "?")] += 1
        self.sessions[session] = _send_nothing if access == "wo" else session.deliver
        if access == "ro":
            self._discarded[session] = 0
        self._deliver = [d for d in self.sessions.values() if d is not _send_nothing]
        if not self._reading:
            session.pause_reading()
        if self.state is State.CLOSED:
            self._open()

    def detach(self, session: IClientSession) -> None:
        """A client left (however).  The last one out closes the device."""
        if session not in self.sessions:
            return
        del self.sessions[session]
        self._forget_read_only(session)
        self.event(f"client {session.peer} disconnected")
        self._deliver = [d for d in self.sessions.values() if d is not _send_nothing]
        if self.sessions or self.keep_open:
            return
        if self.state is State.OPEN:
            self._close()
        elif self.state is State.HELD:
            self._reopen.stop()  # nobody waits for the device any more
            self.state = State.CLOSED

    def _forget_read_only_all(self, sessions: list[IClientSession]) -> None:
        for session in sessions:
            self._forget_read_only(session)

    def _forget_read_only(self, session: IClientSession) -> None:
        discarded = self._discarded.pop(session, 0)
        if discarded:
            log.info(
                "Client {peer}: {n} byte(s) of input discarded (read-only server)",
                peer=session.peer,
                n=discarded,
            )

    def from_client(self, session: IClientSession, data: bytes) -> None:
        if session not in self.sessions:
            return  # closed by the hub (device lost), still read while it flushes
        if session in self._discarded:
            self._discarded[session] += len(data)
            return
        self.stats.bytes_to_device += len(data)
        if _log.trace_data:
            log.debug("{session.peer} -> {port}: {data!r}", session=session, port=self.name, data=data)
        if self.state is State.OPEN:
            self._write_device(data)
        elif self.state is State.HELD:
            self._discarded_held += len(data)  # no device to take it
        else:
            # Read before the gate closed (e.g. in the same chunk as the TLS
            # handshake): keep it for the device rather than losing it.
            self._backlog.append(data)

    # device

    def from_device(self, data: bytes) -> None:
        if _log.trace_data:
            log.debug("{port} -> clients: {data!r}", port=self.name, data=data)
        self.stats.bytes_from_device += len(data)
        for tap in self.taps:
            tap.device_data(data)
        for deliver in self._deliver:
            deliver(data)

    def event(self, text: str) -> None:
        """Something happened on the port: the port log records it."""
        for tap in self.taps:
            tap.event(text)

    def _notice(self, text: str) -> None:
        """Tell the people among the clients (TELNET) what happened."""
        for session in list(self.sessions):
            session.notice(text)

    def shutdown(self, why: str = "ser2tcp is stopping") -> list[IClientSession]:
        """The daemon is stopping (or a reload removed the port): stop
        reading the device now, and close every client in order once what
        was read for it is sent.  Returns the clients, for the caller to
        abort those that have not taken their data by its deadline."""
        sessions, self.sessions = list(self.sessions), {}
        self._forget_read_only_all(sessions)
        for session in sessions:
            session.notice(why)
            session.close(why)
        self._modem.stop()
        self._deliver = []
        self._reopen.stop()
        for tap in self.taps:
            tap.close()
        if self.state in (State.OPEN, State.CLOSING):
            self._closing_on_purpose = True
            self.link.close(abort=True)
        elif self.state is State.HELD:
            self.state = State.CLOSED
        return sessions

    @property
    def control(self) -> ISerialControl | None:
        """The open device's settings and lines (RFC 2217), None when closed."""
        if self.state is State.OPEN and self._device is not None:
            return getattr(self._device, "control", None)
        return None

    def watch_modem(self, callback: Callable[[dict[str, bool]], None]) -> None:
        """Call ``callback(lines)`` whenever CTS/DSR/RI/CD change."""
        self._modem.watch(callback)

    def unwatch_modem(self, callback: Callable[[dict[str, bool]], None]) -> None:
        self._modem.unwatch(callback)

    def wait_closed(self) -> defer.Deferred[None]:
        """A Deferred that fires once the device is closed (now, if it is)."""
        if self.state is State.CLOSED:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting_closed.append(d)
        return d

    def _open(self) -> None:
        self.state = State.OPENING
        protocol = _DeviceProtocol(self)
        if self._in_effect is not None:
            d = self.link.open(protocol, self._in_effect)
        else:
            d = self.link.open(protocol)
        d.addCallbacks(self._opened, self._open_failed, callbackArgs=(protocol,))

    def _opened(self, device: ITransport, protocol: _DeviceProtocol) -> None:
        self._device = device
        self._write_device = immediate_writer(device)
        self._protocol = protocol
        self._closing_on_purpose = False
        self._device_busy = False
        self.state = State.OPEN
        self.stats.opened(getattr(self.link, "device_path", None), self.clock.seconds())
        self._reopen.succeeded()
        log.info("Serial {port} opened: {device}", port=self.name, device=self.stats.device or self.link.name)
        self.event(f"device opened: {self.stats.device or self.link.name}")
        if self._in_effect is not None:
            self._in_effect = None
            self._notice(f"serial port {self.name} is back")
            if self._discarded_held:
                log.info(
                    "Serial {port}: {n} byte(s) of client input discarded while the device was away",
                    port=self.name,
                    n=self._discarded_held,
                )
                self.stats.discarded_while_held += self._discarded_held
                self._discarded_held = 0
        device.registerProducer(_ClientGate(self), True)  # type: ignore[attr-defined]
        backlog, self._backlog = self._backlog, []
        for data in backlog:
            self._write_device(data)
        if not self.sessions and not self.keep_open:
            self._close()
            return
        self._update_reading()

    def _open_failed(self, failure: Failure) -> None:
        self.stats.device_open_failures += 1
        why = failure.getErrorMessage()
        if self.keep_open or (self.hold and self.sessions):
            # Try again while the device is absent; clients wait if held.
            self._reopen.failed(why)
            if self.hold and self.sessions:
                self.state = State.HELD
                return
        self.state = State.CLOSED
        waiting, self._waiting_closed = self._waiting_closed, []
        for d in waiting:
            d.callback(None)
        self._backlog.clear()
        sessions, self.sessions = list(self.sessions), {}
        self._forget_read_only_all(sessions)
        self._deliver = []
        if sessions or not self.keep_open:
            log.warn(
                "Serial {port}: cannot open: {why} (refusing {n} client(s))",
                port=self.name,
                why=why,
                n=len(sessions),
            )
        self.stats.drops["open_failed"] += len(sessions)
        for session in sessions:
            session.refuse(f"cannot open serial port {self.name}: {why}")

    def _close(self) -> None:
        self.state = State.CLOSING
        self._closing_on_purpose = True
        self._update_reading()
        self.link.close()

    def _device_closed(self, protocol: _DeviceProtocol, reason: Failure | None) -> None:
        if protocol is not self._protocol:
            return
        in_effect = _in_effect(self.control)
        self.link.closed()
        self._device = None
        self._protocol = None
        on_purpose, self._closing_on_purpose = self._closing_on_purpose, False
        self.state = State.CLOSED
        self.stats.closed()
        if on_purpose:
            log.info("Serial {port} closed", port=self.name)
            self.event("device closed")
        else:
            if reason is None or reason.check(error.ConnectionDone):
                why = "device hung up"
            else:
                why = reason.getErrorMessage()
            self.stats.device_losses += 1
            self.event(f"device lost: {why}")
            if self.hold and (self.sessions or self.keep_open):
                self._held(why, in_effect)
                return
            log.warn(
                "Serial {port} lost: {why} (closing {n} client(s))",
                port=self.name,
                why=why,
                n=len(self.sessions),
            )
            sessions, self.sessions = list(self.sessions), {}
            self._forget_read_only_all(sessions)
            self._deliver = []
            self.stats.drops["device_lost"] += len(sessions)
            for session in sessions:
                session.close(f"serial port {self.name} lost: {why}")
        waiting, self._waiting_closed = self._waiting_closed, []
        for d in waiting:
            d.callback(None)
        reopen, self._reopen_when_closed = self._reopen_when_closed, False
        if self.keep_open and not on_purpose:
            self._reopen.failed(why)
        elif self.sessions or reopen:
            self._open()  # clients came while the device was closing, or a reload
        else:
            # Nobody is left to want what was sent meanwhile.
            self._backlog.clear()
            self._reading = False

    def _held(self, why: str, in_effect: dict[str, Any] | None) -> None:
        """The device went away but its clients stay: reopen it with the
        settings and lines in effect, every ``reopen_interval``."""
        log.warn(
            "Serial {port} lost: {why} (holding {n} client(s) while it is reopened)",
            port=self.name,
            why=why,
            n=len(self.sessions),
        )
        self._in_effect = in_effect
        self.state = State.HELD
        self._backlog.clear()
        self._notice(f"serial port {self.name} lost: {why}; waiting for it")
        self._reopen.failed(why, quiet=True)

    # reload

    def reconfigure(self, config: PortConfig) -> list[str]:
        """A reload changed this port's own keys: apply them in place, its
        clients stay.  Returns what was done, for the reload's summary."""
        old, self.config = self.config, config
        done: list[str] = []
        if config.serial != old.serial:
            done.append(self._reconfigure_serial(old.serial, config.serial))
        self._reopen.interval = config.reopen_interval
        self.hold = config.on_loss == "hold"
        if config.scrollback != old.scrollback:
            self._resize_scrollback(config.scrollback)
            done.append("scrollback")
        if config.open != old.open:
            self.keep_open = config.open == "always"
            done.append(f"open: {config.open}")
            if self.keep_open and self.state is State.CLOSED:
                self._open()
            elif not self.keep_open and not self.sessions:
                if self.state is State.OPEN:
                    self._close()
                elif self.state is State.CLOSED:
                    self._reopen.stop()  # no longer waiting for an absent device
        return done

    def _reconfigure_serial(self, old: SerialConfig, new: SerialConfig) -> str:
        """Serial settings and lines are set on the open device; another
        device (or ``exclusive``, timeouts) means opening it again, with
        the clients kept."""
        self.link.config = new
        live = (*SETTINGS, "dsrdtr")
        if self._in_effect is not None:  # held: the device comes back with the new ones
            for key in live:
                if old.settings.get(key) != new.settings.get(key) and key in self._in_effect:
                    self._in_effect[key] = new.settings.get(key, PYSERIAL_DEFAULTS.get(key, False))
        settings_only = old.match == new.match and all(
            old.settings.get(key) == new.settings.get(key) for key in {*old.settings, *new.settings} - {*live}
        )
        if not settings_only:
            if self.state is State.OPEN:
                self._reopen_when_closed = True
                self._close()
                return "device reopened"
            return "device changed"
        control = self.control
        if control is None:
            return "serial settings changed"
        for key in live:
            if old.settings.get(key) != new.settings.get(key):
                control.apply(key, new.settings.get(key, PYSERIAL_DEFAULTS.get(key, False)))
        for line in ("dtr", "rts"):
            if old.lines.get(line) != new.lines.get(line):
                control.set_line(line, new.lines.get(line, True))
        return "serial settings applied"

    def _resize_scrollback(self, size: int) -> None:
        old = self.scrollback
        self.scrollback = Scrollback(size) if size else None
        if old is not None:
            self.taps.remove(old)
            if self.scrollback is not None:
                self.scrollback.device_data(old.contents())
        if self.scrollback is not None:
            self.taps.insert(0, self.scrollback)

    def _set_device_busy(self, busy: bool) -> None:
        if busy != self._device_busy:
            self._device_busy = busy
            self._update_reading()

    def _update_reading(self) -> None:
        # While held, clients are read (and their input discarded) so that
        # nothing they type now reaches the device when it comes back.
        reading = self.state in (State.OPEN, State.HELD) and not self._device_busy
        if reading == self._reading:
            return
        self._reading = reading
        for session in list(self.sessions):
            if reading:
                session.resume_reading()
            else:
                session.pause_reading()
