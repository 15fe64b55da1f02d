"""Tests for ser2tcp.serial_link: opening and closing devices for real.

A pseudo-terminal stands in for a serial device with a file descriptor
(``FdSerialPort``), pyserial's ``loop://`` for a URL (the threaded
transport).  Waits poll a condition, a bounded number of times.
"""

from __future__ import annotations

import os
import termios
import threading
from typing import Any

import serial
from twisted.internet import defer, error, reactor
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ser2tcp.config import SerialConfig
from ser2tcp.serial_link import CLOSE_FLUSH_TIMEOUT, DeviceClaims, FdSerialPort, SerialLink, hung_up, is_url
from ser2tcp.threaded_serial import ThreadedSerialTransport
from tests.helpers import wait_for


class DeviceProtocol(Protocol):
    """Records device data and, like the hub, tells the link once closed."""

    def __init__(self, link: SerialLink) -> None:
        self.link = link
        self.received = bytearray()
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.link.closed()


class FakePort:
    def __init__(self, device: str, serial_number: str | None = None, vid: int | None = None) -> None:
        self.device = device
        self.serial_number = serial_number
        self.vid = vid
        self.pid = None


def abort_timers(transport: Any) -> list[Any]:
    """The reactor's pending calls that would abort ``transport`` (the close deadline)."""
    return [c for c in reactor.getDelayedCalls() if c.func == transport.abortConnection]


class SerialLinkTestCase(TestCase):
    timeout = 30

    def pty(self) -> tuple[int, int, str]:
        """A pseudo-terminal: (master fd, slave fd, slave path)."""
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        os.set_blocking(master, False)
        return master, slave, os.ttyname(slave)

    def link(self, settings: dict[str, Any] | None = None, **kw: Any) -> SerialLink:
        link = SerialLink(SerialConfig(settings=settings or {}, **kw), reactor, **self.comports_kw)
        self.addCleanup(self.abort, link)
        return link

    comports_kw: dict[str, Any] = {}

    @defer.inlineCallbacks
    def abort(self, link: SerialLink) -> Any:
        """Close whatever the test left open, and wait for it to be closed."""
        transport = link.transport
        if transport is not None:
            protocol = transport.protocol
            link.close(abort=True)
            yield wait_for(lambda: protocol.reason is not None, what="closed at cleanup")
        if isinstance(transport, ThreadedSerialTransport):
            names = {f"ser2tcp read {transport.serial.port}", f"ser2tcp write {transport.serial.port}"}
            yield wait_for(
                lambda: not any(t.name in names for t in threading.enumerate()), 5, "threads ended"
            )

    @defer.inlineCallbacks
    def read_master(self, master: int, expected: int) -> Any:
        """Read ``expected`` bytes from a pty master, polling."""
        data = bytearray()

        def more() -> bool:
            try:
                data.extend(os.read(master, 65536))
            except BlockingIOError:
                pass
            return len(data) >= expected

        yield wait_for(more, what=f"{expected} bytes from the device")
        return bytes(data)


class UrlTests(SerialLinkTestCase):
    @defer.inlineCallbacks
    def test_url_opens_a_threaded_transport(self) -> Any:
        link = self.link({"port": "loop://", "baudrate": 115200})
        protocol = DeviceProtocol(link)
        transport = yield link.open(protocol)
        self.assertIsInstance(transport, ThreadedSerialTransport)
        self.assertIs(link.transport, transport)
        self.assertIs(protocol.transport, transport)
        self.assertEqual(transport.serial.baudrate, 115200)
        transport.write(b"ping")
        yield wait_for(lambda: protocol.received == b"ping", what="ping back")

    @defer.inlineCallbacks
    def test_close_flushes_then_closes(self) -> Any:
        link = self.link({"port": "loop://"})
        protocol = DeviceProtocol(link)
        transport = yield link.open(protocol)
        transport.write(b"x" * 1000)
        link.close()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(abort_timers(transport)), 1)  # the flush has a deadline
        yield wait_for(lambda: protocol.reason is not None, what="closed")
        self.assertTrue(protocol.reason.check(error.ConnectionDone), protocol.reason)
        self.assertFalse(transport.serial.is_open)
        # closed() (called by the protocol, as the hub does) cancels the deadline.
        self.assertEqual(abort_timers(transport), [])
        self.assertIsNone(link.transport)

    @defer.inlineCallbacks
    def test_close_abort(self) -> Any:
        link = self.link({"port": "loop://"})
        protocol = DeviceProtocol(link)
        transport = yield link.open(protocol)
        link.close(abort=True)
        self.assertEqual(abort_timers(transport), [])
        yield wait_for(lambda: protocol.reason is not None, 2, "closed")
        self.assertFalse(transport.serial.is_open)

    @defer.inlineCallbacks
    def test_unknown_url_scheme_fails(self) -> Any:
        link = self.link({"port": "nosuch://device"})
        exc = yield self.assertFailure(link.open(DeviceProtocol(link)), Exception)
        self.assertIn("nosuch", str(exc))
        self.assertIsNone(link.transport)

    @defer.inlineCallbacks
    def test_bad_setting_fails(self) -> Any:
        link = self.link({"port": "loop://", "baudrate": -5})
        exc = yield self.assertFailure(link.open(DeviceProtocol(link)), Exception)
        self.assertIn("-5", str(exc))

    @defer.inlineCallbacks
    def test_reopen_after_close(self) -> Any:
        link = self.link({"port": "loop://"})
        first = DeviceProtocol(link)
        yield link.open(first)
        link.close()
        yield wait_for(lambda: first.reason is not None, what="closed")
        second = DeviceProtocol(link)
        transport = yield link.open(second)
        transport.write(b"again")
        yield wait_for(lambda: second.received == b"again", what="data on the second open")


