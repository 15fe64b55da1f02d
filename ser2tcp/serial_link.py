"""SerialLink: find, open and close one configured serial device.

Two transports carry device data, and the hub cannot tell them apart:

* a device with a file descriptor (``/dev/tty*`` on Linux and macOS) uses
  Twisted's own ``SerialPort``, polled by the reactor like a socket;
* a pyserial URL (``loop://``, ``socket://``, ...) or a port whose descriptor
  cannot be polled (Windows) uses :class:`ThreadedSerialTransport`.

Twisted's ``SerialPort`` passes only a few settings to pyserial, so ours
builds the pyserial object itself from every configured keyword.
"""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import serial
from serial.tools import list_ports
from twisted.internet import defer, error, main, threads
from twisted.internet.interfaces import IProtocol
from twisted.internet.serialport import SerialPort
from twisted.python.failure import Failure
from zope.interface import implementer

from .config import LINE_KEYS, SerialConfig
from .interface import ISerialLink
from .serial_control import SerialControl
from .threaded_serial import ThreadedSerialTransport
from .usb import Comports, find_device

#: Most bytes gathered from the device into one chunk.
READ_LIMIT = 65536
#: A read this long suggests the tty has more ready (it hands out 4095).
_TTY_CHUNK = 4000

#: How long closing may wait for pending writes to reach the device.
CLOSE_FLUSH_TIMEOUT = 10.0

#: Settings that only make sense for pyserial's own blocking reads/writes;
#: the reactor-driven transport reads and writes the descriptor itself.
_BLOCKING_ONLY = ("timeout", "write_timeout", "inter_byte_timeout")

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorFDSet, IReactorThreads, IReactorTime

    class _Reactor(IReactorFDSet, IReactorThreads, IReactorTime):
        """The reactor interfaces a SerialLink uses (every reactor on which
        ser2tcp runs provides them; no one Twisted interface names them all)."""


class FdSerialPort(SerialPort):
    """Twisted's SerialPort, opened with every configured pyserial setting."""

    def __init__(
        self, protocol: IProtocol, settings: Mapping[str, Any], lines: Mapping[str, bool], reactor: Any
    ) -> None:
        self._settings = {k: v for k, v in settings.items() if k not in _BLOCKING_ONLY and k != "port"}
        self._lines = lines
        super().__init__(protocol, settings["port"], reactor)
        self.control = SerialControl(self._serial, settings["port"])

    def _serialFactory(self, port: str, **ignored: Any) -> serial.Serial:  # type: ignore[override]
        device = serial.Serial(timeout=0, **self._settings)  # no port yet: not opened
        return _open_with_lines(device, port, self._lines)

    def doRead(self) -> Any:
        """Read what the device has, up to :data:`READ_LIMIT`, as one chunk.

        A tty hands out at most about 4 KiB per read; gathering what is
        already there into one chunk means one send per client instead of
        several, for the same bytes and no added delay."""
        fd = self.fileno()
        try:
            data = os.read(fd, READ_LIMIT)
        except OSError as e:  # as twisted.internet.fdesc.readFromFD
            return None if e.errno in (errno.EAGAIN, errno.EINTR) else main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE if hung_up(fd) else None
        if len(data) >= _TTY_CHUNK:
            chunks = [data]
            total = len(data)
            while total < READ_LIMIT:
                try:
                    more = os.read(fd, READ_LIMIT - total)
                except OSError:
                    break  # EAGAIN, or an error the next doRead reports
                if not more:
                    break
                chunks.append(more)
                total += len(more)
                if len(more) < _TTY_CHUNK:
                    break
            data = b"".join(chunks)
        self.protocol.dataReceived(data)
        return None

    def abortConnection(self) -> None:
        """Close now, discarding pending writes (shutdown, stuck device)."""
        if self.connected:
            self.stopReading()
            self.stopWriting()
            self.connectionLost(Failure(error.ConnectionAborted()))


