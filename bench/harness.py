"""Low-level pieces of the benchmark: deadlines, the pseudo-terminal that
plays the serial device, loopback sockets and /proc readings.

Everything here is bounded in time: every wait takes a deadline (a
``time.monotonic()`` value) and raises :class:`FigureTimeout` past it, so a
proxy that stalls costs one figure, never the whole run.
"""

from __future__ import annotations

import fcntl
import os
import resource
import select
import socket
import struct
import termios
import time
import tty
from collections.abc import Iterable
from pathlib import Path

#: Data we write before a figure starts, until every client has seen some:
#: it proves the proxy has the device open and the client attached.
PREAMBLE = b"\x00" * 256

#: ``tcpi_state`` values (first byte of ``TCP_INFO``) meaning "the peer is gone".
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8


class FigureTimeout(Exception):
    """A figure ran past its deadline (the proxy stalled or was too slow).

    ``partial`` carries what was measured before the deadline, so that a
    slow proxy's report still says how far it got.
    """

    def __init__(self, message: str, partial: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.partial = partial or {}


class VerifyError(Exception):
    """A byte arrived that is not the one sent: the figure has failed."""


def check(deadline: float, what: str) -> float:
    """Seconds left before ``deadline``; raises :class:`FigureTimeout` if none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise FigureTimeout(f"timeout while {what}")
    return left


def make_magic(rng_bytes: bytes) -> bytes:
    """A 32-byte start marker without NUL bytes, so it can never overlap the
    all-zero preamble: the first occurrence in a stream is the real one."""
    return bytes(1 + b % 255 for b in rng_bytes[:32])


class Pty:
    """A pseudo-terminal standing in for the serial device.

    The proxy opens :attr:`path` (the slave); the benchmark is the device and
    reads and writes :attr:`master`.  We keep our own slave descriptor open for
    the pty's whole life so that the proxy closing and reopening the device
    (ser2tcp does, between clients) never hangs up the master side.
    """

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def drain(self) -> int:
        """Discard whatever the proxy wrote to the device so far."""
        total = 0
        while True:
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                return total
            except OSError:
                return total
            if not data:
                return total
            total += len(data)

    def try_write(self, data: bytes) -> int:
        """Write what fits now (never blocks); 0 when the pty is full."""
        try:
            return os.write(self.master, data)
        except BlockingIOError:
            return 0

    def write_all(self, data: bytes | memoryview, deadline: float) -> None:
        """Write every byte, waiting for room, until ``deadline``."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            left = check(deadline, "writing to the device")
            select.select([], [self.master], [], min(left, 0.5))

    def read_some(self, size: int, deadline: float) -> bytes:
        """Read at least one byte that the proxy wrote to the device."""
        while True:
            try:
                data = os.read(self.master, size)
            except BlockingIOError:
                data = None
            if data:
                return data
            if data == b"":
                raise VerifyError("device side closed")
            left = check(deadline, "reading the device")
            select.select([self.master], [], [], min(left, 0.5))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel
    picks it; the proxy binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tcp_table() -> list[list[str]]:
    rows = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            rows.append(line.split())
    return rows


def is_listening(port: int) -> bool:
    """True once something listens on 127.0.0.1:``port`` (state 0A).

    Read from /proc instead of by connecting, because a test connection would
    be a client: socat would serve it and exit.
    """
    needle = f":{port:04X}"
    return any(r[1].endswith(needle) and r[3] == "0A" for r in _tcp_table())


def proxy_socket(local_port: int, remote_port: int) -> tuple[bool, int] | None:
    """The proxy's side of one client connection, 127.0.0.1:local ->
    127.0.0.1:remote: (still ESTABLISHED, bytes in its kernel send queue),
    or None once the kernel has forgotten it.

    A proxy that ``close()``s a client whose window is zero leaves the FIN
    queued behind unsent data, so the client never sees it; but the proxy's
    socket leaves ESTABLISHED (for FIN_WAIT1) at once, which is what we watch.
    """
    local = f":{local_port:04X}"
    remote = f":{remote_port:04X}"
    for r in _tcp_table():
        if r[1].endswith(local) and r[2].endswith(remote):
            return r[3] == "01", int(r[4].split(":")[0], 16)
    return None


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock`` (``tcpi_state``), without reading it."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def peer_gone(sock: socket.socket) -> bool:
    """True once the other end closed or reset the connection."""
    return tcp_state(sock) in (TCP_CLOSE, TCP_CLOSE_WAIT)


def unread_bytes(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive queue (FIONREAD), not consumed."""
    buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return struct.unpack("i", buf)[0]


def connect(port: int, deadline: float, rcvbuf: int | None = None, nodelay: bool = False) -> socket.socket:
    """A blocking-connected, then non-blocking, client socket to the proxy.

    ``rcvbuf`` is set before connecting, as the kernel only honours a small
    receive window if it is set before the handshake.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if nodelay:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(check(deadline, "connecting"))
        try:
            s.connect(("127.0.0.1", port))
        except socket.timeout:
            raise FigureTimeout("timeout while connecting") from None
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def recv_some(sock: socket.socket, size: int, deadline: float) -> bytes:
    """Read at least one byte from a non-blocking socket; b'' on EOF."""
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            pass
        left = check(deadline, "reading from the proxy")
        select.select([sock], [], [], min(left, 0.5))


def send_all(sock: socket.socket, data: bytes | memoryview, deadline: float) -> None:
    """Send every byte on a non-blocking socket, until ``deadline``."""
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view)
            view = view[n:]
            continue
        except BlockingIOError:
            pass
        left = check(deadline, "sending to the proxy")
        select.select([], [sock], [], min(left, 0.5))


# /proc readings of the proxy process


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_kib(pid: int) -> int | None:
    """Resident memory (VmRSS) in KiB."""
    return _status_kib(pid, "VmRSS")


def hwm_kib(pid: int) -> int | None:
    """Peak resident memory (VmHWM) in KiB."""
    return _status_kib(pid, "VmHWM")


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of the whole process (all threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may contain spaces: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def fd_count(pid: int) -> int | None:
    """Open file descriptors of the process."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit (500 clients plus the proxy's side)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def close_quietly(socks: Iterable[socket.socket]) -> None:
    """Close every socket; cleanup must not stop at the first error."""
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def machine_info() -> dict[str, object]:
    """CPU model, cores, kernel and Python: the header of RESULTS.md."""
    import platform

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
