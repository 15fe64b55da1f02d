"""The zope Interfaces that keep ser2tcp's core independent of sockets.

The hub (one per serial port) speaks to clients only through
:class:`IClientSession`, whatever their protocol (raw TCP, TELNET, TLS, Unix
socket), and to the device only through :class:`ISerialLink`.  That is what
lets the core be tested with plain fakes and a ``task.Clock``.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface


class IClientSession(Interface):
    """One connected client, as the hub of its serial port sees it."""

    peer = Attribute("str: how logs name this client, e.g. '127.0.0.1:4242 TCP'")
    gone = Attribute("bool: the connection is closed")

    def deliver(data: bytes) -> None:
        """Send bytes read from the device to this client (in order, never dropped)."""

    def pause_reading() -> None:
        """Stop reading from this client (the device is busy or not open yet).

        Must be idempotent: the hub calls it whenever its gate closes."""

    def resume_reading() -> None:
        """Read from this client again.  Idempotent."""

    def close(why: str) -> None:
        """Close after flushing what was delivered (device lost)."""

    def refuse(why: str) -> None:
        """Close because the device could not be opened.

        Programs must get no byte that could pass for device data; a protocol
        used by people (TELNET) may send one line saying ``why``."""

    def abort(why: str) -> None:
        """Close at once, discarding anything queued (shutdown)."""

    def when_gone() -> object:
        """A Deferred that fires once the connection is closed (now, if it is)."""

    def notice(text: str) -> None:
        """Tell a person what happened to the port (device lost, back):
        TELNET clients get one line; programs get nothing."""


class ISerialLink(Interface):
    """Opens and closes one serial device on behalf of its hub."""

    name = Attribute("str: the device as configured, for logs")
    config = Attribute("SerialConfig: what the next open uses (a reload replaces it)")

    def open(protocol, in_effect=None):  # type: ignore[no-untyped-def]
        """Resolve the device and open it with ``protocol`` attached.

        ``in_effect``: settings and lines (``dtr``, ``rts``) to open it with
        instead of the configured ones: those in effect when it was lost.

        Returns a Deferred firing with the device transport, or failing with
        an exception whose text says why the device could not be opened."""

    def close(abort: bool = False) -> None:
        """Close the open device: flush pending writes first unless ``abort``.

        The device protocol's ``connectionLost`` tells when it is closed."""

    def closed() -> None:
        """Told by the hub once the device is closed, however that happened."""


class ISerialControl(Interface):
    """Line settings and modem lines of an open device (RFC 2217).

    Every method returns what is in effect; none raises because the device
    refused (a pseudo-terminal has no modem lines)."""

    dtr = Attribute("bool: DTR as last set")
    rts = Attribute("bool: RTS as last set")
    break_condition = Attribute("bool: BREAK as last set")

    def settings() -> dict[str, Any]:
        """baudrate, bytesize, parity, stopbits, xonxoff, rtscts."""

    def apply(key: str, value: object) -> object:
        """Change one setting; return the value in effect afterwards."""

    def set_line(name: str, on: bool) -> bool:
        """Set dtr, rts or break_condition."""

    def modem_lines() -> dict[str, bool]:
        """cts, dsr, ri, cd as booleans."""

    def purge(receive: bool, transmit: bool) -> None:
        """Discard device input and/or output not yet transferred."""


class IDeviceTap(Interface):
    """A subscriber to a port's device data that is not a client: a port log,
    the scrollback.  No flow control toward it: it must never block the data
    path nor be a reason to pause the device."""

    def device_data(data: bytes) -> None:
        """Bytes the device sent, in order.  Never raises."""

    def event(text: str) -> None:
        """Something happened on the port ("device opened", "client ... connected")."""

    def close() -> None:
        """The port stops: release what is held."""
