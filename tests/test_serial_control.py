"""SerialControl (the ISerialControl adapter over a pyserial object), and the
initial DTR/RTS state the serial config asks for.

A fake pyserial object records every change in order and refuses what a
Linux pseudo-terminal refuses (parity and data size: EINVAL; modem lines:
ENOTTY); real pyserial objects on a pty and on ``loop://`` check that the
adapter behaves the same on the real thing, and that both device transports
(the fd-backed ``FdSerialPort`` and the threaded one) expose it as
``.control``.
"""

from __future__ import annotations

import errno
import os
import termios
import threading
import types
from typing import Any

import serial
from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from ser2tcp import _log, serial_link
from ser2tcp.config import ConfigError, SerialConfig, parse_config
from ser2tcp.interface import ISerialControl
from ser2tcp.serial_control import SerialControl
from ser2tcp.serial_link import FdSerialPort, SerialLink, _open_pyserial, _open_with_lines
from ser2tcp.threaded_serial import ThreadedSerialTransport
from tests.helpers import wait_for
from tests.test_serial_link import DeviceProtocol

DEFAULTS = {
    "baudrate": 9600,
    "bytesize": 8,
    "parity": "N",
    "stopbits": 1,
    "xonxoff": False,
    "rtscts": False,
}
LINES = ("dtr", "rts", "break_condition")


