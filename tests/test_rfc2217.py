"""RFC 2217 (COM-PORT-OPTION, TELNET option 44) on TELNET servers.

* :class:`ComPortServer` alone, on a fake :class:`ISerialControl`: every
  command, the exact reply bytes, the three settings policies, the logs;
* the TELNET client protocol with a StringTransport and a real
  :class:`PortHub` on a fake device, under a ``task.Clock``: option
  negotiation, IAC escaping inside subnegotiations, NOTIFY-MODEMSTATE and the
  modem-line polling that exists only while somebody asked for it;
* the config keys;
* the real daemon on a pty (and on ``loop://``) driven by pyserial's own,
  unmodified ``rfc2217://`` client, with termios telling what reached the
  device.
"""

from __future__ import annotations

import socket
import termios
import time
import warnings
from typing import Any, Callable

import serial
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ser2tcp import __version__
from ser2tcp.config import ConfigError, ServerConfig, parse_config
from ser2tcp.hub import PortHub
from ser2tcp.interface import ISerialControl
from ser2tcp.modem import MODEM_POLL_INTERVAL
from ser2tcp.protocols import RawClient
from ser2tcp.rfc2217 import ComPortServer
from ser2tcp.serial_control import SerialControl
from ser2tcp.telnet import TelnetClient
from tests.helpers import (
    Case,
    Pty,
    free_port,
    port_config,
    port_name,
    recv_exactly,
    tcp_server,
    ticks,
    wait_until,
)
from tests.proto_helpers import InstantLink
from tests.test_serial_control import LogCapture, opened_fake

IAC, DONT, DO, WONT, WILL, SB, SE = 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0xFA, 0xF0
COM = 0x2C
ALL_BYTES = bytes(range(256))
PEER = "10.0.0.7:4242 TELNET"
PORT_NAME = "/dev/ttyFAKE0"

# client commands
SIGNATURE, BAUD, DATASIZE, PARITY, STOPSIZE, CONTROL = range(6)
LINESTATE, MODEMSTATE, SUSPEND, RESUME, LINESTATE_MASK, MODEMSTATE_MASK, PURGE = range(6, 13)


def reply(command: int, value: bytes = b"") -> bytes:
    """What the server sends for client ``command``: 0x2C, command + 100, value."""
    return bytes((COM, command + 100)) + value


def baud(rate: int) -> bytes:
    return rate.to_bytes(4, "big")


def sb(payload: bytes) -> bytes:
    """``IAC SB <payload> IAC SE`` with IAC doubled inside."""
    return bytes((IAC, SB)) + payload.replace(b"\xff", b"\xff\xff") + bytes((IAC, SE))


def com(command: int, value: bytes = b"") -> bytes:
    """A client's COM-PORT-OPTION subnegotiation on the wire."""
    return sb(bytes((COM, command)) + value)


def parse_telnet(wire: bytes) -> tuple[list[tuple[Any, ...]], bytes, int]:
    """A server's TELNET stream as (commands, data, bytes used).

    Commands are ``("verb", verb, option)``, ``("sb", payload)`` (IAC IAC
    undone) or ``("cmd", byte)``; an incomplete trailing command is left."""
    events: list[tuple[Any, ...]] = []
    data = bytearray()
    i, n = 0, len(wire)
    while i < n:
        if wire[i] != IAC:
            data.append(wire[i])
            i += 1
            continue
        if i + 1 >= n:
            break
        c = wire[i + 1]
        if c == IAC:
            data.append(IAC)
            i += 2
        elif c in (WILL, WONT, DO, DONT):
            if i + 2 >= n:
                break
            events.append(("verb", c, wire[i + 2]))
            i += 3
        elif c == SB:
            payload = bytearray()
            j = i + 2
            end = None
            while j < n:
                if wire[j] == IAC:
                    if j + 1 >= n:
                        break
                    if wire[j + 1] == IAC:
                        payload.append(IAC)
                        j += 2
                        continue
                    if wire[j + 1] == SE:
                        end = j + 2
                        break
                    raise AssertionError(f"IAC {wire[j + 1]:#x} inside a subnegotiation: {wire!r}")
                payload.append(wire[j])
                j += 1
            if end is None:
                break
            events.append(("sb", bytes(payload)))
            i = end
        else:
            events.append(("cmd", c))
            i += 2
    return events, bytes(data), i


def notifications(events: list[tuple[Any, ...]]) -> list[int]:
    """The NOTIFY-MODEMSTATE values among ``events``."""
    return [e[1][2] for e in events if e[0] == "sb" and e[1][:2] == reply(MODEMSTATE)]


@implementer(ISerialControl)
class FakeControl:
    """An open device's settings and lines, as ComPortServer sees them.

    ``refuse`` holds settings the device keeps whatever is asked (a pty's
    parity and data size)."""

    def __init__(self, refuse: tuple[str, ...] = (), **settings: Any) -> None:
        self.values: dict[str, Any] = {
            "baudrate": 9600,
            "bytesize": 8,
            "parity": "N",
            "stopbits": 1,
            "xonxoff": False,
            "rtscts": False,
            **settings,
        }
        self.refuse = set(refuse)
        self.dtr = True
        self.rts = True
        self.break_condition = False
        self.lines = {"cts": False, "dsr": False, "ri": False, "cd": False}
        self.applied: list[tuple[str, Any]] = []
        self.set_lines: list[tuple[str, bool]] = []
        self.purged: list[tuple[bool, bool]] = []

    def settings(self) -> dict[str, Any]:
        return dict(self.values)

    def apply(self, key: str, value: Any) -> Any:
        self.applied.append((key, value))
        if key not in self.refuse:
            self.values[key] = value
        return self.values[key]

    def set_line(self, name: str, on: bool) -> bool:
        self.set_lines.append((name, on))
        setattr(self, name, on)
        return on

    def modem_lines(self) -> dict[str, bool]:
        return dict(self.lines)

    def purge(self, receive: bool, transmit: bool) -> None:
        self.purged.append((receive, transmit))


class ServerCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.control: FakeControl | None = FakeControl()
        self.sent: list[bytes] = []
        self.suspended: list[bool] = []
        self.logs = LogCapture(self)

    def server(self, policy: str = "apply", peer: str = PEER) -> ComPortServer:
        return ComPortServer(
            policy,
            control=lambda: self.control,
            send=self.sent.append,
            peer=peer,
            port_name=PORT_NAME,
            suspend=self.suspended.append,
        )

    def exchange(self, server: ComPortServer, command: int, value: bytes = b"") -> list[bytes]:
        """What the server sends for one client command."""
        del self.sent[:]
        server.handle(bytes((command,)) + value)
        return list(self.sent)


