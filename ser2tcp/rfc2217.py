"""RFC 2217 (COM-PORT-OPTION over TELNET): remote control of the serial port.

One :class:`ComPortServer` per TELNET client that agreed to option 44.  It
answers the client's subnegotiations (baud rate, data size, parity, stop
bits, flow control, BREAK, DTR, RTS, purge, masks, signature) and sends
NOTIFY-MODEMSTATE when CTS/DSR/RI/CD change.  It is pure logic: the device is
reached through :class:`~ser2tcp.interface.ISerialControl`, replies go out
through a ``send(payload)`` callable, so it is tested without sockets.

Settings belong to the serial port and are shared by all its clients.  The
server's ``settings`` policy says what a client's requests do:

* ``apply``: change the port, and answer with the value in effect;
* ``ignore``: answer with the value asked for (so pyserial opens happily)
  but change nothing: a monitoring client cannot reset a running session;
* ``reject``: change nothing and answer with the value in effect, which a
  strict client (pyserial) reports as an error.
"""

from __future__ import annotations

from typing import Any, Callable

import serial

from . import __version__, _log
from .interface import ISerialControl

log = _log.logger("rfc2217")

COM_PORT_OPTION = b"\x2c"
SERVER_OFFSET = 100  # a server's reply to command N is N + 100

SIGNATURE, SET_BAUDRATE, SET_DATASIZE, SET_PARITY, SET_STOPSIZE, SET_CONTROL = range(6)
NOTIFY_LINESTATE, NOTIFY_MODEMSTATE, FLOWCONTROL_SUSPEND, FLOWCONTROL_RESUME = 6, 7, 8, 9
SET_LINESTATE_MASK, SET_MODEMSTATE_MASK, PURGE_DATA = 10, 11, 12

PARITY_CODES = {
    serial.PARITY_NONE: 1,
    serial.PARITY_ODD: 2,
    serial.PARITY_EVEN: 3,
    serial.PARITY_MARK: 4,
    serial.PARITY_SPACE: 5,
}
STOPBITS_CODES = {serial.STOPBITS_ONE: 1, serial.STOPBITS_TWO: 2, serial.STOPBITS_ONE_POINT_FIVE: 3}
_CODE_PARITY = {v: k for k, v in PARITY_CODES.items()}
_CODE_STOPBITS = {v: k for k, v in STOPBITS_CODES.items()}

# Modem state bits (NOTIFY-MODEMSTATE)
MODEM_BITS = {"cd": 0x80, "ri": 0x40, "dsr": 0x20, "cts": 0x10}
DELTA_BITS = {"cd": 0x08, "ri": 0x04, "dsr": 0x02, "cts": 0x01}

# SET-CONTROL values: (setting, state) -> value, and the queries
_FLOW = {(False, False): 1, (True, False): 2, (False, True): 3}  # (xonxoff, rtscts)
_INBOUND_FLOW = {1: 14, 2: 15, 3: 16}


def modem_state(lines: dict[str, bool]) -> int:
    return sum(bit for name, bit in MODEM_BITS.items() if lines.get(name))


def describe_settings(settings: dict[str, Any]) -> str:
    """``115200 8N1`` (and the flow control, if any), as people write it."""
    get = settings.get
    text = f"{get('baudrate')} {get('bytesize')}{get('parity')}{get('stopbits'):g}"
    flow = [name for name in ("xonxoff", "rtscts") if settings.get(name)]
    return " ".join([text, *flow])


#: Most characters of a client's text that a log line repeats.
MAX_LOGGED_TEXT = 80