class FakePySerial:
    """A pyserial-like port that records, in order, every setting and line
    change (with whether the port was open) and every method call.

    ``accepts`` maps a setting to the only values the device takes; like
    pyserial on a pty, a refused value is stored and then the reconfiguration
    raises EINVAL.  ``no_modem_lines`` makes DTR/RTS and CTS/DSR/RI/CD fail
    with ENOTTY while open, as on a pty."""

    def __init__(
        self,
        accepts: dict[str, set[Any]] | None = None,
        no_modem_lines: bool = False,
        fail_purge: bool = False,
        **settings: Any,
    ) -> None:
        init = object.__setattr__
        init(self, "events", [])
        init(self, "accepts", accepts or {})
        init(self, "no_modem_lines", no_modem_lines)
        init(self, "fail_purge", fail_purge)
        init(self, "is_open", False)
        init(self, "port", None)
        init(self, "lines", {"cts": False, "dsr": False, "ri": False, "cd": False})
        init(self, "fd", -1)
        for key, value in {**DEFAULTS, **settings}.items():
            init(self, key, value)
        init(self, "dtr", True)
        init(self, "rts", True)
        init(self, "break_condition", False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in DEFAULTS or name in LINES:
            self.events.append((name, value, "open" if self.is_open else "closed"))
        object.__setattr__(self, name, value)
        if not self.is_open:
            return
        if name in self.accepts and value not in self.accepts[name]:
            raise OSError(errno.EINVAL, "Invalid argument")
        if name in ("dtr", "rts") and self.no_modem_lines:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    def open(self) -> None:
        self.events.append(("open", self.port, {"dtr": self.dtr, "rts": self.rts}))
        object.__setattr__(self, "is_open", True)

    def close(self) -> None:
        object.__setattr__(self, "is_open", False)

    def _line(self, name: str) -> bool:
        if self.no_modem_lines:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
        return self.lines[name]

    cts = property(lambda self: self._line("cts"))
    dsr = property(lambda self: self._line("dsr"))
    ri = property(lambda self: self._line("ri"))
    cd = property(lambda self: self._line("cd"))

    def _call(self, name: str) -> None:
        self.events.append((name,))
        if self.fail_purge:
            raise OSError(errno.EIO, "Input/output error")

    def reset_input_buffer(self) -> None:
        self._call("reset_input_buffer")

    def reset_output_buffer(self) -> None:
        self._call("reset_output_buffer")

    # Twisted's SerialPort calls these when it is built.
    def flushInput(self) -> None:
        self.events.append(("flushInput",))

    def flushOutput(self) -> None:
        self.events.append(("flushOutput",))


def opened_fake(**kw: Any) -> FakePySerial:
    fake = FakePySerial(**kw)
    fake.port = "/dev/ttyFAKE0"
    fake.open()
    fake.events.clear()
    return fake


class LogCapture:
    """ser2tcp's log events at INFO and up, with -v in effect meanwhile."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        observer = self.events.append
        verbosity = {LogLevel.warn: 0, LogLevel.info: 1}.get(
            _log._predicate.logLevelForNamespace(_log.NAMESPACE), 2
        )
        _log.set_verbosity(1)
        case.addCleanup(_log.set_verbosity, verbosity)
        globalLogPublisher.addObserver(observer)
        case.addCleanup(globalLogPublisher.removeObserver, observer)

    def lines(self, level: LogLevel | None = None) -> list[str]:
        return [
            formatEvent(e)
            for e in self.events
            if str(e.get("log_namespace", "")).startswith("ser2tcp.")
            and (level is None or e.get("log_level") is level)
        ]

    def text(self, level: LogLevel | None = None) -> str:
        return "\n".join(self.lines(level))


class SerialControlTests(SynchronousTestCase):
    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ISerialControl, SerialControl(opened_fake(), "/dev/ttyFAKE0")))

    def test_settings(self) -> None:
        fake = opened_fake(baudrate=57600, parity="E", stopbits=2, rtscts=True)
        self.assertEqual(
            SerialControl(fake, "x").settings(),
            {
                "baudrate": 57600,
                "bytesize": 8,
                "parity": "E",
                "stopbits": 2,
                "xonxoff": False,
                "rtscts": True,
            },
        )

    def test_apply_changes_the_open_port(self) -> None:
        fake = opened_fake()
        control = SerialControl(fake, "x")
        for key, value in [
            ("baudrate", 115200),
            ("bytesize", 7),
            ("parity", "O"),
            ("stopbits", 1.5),
            ("xonxoff", True),
            ("rtscts", True),
        ]:
            self.assertEqual(control.apply(key, value), value, key)
            self.assertEqual(getattr(fake, key), value, key)
            self.assertEqual(fake.events[-1], (key, value, "open"))
        self.assertEqual(control.settings()["baudrate"], 115200)

    def test_apply_same_value_touches_nothing(self) -> None:
        fake = opened_fake()
        self.assertEqual(SerialControl(fake, "x").apply("baudrate", 9600), 9600)
        self.assertEqual(fake.events, [])

    def test_refused_value_is_rolled_back_and_logged(self) -> None:
        logs = LogCapture(self)
        fake = opened_fake(accepts={"parity": {"N"}, "bytesize": {8}})
        control = SerialControl(fake, "/dev/ttyFAKE0")
        self.assertEqual(control.apply("parity", "E"), "N")
        self.assertEqual(fake.parity, "N")  # pyserial kept "E": it was put back
        self.assertEqual(control.apply("bytesize", 7), 8)
        self.assertEqual(fake.bytesize, 8)
        warnings = logs.text(LogLevel.warn)
        self.assertIn("cannot set parity to 'E'", warnings)
        self.assertIn("cannot set bytesize to 7", warnings)
        self.assertIn("/dev/ttyFAKE0", warnings)
        # and the port still takes what it can
        self.assertEqual(control.apply("baudrate", 57600), 57600)

    def test_set_lines(self) -> None:
        fake = opened_fake()
        control = SerialControl(fake, "x")
        self.assertTrue(control.dtr)
        self.assertTrue(control.rts)
        self.assertFalse(control.break_condition)
        self.assertIs(control.set_line("dtr", False), False)
        self.assertIs(control.set_line("rts", False), False)
        self.assertIs(control.set_line("break_condition", True), True)
        self.assertEqual((fake.dtr, fake.rts, fake.break_condition), (False, False, True))
        self.assertEqual((control.dtr, control.rts, control.break_condition), (False, False, True))
        self.assertIs(control.set_line("break_condition", False), False)
        self.assertFalse(fake.break_condition)
        self.assertEqual(
            fake.events,
            [
                ("dtr", False, "open"),
                ("rts", False, "open"),
                ("break_condition", True, "open"),
                ("break_condition", False, "open"),
            ],
        )

    def test_initial_lines_come_from_the_port(self) -> None:
        fake = FakePySerial()
        fake.dtr = False
        fake.rts = False
        fake.open()
        control = SerialControl(fake, "x")
        self.assertFalse(control.dtr)
        self.assertFalse(control.rts)

    def test_lines_without_modem_lines(self) -> None:
        # A pty: the ioctls fail, the request is answered as asked, nothing raises.
        logs = LogCapture(self)
        fake = opened_fake(no_modem_lines=True)
        control = SerialControl(fake, "/dev/ttyFAKE0")
        self.assertIs(control.set_line("dtr", False), False)
        self.assertIs(control.set_line("rts", False), False)
        self.assertFalse(control.dtr)
        self.assertFalse(control.rts)
        self.assertIs(control.set_line("dtr", True), True)
        self.assertTrue(control.dtr)
        self.assertEqual(control.modem_lines(), {"cts": False, "dsr": False, "ri": False, "cd": False})
        self.assertIn("cannot set dtr", logs.text(LogLevel.info))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_modem_lines(self) -> None:
        fake = opened_fake()
        control = SerialControl(fake, "x")
        self.assertEqual(control.modem_lines(), {"cts": False, "dsr": False, "ri": False, "cd": False})
        fake.lines.update(cts=True, cd=True)
        self.assertEqual(control.modem_lines(), {"cts": True, "dsr": False, "ri": False, "cd": True})
        fake.lines.update(cts=False, dsr=True, ri=True)
        self.assertEqual(control.modem_lines(), {"cts": False, "dsr": True, "ri": True, "cd": True})

    def test_purge(self) -> None:
        fake = opened_fake()
        control = SerialControl(fake, "x")
        control.purge(receive=True, transmit=False)
        self.assertEqual(fake.events, [("reset_input_buffer",)])
        fake.events.clear()
        control.purge(receive=False, transmit=True)
        self.assertEqual(fake.events, [("reset_output_buffer",)])
        fake.events.clear()
        control.purge(receive=True, transmit=True)
        self.assertEqual(fake.events, [("reset_input_buffer",), ("reset_output_buffer",)])
        fake.events.clear()
        control.purge(receive=False, transmit=False)
        self.assertEqual(fake.events, [])

    def test_purge_failure_does_not_raise(self) -> None:
        fake = opened_fake(fail_purge=True)
        SerialControl(fake, "x").purge(receive=True, transmit=True)
        self.assertEqual(fake.events, [("reset_input_buffer",), ("reset_output_buffer",)])


class PtyControlTests(SynchronousTestCase):
    """SerialControl over a real pyserial port on a Linux pseudo-terminal."""

    def setUp(self) -> None:
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        path = os.ttyname(slave)
        os.close(slave)
        self.master = master
        self.port = serial.Serial(path, 9600, timeout=0)
        self.addCleanup(self.port.close)
        self.control = SerialControl(self.port, path)

    def attrs(self) -> list[Any]:
        return termios.tcgetattr(self.master)

    def test_baudrate_stopbits_flow_control_reach_the_tty(self) -> None:
        self.assertEqual(self.control.apply("baudrate", 57600), 57600)
        self.assertEqual(self.attrs()[4:6], [termios.B57600, termios.B57600])
        self.assertEqual(self.control.apply("stopbits", 2), 2)
        self.assertTrue(self.attrs()[2] & termios.CSTOPB)
        self.assertEqual(self.control.apply("stopbits", 1), 1)
        self.assertFalse(self.attrs()[2] & termios.CSTOPB)
        self.assertIs(self.control.apply("rtscts", True), True)
        self.assertTrue(self.attrs()[2] & termios.CRTSCTS)
        self.assertIs(self.control.apply("rtscts", False), False)
        self.assertFalse(self.attrs()[2] & termios.CRTSCTS)
        self.assertIs(self.control.apply("xonxoff", True), True)
        self.assertEqual(self.attrs()[0] & (termios.IXON | termios.IXOFF), termios.IXON | termios.IXOFF)
        self.assertIs(self.control.apply("xonxoff", False), False)
        self.assertFalse(self.attrs()[0] & (termios.IXON | termios.IXOFF))

    def test_pty_refusals_report_the_value_in_effect(self) -> None:
        # Linux ptys refuse parity and other data sizes with EINVAL.
        self.assertEqual(self.control.apply("parity", "E"), "N")
        self.assertEqual(self.control.apply("bytesize", 7), 8)
        self.assertEqual(self.control.settings()["parity"], "N")
        self.assertFalse(self.attrs()[2] & termios.PARENB)
        # The port was put back in a usable state.
        self.assertEqual(self.control.apply("baudrate", 19200), 19200)
        self.assertEqual(self.attrs()[4], termios.B19200)

    def test_no_modem_lines_on_a_pty(self) -> None:
        self.assertEqual(self.control.modem_lines(), {"cts": False, "dsr": False, "ri": False, "cd": False})
        self.assertIs(self.control.set_line("dtr", False), False)
        self.assertIs(self.control.set_line("rts", False), False)
        self.assertIs(self.control.set_line("break_condition", True), True)
        self.assertIs(self.control.set_line("break_condition", False), False)


class FakeReactor:
    """Enough of a reactor for Twisted's SerialPort to be built."""

    def __init__(self) -> None:
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        if reader in self.readers:
            self.readers.remove(reader)

    def addWriter(self, writer: Any) -> None:
        pass

    def removeWriter(self, writer: Any) -> None:
        pass


class InitialLinesTests(SynchronousTestCase):
    def test_lines_are_set_before_open(self) -> None:
        fake = FakePySerial()
        result = _open_with_lines(fake, "/dev/ttyFAKE0", {"dtr": False, "rts": False})
        self.assertIs(result, fake)
        self.assertEqual(
            fake.events,
            [
                ("dtr", False, "closed"),
                ("rts", False, "closed"),
                ("open", "/dev/ttyFAKE0", {"dtr": False, "rts": False}),
            ],
        )

    def test_one_line_only(self) -> None:
        fake = FakePySerial()
        _open_with_lines(fake, "/dev/ttyFAKE0", {"rts": False})
        self.assertEqual(
            fake.events, [("rts", False, "closed"), ("open", "/dev/ttyFAKE0", {"dtr": True, "rts": False})]
        )

    def test_no_lines_configured_leaves_pyserial_defaults(self) -> None:
        fake = FakePySerial()
        _open_with_lines(fake, "/dev/ttyFAKE0", {})
        self.assertEqual(fake.events, [("open", "/dev/ttyFAKE0", {"dtr": True, "rts": True})])

    def test_fd_serial_port_opens_with_configured_lines_and_settings(self) -> None:
        made: list[tuple[FakePySerial, dict[str, Any]]] = []

        def factory(**kw: Any) -> FakePySerial:
            settings = {k: v for k, v in kw.items() if k in DEFAULTS}
            fake = FakePySerial(**settings)
            made.append((fake, kw))
            return fake

        self.patch(serial_link, "serial", types.SimpleNamespace(Serial=factory))
        protocol = Protocol()
        port = FdSerialPort(
            protocol,
            {"port": "/dev/ttyFAKE0", "baudrate": 57600, "stopbits": 2, "timeout": 3.0},
            {"dtr": False, "rts": True},
            FakeReactor(),
        )
        ((fake, kw),) = made
        self.assertEqual(kw, {"timeout": 0, "baudrate": 57600, "stopbits": 2})
        self.assertEqual(
            fake.events[:3],
            [
                ("dtr", False, "closed"),
                ("rts", True, "closed"),
                ("open", "/dev/ttyFAKE0", {"dtr": False, "rts": True}),
            ],
        )
        self.assertTrue(verifyObject(ISerialControl, port.control))
        self.assertFalse(port.control.dtr)
        self.assertTrue(port.control.rts)
        self.assertEqual(port.control.settings()["baudrate"], 57600)
        self.assertEqual(port.control.apply("baudrate", 115200), 115200)
        self.assertEqual(fake.baudrate, 115200)
        self.assertIs(protocol.transport, port)

    def test_fd_serial_port_on_a_pty_with_lines_off(self) -> None:
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        path = os.ttyname(slave)
        os.close(slave)
        port = FdSerialPort(
            Protocol(), {"port": path, "baudrate": 19200}, {"dtr": False, "rts": False}, FakeReactor()
        )
        self.addCleanup(port._serial.close)
        self.assertTrue(port._serial.is_open)
        self.assertEqual(termios.tcgetattr(master)[4], termios.B19200)
        self.assertFalse(port.control.dtr)
        self.assertFalse(port.control.rts)
        # The same interface changes the open port.
        self.assertEqual(port.control.apply("baudrate", 38400), 38400)
        self.assertEqual(termios.tcgetattr(master)[4], termios.B38400)
        os.write(port.fileno(), b"ok")
        self.assertEqual(os.read(master, 2), b"ok")

    def test_url_opens_with_configured_lines(self) -> None:
        # loop:// reports DSR = DTR and CTS = RTS.
        device = _open_pyserial({"port": "loop://", "baudrate": 19200}, {"dtr": False, "rts": False})
        self.addCleanup(device.close)
        self.assertTrue(device.is_open)
        self.assertEqual(device.baudrate, 19200)
        self.assertFalse(device.dsr)
        self.assertFalse(device.cts)
        other = _open_pyserial({"port": "loop://"}, {})
        self.addCleanup(other.close)
        self.assertTrue(other.dsr)
        self.assertTrue(other.cts)


class LineConfigTests(SynchronousTestCase):
    def parse(self, serial_config: dict[str, Any]) -> SerialConfig:
        config = parse_config(
            [
                {
                    "serial": serial_config,
                    "servers": [{"protocol": "tcp", "address": "127.0.0.1", "port": 4000}],
                }
            ]
        )
        return config.ports[0].serial

    def test_booleans_accepted(self) -> None:
        config = self.parse({"port": "/dev/ttyS0", "dtr": False, "rts": True})
        self.assertEqual(dict(config.lines), {"dtr": False, "rts": True})
        self.assertNotIn("dtr", config.settings)
        self.assertNotIn("rts", config.settings)
        self.assertEqual(dict(self.parse({"port": "/dev/ttyS0", "dtr": True}).lines), {"dtr": True})
        self.assertEqual(dict(self.parse({"port": "/dev/ttyS0"}).lines), {})

    def test_non_booleans_refused(self) -> None:
        for key, value in [("dtr", "yes"), ("rts", 0), ("dtr", 1), ("rts", None), ("dtr", "false")]:
            with self.assertRaises(ConfigError) as cm:
                self.parse({"port": "/dev/ttyS0", key: value})
            message = str(cm.exception)
            self.assertNotIn("\n", message)
            self.assertIn(f"serial.{key}", message)
            self.assertIn("true or false", message)


# The threaded transport (pyserial URLs), on the real reactor.


class ThreadedControlTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def open(self, settings: dict[str, Any], lines: dict[str, bool]) -> Any:
        link = SerialLink(SerialConfig(settings=settings, lines=lines), reactor)
        protocol = DeviceProtocol(link)
        transport = yield link.open(protocol)
        self.addCleanup(self.close, link, transport, protocol)
        return transport, protocol

    @defer.inlineCallbacks
    def close(self, link: SerialLink, transport: Any, protocol: DeviceProtocol) -> Any:
        link.close(abort=True)
        yield wait_for(lambda: protocol.reason is not None, what="closed")
        names = {f"ser2tcp read {transport.serial.port}", f"ser2tcp write {transport.serial.port}"}
        yield wait_for(lambda: not any(t.name in names for t in threading.enumerate()), 5, "threads ended")

    @defer.inlineCallbacks
    def test_loop_url_settings_through_the_interface(self) -> Any:
        transport, protocol = yield self.open({"port": "loop://", "baudrate": 9600}, {})
        self.assertIsInstance(transport, ThreadedSerialTransport)
        control = transport.control
        self.assertTrue(verifyObject(ISerialControl, control))
        self.assertEqual(control.settings()["baudrate"], 9600)
        self.assertEqual(control.apply("baudrate", 57600), 57600)
        self.assertEqual(transport.serial.baudrate, 57600)
        self.assertEqual(control.apply("parity", "E"), "E")
        self.assertEqual(control.apply("stopbits", 2), 2)
        self.assertEqual(control.settings()["parity"], "E")
        # loop:// wires RTS to CTS and DTR to DSR
        self.assertEqual(control.modem_lines(), {"cts": True, "dsr": True, "ri": False, "cd": True})
        control.set_line("rts", False)
        self.assertEqual(control.modem_lines()["cts"], False)
        control.set_line("dtr", False)
        self.assertEqual(control.modem_lines()["dsr"], False)
        # data still flows after the changes
        transport.write(b"after")
        yield wait_for(lambda: bytes(protocol.received) == b"after", what="data back from loop://")

    @defer.inlineCallbacks
    def test_loop_url_opens_with_configured_lines(self) -> Any:
        transport, _ = yield self.open({"port": "loop://"}, {"dtr": False, "rts": False})
        self.assertFalse(transport.control.dtr)
        self.assertFalse(transport.control.rts)
        self.assertFalse(transport.serial.dsr)
        self.assertFalse(transport.serial.cts)
