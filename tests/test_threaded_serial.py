"""Tests for ser2tcp.threaded_serial on the real reactor.

pyserial's ``loop://`` gives back what is written to it; a fake pyserial
object lets the tests hold a write or fail a read at will.  Nothing sleeps:
every wait polls a condition, a bounded number of times, until a deadline.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

import serial
from twisted.internet import defer, error, reactor, task
from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ser2tcp.threaded_serial import POLL_INTERVAL, SerialAddress, ThreadedSerialTransport
from tests.helpers import wait_for


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.reason: Failure | None = None
        self.made = 0

    def connectionMade(self) -> None:
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        assert self.reason is None, "connectionLost twice"
        self.reason = reason


@implementer(IPushProducer)
class RecordingProducer:
    def __init__(self, at_resume: Callable[[], Any] = lambda: None) -> None:
        self.events: list[str] = []
        self.at_resume = at_resume
        self.seen_at_resume: list[Any] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")
        self.seen_at_resume.append(self.at_resume())

    def stopProducing(self) -> None:
        self.events.append("stop")


class FakeSerial:
    """A pyserial-like port: reads what ``feed`` gave it, records writes,
    and can hold every write until ``write_gate`` is set."""

    def __init__(self, name: str = "fake://0") -> None:
        self.port = name
        self.timeout: float | None = None
        self.incoming: queue.Queue[bytes] = queue.Queue()
        self.write_gate = threading.Event()
        self.write_gate.set()
        self.writes_started = 0
        self.written: list[bytes] = []
        self.events: list[str] = []
        self.reads = 0
        self.read_error: BaseException | None = None
        self.write_error: BaseException | None = None
        self.closed = False

    def feed(self, data: bytes) -> None:
        for byte in data:
            self.incoming.put(bytes([byte]))

    @property
    def in_waiting(self) -> int:
        return self.incoming.qsize()

    def read(self, size: int = 1) -> bytes:
        self.reads += 1
        if self.read_error is not None:
            raise self.read_error
        data = b""
        try:
            data += self.incoming.get(timeout=self.timeout)
            while len(data) < size:
                data += self.incoming.get_nowait()
        except queue.Empty:
            pass
        return data

    def write(self, data: bytes) -> int:
        self.writes_started += 1
        if self.write_error is not None:
            raise self.write_error
        if not self.write_gate.wait(timeout=30):
            raise serial.SerialTimeoutException("the test never opened the write gate")
        self.written.append(bytes(data))
        self.events.append("write")
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        self.events.append("close")


def is_clean_close(reason: Failure) -> bool:
    return reason.check(error.ConnectionDone, error.ConnectionAborted) is not None


class ThreadedSerialTestCase(TestCase):
    timeout = 60

    def start(self, port: Any) -> tuple[ThreadedSerialTransport, Recorder]:
        before = set(threading.enumerate())
        protocol = Recorder()
        transport = ThreadedSerialTransport(protocol, port, reactor)
        threads = [t for t in set(threading.enumerate()) - before if t.name.startswith("ser2tcp ")]
        self.assertEqual(len(threads), 2)
        self.threads = threads
        self.addCleanup(self.stop, transport, protocol, port, threads)
        return transport, protocol

    @defer.inlineCallbacks
    def stop(self, transport: ThreadedSerialTransport, protocol: Recorder, port: Any, threads: list) -> Any:
        """Close if the test did not, then make sure no thread outlives it."""
        if isinstance(port, FakeSerial):
            port.write_gate.set()
        if protocol.reason is None:
            transport.abortConnection()
        yield wait_for(lambda: protocol.reason is not None, what="connectionLost")
        yield wait_for(lambda: not any(t.is_alive() for t in threads), 5, "both threads ended")

    def lost(self, protocol: Recorder, timeout: float = 10.0) -> defer.Deferred[Any]:
        return wait_for(lambda: protocol.reason is not None, timeout, "connectionLost")


class LoopTests(ThreadedSerialTestCase):
    def loop(self) -> serial.SerialBase:
        return serial.serial_for_url("loop://")

    def test_interfaces_and_connection(self) -> None:
        transport, protocol = self.start(self.loop())
        self.assertTrue(verifyObject(ITransport, transport))
        self.assertTrue(verifyObject(IConsumer, transport))
        self.assertEqual(protocol.made, 1)
        self.assertIs(protocol.transport, transport)
        self.assertTrue(transport.connected)
        self.assertTrue(verifyObject(IAddress, transport.getPeer()))
        self.assertEqual(transport.getPeer(), SerialAddress("loop://"))
        self.assertEqual(str(transport.getHost()), "loop://")

    @defer.inlineCallbacks
    def test_every_byte_value_comes_back(self) -> Any:
        transport, protocol = self.start(self.loop())
        data = bytes(range(256))
        transport.write(data)
        yield wait_for(lambda: len(protocol.received) >= len(data), what="256 bytes back")
        self.assertEqual(bytes(protocol.received), data)
        self.assertIsNone(protocol.reason)

    @defer.inlineCallbacks
    def test_one_mebibyte_comes_back_in_order(self) -> Any:
        transport, protocol = self.start(self.loop())
        chunks = [bytes([i]) * 1024 + bytes(range(256)) * 60 for i in range(64)]  # 64 x 16 KiB
        data = b"".join(chunks)
        self.assertEqual(len(data), 2**20)
        for chunk in chunks:
            transport.write(chunk)
        transport.writeSequence([b"the ", b"end"])
        yield wait_for(lambda: len(protocol.received) >= len(data) + 7, 50, "1 MiB back")
        self.assertEqual(bytes(protocol.received), data + b"the end")

    @defer.inlineCallbacks
    def test_lose_connection(self) -> Any:
        port = self.loop()
        transport, protocol = self.start(port)
        transport.write(b"ping")
        yield wait_for(lambda: protocol.received == b"ping", what="ping back")
        transport.loseConnection()
        self.assertTrue(transport.disconnecting)
        yield self.lost(protocol)
        self.assertTrue(protocol.reason.check(error.ConnectionDone))
        self.assertFalse(transport.connected)
        self.assertFalse(port.is_open)

    @defer.inlineCallbacks
    def test_abort_connection_is_prompt(self) -> Any:
        port = self.loop()
        transport, protocol = self.start(port)
        transport.write(b"x")
        yield wait_for(lambda: protocol.received == b"x", what="x back")
        started = time.monotonic()
        transport.abortConnection()
        yield self.lost(protocol, timeout=5)
        self.assertLess(time.monotonic() - started, 20 * POLL_INTERVAL)
        self.assertTrue(is_clean_close(protocol.reason), protocol.reason)
        self.assertFalse(port.is_open)

    @defer.inlineCallbacks
    def test_abort_during_a_long_write_ends_both_threads_promptly(self) -> Any:
        port = self.loop()
        transport, protocol = self.start(port)
        [writer] = [t for t in self.threads if t.name.startswith("ser2tcp write ")]
        transport.write(b"w" * 2**16)
        # The writer is now putting bytes into the loop one by one.
        yield wait_for(lambda: len(protocol.received) > 0, what="first bytes back")
        started = time.monotonic()
        transport.abortConnection()
        try:
            yield self.lost(protocol, timeout=5)
            took = time.monotonic() - started
            yield wait_for(lambda: not writer.is_alive(), 1, "writer thread ended")
            self.assertLess(took, 20 * POLL_INTERVAL)
        finally:
            # Unblock a stuck writer so that it does not outlive the test:
            # drain the loop's internal queue until the writer is done.
            for _ in range(5000):
                if not writer.is_alive():
                    break
                try:
                    while True:
                        port.queue.get_nowait()
                except queue.Empty:
                    pass
                yield task.deferLater(reactor, 0.001, lambda: None)

    def test_write_after_close_is_ignored(self) -> Any:
        transport, protocol = self.start(self.loop())
        transport.loseConnection()
        transport.write(b"too late")
        transport.abortConnection()  # after loseConnection: still harmless
        d = self.lost(protocol)
        d.addCallback(lambda _: self.assertEqual(bytes(protocol.received), b""))
        return d


class FakeSerialTests(ThreadedSerialTestCase):
    @defer.inlineCallbacks
    def test_device_data_reaches_the_protocol(self) -> Any:
        port = FakeSerial()
        transport, protocol = self.start(port)
        self.assertEqual(port.timeout, POLL_INTERVAL)
        port.feed(b"hello from the device")
        yield wait_for(lambda: protocol.received == b"hello from the device", what="data")

    @defer.inlineCallbacks
    def test_lose_connection_flushes_first(self) -> Any:
        port = FakeSerial()
        port.write_gate.clear()
        transport, protocol = self.start(port)
        transport.write(b"first")
        transport.write(b"second")
        yield wait_for(lambda: port.writes_started == 1, what="writer blocked in write")
        transport.loseConnection()
        transport.write(b"after loseConnection")
        # Let the reader poll a few times: nothing closes while a write is held.
        reads = port.reads
        yield wait_for(lambda: port.reads >= reads + 3, what="reader polling")
        self.assertIsNone(protocol.reason)
        self.assertFalse(port.closed)
        port.write_gate.set()
        yield self.lost(protocol)
        self.assertTrue(protocol.reason.check(error.ConnectionDone), protocol.reason)
        self.assertEqual(b"".join(port.written), b"firstsecond")
        self.assertEqual(port.events[-1], "close")
        self.assertEqual(port.events.count("close"), 1)

    @defer.inlineCallbacks
    def test_abort_discards_what_is_not_written(self) -> Any:
        port = FakeSerial()
        port.write_gate.clear()
        transport, protocol = self.start(port)
        transport.write(b"in progress")
        yield wait_for(lambda: port.writes_started == 1, what="writer blocked in write")
        transport.write(b"queued 1")
        transport.write(b"queued 2")
        transport.abortConnection()
        port.write_gate.set()
        yield self.lost(protocol)
        self.assertTrue(is_clean_close(protocol.reason), protocol.reason)
        self.assertEqual(b"".join(port.written), b"in progress")
        self.assertTrue(port.closed)

    @defer.inlineCallbacks
    def test_producer_paused_over_buffer_size_and_resumed_when_drained(self) -> Any:
        port = FakeSerial()
        port.write_gate.clear()
        transport, protocol = self.start(port)
        producer = RecordingProducer(at_resume=lambda: sum(map(len, port.written)))
        transport.registerProducer(producer, True)
        size = transport.bufferSize
        transport.write(b"a" * size)
        self.assertEqual(producer.events, [])  # exactly bufferSize is not "more than"
        transport.write(b"b")
        self.assertEqual(producer.events, ["pause"])
        transport.write(b"c" * 100)
        self.assertEqual(producer.events, ["pause"])  # paused once
        yield wait_for(lambda: port.writes_started >= 1, what="writer blocked in write")
        self.assertEqual(producer.events, ["pause"])
        port.write_gate.set()
        yield wait_for(lambda: "resume" in producer.events, what="producer resumed")
        self.assertEqual(producer.events, ["pause", "resume"])
        # Resumed only once everything pending had been written.
        self.assertEqual(producer.seen_at_resume, [size + 101])
        self.assertEqual(b"".join(port.written), b"a" * size + b"b" + b"c" * 100)
        # A transport that closes stops its producer.
        transport.loseConnection()
        yield self.lost(protocol)
        self.assertEqual(producer.events, ["pause", "resume", "stop"])

    @defer.inlineCallbacks
    def test_producer_paused_again_after_resume(self) -> Any:
        port = FakeSerial()
        port.write_gate.clear()
        transport, protocol = self.start(port)
        producer = RecordingProducer()
        transport.registerProducer(producer, True)
        transport.write(b"x" * (transport.bufferSize + 1))
        port.write_gate.set()
        yield wait_for(lambda: producer.events == ["pause", "resume"], what="first resume")
        port.write_gate.clear()
        transport.write(b"y" * (transport.bufferSize + 1))
        self.assertEqual(producer.events, ["pause", "resume", "pause"])
        port.write_gate.set()
        yield wait_for(lambda: producer.events[-1] == "resume", what="second resume")

    @defer.inlineCallbacks
    def test_unregistered_producer_is_not_called(self) -> Any:
        port = FakeSerial()
        port.write_gate.clear()
        transport, protocol = self.start(port)
        producer = RecordingProducer()
        transport.registerProducer(producer, True)
        transport.unregisterProducer()
        transport.write(b"x" * (transport.bufferSize + 1))
        port.write_gate.set()
        yield wait_for(lambda: sum(map(len, port.written)) == transport.bufferSize + 1, what="written")
        transport.loseConnection()
        yield self.lost(protocol)
        self.assertEqual(producer.events, [])

    @defer.inlineCallbacks
    def test_read_error_loses_the_connection_with_its_text(self) -> Any:
        port = FakeSerial()
        transport, protocol = self.start(port)
        port.feed(b"last words")
        yield wait_for(lambda: protocol.received == b"last words", what="data before the error")
        port.read_error = serial.SerialException(
            "device reports readiness to read but returned no data (device disconnected?)"
        )
        yield self.lost(protocol)
        self.assertTrue(protocol.reason.check(error.ConnectionLost), protocol.reason)
        self.assertIn(
            "device reports readiness to read but returned no data", protocol.reason.getErrorMessage()
        )
        self.assertTrue(port.closed)
        self.assertFalse(transport.connected)
        transport.write(b"after the loss")
        self.assertEqual(port.written, [])

    @defer.inlineCallbacks
    def test_write_error_loses_the_connection_with_its_text(self) -> Any:
        port = FakeSerial()
        transport, protocol = self.start(port)
        port.write_error = serial.SerialException("write failed: [Errno 5] Input/output error")
        transport.write(b"doomed")
        yield self.lost(protocol)
        self.assertTrue(protocol.reason.check(error.ConnectionLost), protocol.reason)
        self.assertIn("[Errno 5] Input/output error", protocol.reason.getErrorMessage())
        self.assertTrue(port.closed)

    @defer.inlineCallbacks
    def test_data_read_before_the_close_is_delivered_before_connection_lost(self) -> Any:
        port = FakeSerial()
        transport, protocol = self.start(port)
        port.feed(b"abc")
        yield wait_for(lambda: port.incoming.empty(), what="reader took the data")
        transport.loseConnection()
        yield self.lost(protocol)
        self.assertEqual(bytes(protocol.received), b"abc")