def printable(value: bytes, limit: int = MAX_LOGGED_TEXT) -> str:
    """A client's text as one short log-safe line: control characters and
    non-ASCII bytes escaped, cut at ``limit`` characters (a SIGNATURE may be
    a kilobyte of anything)."""
    text = value.decode("ascii", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ComPortServer:
    def __init__(
        self,
        policy: str,
        control: Callable[[], ISerialControl | None],
        send: Callable[[bytes], None],
        peer: str,
        port_name: str,
        suspend: Callable[[bool], None] = lambda on: None,
        note: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.policy = policy
        self._control = control
        self._send = send
        self.peer = peer
        self.port_name = port_name
        self._suspend = suspend
        self._note = note
        self.modemstate_mask = 0xFF
        self.linestate_mask = 0
        self._last_modem: int | None = None
        # What an "ignore"-policy client believes it set.
        self._pretend: dict[str, Any] = {}

    # from the client

    def handle(self, payload: bytes) -> None:
        """One ``IAC SB 44 <payload> IAC SE`` from the client."""
        if not payload:
            return
        command, value = payload[0], payload[1:]
        handler = self._HANDLERS.get(command)
        if handler is not None:
            handler(self, value)
        elif _log.trace_data:
            log.debug("{peer}: RFC 2217 command {c} ignored", peer=self.peer, c=command)

    def _reply(self, command: int, value: bytes) -> None:
        self._send(COM_PORT_OPTION + bytes((command + SERVER_OFFSET,)) + value)

    def _signature(self, value: bytes) -> None:
        if value:
            log.info("{peer}: RFC 2217 signature {sig}", peer=self.peer, sig=printable(value))
            return
        self._reply(SIGNATURE, f"ser2tcp {__version__} {self.port_name}".encode())

    def _setting(self, key: str, requested: Any) -> Any:
        """Apply ``requested`` per policy (None: a query); the value to report."""
        control = self._control()
        current = control.settings()[key] if control is not None else None
        if requested is None:
            return self._pretend.get(key, current)
        if self.policy != "apply" or control is None:
            if requested != current:
                verdict = "rejected" if self.policy == "reject" and control is not None else "ignored"
                log.info(
                    "{peer}: {port}: {key} {value!r} requested, {verdict} (policy)",
                    peer=self.peer,
                    port=self.port_name,
                    key=key,
                    value=requested,
                    verdict=verdict,
                )
            if self.policy == "reject" and control is not None:
                return current
            self._pretend[key] = requested
            return requested
        effective = control.apply(key, requested)
        if requested != current and effective == requested:
            log.info(
                "{peer} set {key} of {port} to {value!r}",
                peer=self.peer,
                key=key,
                port=self.port_name,
                value=effective,
            )
            self._note(f"settings changed by {self.peer}: {describe_settings(control.settings())}")
        return effective

    def _baudrate(self, value: bytes) -> None:
        if len(value) != 4:
            requested = None  # a query, or the one-byte Cisco form we do not map
        else:
            requested = int.from_bytes(value, "big") or None
        baud = self._setting("baudrate", requested)
        self._reply(SET_BAUDRATE, int(baud or 0).to_bytes(4, "big"))

    def _datasize(self, value: bytes) -> None:
        code = value[0] if value else 0
        size = self._setting("bytesize", code if code in serial.Serial.BYTESIZES else None)
        self._reply(SET_DATASIZE, bytes((size or 0,)))

    def _parity(self, value: bytes) -> None:
        code = value[0] if value else 0
        parity = self._setting("parity", _CODE_PARITY.get(code))
        self._reply(SET_PARITY, bytes((PARITY_CODES.get(parity, 0),)))

    def _stopsize(self, value: bytes) -> None:
        code = value[0] if value else 0
        stopbits = self._setting("stopbits", _CODE_STOPBITS.get(code))
        self._reply(SET_STOPSIZE, bytes((STOPBITS_CODES.get(stopbits, 0),)))

    def _set_control(self, value: bytes) -> None:
        code = value[0] if value else 0
        if code in (1, 2, 3, 14, 15, 16):  # flow control, outbound or inbound
            flow = code if code <= 3 else code - 13
            xonxoff = self._setting("xonxoff", flow == 2)
            rtscts = self._setting("rtscts", flow == 3)
            reply = _FLOW.get((bool(xonxoff), bool(rtscts)), 1)
            self._reply(SET_CONTROL, bytes((reply if code <= 3 else _INBOUND_FLOW[reply],)))
        elif code in (0, 13):  # flow control queries
            reply = _FLOW.get((bool(self._setting("xonxoff", None)), bool(self._setting("rtscts", None))), 1)
            self._reply(SET_CONTROL, bytes((reply if code == 0 else _INBOUND_FLOW[reply],)))
        elif 4 <= code <= 12:
            name, base = (("break_condition", 4), ("dtr", 7), ("rts", 10))[(code - 4) // 3]
            on = None if code == base else code == base + 1
            self._reply(SET_CONTROL, bytes((base + (1 if self._line(name, on) else 2),)))
        else:  # DCD/DTR/DSR flow control: not available
            reply = _FLOW.get((bool(self._setting("xonxoff", None)), bool(self._setting("rtscts", None))), 1)
            self._reply(SET_CONTROL, bytes((reply,)))

    def _line(self, name: str, on: bool | None) -> bool:
        control = self._control()
        current = bool(getattr(control, name, False)) if control is not None else False
        if on is None:
            return bool(self._pretend.get(name, current))
        if self.policy == "ignore" or control is None:
            self._pretend[name] = on
            return on
        if self.policy == "reject":
            return current
        if on != current:
            log.info(
                "{peer} set {name} of {port} {state}",
                peer=self.peer,
                name=name,
                port=self.port_name,
                state="on" if on else "off",
            )
            self._note(f"{name} {'on' if on else 'off'} by {self.peer}")
        return control.set_line(name, on)

    def _suspend_flow(self, value: bytes) -> None:
        self._suspend(True)

    def _resume_flow(self, value: bytes) -> None:
        self._suspend(False)

    def _linestate_mask(self, value: bytes) -> None:
        self.linestate_mask = value[0] if value else 0
        self._reply(SET_LINESTATE_MASK, bytes((self.linestate_mask,)))

    def _modemstate_mask(self, value: bytes) -> None:
        self.modemstate_mask = value[0] if value else 0
        self._reply(SET_MODEMSTATE_MASK, bytes((self.modemstate_mask,)))

    def _notify_linestate(self, value: bytes) -> None:
        self._reply(NOTIFY_LINESTATE, b"\x00")  # line errors are not reported

    def _notify_modemstate(self, value: bytes) -> None:
        control = self._control()
        self.modem_changed(control.modem_lines() if control is not None else {}, force=True)

    def _purge(self, value: bytes) -> None:
        code = value[0] if value else 0
        control = self._control()
        if code in (1, 2, 3) and control is not None and self.policy == "apply":
            control.purge(receive=code in (1, 3), transmit=code in (2, 3))
        self._reply(PURGE_DATA, bytes((code,)))

    _HANDLERS = {
        SIGNATURE: _signature,
        SET_BAUDRATE: _baudrate,
        SET_DATASIZE: _datasize,
        SET_PARITY: _parity,
        SET_STOPSIZE: _stopsize,
        SET_CONTROL: _set_control,
        NOTIFY_LINESTATE: _notify_linestate,
        NOTIFY_MODEMSTATE: _notify_modemstate,
        FLOWCONTROL_SUSPEND: _suspend_flow,
        FLOWCONTROL_RESUME: _resume_flow,
        SET_LINESTATE_MASK: _linestate_mask,
        SET_MODEMSTATE_MASK: _modemstate_mask,
        PURGE_DATA: _purge,
    }

    # from the device

    def modem_changed(self, lines: dict[str, bool], force: bool = False) -> None:
        """Send NOTIFY-MODEMSTATE if the masked state changed (or ``force``)."""
        state = modem_state(lines)
        previous = self._last_modem
        deltas = 0
        if previous is not None:
            for name, bit in MODEM_BITS.items():
                if (state ^ previous) & bit:
                    deltas |= DELTA_BITS[name]
        self._last_modem = state
        value = (state | deltas) & self.modemstate_mask
        if force or (deltas and value):
            self._reply(NOTIFY_MODEMSTATE, bytes((value,)))