class PtyTests(SerialLinkTestCase):
    def test_device_path_opens_an_fd_serial_port_with_every_setting(self) -> None:
        master, slave, path = self.pty()
        settings = {
            "port": path,
            "baudrate": 19200,
            "stopbits": serial.STOPBITS_TWO,
            "xonxoff": True,
            "exclusive": True,  # Twisted's own SerialPort would not pass this one
            "timeout": 1.0,  # blocking-only settings are left out
            "write_timeout": 2.0,
            "inter_byte_timeout": 0.5,
        }
        link = self.link(settings)
        protocol = DeviceProtocol(link)
        transport = self.successResultOf(link.open(protocol))
        self.assertIsInstance(transport, FdSerialPort)
        self.assertIs(link.transport, transport)
        self.assertIs(protocol.transport, transport)

        attrs = termios.tcgetattr(slave)
        self.assertEqual(attrs[4], termios.B19200)  # ispeed
        self.assertEqual(attrs[5], termios.B19200)  # ospeed
        self.assertTrue(attrs[2] & termios.CSTOPB)
        self.assertTrue(attrs[0] & termios.IXON)
        self.assertEqual(transport._serial.baudrate, 19200)
        self.assertEqual(transport._serial.timeout, 0)
        with self.assertRaises(serial.SerialException):
            serial.Serial(path, exclusive=True)

    def test_default_settings(self) -> None:
        master, slave, path = self.pty()
        link = self.link({"port": path})
        self.successResultOf(link.open(DeviceProtocol(link)))
        self.assertEqual(termios.tcgetattr(slave)[4], termios.B9600)

    @defer.inlineCallbacks
    def test_data_both_ways(self) -> Any:
        master, slave, path = self.pty()
        link = self.link({"port": path, "baudrate": 115200})
        protocol = DeviceProtocol(link)
        transport = self.successResultOf(link.open(protocol))
        os.write(master, b"from the device\n")
        yield wait_for(lambda: protocol.received == b"from the device\n", what="device data")
        transport.write(b"to the device\n")
        data = yield self.read_master(master, 14)
        self.assertEqual(data, b"to the device\n")

    @defer.inlineCallbacks
    def test_close_flushes_then_closes(self) -> Any:
        master, slave, path = self.pty()
        link = self.link({"port": path})
        protocol = DeviceProtocol(link)
        transport = self.successResultOf(link.open(protocol))
        payload = bytes(range(256)) * 256  # more than the pty takes at once
        transport.write(payload)
        link.close()
        self.assertEqual(len(abort_timers(transport)), 1)
        data = yield self.read_master(master, len(payload))
        self.assertEqual(data, payload)
        yield wait_for(lambda: protocol.reason is not None, what="closed")
        self.assertTrue(protocol.reason.check(error.ConnectionDone), protocol.reason)
        self.assertEqual(abort_timers(transport), [])
        self.assertIsNone(link.transport)
        self.assertFalse(transport._serial.is_open)

    def test_close_abort_closes_now(self) -> None:
        master, slave, path = self.pty()
        link = self.link({"port": path})
        protocol = DeviceProtocol(link)
        transport = self.successResultOf(link.open(protocol))
        transport.write(b"x" * 200000)  # never read: cannot be flushed
        link.close(abort=True)
        self.assertIsNotNone(protocol.reason)  # at once, not on a later turn
        self.assertTrue(protocol.reason.check(error.ConnectionAborted), protocol.reason)
        self.assertFalse(transport._serial.is_open)
        self.assertIsNone(link.transport)
        self.assertEqual(abort_timers(transport), [])
        link.close(abort=True)  # nothing open: nothing happens

    def test_missing_device_fails_naming_it(self) -> None:
        path = os.path.abspath(self.mktemp())
        link = self.link({"port": path})
        failure = self.failureResultOf(link.open(DeviceProtocol(link)))
        self.assertIn(path, failure.getErrorMessage())
        self.assertIsNone(link.transport)

    def test_close_without_device_does_nothing(self) -> None:
        link = self.link({"port": "/dev/null"})
        link.close()
        link.close(abort=True)
        link.closed()
        self.assertIsNone(link.transport)


