"""The console-server side of a port's hub, with fakes and a task.Clock:
always-open ports, devices held and reopened, scrollback with replay, taps
and counters."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ser2tcp.config import PortConfig, SerialConfig
from ser2tcp.hub import PortHub, State
from ser2tcp.interface import IDeviceTap
from ser2tcp.scrollback import Scrollback
from tests.test_hub import FakeLink, FakeSession
from tests.test_serial_control import LogCapture


def port(**kw: Any) -> PortConfig:
    return PortConfig(serial=SerialConfig(settings={"port": "/dev/ttyFAKE"}), servers=(), name="lab1", **kw)


class FakeControl:
    """The settings and lines of an open device (ISerialControl, in part)."""

    def __init__(self) -> None:
        self.dtr, self.rts, self.break_condition = False, True, False

    def settings(self) -> dict[str, Any]:
        return {
            "baudrate": 57600,
            "bytesize": 8,
            "parity": "N",
            "stopbits": 1,
            "xonxoff": False,
            "rtscts": False,
        }


@implementer(IDeviceTap)
class RecordingTap:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.events: list[str] = []
        self.closed = False

    def device_data(self, data: bytes) -> None:
        self.data.append(data)

    def event(self, text: str) -> None:
        self.events.append(text)

    def close(self) -> None:
        self.closed = True


class ConsoleCase(SynchronousTestCase):
    def make(self, **kw: Any) -> PortHub:
        self.clock = Clock()
        self.link = FakeLink()
        self.hub = PortHub(self.link, self.clock, port(**kw))
        return self.hub


class AlwaysOpenTests(ConsoleCase):
    def test_opens_at_start_and_stays_open_without_clients(self) -> None:
        hub = self.make(open="always", scrollback=100)
        hub.start()
        self.assertEqual(len(self.link.opens), 1)
        self.link.succeed()
        self.link.protocol.dataReceived(b"boot log")
        a = FakeSession("a")
        hub.attach(a)
        hub.detach(a)
        self.assertIs(hub.state, State.OPEN)
        self.assertEqual(self.link.closes, [])
        self.assertEqual(hub.scrollback.contents(), b"boot log")  # type: ignore[union-attr]

    def test_on_demand_does_not_open_at_start(self) -> None:
        self.make().start()
        self.assertEqual(self.link.opens, [])

    def test_absent_device_is_retried_quietly(self) -> None:
        hub = self.make(open="always", reopen_interval=2.0)
        logs = LogCapture(self)
        hub.start()
        for _ in range(5):
            self.link.fail("no such device")
            self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), self.clock.seconds() + 2.0)
            self.clock.advance(2.0)
        self.assertEqual(len(self.link.opens), 6)
        self.link.succeed()
        self.assertIs(hub.state, State.OPEN)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no timer while it is there
        warnings = logs.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("lab1: cannot open: no such device (trying again every 2 s)", warnings[0])
        self.assertIn("Serial lab1: device is back after 5 failed tries", logs.text(LogLevel.info))

    def test_lost_device_is_reopened_and_clients_closed(self) -> None:
        hub = self.make(open="always")
        hub.start()
        self.link.succeed()
        a = FakeSession("a")
        hub.attach(a)
        self.link.lose(Failure(OSError("unplugged")))
        self.assertEqual(a.ends(), [("close", "serial port lab1 lost: unplugged")])
        self.clock.advance(1.0)
        self.assertEqual(len(self.link.opens), 2)

    def test_shutdown_stops_retrying(self) -> None:
        hub = self.make(open="always")
        hub.start()
        self.link.fail()
        hub.shutdown()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HoldTests(ConsoleCase):
    def held(self) -> tuple[PortHub, FakeSession]:
        hub = self.make(on_loss="hold", reopen_interval=0.5)
        a = FakeSession("a")
        hub.attach(a)
        device = self.link.succeed()
        device.control = FakeControl()  # type: ignore[attr-defined]
        self.link.lose(Failure(OSError("unplugged")))
        return hub, a

    def test_clients_stay_and_are_told(self) -> None:
        hub, a = self.held()
        self.assertIs(hub.state, State.HELD)
        self.assertEqual(a.ends(), [])
        self.assertIn(("notice", "serial port lab1 lost: unplugged; waiting for it"), a.events)
        self.assertIn(a, hub.sessions)

    def test_reopened_with_the_settings_in_effect(self) -> None:
        hub, a = self.held()
        self.assertEqual(len(self.link.opens), 1)
        self.link.in_effect.clear()
        self.clock.advance(0.5)
        self.link.fail("still gone")
        self.clock.advance(0.5)
        self.assertEqual(len(self.link.opens), 3)
        in_effect = self.link.in_effect[-1]
        self.assertEqual(in_effect["baudrate"], 57600)
        self.assertEqual((in_effect["dtr"], in_effect["rts"]), (False, True))
        device = self.link.succeed()
        self.assertIs(hub.state, State.OPEN)
        self.assertIn(("notice", "serial port lab1 is back"), a.events)
        self.link.protocol.dataReceived(b"new device")
        self.assertEqual(a.received[-1], b"new device")
        hub.from_client(a, b"typed")
        self.assertEqual(device.value(), b"typed")

    def test_input_while_held_is_discarded(self) -> None:
        hub, a = self.held()
        self.assertTrue(a.reading)  # read, so nothing typed now reaches the new device
        logs = LogCapture(self)
        hub.from_client(a, b"rm -rf /")
        self.clock.advance(0.5)
        device = self.link.succeed()
        self.assertEqual(device.value(), b"")
        self.assertEqual(hub.stats.discarded_while_held, 8)
        self.assertIn("8 byte(s) of client input discarded while the device was away", logs.text())

    def test_last_client_leaving_stops_the_retries(self) -> None:
        hub, a = self.held()
        hub.detach(a)
        self.assertIs(hub.state, State.CLOSED)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_client_of_an_absent_device_waits(self) -> None:
        hub = self.make(on_loss="hold")
        a = FakeSession("a")
        hub.attach(a)
        self.link.fail("not plugged in yet")
        self.assertIs(hub.state, State.HELD)
        self.assertEqual(a.ends(), [])
        self.clock.advance(1.0)
        self.link.succeed()
        self.link.protocol.dataReceived(b"hello")
        self.assertEqual(a.received, [b"hello"])

    def test_without_hold_clients_are_refused(self) -> None:
        hub = self.make()
        a = FakeSession("a")
        hub.attach(a)
        self.link.fail("not plugged in")
        self.assertEqual([e[0] for e in a.ends()], ["refuse"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ScrollbackTests(ConsoleCase):
    def test_keeps_the_last_bytes(self) -> None:
        scrollback = Scrollback(10)
        self.assertTrue(verifyObject(IDeviceTap, scrollback))
        for chunk in (b"0123", b"456789", b"abc"):
            scrollback.device_data(chunk)
        self.assertEqual(scrollback.contents(), b"3456789abc")
        scrollback.device_data(b"x" * 25)
        self.assertEqual(scrollback.contents(), b"x" * 10)

    @given(st.integers(1, 300), st.lists(st.binary(max_size=120), max_size=40))
    def test_any_chunks(self, size: int, chunks: list[bytes]) -> None:
        scrollback = Scrollback(size)
        for chunk in chunks:
            scrollback.device_data(chunk)
        self.assertEqual(scrollback.contents(), b"".join(chunks)[-size:] if chunks else b"")

    def test_replay_then_live_without_gap_or_duplicate(self) -> None:
        hub = self.make(open="always", scrollback=1000)
        hub.start()
        self.link.succeed()
        sent = []
        for i in range(50):
            chunk = b"line %d\n" % i
            sent.append(chunk)
            self.link.protocol.dataReceived(chunk)
        late = FakeSession("late")
        # A chunk arriving while the client joins: it is either replayed or
        # delivered live, never both, never neither.
        late.on_deliver = lambda data: None
        hub.attach(late, replay=True)
        self.link.protocol.dataReceived(b"live\n")
        expected = b"".join(sent)[-1000:] + b"live\n"
        self.assertEqual(late.data, expected)

    def test_no_replay_by_default(self) -> None:
        hub = self.make(open="always", scrollback=100)
        hub.start()
        self.link.succeed()
        self.link.protocol.dataReceived(b"old")
        a = FakeSession("a")
        hub.attach(a)
        self.link.protocol.dataReceived(b"new")
        self.assertEqual(a.data, b"new")


class TapAndCounterTests(ConsoleCase):
    def test_taps_see_data_and_events(self) -> None:
        hub = self.make()
        tap = RecordingTap()
        hub.taps.append(tap)
        a = FakeSession("10.0.0.5:41234 TELNET")
        hub.attach(a)
        self.link.succeed()
        self.link.protocol.dataReceived(b"abc")
        hub.detach(a)
        self.link.lose()
        self.assertEqual(tap.data, [b"abc"])
        self.assertEqual(
            tap.events,
            [
                "client 10.0.0.5:41234 TELNET connected",
                "device opened: /dev/ttyFAKE",
                "client 10.0.0.5:41234 TELNET disconnected",
                "device closed",
            ],
        )
        hub.shutdown()
        self.assertTrue(tap.closed)

    def test_counters(self) -> None:
        hub = self.make()
        a = FakeSession("a")
        hub.attach(a)
        self.link.succeed()
        self.clock.advance(3)
        self.link.protocol.dataReceived(b"12345")
        hub.from_client(a, b"xy")
        stats = hub.stats
        self.assertEqual((stats.bytes_from_device, stats.bytes_to_device), (5, 2))
        self.assertEqual((stats.device_opens, stats.opened_at), (1, 0.0))
        self.link.lose(Failure(OSError("gone")))
        self.assertEqual((stats.device_losses, stats.opened_at), (1, None))
