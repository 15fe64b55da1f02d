"""Tests for ser2tcp.hub: one serial port shared by its clients, with fakes."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer, error
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ser2tcp.config import SerialConfig
from ser2tcp.hub import PortHub, State
from ser2tcp.interface import IClientSession, ISerialLink


@implementer(ISerialLink)
class FakeLink:
    """An ISerialLink whose opens the test completes by hand."""

    name = "/dev/ttyFAKE"

    def __init__(self) -> None:
        self.config = SerialConfig(settings={"port": self.name})
        self.opens: list[tuple[Protocol, defer.Deferred[Any]]] = []
        self.closes: list[bool] = []
        self.closed_calls = 0
        self.device: StringTransport | None = None
        self.in_effect: list[Any] = []

    # ISerialLink

    def open(self, protocol: Protocol, in_effect: Any = None) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.opens.append((protocol, d))
        self.in_effect.append(in_effect)
        return d

    def close(self, abort: bool = False) -> None:
        self.closes.append(abort)

    def closed(self) -> None:
        self.closed_calls += 1

    # test controls

    @property
    def protocol(self) -> Protocol:
        return self.opens[-1][0]

    def succeed(self) -> StringTransport:
        """The pending open succeeds: the device is a StringTransport."""
        protocol, d = self.opens[-1]
        self.device = StringTransport()
        protocol.makeConnection(self.device)
        d.callback(self.device)
        return self.device

    def fail(self, why: str = "[Errno 2] could not open port /dev/ttyFAKE") -> None:
        d = self.opens[-1][1]
        d.errback(Failure(OSError(why)))

    def lose(self, reason: Failure | None = None) -> None:
        """The device goes away (or finishes closing)."""
        self.protocol.connectionLost(reason or Failure(error.ConnectionDone()))


@implementer(IClientSession)
class FakeSession:
    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.received: list[bytes] = []
        self.events: list[tuple[str, ...]] = []
        self.reading = True
        self.on_deliver: Callable[[bytes], None] | None = None

    def deliver(self, data: bytes) -> None:
        self.received.append(data)
        if self.on_deliver is not None:
            self.on_deliver(data)

    def pause_reading(self) -> None:
        self.reading = False
        self.events.append(("pause",))

    def resume_reading(self) -> None:
        self.reading = True
        self.events.append(("resume",))

    def close(self, why: str) -> None:
        self.events.append(("close", why))

    def refuse(self, why: str) -> None:
        self.events.append(("refuse", why))

    def abort(self, why: str) -> None:
        self.events.append(("abort", why))

    def notice(self, text: str) -> None:
        self.events.append(("notice", text))

    gone = False

    def when_gone(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def ends(self) -> list[tuple[str, ...]]:
        """The close/refuse/abort calls this session got."""
        return [e for e in self.events if e[0] in ("close", "refuse", "abort")]

    @property
    def data(self) -> bytes:
        return b"".join(self.received)


class HubTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.link = FakeLink()
        self.hub = PortHub(self.link)

    def open_with(self, *peers: str) -> tuple[StringTransport, list[FakeSession]]:
        sessions = [FakeSession(peer) for peer in peers]
        for session in sessions:
            self.hub.attach(session)
        device = self.link.succeed()
        return device, sessions


class FakesTests(SynchronousTestCase):
    def test_fakes_provide_the_interfaces(self) -> None:
        self.assertTrue(verifyObject(ISerialLink, FakeLink()))
        self.assertTrue(verifyObject(IClientSession, FakeSession("a")))


class OpenTests(HubTestCase):
    def test_name_is_the_links(self) -> None:
        self.assertEqual(self.hub.name, "/dev/ttyFAKE")

    def test_first_attach_opens(self) -> None:
        self.assertIs(self.hub.state, State.CLOSED)
        a = FakeSession("a")
        self.hub.attach(a)
        self.assertEqual(len(self.link.opens), 1)
        self.assertIs(self.hub.state, State.OPENING)
        self.hub.attach(FakeSession("b"))
        self.assertEqual(len(self.link.opens), 1)

    def test_clients_paused_until_open(self) -> None:
        a, b = FakeSession("a"), FakeSession("b")
        self.hub.attach(a)
        self.hub.attach(b)
        self.assertFalse(a.reading)
        self.assertFalse(b.reading)
        self.link.succeed()
        self.assertIs(self.hub.state, State.OPEN)
        self.assertTrue(a.reading)
        self.assertTrue(b.reading)
        self.assertEqual(a.events, [("pause",), ("resume",)])

    def test_client_attaching_when_open_is_not_paused(self) -> None:
        self.open_with("a")
        c = FakeSession("c")
        self.hub.attach(c)
        self.assertEqual(c.events, [])
        self.assertEqual(len(self.link.opens), 1)

    def test_hub_registers_a_streaming_producer_on_the_device(self) -> None:
        device, _ = self.open_with("a")
        self.assertIsNotNone(device.producer)
        self.assertTrue(device.streaming)


class DataTests(HubTestCase):
    def test_device_data_reaches_every_session_in_order(self) -> None:
        _, (a, b, c) = self.open_with("a", "b", "c")
        for chunk in (b"one", b"two", b"three"):
            self.link.protocol.dataReceived(chunk)
        for session in (a, b, c):
            self.assertEqual(session.received, [b"one", b"two", b"three"])

    def test_client_data_is_written_to_the_device_in_order(self) -> None:
        device, (a, b) = self.open_with("a", "b")
        self.hub.from_client(a, b"AT\r")
        self.hub.from_client(b, b"ATI\r")
        self.hub.from_client(a, b"+++")
        self.assertEqual(device.value(), b"AT\rATI\r+++")

    def test_client_data_before_open_is_written_once_open(self) -> None:
        a = FakeSession("a")
        self.hub.attach(a)
        self.hub.from_client(a, b"early ")
        self.hub.from_client(a, b"bird ")
        device = self.link.succeed()
        self.assertEqual(device.value(), b"early bird ")
        self.hub.from_client(a, b"later")
        self.assertEqual(device.value(), b"early bird later")

    def test_backlog_is_dropped_when_open_fails(self) -> None:
        a = FakeSession("a")
        self.hub.attach(a)
        self.hub.from_client(a, b"for the first device")
        self.link.fail()
        b = FakeSession("b")
        self.hub.attach(b)
        device = self.link.succeed()
        self.assertEqual(device.value(), b"")

    def test_client_data_while_closing_reaches_the_reopened_device(self) -> None:
        # A client that joins while the device closes is paused, but a chunk
        # read before that (e.g. with a TLS handshake) is kept for the device.
        _, (a,) = self.open_with("a")
        self.hub.detach(a)
        self.assertIs(self.hub.state, State.CLOSING)
        b = FakeSession("b")
        self.hub.attach(b)
        self.hub.from_client(b, b"hello")
        self.link.lose()
        device = self.link.succeed()
        self.assertEqual(device.value(), b"hello")

    def test_backlog_of_a_client_that_left_is_not_written_to_a_later_device(self) -> None:
        # b joins while the device closes, sends, and leaves before it is
        # closed: nobody reopens it, and its bytes must not reach the device
        # that opens for the next client, maybe hours later.
        _, (a,) = self.open_with("a")
        self.hub.detach(a)
        b = FakeSession("b")
        self.hub.attach(b)
        self.hub.from_client(b, b"reboot\r")
        self.hub.detach(b)
        self.link.lose()
        self.assertIs(self.hub.state, State.CLOSED)
        self.assertEqual(len(self.link.opens), 1)
        c = FakeSession("c")
        self.hub.attach(c)
        device = self.link.succeed()
        self.assertEqual(device.value(), b"")

    def test_sessions_detaching_during_fan_out(self) -> None:
        _, (a, b, c) = self.open_with("a", "b", "c")
        a.on_deliver = lambda data: self.hub.detach(a)
        self.link.protocol.dataReceived(b"1")
        self.link.protocol.dataReceived(b"2")
        self.assertEqual(a.received, [b"1"])
        self.assertEqual(b.received, [b"1", b"2"])
        self.assertEqual(c.received, [b"1", b"2"])

    def test_session_detaching_another_during_fan_out(self) -> None:
        _, (a, b, c, d) = self.open_with("a", "b", "c", "d")
        b.on_deliver = lambda data: self.hub.detach(c)
        self.link.protocol.dataReceived(b"1")
        self.link.protocol.dataReceived(b"2")
        for session in (a, b, d):
            self.assertEqual(session.received, [b"1", b"2"], session.peer)
        self.assertNotIn(b"2", c.received)

    def test_last_session_detaching_during_fan_out(self) -> None:
        _, (a, b) = self.open_with("a", "b")
        a.on_deliver = lambda data: self.hub.detach(a)
        b.on_deliver = lambda data: self.hub.detach(b)
        self.link.protocol.dataReceived(b"bye")
        self.assertEqual(a.received, [b"bye"])
        self.assertEqual(b.received, [b"bye"])
        self.assertEqual(self.link.closes, [False])


class FlowControlTests(HubTestCase):
    def test_device_busy_pauses_every_session(self) -> None:
        device, (a, b) = self.open_with("a", "b")
        device.producer.pauseProducing()
        self.assertFalse(a.reading)
        self.assertFalse(b.reading)
        device.producer.resumeProducing()
        self.assertTrue(a.reading)
        self.assertTrue(b.reading)

    def test_repeated_pauses_are_passed_on_once(self) -> None:
        device, (a,) = self.open_with("a")
        a.events.clear()
        device.producer.pauseProducing()
        device.producer.pauseProducing()
        device.producer.resumeProducing()
        device.producer.resumeProducing()
        self.assertEqual(a.events, [("pause",), ("resume",)])

    def test_session_attached_while_busy_starts_paused(self) -> None:
        device, (a,) = self.open_with("a")
        device.producer.pauseProducing()
        c = FakeSession("c")
        self.hub.attach(c)
        self.assertFalse(c.reading)
        device.producer.resumeProducing()
        self.assertTrue(c.reading)

    def test_client_data_still_written_while_busy(self) -> None:
        device, (a,) = self.open_with("a")
        device.producer.pauseProducing()
        self.hub.from_client(a, b"read before the pause")
        self.assertEqual(device.value(), b"read before the pause")

    def test_busy_state_does_not_outlive_the_device(self) -> None:
        device, (a,) = self.open_with("a")
        device.producer.pauseProducing()
        self.link.lose(Failure(error.ConnectionLost("unplugged")))
        b = FakeSession("b")
        self.hub.attach(b)
        self.assertFalse(b.reading)
        self.link.succeed()
        self.assertTrue(b.reading)


class CloseTests(HubTestCase):
    def test_last_detach_closes(self) -> None:
        _, (a, b) = self.open_with("a", "b")
        self.hub.detach(a)
        self.assertEqual(self.link.closes, [])
        self.hub.detach(b)
        self.assertEqual(self.link.closes, [False])
        self.assertIs(self.hub.state, State.CLOSING)
        self.link.lose()
        self.assertIs(self.hub.state, State.CLOSED)
        self.assertEqual(self.link.closed_calls, 1)
        self.assertEqual(a.ends() + b.ends(), [])

    def test_detach_unknown_session_is_ignored(self) -> None:
        _, (a,) = self.open_with("a")
        self.hub.detach(FakeSession("stranger"))
        self.hub.detach(a)
        self.hub.detach(a)
        self.assertEqual(self.link.closes, [False])

    def test_last_detach_while_opening_closes_once_open(self) -> None:
        a = FakeSession("a")
        self.hub.attach(a)
        self.hub.detach(a)
        self.assertEqual(self.link.closes, [])
        self.link.succeed()
        self.assertEqual(self.link.closes, [False])
        self.assertIs(self.hub.state, State.CLOSING)
        self.assertEqual(a.events, [("pause",)])

    def test_attach_after_close_reopens(self) -> None:
        _, (a,) = self.open_with("a")
        self.hub.detach(a)
        self.link.lose()
        b = FakeSession("b")
        self.hub.attach(b)
        self.assertEqual(len(self.link.opens), 2)
        self.assertFalse(b.reading)
        device = self.link.succeed()
        self.assertTrue(b.reading)
        self.link.protocol.dataReceived(b"fresh")
        self.assertEqual(b.received, [b"fresh"])
        self.assertEqual(a.received, [])
        self.hub.from_client(b, b"x")
        self.assertEqual(device.value(), b"x")

    def test_attach_while_closing_reopens_once_closed(self) -> None:
        _, (a,) = self.open_with("a")
        self.hub.detach(a)
        b = FakeSession("b")
        self.hub.attach(b)
        self.assertFalse(b.reading)
        self.assertEqual(len(self.link.opens), 1)
        self.link.lose()
        self.assertEqual(len(self.link.opens), 2)
        self.assertIs(self.hub.state, State.OPENING)
        self.assertEqual(b.ends(), [])
        self.link.succeed()
        self.assertTrue(b.reading)
        self.link.protocol.dataReceived(b"hi")
        self.assertEqual(b.received, [b"hi"])

    def test_stale_protocol_is_ignored(self) -> None:
        _, (a,) = self.open_with("a")
        old = self.link.protocol
        self.hub.detach(a)
        self.link.lose()
        b = FakeSession("b")
        self.hub.attach(b)
        self.link.succeed()
        old.connectionLost(Failure(error.ConnectionLost("late")))
        self.assertIs(self.hub.state, State.OPEN)
        self.assertEqual(b.ends(), [])
        self.assertEqual(self.link.closed_calls, 1)


class OpenFailureTests(HubTestCase):
    def test_open_failure_refuses_waiting_sessions(self) -> None:
        a, b = FakeSession("a"), FakeSession("b")
        self.hub.attach(a)
        self.hub.attach(b)
        self.link.fail("[Errno 2] could not open port /dev/ttyFAKE")
        self.assertIs(self.hub.state, State.CLOSED)
        for session in (a, b):
            self.assertEqual(
                session.ends(),
                [
                    (
                        "refuse",
                        "cannot open serial port /dev/ttyFAKE: [Errno 2] could not open port /dev/ttyFAKE",
                    )
                ],
            )
            self.assertFalse(session.reading)
        self.assertEqual(list(self.hub.sessions), [])
        self.assertEqual(self.link.closes, [])

    def test_next_attach_opens_again(self) -> None:
        self.hub.attach(FakeSession("a"))
        self.link.fail()
        b = FakeSession("b")
        self.hub.attach(b)
        self.assertEqual(len(self.link.opens), 2)
        self.assertFalse(b.reading)
        self.link.succeed()
        self.assertTrue(b.reading)
        self.link.protocol.dataReceived(b"ok")
        self.assertEqual(b.received, [b"ok"])

    def test_refused_session_detaching_is_harmless(self) -> None:
        a = FakeSession("a")
        self.hub.attach(a)
        self.link.fail()
        self.hub.detach(a)
        self.assertIs(self.hub.state, State.CLOSED)
        self.assertEqual(self.link.closes, [])


class DeviceLostTests(HubTestCase):
    def test_hang_up_closes_every_session(self) -> None:
        _, (a, b) = self.open_with("a", "b")
        self.link.lose(Failure(error.ConnectionDone()))
        self.assertIs(self.hub.state, State.CLOSED)
        for session in (a, b):
            self.assertEqual(session.ends(), [("close", "serial port /dev/ttyFAKE lost: device hung up")])
        self.assertEqual(list(self.hub.sessions), [])
        self.assertEqual(self.link.closed_calls, 1)
        self.assertEqual(self.link.closes, [])

    def test_error_closes_every_session_with_its_text(self) -> None:
        _, (a, b) = self.open_with("a", "b")
        self.link.lose(Failure(error.ConnectionLost("read failed: device disconnected")))
        for session in (a, b):
            [(kind, why)] = session.ends()
            self.assertEqual(kind, "close")
            self.assertTrue(why.startswith("serial port /dev/ttyFAKE lost: "), why)
            self.assertIn("read failed: device disconnected", why)

    def test_device_data_after_loss_goes_nowhere(self) -> None:
        _, (a,) = self.open_with("a")
        protocol = self.link.protocol
        self.link.lose()
        protocol.dataReceived(b"ghost")
        self.assertEqual(a.received, [])

    def test_next_attach_reopens(self) -> None:
        _, (a,) = self.open_with("a")
        self.link.lose(Failure(error.ConnectionLost("unplugged")))
        b = FakeSession("b")
        self.hub.attach(b)
        self.assertEqual(len(self.link.opens), 2)
        self.assertFalse(b.reading)
        device = self.link.succeed()
        self.assertTrue(b.reading)
        self.hub.from_client(b, b"again")
        self.assertEqual(device.value(), b"again")

    def test_data_from_a_session_closed_on_loss_never_reaches_a_later_device(self) -> None:
        # A closed session may still be read while it flushes what it was
        # given (RawClient.close only finishes its outbox); the hub no longer
        # has it, so what it sends belongs to no device.
        _, (a,) = self.open_with("a")
        self.link.lose(Failure(error.ConnectionLost("unplugged")))
        self.hub.from_client(a, b"while closed ")
        b = FakeSession("b")
        self.hub.attach(b)
        self.hub.from_client(a, b"while opening ")
        device = self.link.succeed()
        self.hub.from_client(a, b"while open")
        self.hub.from_client(b, b"b's own")
        self.assertEqual(device.value(), b"b's own")

    def test_detach_of_closed_session_after_loss_does_not_close_again(self) -> None:
        _, (a,) = self.open_with("a")
        self.link.lose()
        self.hub.detach(a)  # its connectionLost comes later
        self.assertEqual(self.link.closes, [])


class ShutdownTests(HubTestCase):
    def test_shutdown_closes_sessions_in_order_and_the_device_now(self) -> None:
        _, (a, b) = self.open_with("a", "b")
        self.assertEqual(self.hub.shutdown(), [a, b])
        for session in (a, b):
            # Closed after what they were given is sent, not aborted.
            self.assertEqual(session.ends(), [("close", "ser2tcp is stopping")])
            self.assertIn(("notice", "ser2tcp is stopping"), session.events)
        self.assertEqual(list(self.hub.sessions), [])
        self.assertEqual(self.link.closes, [True])
        self.link.lose(Failure(error.ConnectionAborted()))
        self.assertIs(self.hub.state, State.CLOSED)
        # Closed on purpose: nobody is told the device was lost.
        self.assertEqual(a.ends() + b.ends(), [("close", "ser2tcp is stopping")] * 2)

    def test_device_data_after_shutdown_goes_nowhere(self) -> None:
        _, (a,) = self.open_with("a")
        protocol = self.link.protocol
        self.hub.shutdown()
        protocol.dataReceived(b"late")
        self.assertEqual(a.received, [])

    def test_shutdown_while_closing_aborts_the_flush(self) -> None:
        _, (a,) = self.open_with("a")
        self.hub.detach(a)
        self.hub.shutdown()
        self.assertEqual(self.link.closes, [False, True])

    def test_shutdown_when_closed_does_nothing(self) -> None:
        self.hub.shutdown()
        self.assertEqual(self.link.closes, [])
        self.assertEqual(self.link.opens, [])
        self.successResultOf(self.hub.wait_closed())

    def test_shutdown_while_opening_closes_once_open(self) -> None:
        a = FakeSession("a")
        self.hub.attach(a)
        self.hub.shutdown()
        self.assertEqual(a.ends(), [("close", "ser2tcp is stopping")])
        closed = self.hub.wait_closed()
        self.link.succeed()
        self.assertEqual(len(self.link.closes), 1)
        self.assertNoResult(closed)
        self.link.lose()
        self.successResultOf(closed)


class WaitClosedTests(HubTestCase):
    def test_fires_at_once_when_closed(self) -> None:
        self.assertIsNone(self.successResultOf(self.hub.wait_closed()))

    def test_fires_when_the_device_closes(self) -> None:
        _, (a,) = self.open_with("a")
        first, second = self.hub.wait_closed(), self.hub.wait_closed()
        self.hub.shutdown()
        self.assertNoResult(first)
        self.link.lose()
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))

    def test_fires_when_the_device_is_lost(self) -> None:
        _, (a,) = self.open_with("a")
        closed = self.hub.wait_closed()
        self.link.lose(Failure(error.ConnectionLost("gone")))
        self.successResultOf(closed)

    def test_fires_when_open_fails(self) -> None:
        self.hub.attach(FakeSession("a"))
        closed = self.hub.wait_closed()
        self.assertNoResult(closed)
        self.link.fail()
        self.successResultOf(closed)

    def test_waiters_are_not_fired_twice(self) -> None:
        _, (a,) = self.open_with("a")
        closed = self.hub.wait_closed()
        self.hub.detach(a)
        self.link.lose()
        self.successResultOf(closed)
        self.hub.attach(FakeSession("b"))
        self.link.succeed()
        later = self.hub.wait_closed()
        self.assertNoResult(later)
