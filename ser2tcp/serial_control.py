"""SerialControl: change an open serial port's line settings and modem lines.

Both device transports (Twisted's ``SerialPort`` on a descriptor, and the
threaded one for pyserial URLs) hold a pyserial object; this adapter is the
one small interface through which RFC 2217 reaches it, so neither transport
nor the TELNET code knows the other.

Devices refuse some of this: a Linux pseudo-terminal has no modem lines
(ENOTTY) and accepts neither parity nor another data size (EINVAL).  Such a
refusal is logged, the previous value stays in effect, and callers are told
the value actually in effect, never an exception.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from . import _log
from .interface import ISerialControl

log = _log.logger("serial")

#: The settings RFC 2217 can change, as pyserial attributes.
SETTINGS = ("baudrate", "bytesize", "parity", "stopbits", "xonxoff", "rtscts")
MODEM_LINES = ("cts", "dsr", "ri", "cd")
#: What pyserial opens a port with when the config says nothing.
PYSERIAL_DEFAULTS: dict[str, Any] = dict(
    baudrate=9600, bytesize=8, parity="N", stopbits=1, xonxoff=False, rtscts=False
)


@implementer(ISerialControl)
class SerialControl:
    def __init__(self, port: Any, name: str) -> None:
        self._port = port  # an open pyserial object
        self._name = name
        self.dtr = bool(getattr(port, "dtr", True))
        self.rts = bool(getattr(port, "rts", True))
        self.break_condition = False

    def settings(self) -> dict[str, Any]:
        return {key: getattr(self._port, key) for key in SETTINGS}

    def apply(self, key: str, value: Any) -> Any:
        """Set ``key`` (one of :data:`SETTINGS`); return the value in effect."""
        port = self._port
        old = getattr(port, key)
        if value == old:
            return old
        try:
            setattr(port, key, value)
        except Exception as e:
            log.warn(
                "Serial {port}: cannot set {key} to {value!r}: {why}",
                port=self._name,
                key=key,
                value=value,
                why=e,
            )
            try:
                setattr(port, key, old)
            except Exception:
                pass
        return getattr(port, key)

    def set_line(self, name: str, on: bool) -> bool:
        """Set ``dtr``, ``rts`` or ``break_condition``; return the state in effect."""
        try:
            setattr(self._port, name, on)
        except Exception as e:
            # A pty has no modem lines: keep serving, remember what was asked.
            log.info("Serial {port}: cannot set {name}: {why}", port=self._name, name=name, why=e)
        setattr(self, name, on)
        return on

    def modem_lines(self) -> dict[str, bool]:
        """CTS, DSR, RI and CD; all False where the device has none."""
        lines = {}
        for name in MODEM_LINES:
            try:
                lines[name] = bool(getattr(self._port, name))
            except Exception:
                lines[name] = False
        return lines

    def purge(self, receive: bool, transmit: bool) -> None:
        """Discard what the device sent and we did not read, and/or what we
        wrote and the device did not take."""
        for wanted, method in ((receive, "reset_input_buffer"), (transmit, "reset_output_buffer")):
            if wanted:
                try:
                    getattr(self._port, method)()
                except Exception as e:
                    log.info("Serial {port}: cannot purge: {why}", port=self._name, why=e)