class CommandTests(ServerCase):
    def test_fake_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ISerialControl, FakeControl()))

    def test_changes_are_noted_for_the_port_log(self) -> None:
        notes: list[str] = []
        s = ComPortServer("apply", lambda: self.control, self.sent.append, PEER, PORT_NAME, note=notes.append)
        self.exchange(s, BAUD, baud(115200))
        self.exchange(s, BAUD, baud(115200))  # no change, no note
        self.exchange(s, CONTROL, b"\x09")  # DTR off
        self.assertEqual(notes, [f"settings changed by {PEER}: 115200 8N1", f"dtr off by {PEER}"])

    def test_set_baudrate(self) -> None:
        s = self.server()
        self.assertEqual(self.exchange(s, BAUD, baud(57600)), [reply(BAUD, baud(57600))])
        self.assertEqual(self.control.values["baudrate"], 57600)
        self.assertEqual(self.exchange(s, BAUD, baud(0)), [reply(BAUD, baud(57600))])
        self.assertEqual(self.exchange(s, BAUD, baud(300)), [reply(BAUD, b"\x00\x00\x01\x2c")])
        self.assertEqual(self.control.values["baudrate"], 300)

    def test_baudrate_query_reports_the_device(self) -> None:
        self.control.values["baudrate"] = 115200
        self.assertEqual(self.exchange(self.server(), BAUD, baud(0)), [reply(BAUD, baud(115200))])
        self.assertEqual(self.control.applied, [])

    def test_set_datasize(self) -> None:
        s = self.server()
        for size in (5, 6, 7, 8):
            self.assertEqual(self.exchange(s, DATASIZE, bytes((size,))), [reply(DATASIZE, bytes((size,)))])
            self.assertEqual(self.control.values["bytesize"], size)
        self.assertEqual(self.exchange(s, DATASIZE, b"\x00"), [reply(DATASIZE, b"\x08")])
        # not a data size: answered with the one in effect
        self.assertEqual(self.exchange(s, DATASIZE, b"\x09"), [reply(DATASIZE, b"\x08")])
        self.assertEqual(self.control.values["bytesize"], 8)

    def test_set_parity(self) -> None:
        s = self.server()
        for code, parity in [(2, "O"), (3, "E"), (4, "M"), (5, "S"), (1, "N")]:
            self.assertEqual(self.exchange(s, PARITY, bytes((code,))), [reply(PARITY, bytes((code,)))])
            self.assertEqual(self.control.values["parity"], parity)
        self.control.values["parity"] = "E"
        self.assertEqual(self.exchange(s, PARITY, b"\x00"), [reply(PARITY, b"\x03")])
        self.assertEqual(self.exchange(s, PARITY, b"\x09"), [reply(PARITY, b"\x03")])

    def test_set_stopsize(self) -> None:
        s = self.server()
        for code, stopbits in [(2, 2), (3, 1.5), (1, 1)]:
            self.assertEqual(self.exchange(s, STOPSIZE, bytes((code,))), [reply(STOPSIZE, bytes((code,)))])
            self.assertEqual(self.control.values["stopbits"], stopbits)
        self.control.values["stopbits"] = 2
        self.assertEqual(self.exchange(s, STOPSIZE, b"\x00"), [reply(STOPSIZE, b"\x02")])

    def test_refused_setting_answers_the_value_in_effect(self) -> None:
        # A pty refuses parity and data size: pyserial then says "remote rejected value".
        self.control = FakeControl(refuse=("parity", "bytesize"))
        s = self.server()
        self.assertEqual(self.exchange(s, PARITY, b"\x03"), [reply(PARITY, b"\x01")])
        self.assertEqual(self.exchange(s, DATASIZE, b"\x07"), [reply(DATASIZE, b"\x08")])
        self.assertEqual(self.control.applied, [("parity", "E"), ("bytesize", 7)])
        self.assertNotIn("set parity", self.logs.text())
        # still serving
        self.assertEqual(self.exchange(s, BAUD, baud(19200)), [reply(BAUD, baud(19200))])

    def test_flow_control(self) -> None:
        s = self.server()
        c = self.control
        self.assertEqual(self.exchange(s, CONTROL, b"\x02"), [reply(CONTROL, b"\x02")])
        self.assertEqual((c.values["xonxoff"], c.values["rtscts"]), (True, False))
        self.assertEqual(self.exchange(s, CONTROL, b"\x00"), [reply(CONTROL, b"\x02")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x03"), [reply(CONTROL, b"\x03")])
        self.assertEqual((c.values["xonxoff"], c.values["rtscts"]), (False, True))
        self.assertEqual(self.exchange(s, CONTROL, b"\x00"), [reply(CONTROL, b"\x03")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x0d"), [reply(CONTROL, b"\x10")])  # inbound query
        self.assertEqual(self.exchange(s, CONTROL, b"\x01"), [reply(CONTROL, b"\x01")])
        self.assertEqual((c.values["xonxoff"], c.values["rtscts"]), (False, False))
        self.assertEqual(self.exchange(s, CONTROL, b"\x00"), [reply(CONTROL, b"\x01")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x0d"), [reply(CONTROL, b"\x0e")])

    def test_inbound_flow_control(self) -> None:
        s = self.server()
        c = self.control
        self.assertEqual(self.exchange(s, CONTROL, b"\x0f"), [reply(CONTROL, b"\x0f")])
        self.assertEqual((c.values["xonxoff"], c.values["rtscts"]), (True, False))
        self.assertEqual(self.exchange(s, CONTROL, b"\x10"), [reply(CONTROL, b"\x10")])
        self.assertEqual((c.values["xonxoff"], c.values["rtscts"]), (False, True))
        self.assertEqual(self.exchange(s, CONTROL, b"\x0e"), [reply(CONTROL, b"\x0e")])
        self.assertEqual((c.values["xonxoff"], c.values["rtscts"]), (False, False))

    def test_break(self) -> None:
        s = self.server()
        self.assertEqual(self.exchange(s, CONTROL, b"\x04"), [reply(CONTROL, b"\x06")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x05"), [reply(CONTROL, b"\x05")])
        self.assertTrue(self.control.break_condition)
        self.assertEqual(self.exchange(s, CONTROL, b"\x04"), [reply(CONTROL, b"\x05")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x06"), [reply(CONTROL, b"\x06")])
        self.assertFalse(self.control.break_condition)
        self.assertEqual(self.control.set_lines, [("break_condition", True), ("break_condition", False)])

    def test_dtr(self) -> None:
        s = self.server()
        self.assertEqual(self.exchange(s, CONTROL, b"\x07"), [reply(CONTROL, b"\x08")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x09"), [reply(CONTROL, b"\x09")])
        self.assertFalse(self.control.dtr)
        self.assertEqual(self.exchange(s, CONTROL, b"\x07"), [reply(CONTROL, b"\x09")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x08"), [reply(CONTROL, b"\x08")])
        self.assertTrue(self.control.dtr)
        self.assertEqual(self.control.set_lines, [("dtr", False), ("dtr", True)])

    def test_rts(self) -> None:
        s = self.server()
        self.assertEqual(self.exchange(s, CONTROL, b"\x0a"), [reply(CONTROL, b"\x0b")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x0c"), [reply(CONTROL, b"\x0c")])
        self.assertFalse(self.control.rts)
        self.assertEqual(self.exchange(s, CONTROL, b"\x0a"), [reply(CONTROL, b"\x0c")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x0b"), [reply(CONTROL, b"\x0b")])
        self.assertTrue(self.control.rts)
        self.assertEqual(self.control.set_lines, [("rts", False), ("rts", True)])

    def test_purge(self) -> None:
        s = self.server()
        for code, purged in [(1, (True, False)), (2, (False, True)), (3, (True, True))]:
            self.assertEqual(self.exchange(s, PURGE, bytes((code,))), [reply(PURGE, bytes((code,)))])
            self.assertEqual(self.control.purged[-1], purged)
        self.assertEqual(len(self.control.purged), 3)

    def test_masks_acknowledged(self) -> None:
        s = self.server()
        self.assertEqual(self.exchange(s, LINESTATE_MASK, b"\x1f"), [reply(LINESTATE_MASK, b"\x1f")])
        self.assertEqual(self.exchange(s, MODEMSTATE_MASK, b"\x33"), [reply(MODEMSTATE_MASK, b"\x33")])

    def test_signature(self) -> None:
        (sent,) = self.exchange(self.server(), SIGNATURE)
        self.assertEqual(sent[:2], reply(SIGNATURE))
        self.assertIn(b"ser2tcp", sent[2:])
        self.assertIn(__version__.encode(), sent[2:])

    def test_client_signature_is_logged_not_answered(self) -> None:
        self.assertEqual(self.exchange(self.server(), SIGNATURE, b"pyserial-test"), [])
        self.assertIn(PEER, self.logs.text(LogLevel.info))
        self.assertIn("pyserial-test", self.logs.text(LogLevel.info))

    def test_long_signature_is_cut_and_escaped(self) -> None:
        signature = b"evil\r\nW: forged line\x1b[2J" + b"A" * 1000 + b"\xff"
        self.assertEqual(self.exchange(self.server(), SIGNATURE, signature), [])
        (line,) = [line for line in self.logs.text(LogLevel.info).splitlines() if "signature" in line]
        self.assertIn(r"evil\x0d\x0aW: forged line\x1b[2J", line)
        self.assertLess(len(line), 200)
        self.assertTrue(line.endswith("..."), line)

    def test_suspend_and_resume(self) -> None:
        s = self.server()
        self.assertEqual(self.exchange(s, SUSPEND), [])
        self.assertEqual(self.suspended, [True])
        self.assertEqual(self.exchange(s, RESUME), [])
        self.assertEqual(self.suspended, [True, False])

    def test_modemstate_request_is_answered_now(self) -> None:
        # pyserial's ?poll_modem sends an empty NOTIFY-MODEMSTATE.
        s = self.server()
        s.modem_changed(self.control.modem_lines(), force=True)
        self.control.lines.update(cts=True, cd=True)
        self.assertEqual(self.exchange(s, MODEMSTATE), [reply(MODEMSTATE, b"\x99")])
        self.assertEqual(self.exchange(s, MODEMSTATE), [reply(MODEMSTATE, b"\x90")])

    def test_unknown_and_empty_commands_ignored(self) -> None:
        s = self.server()
        self.assertEqual(self.exchange(s, 42, b"xyz"), [])
        self.assertEqual(self.exchange(s, 200), [])
        del self.sent[:]
        s.handle(b"")
        self.assertEqual(self.sent, [])
        self.assertEqual(self.control.applied, [])

    def test_device_not_open(self) -> None:
        self.control = None
        s = self.server()
        self.assertEqual(len(self.exchange(s, BAUD, baud(57600))), 1)
        self.assertEqual(len(self.exchange(s, BAUD, baud(0))), 1)
        self.assertEqual(len(self.exchange(s, CONTROL, b"\x08")), 1)
        self.assertEqual(self.exchange(s, PURGE, b"\x03"), [reply(PURGE, b"\x03")])
        self.assertEqual(self.exchange(s, MODEMSTATE), [reply(MODEMSTATE, b"\x00")])

    def test_changes_logged_at_info_naming_the_client(self) -> None:
        s = self.server()
        self.exchange(s, BAUD, baud(57600))
        self.exchange(s, STOPSIZE, b"\x02")
        self.exchange(s, CONTROL, b"\x03")
        self.exchange(s, CONTROL, b"\x09")
        self.exchange(s, CONTROL, b"\x05")
        info = self.logs.lines(LogLevel.info)
        self.assertIn(f"{PEER} set baudrate of {PORT_NAME} to 57600", info)
        self.assertIn(f"{PEER} set stopbits of {PORT_NAME} to 2", info)
        self.assertIn(f"{PEER} set rtscts of {PORT_NAME} to True", info)
        self.assertIn(f"{PEER} set dtr of {PORT_NAME} off", info)
        self.assertIn(f"{PEER} set break_condition of {PORT_NAME} on", info)


class PolicyTests(ServerCase):
    def test_ignore_acknowledges_and_changes_nothing(self) -> None:
        s = self.server("ignore")
        self.assertEqual(self.exchange(s, BAUD, baud(57600)), [reply(BAUD, baud(57600))])
        self.assertEqual(self.exchange(s, DATASIZE, b"\x07"), [reply(DATASIZE, b"\x07")])
        self.assertEqual(self.exchange(s, PARITY, b"\x03"), [reply(PARITY, b"\x03")])
        self.assertEqual(self.exchange(s, STOPSIZE, b"\x02"), [reply(STOPSIZE, b"\x02")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x03"), [reply(CONTROL, b"\x03")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x09"), [reply(CONTROL, b"\x09")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x0c"), [reply(CONTROL, b"\x0c")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x05"), [reply(CONTROL, b"\x05")])
        self.assertEqual(self.control.settings(), FakeControl().settings())
        self.assertEqual(self.control.applied, [])
        self.assertEqual(self.control.set_lines, [])
        self.assertEqual(
            (self.control.dtr, self.control.rts, self.control.break_condition), (True, True, False)
        )

    def test_ignore_queries_report_what_the_client_asked(self) -> None:
        s = self.server("ignore")
        self.exchange(s, BAUD, baud(57600))
        self.exchange(s, PARITY, b"\x02")
        self.exchange(s, CONTROL, b"\x02")
        self.exchange(s, CONTROL, b"\x09")
        self.assertEqual(self.exchange(s, BAUD, baud(0)), [reply(BAUD, baud(57600))])
        self.assertEqual(self.exchange(s, PARITY, b"\x00"), [reply(PARITY, b"\x02")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x00"), [reply(CONTROL, b"\x02")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x07"), [reply(CONTROL, b"\x09")])
        # What it did not ask about is the device's.
        self.assertEqual(self.exchange(s, STOPSIZE, b"\x00"), [reply(STOPSIZE, b"\x01")])
        # Another client of the same port sees the device as it is.
        other = self.server("apply", peer="10.0.0.8:1 TELNET")
        self.assertEqual(self.exchange(other, BAUD, baud(0)), [reply(BAUD, baud(9600))])
        self.assertEqual(self.exchange(other, CONTROL, b"\x07"), [reply(CONTROL, b"\x08")])

    def test_ignore_does_not_purge(self) -> None:
        # A monitor's pyserial purges on open: that must not discard the
        # controlling client's data.
        s = self.server("ignore")
        self.assertEqual(self.exchange(s, PURGE, b"\x01"), [reply(PURGE, b"\x01")])
        self.assertEqual(self.exchange(s, PURGE, b"\x02"), [reply(PURGE, b"\x02")])
        self.assertEqual(self.control.purged, [])

    def test_ignore_is_logged(self) -> None:
        s = self.server("ignore")
        self.exchange(s, BAUD, baud(57600))
        info = self.logs.text(LogLevel.info)
        self.assertIn(PEER, info)
        self.assertIn("baudrate 57600 requested, ignored", info)
        self.assertNotIn("set baudrate", info)

    def test_reject_answers_the_value_in_effect(self) -> None:
        s = self.server("reject")
        self.assertEqual(self.exchange(s, BAUD, baud(57600)), [reply(BAUD, baud(9600))])
        self.assertEqual(self.exchange(s, PARITY, b"\x03"), [reply(PARITY, b"\x01")])
        self.assertEqual(self.exchange(s, DATASIZE, b"\x07"), [reply(DATASIZE, b"\x08")])
        self.assertEqual(self.exchange(s, STOPSIZE, b"\x02"), [reply(STOPSIZE, b"\x01")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x03"), [reply(CONTROL, b"\x01")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x09"), [reply(CONTROL, b"\x08")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x0c"), [reply(CONTROL, b"\x0b")])
        self.assertEqual(self.control.settings(), FakeControl().settings())
        self.assertEqual((self.control.applied, self.control.set_lines), ([], []))
        self.assertEqual(self.exchange(s, BAUD, baud(0)), [reply(BAUD, baud(9600))])
        info = self.logs.text(LogLevel.info)
        self.assertIn(f"{PEER}: {PORT_NAME}: baudrate 57600 requested, rejected", info)

    def test_reject_echoes_what_is_already_in_effect(self) -> None:
        # so that pyserial opens when it asks for the configured settings
        self.control.values["baudrate"] = 19200
        s = self.server("reject")
        self.assertEqual(self.exchange(s, BAUD, baud(19200)), [reply(BAUD, baud(19200))])
        self.assertEqual(self.exchange(s, PARITY, b"\x01"), [reply(PARITY, b"\x01")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x08"), [reply(CONTROL, b"\x08")])
        self.assertEqual(self.exchange(s, CONTROL, b"\x01"), [reply(CONTROL, b"\x01")])
        self.assertEqual(self.exchange(s, PURGE, b"\x03"), [reply(PURGE, b"\x03")])


class ModemStateTests(ServerCase):
    def lines(self, **on: bool) -> dict[str, bool]:
        return {name: on.get(name, False) for name in ("cts", "dsr", "ri", "cd")}

    def notify(self, s: ComPortServer, **on: bool) -> list[bytes]:
        del self.sent[:]
        s.modem_changed(self.lines(**on))
        return list(self.sent)

    def test_forced_notification_has_no_delta(self) -> None:
        s = self.server()
        s.modem_changed(self.lines(cts=True, cd=True), force=True)
        self.assertEqual(self.sent, [reply(MODEMSTATE, b"\x90")])

    def test_changes_with_delta_bits(self) -> None:
        s = self.server()
        s.modem_changed(self.lines(), force=True)
        self.assertEqual(self.notify(s), [])
        self.assertEqual(self.notify(s, cts=True), [reply(MODEMSTATE, b"\x11")])
        self.assertEqual(self.notify(s, cts=True), [])
        self.assertEqual(self.notify(s, cts=True, dsr=True), [reply(MODEMSTATE, b"\x32")])
        self.assertEqual(self.notify(s, dsr=True), [reply(MODEMSTATE, b"\x21")])
        self.assertEqual(self.notify(s, dsr=True, ri=True), [reply(MODEMSTATE, b"\x64")])
        self.assertEqual(self.notify(s, dsr=True, ri=True, cd=True), [reply(MODEMSTATE, b"\xe8")])
        self.assertEqual(self.notify(s), [reply(MODEMSTATE, b"\x0e")])

    def test_mask_filters_notifications(self) -> None:
        s = self.server()
        s.modem_changed(self.lines(), force=True)
        self.assertEqual(self.exchange(s, MODEMSTATE_MASK, b"\x11"), [reply(MODEMSTATE_MASK, b"\x11")])
        self.assertEqual(self.notify(s, dsr=True), [])
        self.assertEqual(self.notify(s, dsr=True, cd=True), [])
        self.assertEqual(self.notify(s, dsr=True, cd=True, cts=True), [reply(MODEMSTATE, b"\x11")])
        self.assertEqual(self.notify(s, dsr=True, cd=True), [reply(MODEMSTATE, b"\x01")])

    def test_zero_mask_silences_changes(self) -> None:
        s = self.server()
        s.modem_changed(self.lines(), force=True)
        self.exchange(s, MODEMSTATE_MASK, b"\x00")
        for on in ({"cts": True}, {"cts": True, "dsr": True, "ri": True, "cd": True}, {}):
            self.assertEqual(self.notify(s, **on), [])

    def test_state_only_mask_notifies_a_rising_line(self) -> None:
        # RFC 2217: "the access server will AND the new MODEMSTATE with the
        # MODEMSTATE-MASK.  If the result is zero, the access server will not
        # send the NOTIFY-MODEMSTATE".  A client masking CTS state only (0x10)
        # gets a notification when CTS goes on: (0x10 | 0x01) & 0x10 = 0x10.
        s = self.server()
        s.modem_changed(self.lines(), force=True)
        self.exchange(s, MODEMSTATE_MASK, b"\x10")
        self.assertEqual(self.notify(s, cts=True), [reply(MODEMSTATE, b"\x10")])


# The TELNET client protocol on a real hub


class ControlDevice(StringTransport):
    """A device transport with an ISerialControl, as FdSerialPort has."""

    def __init__(self, control: Any) -> None:
        super().__init__()
        self.control = control


def control_link(control: Any) -> InstantLink:
    """A link opening a ControlDevice on ``control`` at once."""
    return InstantLink(PORT_NAME, make_device=lambda: ControlDevice(control))


def telnet_server(rfc2217: str | None = "apply") -> ServerConfig:
    return ServerConfig(protocol="telnet", address="127.0.0.1", port=2217, rfc2217=rfc2217)


class TelnetCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fake = opened_fake()
        self.control = SerialControl(self.fake, PORT_NAME)
        self.link = control_link(self.control)
        self.hub = PortHub(self.link, self.clock)
        self.logs = LogCapture(self)

    def client(self, rfc2217: str | None = "apply", port: int = 4242) -> tuple[TelnetClient, StringTransport]:
        client = TelnetClient(self.hub, telnet_server(rfc2217), self.clock)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        client.makeConnection(transport)
        transport.clear()
        self.addCleanup(self.lose, client)
        return client, transport

    def lose(self, client: TelnetClient) -> None:
        if client.transport is not None and client.outbox is not None and not client.outbox.closed:
            client.connectionLost(Failure(error.ConnectionDone()))

    def exchange(self, client: TelnetClient, transport: StringTransport, data: bytes) -> bytes:
        transport.clear()
        client.dataReceived(data)
        return transport.value()

    def negotiated(
        self, rfc2217: str | None = "apply", port: int = 4242
    ) -> tuple[TelnetClient, StringTransport]:
        client, transport = self.client(rfc2217, port)
        client.dataReceived(bytes((IAC, WILL, COM)))
        transport.clear()
        return client, transport

    def polls(self) -> list[Any]:
        """Pending modem polls (not the clients' send timers)."""
        return [c for c in self.clock.getDelayedCalls() if c.active() and not _send_timer(c)]


def _send_timer(call: Any) -> bool:
    """A client's send_timeout timer (a stopping hub closes clients in order)."""
    return getattr(call.func, "__qualname__", "") == "Outbox._expired"


class TelnetNegotiationTests(TelnetCase):
    def test_will_com_port_answered_do_and_modem_state_sent(self) -> None:
        client, transport = self.client()
        self.fake.lines.update(dsr=True, cd=True)
        events, data, used = parse_telnet(self.exchange(client, transport, bytes((IAC, WILL, COM))))
        self.assertEqual(data, b"")
        self.assertEqual([e for e in events if e[0] == "verb"], [("verb", DO, COM)])
        self.assertEqual(notifications(events), [0xA0])
        self.assertIsNotNone(client.com_port)

    def test_do_com_port_answered_will_and_modem_state_sent(self) -> None:
        client, transport = self.client()
        events, _, _ = parse_telnet(self.exchange(client, transport, bytes((IAC, DO, COM))))
        self.assertEqual([e for e in events if e[0] == "verb"], [("verb", WILL, COM)])
        self.assertEqual(notifications(events), [0x00])

    def test_notification_follows_the_agreement(self) -> None:
        # RFC 855: subnegotiation only once the option is agreed: the DO 44
        # goes first, then the NOTIFY-MODEMSTATE.
        client, transport = self.client()
        wire = self.exchange(client, transport, bytes((IAC, WILL, COM)))
        self.assertEqual(wire, bytes((IAC, DO, COM)) + com(MODEMSTATE + 100, b"\x00"))

    def test_pyserial_burst_starts_one_session(self) -> None:
        client, transport = self.client()
        burst = bytes((IAC, DO, 1, IAC, WILL, 3, IAC, DO, 3, IAC, DO, COM, IAC, WILL, COM))
        events, data, _ = parse_telnet(self.exchange(client, transport, burst))
        verbs = [e for e in events if e[0] == "verb"]
        self.assertIn(("verb", WILL, COM), verbs)
        self.assertIn(("verb", DO, COM), verbs)
        self.assertEqual(notifications(events), [0x00])
        self.assertEqual(len(self.polls()), 1)
        # Leaving stops the polling: nothing watches twice.
        client.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.polls(), [])

    def test_repeated_offers_answered_once(self) -> None:
        client, transport = self.negotiated()
        self.assertEqual(self.exchange(client, transport, bytes((IAC, WILL, COM)) * 5), b"")

    def test_without_rfc2217_the_option_is_refused(self) -> None:
        client, transport = self.client(rfc2217=None)
        events, _, _ = parse_telnet(self.exchange(client, transport, bytes((IAC, WILL, COM, IAC, DO, COM))))
        self.assertEqual(events, [("verb", DONT, COM), ("verb", WONT, COM)])
        self.assertIsNone(client.com_port)
        # Its commands are not answered, applied, nor taken for data.
        self.assertEqual(self.exchange(client, transport, b"a" + com(BAUD, baud(57600)) + b"b"), b"")
        self.assertEqual(self.fake.baudrate, 9600)
        self.assertEqual(self.link.device.value(), b"ab")
        self.assertEqual(self.polls(), [])

    def test_commands_before_agreement_ignored(self) -> None:
        client, transport = self.client()
        self.assertEqual(self.exchange(client, transport, com(BAUD, baud(57600))), b"")
        self.assertEqual(self.fake.baudrate, 9600)


class TelnetSubnegotiationTests(TelnetCase):
    def test_set_baudrate_through_telnet(self) -> None:
        client, transport = self.negotiated()
        wire = self.exchange(client, transport, com(BAUD, baud(115200)))
        self.assertEqual(wire, com(BAUD + 100, baud(115200)))
        self.assertEqual(self.fake.baudrate, 115200)

    def test_iac_in_payloads_escaped_both_ways(self) -> None:
        client, transport = self.negotiated()
        rate = 0x0001FF00  # 130816: one 0xFF byte
        sent = com(BAUD, baud(rate))
        self.assertEqual(sent, bytes((IAC, SB, COM, BAUD, 0x00, 0x01, 0xFF, 0xFF, 0x00, IAC, SE)))
        wire = self.exchange(client, transport, sent)
        self.assertEqual(wire, bytes((IAC, SB, COM, BAUD + 100, 0x00, 0x01, 0xFF, 0xFF, 0x00, IAC, SE)))
        self.assertEqual(self.fake.baudrate, rate)
        self.assertEqual(self.link.device.value(), b"")  # nothing leaked as data

    def test_modem_state_with_iac_escaped(self) -> None:
        client, transport = self.negotiated()
        self.fake.lines.update(cts=True, dsr=True, ri=True, cd=True)
        wire = self.exchange(client, transport, com(MODEMSTATE))
        self.assertEqual(wire, bytes((IAC, SB, COM, MODEMSTATE + 100, 0xFF, 0xFF, IAC, SE)))

    def test_split_across_calls(self) -> None:
        client, transport = self.negotiated()
        stream = b"x" + com(BAUD, baud(0x0001FF00)) + b"\xff\xffy" + com(CONTROL, b"\x09") + b"z"
        for i in range(len(stream)):
            client.dataReceived(stream[i : i + 1])
        events, data, used = parse_telnet(transport.value())
        self.assertEqual(used, len(transport.value()))
        self.assertEqual(
            events,
            [("sb", reply(BAUD, baud(0x0001FF00))), ("sb", reply(CONTROL, b"\x09"))],
        )
        self.assertEqual(self.fake.baudrate, 0x0001FF00)
        self.assertFalse(self.fake.dtr)
        self.assertEqual(self.link.device.value(), b"x\xffyz")

    def test_replies_queue_behind_device_data(self) -> None:
        client, transport = self.negotiated()
        self.hub.from_device(b"\xffdata")
        client.dataReceived(com(BAUD, baud(0)))
        self.assertEqual(transport.value(), b"\xff\xffdata" + com(BAUD + 100, baud(9600)))

    def test_suspend_holds_device_data_for_this_client_only(self) -> None:
        client, transport = self.negotiated()
        other, other_transport = self.client(port=4343)
        other_transport.clear()
        client.dataReceived(com(SUSPEND))
        self.hub.from_device(b"held")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(other_transport.value(), b"held")
        client.dataReceived(com(RESUME))
        self.assertEqual(transport.value(), b"held")

    def test_settings_shared_by_the_clients_of_a_port(self) -> None:
        a, ta = self.negotiated(port=5001)
        b, tb = self.negotiated(port=5002)
        self.exchange(a, ta, com(BAUD, baud(57600)))
        self.assertEqual(self.exchange(b, tb, com(BAUD, baud(0))), com(BAUD + 100, baud(57600)))
        info = self.logs.text(LogLevel.info)
        self.assertIn(f"127.0.0.1:5001 TELNET set baudrate of {PORT_NAME} to 57600", info)

    def test_ignore_client_cannot_change_the_port(self) -> None:
        controller, tc = self.negotiated(port=5001)
        monitor, tm = self.negotiated("ignore", port=5002)
        self.exchange(controller, tc, com(BAUD, baud(57600)))
        # pyserial's default open: 9600 8N1, no flow control, DTR and RTS on, purge
        for command, value in [
            (BAUD, baud(9600)),
            (DATASIZE, b"\x08"),
            (PARITY, b"\x01"),
            (STOPSIZE, b"\x01"),
            (CONTROL, b"\x01"),
            (CONTROL, b"\x08"),
            (CONTROL, b"\x0b"),
            (PURGE, b"\x01"),
            (PURGE, b"\x02"),
        ]:
            self.assertEqual(self.exchange(monitor, tm, com(command, value)), com(command + 100, value))
        self.assertEqual(self.fake.baudrate, 57600)
        self.assertNotIn(("reset_input_buffer",), self.fake.events)
        self.assertEqual(self.exchange(controller, tc, com(BAUD, baud(0))), com(BAUD + 100, baud(57600)))


class ModemPollingTests(TelnetCase):
    def test_no_polling_unless_asked(self) -> None:
        self.client()
        self.client(rfc2217=None, port=4343)
        self.assertEqual(self.polls(), [])
        self.clock.advance(10 * MODEM_POLL_INTERVAL)
        self.assertEqual(self.polls(), [])

    def test_notify_on_change(self) -> None:
        client, transport = self.negotiated()
        self.assertEqual(len(self.polls()), 1)
        self.clock.advance(MODEM_POLL_INTERVAL)
        self.assertEqual(transport.value(), b"")
        self.fake.lines["cts"] = True
        self.clock.advance(MODEM_POLL_INTERVAL)
        self.assertEqual(transport.value(), com(MODEMSTATE + 100, b"\x11"))
        transport.clear()
        self.clock.advance(MODEM_POLL_INTERVAL)
        self.assertEqual(transport.value(), b"")
        self.fake.lines.update(cts=False, dsr=True)
        self.clock.advance(MODEM_POLL_INTERVAL)
        self.assertEqual(transport.value(), com(MODEMSTATE + 100, b"\x23"))

    def test_mask_respected_through_the_hub(self) -> None:
        client, transport = self.negotiated()
        self.assertEqual(
            self.exchange(client, transport, com(MODEMSTATE_MASK, b"\x02")),
            com(MODEMSTATE_MASK + 100, b"\x02"),
        )
        transport.clear()
        self.fake.lines["cts"] = True
        self.clock.advance(MODEM_POLL_INTERVAL)
        self.assertEqual(transport.value(), b"")
        self.fake.lines["dsr"] = True
        self.clock.advance(MODEM_POLL_INTERVAL)
        self.assertEqual(transport.value(), com(MODEMSTATE + 100, b"\x02"))

    def test_each_client_its_own_mask(self) -> None:
        a, ta = self.negotiated(port=5001)
        b, tb = self.negotiated(port=5002)
        self.exchange(b, tb, com(MODEMSTATE_MASK, b"\x00"))
        tb.clear()
        self.assertEqual(len(self.polls()), 1)
        self.fake.lines["ri"] = True
        self.clock.advance(MODEM_POLL_INTERVAL)
        self.assertEqual(ta.value(), com(MODEMSTATE + 100, b"\x44"))
        self.assertEqual(tb.value(), b"")

    def test_polling_stops_with_the_last_watcher(self) -> None:
        a, _ = self.negotiated(port=5001)
        b, _ = self.negotiated(port=5002)
        self.assertEqual(len(self.polls()), 1)
        a.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(len(self.polls()), 1)
        b.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.polls(), [])
        # and it comes back for a new client
        c, tc = self.negotiated(port=5003)
        self.assertEqual(len(self.polls()), 1)
        self.fake.lines["cd"] = True
        self.clock.advance(MODEM_POLL_INTERVAL)
        self.assertEqual(tc.value(), com(MODEMSTATE + 100, b"\x88"))

    def test_shutdown_stops_polling(self) -> None:
        self.negotiated()
        self.assertEqual(len(self.polls()), 1)
        self.hub.shutdown()
        self.assertEqual(self.polls(), [])

    def test_pty_without_modem_lines(self) -> None:
        self.fake = opened_fake(no_modem_lines=True)
        self.control = SerialControl(self.fake, PORT_NAME)
        self.link.control = self.control
        client, transport = self.client()
        events, _, _ = parse_telnet(self.exchange(client, transport, bytes((IAC, WILL, COM))))
        self.assertEqual(notifications(events), [0x00])
        transport.clear()
        for _ in range(4):
            self.clock.advance(MODEM_POLL_INTERVAL)
        self.assertEqual(transport.value(), b"")
        # DTR/RTS requests are answered as asked
        self.assertEqual(self.exchange(client, transport, com(CONTROL, b"\x09")), com(CONTROL + 100, b"\x09"))
        self.assertEqual(self.exchange(client, transport, com(CONTROL, b"\x07")), com(CONTROL + 100, b"\x09"))
        self.assertEqual(self.flushLoggedErrors(), [])


class HubWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.control = FakeControl()
        self.hub = PortHub(control_link(self.control), self.clock)
        self.seen: list[dict[str, bool]] = []

    def open(self) -> None:
        session = RawClient(self.hub, ServerConfig(protocol="tcp", address="127.0.0.1", port=1), self.clock)
        session.makeConnection(StringTransport())
        self.addCleanup(lambda: session.connectionLost(Failure(error.ConnectionDone())))

    def test_control_only_while_open(self) -> None:
        self.assertIsNone(self.hub.control)
        self.open()
        self.assertIs(self.hub.control, self.control)

    def test_watch_polls_and_reports_changes(self) -> None:
        self.open()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.hub.watch_modem(self.seen.append)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(MODEM_POLL_INTERVAL)
        self.assertEqual(self.seen, [{"cts": False, "dsr": False, "ri": False, "cd": False}])
        self.clock.advance(MODEM_POLL_INTERVAL)
        self.assertEqual(len(self.seen), 1)
        self.control.lines["cts"] = True
        self.clock.advance(MODEM_POLL_INTERVAL)
        self.assertEqual(self.seen[-1], {"cts": True, "dsr": False, "ri": False, "cd": False})
        self.hub.unwatch_modem(self.seen.append)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.control.lines["dsr"] = True
        self.clock.advance(10 * MODEM_POLL_INTERVAL)
        self.assertEqual(len(self.seen), 2)

    def test_unwatch_unknown_is_harmless(self) -> None:
        self.hub.unwatch_modem(self.seen.append)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closed_device_not_polled(self) -> None:
        self.hub.watch_modem(self.seen.append)
        self.clock.advance(3 * MODEM_POLL_INTERVAL)
        self.assertEqual(self.seen, [])
        self.hub.unwatch_modem(self.seen.append)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_shutdown_cancels_the_poll(self) -> None:
        self.open()
        self.hub.watch_modem(self.seen.append)
        self.hub.shutdown()
        self.assertEqual([c for c in self.clock.getDelayedCalls() if not _send_timer(c)], [])


class ConfigTests(SynchronousTestCase):
    def server(self, **server: Any) -> ServerConfig:
        port = {
            "serial": {"port": "/dev/ttyS0"},
            "servers": [{"address": "127.0.0.1", "port": 2217, **server}],
        }
        return parse_config({"ports": [port]}, source="test.json").ports[0].servers[0]

    def error(self, **server: Any) -> str:
        with self.assertRaises(ConfigError) as cm:
            self.server(**server)
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith("test.json: ports[0].servers[0].rfc2217"), message)
        return message

    def test_policies(self) -> None:
        self.assertEqual(self.server(protocol="telnet", rfc2217=True).rfc2217, "apply")
        self.assertEqual(self.server(protocol="telnet", rfc2217={}).rfc2217, "apply")
        for policy in ("apply", "ignore", "reject"):
            self.assertEqual(self.server(protocol="telnet", rfc2217={"settings": policy}).rfc2217, policy)
        self.assertIsNone(self.server(protocol="telnet", rfc2217=False).rfc2217)
        self.assertIsNone(self.server(protocol="telnet").rfc2217)

    def test_only_on_telnet(self) -> None:
        for protocol in ("tcp", "TCP"):
            self.assertIn("telnet", self.error(protocol=protocol, rfc2217=True))
        self.assertIn("telnet", self.error(protocol="tcp", rfc2217={"settings": "ignore"}))
        with self.assertRaises(ConfigError) as cm:
            parse_config(
                [
                    {
                        "serial": {"port": "/dev/ttyS0"},
                        "servers": [{"protocol": "socket", "address": "/tmp/s", "rfc2217": True}],
                    }
                ],
                source="test.json",
            )
        self.assertIn("rfc2217", str(cm.exception))
        self.assertNotIn("\n", str(cm.exception))

    def test_bad_policy(self) -> None:
        message = self.error(protocol="telnet", rfc2217={"settings": "maybe"})
        self.assertIn(".rfc2217.settings", message)
        self.assertIn("apply, ignore, reject", message)
        self.assertIn("maybe", message)

    def test_bad_values(self) -> None:
        for value in ("yes", 1, ["apply"], "apply"):
            self.error(protocol="telnet", rfc2217=value)

    def test_unknown_key_warned(self) -> None:
        data = [
            {
                "serial": {"port": "/dev/ttyS0"},
                "servers": [
                    {
                        "protocol": "telnet",
                        "address": "127.0.0.1",
                        "port": 1,
                        "rfc2217": {"setings": "ignore"},
                    }
                ],
            }
        ]
        config = parse_config(data, source="test.json")
        self.assertEqual(config.ports[0].servers[0].rfc2217, "apply")
        self.assertTrue(any("setings" in w for w in config.warnings), config.warnings)


# Integration: the real daemon, pyserial's own rfc2217:// client


def open_rfc2217(port: int, **kw: Any) -> serial.SerialBase:
    kw.setdefault("timeout", 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pyserial's Thread.setDaemon
        return serial.serial_for_url(f"rfc2217://127.0.0.1:{port}", **kw)


def peer_of(ser: serial.SerialBase) -> str:
    host, port = ser._socket.getsockname()[:2]
    return f"{host}:{port} TELNET"


class ComPortClient:
    """A minimal RFC 2217 client over a blocking socket, for asking exactly
    one thing (pyserial always pushes its own settings first)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.used = 0
        self.pending: list[tuple[Any, ...]] = []
        self.data = b""

    def take(self, predicate: Callable[[tuple[Any, ...]], bool], timeout: float = 5.0) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout
        for left in ticks(deadline, 10_000):
            for i, event in enumerate(self.pending):
                if predicate(event):
                    return self.pending.pop(i)
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                break
            if not chunk:
                raise AssertionError(f"EOF; pending: {self.pending}")
            self.buffer += chunk
            events, data, used = parse_telnet(self.buffer[self.used :])
            self.used += used
            self.pending += events
            self.data += data
        raise AssertionError(f"timed out; pending: {self.pending}")

    def negotiate(self) -> int:
        """Offer COM-PORT-OPTION; the first NOTIFY-MODEMSTATE value."""
        self.sock.sendall(bytes((IAC, WILL, COM)))
        self.take(lambda e: e == ("verb", DO, COM))
        return self.take(lambda e: e[0] == "sb" and e[1][:2] == reply(MODEMSTATE))[1][2]

    def ask(self, command: int, value: bytes) -> bytes:
        self.sock.sendall(com(command, value))
        return self.take(lambda e: e[0] == "sb" and e[1][:2] == reply(command))[1][2:]


class DaemonTests(Case):
    def start(
        self, serial_port: str, settings: dict[str, Any] | None = None, policies: tuple[str, ...] = ("apply",)
    ) -> tuple[Any, dict[str, int]]:
        """The daemon (-v) on ``serial_port``: one TELNET RFC 2217 server per
        policy, and a raw TCP server ("tcp")."""
        ports = {policy: free_port() for policy in (*policies, "tcp")}
        servers = [
            {"protocol": "telnet", "address": "127.0.0.1", "port": ports[p], "rfc2217": {"settings": p}}
            for p in policies
        ]
        config = {"ports": [port_config(serial_port, *servers, tcp_server(ports["tcp"]), **(settings or {}))]}
        daemon = self.ser2tcp(config, "-v", listen=list(ports.values()))
        return daemon, ports

    def pyserial(self, port: int, **kw: Any) -> serial.SerialBase:
        ser = open_rfc2217(port, **kw)
        self.addCleanup(ser.close)
        return ser

    def com_port_client(self, port: int) -> ComPortClient:
        return ComPortClient(self.connect(port))

    def attrs(self, pty: Pty) -> list[Any]:
        return termios.tcgetattr(pty.fd())

    def raw_client(self, port: int, pty: Pty) -> socket.socket:
        """A raw TCP client, attached once its byte reached the device."""
        sock = self.connect(port)
        sock.sendall(b"!")
        self.assertEqual(pty.read(1), b"!")
        return sock


class PtyDaemonTests(DaemonTests):
    def test_settings_reach_the_pty(self) -> None:
        pty = self.pty()
        daemon, ports = self.start(pty.path)
        ser = self.pyserial(ports["apply"], baudrate=115200)
        self.assertEqual(pty.speeds(), (termios.B115200, termios.B115200))
        ser.baudrate = 57600
        self.assertEqual(pty.speeds(), (termios.B57600, termios.B57600))
        ser.stopbits = serial.STOPBITS_TWO
        self.assertTrue(self.attrs(pty)[2] & termios.CSTOPB)
        ser.stopbits = serial.STOPBITS_ONE
        self.assertFalse(self.attrs(pty)[2] & termios.CSTOPB)
        ser.rtscts = True
        self.assertTrue(self.attrs(pty)[2] & termios.CRTSCTS)
        ser.rtscts = False
        self.assertFalse(self.attrs(pty)[2] & termios.CRTSCTS)
        ser.xonxoff = True
        self.assertEqual(self.attrs(pty)[0] & (termios.IXON | termios.IXOFF), termios.IXON | termios.IXOFF)
        ser.xonxoff = False
        self.assertFalse(self.attrs(pty)[0] & (termios.IXON | termios.IXOFF))
        log = daemon.wait_output(f"{peer_of(ser)} set baudrate of {port_name(pty.path)} to 57600")
        self.assertIn(f"{peer_of(ser)} set stopbits of {port_name(pty.path)} to 2", log)

    def test_pty_refusals_are_reported_and_serving_goes_on(self) -> None:
        pty = self.pty()
        daemon, ports = self.start(pty.path)
        ser = self.pyserial(ports["apply"], baudrate=38400)
        with self.assertRaisesRegex(ValueError, "remote rejected value for option 'parity'"):
            ser.parity = serial.PARITY_EVEN
        self.assertFalse(self.attrs(pty)[2] & termios.PARENB)
        ser.parity = serial.PARITY_NONE
        with self.assertRaisesRegex(ValueError, "remote rejected value for option 'datasize'"):
            ser.bytesize = serial.SEVENBITS
        self.assertEqual(self.attrs(pty)[2] & termios.CSIZE, termios.CS8)
        ser.bytesize = serial.EIGHTBITS
        daemon.wait_output("cannot set parity to 'E'")
        daemon.wait_output("cannot set bytesize to 7")
        # Still serving, settings too.
        ser.baudrate = 19200
        self.assertEqual(pty.speeds(), (termios.B19200, termios.B19200))
        ser.write(b"still here")
        self.assertEqual(pty.read(10), b"still here")
        pty.write(b"yes")
        self.assertEqual(ser.read(3), b"yes")
        self.assertTrue(daemon.running())

    def test_lines_break_purge_and_modem_lines(self) -> None:
        pty = self.pty()
        daemon, ports = self.start(pty.path)
        ser = self.pyserial(ports["apply"], baudrate=115200)
        ser.dtr = False
        ser.rts = False
        ser.dtr = True
        ser.rts = True
        ser.send_break(0.01)
        ser.reset_input_buffer()
        ser.reset_output_buffer()
        # A pty has no modem lines: they read False, and reading works at all
        # only because the server sent NOTIFY-MODEMSTATE.
        self.assertEqual((ser.cts, ser.dsr, ser.ri, ser.cd), (False, False, False, False))
        log = daemon.wait_output(f"{peer_of(ser)} set dtr of {port_name(pty.path)} off")
        self.assertIn(f"{peer_of(ser)} set rts of {port_name(pty.path)} off", log)
        self.assertIn(f"{peer_of(ser)} set break_condition of {port_name(pty.path)} on", log)
        ser.write(b"after")
        self.assertEqual(pty.read(5), b"after")

    def test_all_bytes_both_ways_and_a_raw_client_meanwhile(self) -> None:
        pty = self.pty()
        daemon, ports = self.start(pty.path)
        raw = self.raw_client(ports["tcp"], pty)
        ser = self.pyserial(ports["apply"], baudrate=115200)
        data = ALL_BYTES * 2 + ALL_BYTES[::-1]
        ser.write(data)
        self.assertEqual(pty.read(len(data)), data)
        pty.write(data)
        self.assertEqual(ser.read(len(data)), data)
        self.assertEqual(recv_exactly(raw, len(data), self.deadline()), data)
        ser.baudrate = 57600
        ser.reset_input_buffer()
        pty.write(ALL_BYTES)
        self.assertEqual(ser.read(256), ALL_BYTES)
        self.assertEqual(recv_exactly(raw, 256, self.deadline()), ALL_BYTES)
        raw.sendall(b"\xff\x00\xff")
        self.assertEqual(pty.read(3), b"\xff\x00\xff")
        self.assertEqual(pty.speeds(), (termios.B57600, termios.B57600))

    def test_close_and_reopen(self) -> None:
        pty = self.pty()
        daemon, ports = self.start(pty.path)
        ser = self.pyserial(ports["apply"], baudrate=115200)
        ser.write(b"one")
        self.assertEqual(pty.read(3), b"one")
        ser.close()
        daemon.wait_output(f"Serial {port_name(pty.path)} closed")
        ser.baudrate = 57600
        ser.open()
        self.assertEqual(pty.speeds(), (termios.B57600, termios.B57600))
        ser.write(b"two")
        self.assertEqual(pty.read(3), b"two")
        pty.write(b"back")
        self.assertEqual(ser.read(4), b"back")
        self.assertFalse(ser.cts)
        daemon.wait_output(f"Serial {port_name(pty.path)} opened", count=2)

    def test_monitor_with_ignore_policy_keeps_the_session(self) -> None:
        pty = self.pty()
        daemon, ports = self.start(pty.path, {"baudrate": 19200}, policies=("apply", "ignore"))
        controller = self.pyserial(ports["apply"], baudrate=57600)
        self.assertEqual(pty.speeds(), (termios.B57600, termios.B57600))
        monitor = self.pyserial(ports["ignore"])  # pyserial's defaults: 9600 8N1
        self.assertEqual(monitor.baudrate, 9600)
        self.assertEqual(pty.speeds(), (termios.B57600, termios.B57600))
        monitor.stopbits = serial.STOPBITS_TWO
        monitor.rtscts = True
        monitor.dtr = False
        self.assertEqual(pty.speeds(), (termios.B57600, termios.B57600))
        self.assertFalse(self.attrs(pty)[2] & (termios.CSTOPB | termios.CRTSCTS))
        name = port_name(pty.path)
        log = daemon.wait_output(f"{peer_of(monitor)}: {name}: baudrate 9600 requested, ignored")
        self.assertNotIn(f"{peer_of(monitor)} set", log)
        # Both get the device's data.
        pty.write(b"to all")
        self.assertEqual(controller.read(6), b"to all")
        self.assertEqual(monitor.read(6), b"to all")
        # Settings belong to the port: a new client of the apply server is
        # told what the controller set, not the configured 19200.
        asker = self.com_port_client(ports["apply"])
        asker.negotiate()
        self.assertEqual(asker.ask(BAUD, baud(0)), baud(57600))
        self.assertEqual(asker.ask(STOPSIZE, b"\x00"), b"\x01")

    def test_reject_policy(self) -> None:
        pty = self.pty()
        daemon, ports = self.start(pty.path, {"baudrate": 19200}, policies=("reject",))
        raw = self.raw_client(ports["tcp"], pty)
        self.assertEqual(pty.speeds(), (termios.B19200, termios.B19200))
        with self.assertRaisesRegex(ValueError, "remote rejected value for option 'baudrate'"):
            open_rfc2217(ports["reject"], baudrate=115200)
        self.assertEqual(pty.speeds(), (termios.B19200, termios.B19200))
        daemon.wait_output(f"{port_name(pty.path)}: baudrate 115200 requested, rejected")
        # Asking for what is in effect works, changing it does not.
        ser = self.pyserial(ports["reject"], baudrate=19200)
        with self.assertRaisesRegex(ValueError, "remote rejected value"):
            ser.baudrate = 57600
        self.assertEqual(pty.speeds(), (termios.B19200, termios.B19200))
        pty.write(b"data")
        self.assertEqual(recv_exactly(raw, 4, self.deadline()), b"data")

    def test_initial_lines_off_on_a_pty(self) -> None:
        pty = self.pty()
        daemon, ports = self.start(pty.path, {"dtr": False, "rts": False})
        raw = self.raw_client(ports["tcp"], pty)
        pty.write(b"up")
        self.assertEqual(recv_exactly(raw, 2, self.deadline()), b"up")
        client = self.com_port_client(ports["apply"])
        self.assertEqual(client.negotiate(), 0)
        self.assertEqual(client.ask(CONTROL, b"\x07"), b"\x09")  # DTR off
        self.assertEqual(client.ask(CONTROL, b"\x0a"), b"\x0c")  # RTS off


class LoopDaemonTests(DaemonTests):
    """The thread-backed transport: a pyserial URL as the device."""

    def test_settings_and_modem_notifications(self) -> None:
        daemon, ports = self.start("loop://")
        ser = self.pyserial(ports["apply"], baudrate=57600)
        daemon.wait_output(f"{peer_of(ser)} set baudrate of loop to 57600")
        ser.write(ALL_BYTES)
        self.assertEqual(ser.read(256), ALL_BYTES)
        # loop:// wires RTS to CTS and DTR to DSR; CD is on, RI off.
        self.assertEqual((ser.cts, ser.dsr, ser.ri, ser.cd), (True, True, False, True))
        ser.rts = False
        wait_until(lambda: not ser.cts, 5, "CTS off notified")
        self.assertTrue(ser.dsr)
        ser.dtr = False
        wait_until(lambda: not ser.dsr, 5, "DSR off notified")
        ser.rts = True
        wait_until(lambda: ser.cts, 5, "CTS on notified")
        self.assertEqual((ser.ri, ser.cd), (False, True))
        asker = self.com_port_client(ports["apply"])
        asker.negotiate()
        self.assertEqual(asker.ask(BAUD, baud(0)), baud(57600))

    def test_initial_lines_off(self) -> None:
        daemon, ports = self.start("loop://", {"dtr": False, "rts": False})
        client = self.com_port_client(ports["apply"])
        self.assertEqual(client.negotiate(), 0x80)  # CD only: CTS (RTS) and DSR (DTR) off