def hung_up(fd: int) -> bool:
    """Whether an empty read of a tty means the device is gone.

    pyserial sets VMIN = VTIME = 0, so a tty read returns nothing, not
    EAGAIN, when there is nothing to read: after a wake-up whose data
    another reader took (two descriptors on one tty), an empty read is no
    hang-up.  A hung-up tty (USB adapter unplugged, pty master closed) polls
    as POLLHUP or POLLERR; an idle one does not."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    try:
        events = poller.poll(0)
    except OSError:
        return True
    return any(mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, mask in events)


def is_url(port: str) -> bool:
    return "://" in port


class DeviceClaims:
    """Which port holds which device, for one daemon.

    Two ports that open one device take each other's data (each read goes
    to one of them), so the second open is refused.  Paths are compared
    after resolving symlinks; pyserial URLs are not devices and are not
    claimed."""

    def __init__(self) -> None:
        self._holders: dict[str, str] = {}

    def claim(self, path: str, port: str) -> str:
        """Claim ``path`` for ``port``; the key to release it with."""
        key = os.path.realpath(path)
        holder = self._holders.get(key)
        if holder is not None and holder != port:
            raise _OpenError(f"{path} is in use by port {holder}")
        self._holders[key] = port
        return key

    def release(self, key: str) -> None:
        self._holders.pop(key, None)


@implementer(ISerialLink)
class SerialLink:
    def __init__(
        self,
        config: SerialConfig,
        reactor: _Reactor,
        comports: Comports = list_ports.comports,
        port_name: str | None = None,
        claims: DeviceClaims | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._port_name = port_name or config.name
        self._claims = claims if claims is not None else DeviceClaims()
        self._claimed: str | None = None
        self._reactor = reactor
        self._comports = comports
        self.transport: Any = None
        #: The device path of the last open (``match`` resolved).
        self.device_path: str | None = None
        self._close_timer: Any = None

    def open(self, protocol: IProtocol, in_effect: Mapping[str, Any] | None = None) -> defer.Deferred[Any]:
        settings, lines = dict(self.config.settings), dict(self.config.lines)
        for key, value in (in_effect or {}).items():
            (lines if key in LINE_KEYS else settings)[key] = value
        try:
            if self.config.match is not None:
                settings["port"] = find_device(self.config.match, self._comports)
            port = settings["port"]
            self.device_path = port
            if not is_url(port):
                self._claimed = self._claims.claim(port, self._port_name)
            if is_url(port) or os.name == "nt":
                d = threads.deferToThreadPool(
                    self._reactor,
                    self._reactor.getThreadPool(),
                    _open_pyserial,
                    settings,
                    lines,
                )
                d.addCallbacks(self._attach_threaded, self._open_failed, callbackArgs=(protocol,))
                return d
            self.transport = FdSerialPort(protocol, settings, lines, self._reactor)
        except Exception as e:
            self._release()
            return defer.fail(_OpenError(_describe(e)))
        return defer.succeed(self.transport)

    def close(self, abort: bool = False) -> None:
        transport = self.transport
        if transport is None:
            return
        if abort:
            transport.abortConnection()
            return
        transport.loseConnection()
        if self._close_timer is None:
            self._close_timer = self._reactor.callLater(CLOSE_FLUSH_TIMEOUT, transport.abortConnection)

    def _attach_threaded(self, port: serial.Serial, protocol: IProtocol) -> Any:
        self.transport = ThreadedSerialTransport(protocol, port, self._reactor)
        return self.transport

    def _open_failed(self, failure: Failure) -> Failure:
        self._release()
        return failure

    def _release(self) -> None:
        if self._claimed is not None:
            self._claims.release(self._claimed)
            self._claimed = None

    def closed(self) -> None:
        """The hub saw the device close (flushed, aborted or lost)."""
        self._release()
        self.transport = None
        if self._close_timer is not None:
            if self._close_timer.active():
                self._close_timer.cancel()
            self._close_timer = None


class _OpenError(Exception):
    pass


def _open_with_lines(device: serial.Serial, port: str, lines: Mapping[str, bool]) -> serial.Serial:
    """Open ``device`` on ``port`` with DTR/RTS as configured from the start
    (set on a closed pyserial object, they are applied by ``open()``)."""
    for name, on in lines.items():
        setattr(device, name, on)
    device.port = port
    device.open()
    return device


def _open_pyserial(settings: Mapping[str, Any], lines: Mapping[str, bool]) -> serial.Serial:
    try:
        settings = dict(settings)
        url = settings.pop("port")
        device = serial.serial_for_url(url, do_not_open=True, **settings)
        return _open_with_lines(device, url, lines)
    except Exception as e:
        raise _OpenError(_describe(e)) from None


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text
