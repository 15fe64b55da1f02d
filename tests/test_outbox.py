"""Tests for ser2tcp.outbox: a client's send queue, timeouts and limits."""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ser2tcp.outbox import Outbox


class PausingTransport(StringTransport):
    """Pauses its producer on every write once more than ``threshold`` bytes
    were written since the last ``clear()``, as a Twisted transport does once
    its buffer is over ``bufferSize``."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold
        self.pauses = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > self.threshold and self.producer is not None:
            self.pauses += 1
            self.producer.pauseProducing()


class OutboxTestCase(SynchronousTestCase):
    send_timeout: float | None = 5.0
    buffer_limit: int | None = None

    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = self.make_transport()
        self.dropped: list[str] = []
        self.outbox = Outbox(
            self.transport, self.clock, self.send_timeout, self.buffer_limit, self.dropped.append
        )
        self.transport.registerProducer(self.outbox, True)

    def make_transport(self) -> StringTransport:
        return StringTransport()

    def assertNotAborted(self) -> None:
        self.assertFalse(self.transport.disconnected)
        self.assertEqual(self.dropped, [])

    def assertAborted(self) -> None:
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(len(self.dropped), 1, self.dropped)


class SendTests(OutboxTestCase):
    def test_provides_push_producer(self) -> None:
        self.assertTrue(verifyObject(IPushProducer, self.outbox))

    def test_send_writes_through_when_not_paused(self) -> None:
        self.outbox.send(b"abc")
        self.assertEqual(self.transport.value(), b"abc")
        self.outbox.send(b"def")
        self.assertEqual(self.transport.value(), b"abcdef")
        self.assertEqual(self.outbox.queued, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_paused_send_queues(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.send(b"one")
        self.outbox.send(b"two")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.outbox.queued, 6)
        self.outbox.resumeProducing()
        self.assertEqual(self.transport.value(), b"onetwo")
        self.assertEqual(self.outbox.queued, 0)
        self.outbox.send(b"three")
        self.assertEqual(self.transport.value(), b"onetwothree")
        self.assertNotAborted()

    def test_written_before_pause_then_queued_in_order(self) -> None:
        self.outbox.send(b"1")
        self.outbox.pauseProducing()
        self.outbox.send(b"2")
        self.outbox.send(b"3")
        self.assertEqual(self.transport.value(), b"1")
        self.outbox.resumeProducing()
        self.outbox.send(b"4")
        self.assertEqual(self.transport.value(), b"1234")

    def test_pause_is_idempotent(self) -> None:
        self.outbox.pauseProducing()
        self.clock.advance(2)
        self.outbox.pauseProducing()
        self.outbox.pauseProducing()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        # The timer still measures from the first pause.
        self.clock.advance(2.9)
        self.assertNotAborted()
        self.clock.advance(0.2)
        self.assertAborted()

    def test_resume_without_pause_is_harmless(self) -> None:
        self.outbox.resumeProducing()
        self.outbox.send(b"x")
        self.assertEqual(self.transport.value(), b"x")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SendTimeoutTests(OutboxTestCase):
    def test_timeout_while_paused_aborts(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.send(b"stuck")
        self.clock.advance(4.9)
        self.assertNotAborted()
        self.clock.advance(0.1)
        self.assertAborted()
        self.assertIn("send_timeout", self.dropped[0])
        self.assertIn("5 s", self.dropped[0])
        self.assertEqual(self.outbox.queued, 0)
        self.assertTrue(self.outbox.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout_even_with_nothing_queued(self) -> None:
        # Twisted's own buffer is full and never drains: that is enough.
        self.outbox.pauseProducing()
        self.clock.advance(5)
        self.assertAborted()

    def test_resume_before_timeout_cancels_it(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.send(b"late")
        self.clock.advance(4)
        self.outbox.resumeProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertNotAborted()
        self.assertEqual(self.transport.value(), b"late")

    def test_each_pause_gets_a_fresh_timeout(self) -> None:
        self.outbox.pauseProducing()
        self.clock.advance(4)
        self.outbox.resumeProducing()
        self.outbox.pauseProducing()
        self.clock.advance(4)
        self.assertNotAborted()
        self.clock.advance(1)
        self.assertAborted()

    def test_nothing_written_after_drop(self) -> None:
        self.outbox.send(b"before")
        self.outbox.pauseProducing()
        self.outbox.send(b"lost")
        self.clock.advance(5)
        self.assertAborted()
        self.outbox.send(b"after")
        self.outbox.resumeProducing()
        self.outbox.send(b"after again")
        self.assertEqual(self.transport.value(), b"before")

    def test_drop_calls_on_drop_once(self) -> None:
        self.outbox.pauseProducing()
        self.clock.advance(5)
        self.outbox.drop("again")
        self.outbox.finish()
        self.assertEqual(len(self.dropped), 1)


class NoSendTimeoutTests(OutboxTestCase):
    send_timeout = None

    def test_no_timer_while_paused(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.send(b"x")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertNotAborted()
        self.outbox.resumeProducing()
        self.assertEqual(self.transport.value(), b"x")

    def test_finish_still_has_a_default_timeout(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.send(b"x")
        self.outbox.finish()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(4.9)
        self.assertNotAborted()
        self.clock.advance(0.1)
        self.assertAborted()


class ZeroSendTimeoutTests(OutboxTestCase):
    send_timeout = 0.0

    def test_any_pause_lasting_a_reactor_turn_aborts(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.resumeProducing()
        self.clock.advance(0)
        self.assertNotAborted()
        self.outbox.pauseProducing()
        self.clock.advance(0)
        self.assertAborted()


class BufferLimitTests(OutboxTestCase):
    buffer_limit = 10

    def test_limit_applies_to_our_queue_only(self) -> None:
        self.outbox.send(b"x" * 100)
        self.assertEqual(len(self.transport.value()), 100)
        self.assertNotAborted()

    def test_filling_up_to_the_limit_is_fine(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.send(b"12345")
        self.outbox.send(b"67890")
        self.assertEqual(self.outbox.queued, 10)
        self.assertNotAborted()
        self.outbox.resumeProducing()
        self.assertEqual(self.transport.value(), b"1234567890")

    def test_exceeding_the_limit_aborts_at_once(self) -> None:
        self.outbox.send(b"sent")
        self.outbox.pauseProducing()
        self.outbox.send(b"12345")
        self.outbox.send(b"67890")
        self.outbox.send(b"!")
        self.assertAborted()
        self.assertEqual(self.dropped, ["buffer_limit of 10 bytes exceeded"])
        self.assertEqual(self.outbox.queued, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # No hole: nothing after the drop, not even what was queued before it.
        self.outbox.resumeProducing()
        self.outbox.send(b"more")
        self.assertEqual(self.transport.value(), b"sent")

    def test_one_big_chunk_over_the_limit(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.send(b"x" * 11)
        self.assertAborted()

    def test_limit_counts_what_is_still_queued(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.send(b"x" * 8)
        self.outbox.resumeProducing()
        self.outbox.pauseProducing()
        self.outbox.send(b"y" * 8)
        self.outbox.send(b"z" * 2)
        self.assertNotAborted()
        self.outbox.send(b"!")
        self.assertAborted()


class RefillTests(OutboxTestCase):
    def make_transport(self) -> StringTransport:
        return PausingTransport(threshold=25)

    def test_refill_stops_when_the_transport_pauses_again(self) -> None:
        self.outbox.pauseProducing()
        chunks = [bytes([65 + i]) * 10 for i in range(10)]
        for chunk in chunks:
            self.outbox.send(chunk)
        self.assertEqual(self.outbox.queued, 100)

        self.outbox.resumeProducing()
        # 10, 20, then 30 > 25: paused again after the third chunk.
        self.assertEqual(self.transport.value(), b"".join(chunks[:3]))
        self.assertTrue(self.outbox.paused)
        self.assertEqual(self.outbox.queued, 70)
        self.assertEqual(self.transport.pauses, 1)
        # Paused again, so a new send_timeout runs for this buffer.
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

        received = self.transport.value()
        for _ in range(10):  # the client drains its buffer, Twisted resumes us
            if not self.outbox.queued:
                break
            self.transport.clear()
            self.outbox.resumeProducing()
            received += self.transport.value()
        self.assertEqual(received, b"".join(chunks))
        self.assertEqual(self.outbox.queued, 0)
        self.assertNotAborted()

    def test_timeout_measures_each_refill(self) -> None:
        self.outbox.pauseProducing()
        for _ in range(10):
            self.outbox.send(b"x" * 10)
        for _ in range(3):  # drains every 4 s: never aborted, though slow overall
            self.clock.advance(4)
            self.transport.clear()
            self.outbox.resumeProducing()
        self.assertNotAborted()
        self.assertEqual(self.outbox.queued, 10)
        self.clock.advance(5)
        self.assertAborted()


class FinishTests(OutboxTestCase):
    def test_finish_with_empty_queue_closes_now(self) -> None:
        self.outbox.send(b"bye")
        self.outbox.finish()
        self.assertIsNone(self.transport.producer)
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)
        self.assertEqual(self.transport.value(), b"bye")

    def test_finish_with_a_queue_waits_for_resume(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.send(b"last words")
        self.outbox.finish()
        self.assertFalse(self.transport.disconnecting)
        self.assertIs(self.transport.producer, self.outbox)
        self.assertEqual(self.transport.value(), b"")
        self.outbox.resumeProducing()
        self.assertEqual(self.transport.value(), b"last words")
        self.assertIsNone(self.transport.producer)
        self.assertTrue(self.transport.disconnecting)
        self.assertNotAborted()

    def test_finish_aborts_a_client_that_never_drains(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.send(b"never read")
        self.clock.advance(3)
        self.outbox.finish()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(2)
        self.assertAborted()
        self.assertIn("send_timeout", self.dropped[0])
        self.assertEqual(self.transport.value(), b"")

    def test_finish_aborts_when_the_last_flush_never_ends(self) -> None:
        # Nothing of ours queued, but the transport's loseConnection waits for
        # a flush that a stuck client never allows.
        self.outbox.send(b"in Twisted's buffer")
        self.outbox.finish()
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(5)
        self.assertAborted()

    def test_finish_timer_is_not_reset_by_partial_drains(self) -> None:
        transport = PausingTransport(threshold=5)
        outbox = Outbox(transport, self.clock, 5.0, None, self.dropped.append)
        transport.registerProducer(outbox, True)
        outbox.pauseProducing()
        for _ in range(5):
            outbox.send(b"x" * 4)
        outbox.finish()
        self.clock.advance(3)
        transport.clear()
        outbox.resumeProducing()  # takes 8 bytes, pauses again
        self.assertTrue(outbox.paused)
        self.assertTrue(outbox.queued)
        self.clock.advance(2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(len(self.dropped), 1)

    def test_finish_twice(self) -> None:
        self.outbox.finish()
        self.outbox.finish()
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_finish_after_drop_does_nothing(self) -> None:
        self.outbox.drop("gone")
        self.assertEqual(self.dropped, ["gone"])
        self.outbox.finish()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIs(self.transport.producer, self.outbox)

    def test_stop_producing_after_finish_cancels_the_timer(self) -> None:
        self.outbox.finish()
        self.outbox.stopProducing()  # what the owner does in connectionLost
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)
        self.assertFalse(self.transport.disconnected)
        self.assertEqual(self.dropped, [])


class StopProducingTests(OutboxTestCase):
    def test_stop_cancels_the_send_timeout(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.send(b"x")
        self.outbox.stopProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.outbox.queued, 0)
        self.clock.advance(60)
        self.assertEqual(self.dropped, [])
        self.assertFalse(self.transport.disconnected)

    def test_stop_cancels_every_timer(self) -> None:
        self.outbox.pauseProducing()
        self.outbox.send(b"x")
        self.outbox.finish()
        self.outbox.pauseProducing()
        self.outbox.stopProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothing_written_after_stop(self) -> None:
        self.outbox.send(b"a")
        self.outbox.stopProducing()
        self.outbox.send(b"b")
        self.outbox.resumeProducing()
        self.assertEqual(self.transport.value(), b"a")
        self.outbox.pauseProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])
