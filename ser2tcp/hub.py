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
from typing import Callable, cast

from twisted.internet import defer, error, task
from twisted.internet.interfaces import IPushProducer, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _log
from .fastpath import immediate_writer
from .interface import IClientSession, ISerialControl, ISerialLink

log = _log.logger("hub")

#: Seconds between two looks at the modem lines, while an RFC 2217 client
#: wants to hear about them.
MODEM_POLL_INTERVAL = 0.5


class State(enum.Enum):
    CLOSED = "closed"
    OPENING = "opening"
    OPEN = "open"
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
    def __init__(self, link: ISerialLink, clock: IReactorTime | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.link = link
        self.clock = clock
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
        self._backlog: list[bytes] = []
        self._waiting_closed: list[defer.Deferred[None]] = []
        self._modem_watchers: list[Callable[[dict[str, bool]], None]] = []
        self._modem_poll: task.LoopingCall | None = None
        self._modem_last: dict[str, bool] | None = None

    @property
    def name(self) -> str:
        return cast(str, self.link.name)  # a zope Attribute: untyped

    # clients

    def attach(self, session: IClientSession) -> None:
        """A client joined: it reads once the device is open and not busy."""
        self.sessions[session] = session.deliver
        self._deliver = list(self.sessions.values())
        if not self._reading:
            session.pause_reading()
        if self.state is State.CLOSED:
            self._open()

    def detach(self, session: IClientSession) -> None:
        """A client left (however).  The last one out closes the device."""
        if session not in self.sessions:
            return
        del self.sessions[session]
        self._deliver = list(self.sessions.values())
        if not self.sessions and self.state is State.OPEN:
            self._close()

    def from_client(self, session: IClientSession, data: bytes) -> None:
        if session not in self.sessions:
            return  # closed by the hub (device lost), still read while it flushes
        if _log.trace_data:
            log.debug("{session.peer} -> {port}: {data!r}", session=session, port=self.name, data=data)
        if self.state is State.OPEN:
            self._write_device(data)
        else:
            # Read before the gate closed (e.g. in the same chunk as the TLS
            # handshake): keep it for the device rather than losing it.
            self._backlog.append(data)

    # device

    def from_device(self, data: bytes) -> None:
        if _log.trace_data:
            log.debug("{port} -> clients: {data!r}", port=self.name, data=data)
        for deliver in self._deliver:
            deliver(data)

    def shutdown(self) -> None:
        """Abort every client and close the device now (daemon stopping)."""
        sessions, self.sessions = list(self.sessions), {}
        for session in sessions:
            session.abort("ser2tcp is stopping")
        self._modem_watchers.clear()
        if self._modem_poll is not None:
            self._modem_poll.stop()
            self._modem_poll = None
        self._deliver = []
        if self.state in (State.OPEN, State.CLOSING):
            self._closing_on_purpose = True
            self.link.close(abort=True)

    @property
    def control(self) -> ISerialControl | None:
        """The open device's settings and lines (RFC 2217), None when closed."""
        if self.state is State.OPEN and self._device is not None:
            return getattr(self._device, "control", None)
        return None

    def watch_modem(self, callback: Callable[[dict[str, bool]], None]) -> None:
        """Call ``callback(lines)`` whenever CTS/DSR/RI/CD change.

        Nothing notifies a change, so the lines are polled, but only while
        someone watches."""
        self._modem_watchers.append(callback)
        if self._modem_poll is None:
            self._modem_last = None
            self._modem_poll = task.LoopingCall(self._poll_modem)
            self._modem_poll.clock = self.clock
            self._modem_poll.start(MODEM_POLL_INTERVAL, now=False)

    def unwatch_modem(self, callback: Callable[[dict[str, bool]], None]) -> None:
        if callback in self._modem_watchers:
            self._modem_watchers.remove(callback)
        if not self._modem_watchers and self._modem_poll is not None:
            self._modem_poll.stop()
            self._modem_poll = None

    def _poll_modem(self) -> None:
        control = self.control
        if control is None:
            return
        lines = control.modem_lines()
        if lines != self._modem_last:
            self._modem_last = lines
            for callback in list(self._modem_watchers):
                callback(lines)

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
        d = self.link.open(protocol)
        d.addCallbacks(self._opened, self._open_failed, callbackArgs=(protocol,))

    def _opened(self, device: ITransport, protocol: _DeviceProtocol) -> None:
        self._device = device
        self._write_device = immediate_writer(device)
        self._protocol = protocol
        self._closing_on_purpose = False
        self._device_busy = False
        self.state = State.OPEN
        log.info("Serial {port} opened", port=self.name)
        device.registerProducer(_ClientGate(self), True)  # type: ignore[attr-defined]
        backlog, self._backlog = self._backlog, []
        for data in backlog:
            self._write_device(data)
        if not self.sessions:
            self._close()
            return
        self._update_reading()

    def _open_failed(self, failure: Failure) -> None:
        self.state = State.CLOSED
        waiting, self._waiting_closed = self._waiting_closed, []
        for d in waiting:
            d.callback(None)
        self._backlog.clear()
        why = failure.getErrorMessage()
        sessions, self.sessions = list(self.sessions), {}
        self._deliver = []
        log.warn(
            "Serial {port}: cannot open: {why} (refusing {n} client(s))",
            port=self.name,
            why=why,
            n=len(sessions),
        )
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
        self.link.closed()
        self._device = None
        self._protocol = None
        on_purpose, self._closing_on_purpose = self._closing_on_purpose, False
        self.state = State.CLOSED
        if on_purpose:
            log.info("Serial {port} closed", port=self.name)
        else:
            if reason is None or reason.check(error.ConnectionDone):
                why = "device hung up"
            else:
                why = reason.getErrorMessage()
            log.warn(
                "Serial {port} lost: {why} (closing {n} client(s))",
                port=self.name,
                why=why,
                n=len(self.sessions),
            )
            sessions, self.sessions = list(self.sessions), {}
            self._deliver = []
            for session in sessions:
                session.close(f"serial port {self.name} lost: {why}")
        waiting, self._waiting_closed = self._waiting_closed, []
        for d in waiting:
            d.callback(None)
        if self.sessions:
            self._open()  # clients came while the device was closing
        else:
            # Nobody is left to want what was sent meanwhile.
            self._backlog.clear()
            self._reading = False

    def _set_device_busy(self, busy: bool) -> None:
        if busy != self._device_busy:
            self._device_busy = busy
            self._update_reading()

    def _update_reading(self) -> None:
        reading = self.state is State.OPEN and not self._device_busy
        if reading == self._reading:
            return
        self._reading = reading
        for session in list(self.sessions):
            if reading:
                session.resume_reading()
            else:
                session.pause_reading()