class MatchTests(SerialLinkTestCase):
    def setUp(self) -> None:
        self.ports: list[FakePort] = []
        self.comports_calls = 0

        def comports() -> list[FakePort]:
            self.comports_calls += 1
            return list(self.ports)

        self.comports_kw = {"comports": comports}

    def test_match_opens_the_matching_device(self) -> None:
        master, slave, path = self.pty()
        self.ports = [FakePort("/dev/ttyOTHER", "other", 0x1234), FakePort(path, "ser2tcp-TEST", 0x303A)]
        link = self.link({"baudrate": 38400}, match={"serial_number": "ser2tcp-test", "vid": "0x303a"})
        protocol = DeviceProtocol(link)
        transport = self.successResultOf(link.open(protocol))
        self.assertIsInstance(transport, FdSerialPort)
        self.assertEqual(transport._serial.port, path)
        self.assertEqual(termios.tcgetattr(slave)[4], termios.B38400)
        self.assertEqual(self.comports_calls, 1)

    def test_match_is_resolved_at_every_open(self) -> None:
        master, slave, path = self.pty()
        link = self.link({}, match={"serial_number": "ABC"})
        self.failureResultOf(link.open(DeviceProtocol(link)))
        self.ports = [FakePort(path, "ABC")]  # plugged in later
        protocol = DeviceProtocol(link)
        self.successResultOf(link.open(protocol))
        self.assertEqual(self.comports_calls, 2)
        link.close(abort=True)
        self.assertIsNotNone(protocol.reason)

    def test_no_match_fails(self) -> None:
        self.ports = [FakePort("/dev/ttyUSB0", "xyz")]
        link = self.link({}, match={"serial_number": "ABC*"})
        failure = self.failureResultOf(link.open(DeviceProtocol(link)))
        self.assertEqual(failure.getErrorMessage(), 'no device found matching {"serial_number": "ABC*"}')
        self.assertIsNone(link.transport)

    def test_several_matches_fail(self) -> None:
        self.ports = [FakePort("/dev/ttyUSB1", "ABC1"), FakePort("/dev/ttyUSB0", "ABC2")]
        link = self.link({}, match={"serial_number": "ABC*"})
        failure = self.failureResultOf(link.open(DeviceProtocol(link)))
        self.assertEqual(
            failure.getErrorMessage(),
            'several devices match {"serial_number": "ABC*"}: /dev/ttyUSB0, /dev/ttyUSB1',
        )

    def test_comports_failure_fails_the_open(self) -> None:
        def broken() -> list[Any]:
            raise OSError("no /sys/class/tty")

        link = SerialLink(SerialConfig(settings={}, match={"vid": "0x303A"}), reactor, comports=broken)
        failure = self.failureResultOf(link.open(DeviceProtocol(link)))
        self.assertIn("no /sys/class/tty", failure.getErrorMessage())


class FakeTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")

    def abortConnection(self) -> None:
        self.calls.append("abortConnection")


