"""A Twisted transport for pyserial ports that have no pollable descriptor.

pyserial URL handlers (``loop://``, ``socket://``, ``rfc2217://``,
``spy://``) and Windows COM ports cannot be watched by the reactor, so this
transport blocks on them in two threads of its own:

* the reader reads whatever arrives and hands it to the protocol in the
  reactor thread (``callFromThread``), in order;
* the writer writes what the protocol's peers sent, in order, and reports
  progress back, so that a registered producer is paused while more than
  :attr:`bufferSize` bytes wait, exactly as with a Twisted ``FileDescriptor``.

Everything the protocol sees happens in the reactor thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet import error
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IProducer,
    IProtocol,
    IPushProducer,
    IReactorFromThreads,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .serial_control import SerialControl

#: How long a blocked read waits before it looks at the stop flag again.
POLL_INTERVAL = 0.05

#: How long closing waits for the writer thread to finish its current write.
WRITER_GRACE = 1.0
#: Largest single write handed to pyserial.
WRITE_SLICE = 4096

_STOP = object()


@implementer(IAddress)
@dataclass(frozen=True)
class SerialAddress:
    """Both ends of a device transport: the pyserial port name or URL."""

    port: str

    def __str__(self) -> str:
        return self.port


@implementer(ITransport, IConsumer, IPushProducer)
class ThreadedSerialTransport:
    bufferSize = 2**16

    def __init__(self, protocol: IProtocol, port: Any, reactor: IReactorFromThreads) -> None:
        self.protocol = protocol
        self.serial = port  # an open pyserial object
        self._reactor = reactor
        self.serial.timeout = POLL_INTERVAL
        self.control = SerialControl(port, str(port.port))
        self._pending = 0  # bytes handed to the writer and not yet written
        self._writes: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._reading = threading.Event()
        self._reading.set()
        self._error: BaseException | None = None
        self.producer: IPushProducer | None = None
        self._producer_paused = False
        self.disconnecting = False
        self.connected = True
        self._lost = False
        protocol.makeConnection(self)
        self._threads = [
            threading.Thread(target=self._read_loop, name=f"ser2tcp read {port.port}", daemon=True),
            threading.Thread(target=self._write_loop, name=f"ser2tcp write {port.port}", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # ITransport

    def write(self, data: bytes) -> None:
        if not self.connected or self.disconnecting or not data:
            return
        self._pending += len(data)
        self._writes.put(data)
        if self._pending > self.bufferSize and self.producer is not None and not self._producer_paused:
            self._producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close after everything written so far reached the device."""
        if self.connected and not self.disconnecting:
            self.disconnecting = True
            self._reading.set()
            self._writes.put(_STOP)

    def abortConnection(self) -> None:
        """Close now; what was not yet written is discarded."""
        if not self.connected:
            return
        self.disconnecting = True
        self._stop.set()
        self._reading.set()
        self._writes.put(_STOP)

    def getPeer(self) -> SerialAddress:
        return SerialAddress(str(self.serial.port))

    getHost = getPeer

    # IPushProducer: pausing stops delivering device data

    def pauseProducing(self) -> None:
        self._reading.clear()

    def resumeProducing(self) -> None:
        self._reading.set()

    def stopProducing(self) -> None:
        self.abortConnection()

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        # Only streaming producers are registered here (the hub's gate).
        self.producer = cast(IPushProducer, producer)
        self._producer_paused = False

    def unregisterProducer(self) -> None:
        self.producer = None

    # threads

    def _read_loop(self) -> None:
        port = self.serial
        call = self._reactor.callFromThread
        try:
            while not self._stop.is_set():
                if not self._reading.wait(POLL_INTERVAL):
                    continue
                data = port.read(1)
                if data:
                    waiting = port.in_waiting
                    if waiting:
                        data += port.read(waiting)
                    call(self._deliver, data)
        except BaseException as e:  # the device is gone, whatever pyserial raised
            self._error = self._error or e
        self._stop.set()
        self._writes.put(_STOP)
        self._drain_until_writer_ends(port)
        try:
            port.close()
        except Exception:
            pass
        call(self._closed)

    def _drain_until_writer_ends(self, port: Any) -> None:
        """Unblock a writer stuck in a long write (closing, or a device that
        takes data only as it is read, as ``loop://``): cancel the write where
        pyserial can, and keep reading (discarding) for a bounded time."""
        writer = self._threads[1]
        cancel = getattr(port, "cancel_write", None)
        if cancel is not None:
            try:
                cancel()
            except Exception:
                pass
        deadline = time.monotonic() + WRITER_GRACE
        while writer.is_alive() and time.monotonic() < deadline:
            try:
                port.read(max(port.in_waiting, 1))
            except Exception:
                break
        writer.join(timeout=max(0.0, deadline - time.monotonic()))

    def _write_loop(self) -> None:
        port = self.serial
        call = self._reactor.callFromThread
        while True:
            data = self._writes.get()
            if data is _STOP or self._stop.is_set():
                break
            try:
                # In slices, so that closing never waits for a long write.
                for start in range(0, len(data), WRITE_SLICE):
                    if self._stop.is_set():
                        break
                    port.write(data[start : start + WRITE_SLICE])
                port.flush()
            except BaseException as e:
                self._error = self._error or e
                break
            call(self._written, len(data))
        self._stop.set()

    # back in the reactor thread

    def _deliver(self, data: bytes) -> None:
        if self.connected and not self._lost:
            self.protocol.dataReceived(data)

    def _written(self, n: int) -> None:
        self._pending -= n
        if self._pending == 0 and self._producer_paused and self.producer is not None:
            self._producer_paused = False
            self.producer.resumeProducing()

    def _closed(self) -> None:
        self._lost = True
        self.connected = False
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        if self._error is not None:
            reason = Failure(error.ConnectionLost(str(self._error)))
        else:
            reason = Failure(error.ConnectionDone())
        self.protocol.connectionLost(reason)
