"""TELNET byte handling, free of Twisted and sockets.

ser2tcp is byte-transparent over TELNET except for IAC (0xFF): doubled on the
way out, undoubled on the way in, and every command (negotiation,
subnegotiation, NOP, BRK, AYT, ...) is taken out of the client's stream.  No
CR/LF/NUL rewriting happens in either direction, unlike
``twisted.conch.telnet``.  The decoder keeps its state between chunks, so a
command split across TCP segments is understood, and it never raises or
buffers without bound, whatever it is fed.
"""

from __future__ import annotations

from typing import Any, Union

IAC = 0xFF
DONT, DO, WONT, WILL, SB = 0xFE, 0xFD, 0xFC, 0xFB, 0xFA
SE = 0xF0
VERBS = (WILL, WONT, DO, DONT)

#: Longest subnegotiation payload kept; longer ones are consumed and cut.
MAX_SUBNEGOTIATION = 1024

_IAC_BYTE = b"\xff"

# Events the decoder emits besides data:
#   ("verb", verb, option)      IAC WILL/WONT/DO/DONT option
#   ("sb", payload)             IAC SB payload IAC SE (payload[0] is the option)
#   ("command", byte)           any other IAC command (NOP, BRK, AYT, GA, ...)
Event = Union[bytes, tuple[Any, ...]]

_DATA, _IAC, _VERB, _SB, _SB_IAC = range(5)


def escape(data: bytes) -> bytes:
    """Device data as it goes to a TELNET client: 0xFF doubled."""
    if _IAC_BYTE in data:
        return data.replace(_IAC_BYTE, b"\xff\xff")
    return data


class TelnetDecoder:
    """Splits a client's byte stream into data and TELNET commands."""

    def __init__(self) -> None:
        self._state = _DATA
        self._verb = 0
        self._sb = bytearray()
        self._sb_overflow = False

    def feed(self, data: bytes) -> list[Event]:
        """The data and commands in ``data``, in order.

        Data comes as ``bytes`` items; consecutive data is joined."""
        if self._state == _DATA and _IAC_BYTE not in data:
            return [data] if data else []  # the common case: no work per byte
        events: list[Event] = []
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            state = self._state
            if state == _DATA:
                j = data.find(_IAC_BYTE, i)
                if j < 0:
                    out += data[i:]
                    break
                out += data[i:j]
                self._state = _IAC
                i = j + 1
                continue
            byte = data[i]
            i += 1
            if state == _IAC:
                if byte == IAC:
                    out.append(IAC)
                    self._state = _DATA
                elif byte in VERBS:
                    self._verb = byte
                    self._state = _VERB
                elif byte == SB:
                    self._sb.clear()
                    self._sb_overflow = False
                    self._state = _SB
                else:  # NOP, BRK, AYT, GA, a bare SE, or anything unknown
                    self._flush(out, events)
                    events.append(("command", byte))
                    self._state = _DATA
            elif state == _VERB:
                self._flush(out, events)
                events.append(("verb", self._verb, byte))
                self._state = _DATA
            elif state == _SB:
                j = data.find(_IAC_BYTE, i - 1)
                end = n if j < 0 else j
                self._collect(data[i - 1 : end])
                i = end
                if j >= 0:
                    i = j + 1
                    self._state = _SB_IAC
            else:  # _SB_IAC
                if byte == IAC:
                    self._collect(_IAC_BYTE)
                    self._state = _SB
                elif byte == SE:
                    self._flush(out, events)
                    events.append(("sb", bytes(self._sb)))
                    self._sb.clear()
                    self._state = _DATA
                else:
                    # IAC <command> inside a subnegotiation: the peer broke
                    # the rules; end the subnegotiation and take the command.
                    self._flush(out, events)
                    events.append(("sb", bytes(self._sb)))
                    self._sb.clear()
                    self._state = _IAC
                    i -= 1
        self._flush(out, events)
        return events

    def _collect(self, chunk: bytes) -> None:
        room = MAX_SUBNEGOTIATION - len(self._sb)
        if len(chunk) > room:
            self._sb_overflow = True
            chunk = chunk[:room]
        self._sb += chunk

    @staticmethod
    def _flush(out: bytearray, events: list[Event]) -> None:
        if out:
            events.append(bytes(out))
            out.clear()