class CloseTimerTests(SynchronousTestCase):
    """The flush deadline of close(), on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.link = SerialLink(SerialConfig(settings={"port": "loop://"}), self.clock)  # type: ignore[arg-type]
        self.transport = FakeTransport()
        self.link.transport = self.transport

    def test_close_aborts_a_flush_that_never_ends(self) -> None:
        self.link.close()
        self.assertEqual(self.transport.calls, ["loseConnection"])
        self.clock.advance(CLOSE_FLUSH_TIMEOUT - 0.1)
        self.assertEqual(self.transport.calls, ["loseConnection"])
        self.clock.advance(0.1)
        self.assertEqual(self.transport.calls, ["loseConnection", "abortConnection"])

    def test_closed_cancels_the_deadline(self) -> None:
        self.link.close()
        self.link.closed()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.link.transport)
        self.clock.advance(CLOSE_FLUSH_TIMEOUT * 2)
        self.assertEqual(self.transport.calls, ["loseConnection"])

    def test_one_deadline_for_repeated_closes(self) -> None:
        self.link.close()
        self.link.close()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_abort_has_no_deadline(self) -> None:
        self.link.close(abort=True)
        self.assertEqual(self.transport.calls, ["abortConnection"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_abort_during_a_flush(self) -> None:
        self.link.close()
        self.link.close(abort=True)
        self.assertEqual(self.transport.calls, ["loseConnection", "abortConnection"])
        self.link.closed()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_new_deadline_after_closed(self) -> None:
        self.link.close()
        self.link.closed()
        self.link.transport = self.transport
        self.link.close()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)


class IsUrlTests(SynchronousTestCase):
    def test_is_url(self) -> None:
        self.assertTrue(is_url("loop://"))
        self.assertTrue(is_url("rfc2217://host:2217"))
        self.assertTrue(is_url("socket://127.0.0.1:7000"))
        self.assertFalse(is_url("/dev/ttyUSB0"))
        self.assertFalse(is_url("COM3"))


class SharedDeviceTests(SerialLinkTestCase):
    """One device opened twice, and empty reads that are not hang-ups."""

    def test_empty_read_of_an_idle_tty_is_no_hang_up(self) -> None:
        master, _, path = self.pty()
        first, second = serial.Serial(path, timeout=0), serial.Serial(path, timeout=0)
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        os.write(master, b"for one of them")
        for _ in range(1000):  # the first reader takes it all
            try:
                if os.read(first.fileno(), 100):
                    break
            except BlockingIOError:
                pass
        # pyserial's VMIN = VTIME = 0: the other reads nothing, not EAGAIN.
        self.assertEqual(os.read(second.fileno(), 100), b"")
        self.assertFalse(hung_up(second.fileno()))

    def test_closed_master_is_a_hang_up(self) -> None:
        master, slave = os.openpty()
        path = os.ttyname(slave)
        os.close(slave)
        device = serial.Serial(path, timeout=0)
        self.addCleanup(device.close)
        os.close(master)
        self.assertTrue(hung_up(device.fileno()))

    @defer.inlineCallbacks
    def test_spurious_wake_up_does_not_lose_the_device(self) -> Any:
        master, _, path = self.pty()
        link = self.link({"port": path})
        protocol = DeviceProtocol(link)
        transport = yield link.open(protocol)
        other = serial.Serial(path, timeout=0)  # another reader of the same tty
        self.addCleanup(other.close)
        os.write(master, b"taken by the other")
        for _ in range(1000):
            try:
                if os.read(other.fileno(), 100):
                    break
            except BlockingIOError:
                pass
        self.assertIsNone(transport.doRead())  # woken, nothing there: not lost
        os.write(master, b"ours")
        yield wait_for(lambda: protocol.received == b"ours", what="data after the empty read")
        self.assertIsNone(protocol.reason)


class DeviceClaimTests(SerialLinkTestCase):
    comports_kw = {"comports": lambda: [FakePort("/dev/null", serial_number="A"), FakePort("/dev/zero", "B")]}

    def test_claims(self) -> None:
        claims = DeviceClaims()
        key = claims.claim("/dev/null", "a")
        self.assertEqual(claims.claim("/dev/null", "a"), key)  # the holder again
        with self.assertRaises(Exception) as caught:
            claims.claim("/dev/../dev/null", "b")
        self.assertEqual(str(caught.exception), "/dev/../dev/null is in use by port a")
        claims.release(key)
        claims.claim("/dev/null", "b")

    @defer.inlineCallbacks
    def test_second_port_matching_the_same_device_is_refused(self) -> Any:
        master, _, path = self.pty()
        claims = DeviceClaims()
        comports = {"comports": lambda: [FakePort(path, serial_number="AB12")]}
        config = SerialConfig(match={"serial_number": "AB*"})
        first = SerialLink(config, reactor, port_name="board", claims=claims, **comports)
        second = SerialLink(
            SerialConfig(match={"serial_number": "*12"}),
            reactor,
            port_name="other",
            claims=claims,
            **comports,
        )
        self.addCleanup(self.abort, first)
        self.addCleanup(self.abort, second)
        yield first.open(DeviceProtocol(first))
        failure = yield self.assertFailure(second.open(DeviceProtocol(second)), Exception)
        self.assertEqual(str(failure), f"{path} is in use by port board")
        # Once the first has closed it, the second may have it.
        protocol = first.transport.protocol
        first.close(abort=True)
        yield wait_for(lambda: protocol.reason is not None, what="closed")
        yield second.open(DeviceProtocol(second))
        self.assertIsNotNone(second.transport)
