"""Robustness: garbage, client faults, device faults, limits and shutdown.

Every test runs the real ``ser2tcp`` daemon on a pty (``socket://`` once)
and abuses it through real loopback and Unix sockets, then proves that it
is unharmed: a fresh client still gets every device byte, the daemon's open
descriptors (``/proc/PID/fd``) come back to their idle count, its memory
(``VmRSS``) stays bounded, and its log has no traceback or error.  Every
wait is a poll with a deadline and every loop is bounded.  Nothing asserts
a duration except the shutdown deadline (5 s for "within a second"), and
the CPU share at the descriptor limit is a ratio of the daemon's own CPU
time to the wall time, which load from other processes does not raise.

The sections follow the issue: (1) garbage on every listener, (2) client
faults at every stage, (3) device faults, (4) a slow device, RFC 2217
clients, (5) the descriptor limit, (7) shutdown under load and (8) seeded
fuzzing (``SER2TCP_FUZZ_SEED`` picks another seed).  The heavy tests (1,000
clients, 100 MB, 50 unplugs, 5,000 cycles: (6) and the big versions of the
others) are in :mod:`tests.test_stress`, which uses the helpers below.
Measured numbers are printed on stdout as ``ROBUSTNESS <name>: <value>``.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import os
import random
import re
import resource
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ser2tcp.telnet_codec import escape
from tests.helpers import (
    MAX_ITERATIONS,
    SER2TCP,
    TIMEOUT,
    Background,
    Case,
    Daemon,
    Pty,
    fd_links,
    free_port,
    port_config,
    port_name,
    recv_each,
    recv_exactly,
    recv_until_closed,
    tcp_server,
    ticks,
    wait_until,
    write_fd,
)
from tests.proto_helpers import GREETING, Pki, client_hello

KiB = 1 << 10
MiB = 1 << 20
ALL_BYTES = bytes(range(256))
PROTOCOLS = ("tcp", "telnet", "ssl", "socket")
#: "rfc2217" here is a TELNET server with RFC 2217 (COM-PORT-OPTION) on.
TELNETS = ("telnet", "rfc2217")
IAC = 0xFF

#: Seed of every random choice here (``SER2TCP_FUZZ_SEED`` overrides it).
SEED = int(os.environ.get("SER2TCP_FUZZ_SEED", "20240613"))


def report(name: str, value: str) -> None:
    """A measured number, for the notes (printed, not asserted)."""
    print(f"ROBUSTNESS {name}: {value}", flush=True)


# /proc


def _stat_fields(pid: int) -> list[str]:
    """Fields 3 and on of /proc/PID/stat (after the command name)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        data = f.read()
    return data[data.rindex(")") + 2 :].split()


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_status(pid: int, key: str) -> int:
    """A numeric field of /proc/PID/status (VmRSS is in KiB)."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes."""
    return proc_status(pid, "VmRSS") * KiB


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes_where(field: int, value: int) -> list[int]:
    """Pids whose /proc/PID/stat field number ``field`` is ``value``
    (4: the parent, 6: the session)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = _stat_fields(int(name))
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(fields[field - 3]) == value:
            found.append(int(name))
    return found


def children(pid: int) -> list[int]:
    return processes_where(4, pid)


def alive(pid: int) -> bool:
    try:
        state = _stat_fields(pid)[0]
    except (OSError, ValueError):
        return False
    return state != "Z"


# sockets


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a RST (SO_LINGER 0) where it is TCP."""
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def tcp_rx_tx(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """(receive queue, send queue) of the loopback TCP socket with these
    ports, from /proc/net/tcp, or None."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) != local_port:
                continue
            if int(fields[2].rsplit(":", 1)[1], 16) != remote_port:
                continue
            tx, rx = fields[4].split(":")
            return int(rx, 16), int(tx, 16)
    return None


def accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the listener on ``port``."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                total += int(fields[4].split(":")[1], 16)
    return total


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted``; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


class Stream:
    """A deterministic device stream, cheap to make and to check.

    Chunk ``k`` is a slice of a random block at an offset that depends on
    ``k``, so a lost, repeated or reordered chunk changes the hash of what
    a client received.
    """

    CHUNK = 64 * KiB

    def __init__(self, seed: int) -> None:
        self._block = random.Random(seed).randbytes(MiB + self.CHUNK)

    def chunk(self, k: int) -> bytes:
        offset = (k * 40503 * 61) % MiB
        return self._block[offset : offset + self.CHUNK]

    def chunks(self, total: int) -> Iterator[bytes]:
        """The stream's first ``total`` bytes, chunk by chunk."""
        for k in range((total + self.CHUNK - 1) // self.CHUNK):
            yield self.chunk(k)[: total - k * self.CHUNK]


# the device


class Device:
    """A pty standing in for a device, whose master is drained by a thread.

    Whatever clients send reaches the device and is kept (the last few MiB),
    so a test can wait for a tag a client sent: once a client's tag arrived,
    the device is open and the client is a session of the port.  The drain
    also keeps the daemon from ever blocking on a full pty.
    """

    KEEP = 4 * MiB

    def __init__(self, pty: Pty) -> None:
        self.pty = pty
        self.path = pty.path
        self._cond = threading.Condition()
        self._buf = bytearray()
        self._base = 0
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name=f"drain {pty.path}", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        fd = self.pty.fd()
        end = time.monotonic() + 1800
        try:
            for _ in ticks(end):
                if self._stop.is_set():
                    return
                readable, _, _ = select.select([fd], [], [], 0.05)
                if not readable:
                    continue
                try:
                    data = os.read(fd, 256 * KiB)
                except BlockingIOError:
                    continue
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    self._stop.wait(0.005)  # polling interval: the slave is not open
                    continue
                if not data:
                    self._stop.wait(0.005)
                    continue
                with self._cond:
                    self._buf += data
                    if len(self._buf) > self.KEEP:
                        cut = len(self._buf) - self.KEEP // 2
                        del self._buf[:cut]
                        self._base += cut
                    self._cond.notify_all()
        except BaseException as e:
            self._error = e

    def position(self) -> int:
        """How many bytes the device has received so far."""
        with self._cond:
            return self._base + len(self._buf)

    def wait_for(self, tag: bytes, since: int, timeout: float = TIMEOUT) -> None:
        """Wait until ``tag`` reached the device after byte ``since``."""

        def seen() -> bool:
            start = max(0, since - self._base)
            return self._buf.find(tag, start) >= 0 or self._error is not None

        with self._cond:
            found = self._cond.wait_for(seen, timeout)
        if self._error is not None:
            raise AssertionError(f"draining the device failed: {self._error!r}")
        if not found:
            raise AssertionError(f"{tag!r} did not reach the device within {timeout:g} s")

    def write(self, data: bytes, deadline: float | None = None) -> None:
        write_fd(self.pty.fd(), data, deadline or time.monotonic() + TIMEOUT)

    def unplug(self) -> None:
        """Stop draining and close the master: the device is gone."""
        self._stop.set()
        self._thread.join(TIMEOUT)
        self.pty.close()

    close = unplug


class TlsBio:
    """A TLS client on a plain socket through memory BIOs, so that the TCP
    connection can be half-closed (shutdown(SHUT_WR)) while TLS goes on."""

    def __init__(self, raw: socket.socket, ctx: ssl.SSLContext) -> None:
        self.raw = raw
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_hostname="localhost")

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.raw.sendall(data)

    def _feed(self, left: float) -> None:
        self.raw.settimeout(left)
        try:
            data = self.raw.recv(256 * KiB)
        except socket.timeout:
            return
        if not data:
            raise AssertionError("EOF from the TLS server")
        self._in.write(data)

    def handshake(self, deadline: float) -> None:
        for left in ticks(deadline):
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                self._feed(left)
                continue
            self._flush()
            return
        raise AssertionError("TLS handshake did not complete in time")

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def recv_exactly(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        for left in ticks(deadline):
            if len(buf) >= n:
                break
            try:
                buf += self.obj.read(n - len(buf))
            except ssl.SSLWantReadError:
                self._feed(left)
        if len(buf) != n:
            raise AssertionError(f"timed out with {len(buf)} of {n} bytes over TLS")
        return bytes(buf)


# the base of the tests


class RobustCase(Case):
    """A daemon serving one device on tcp, telnet, ssl and socket servers.

    ``self.idle_fds`` is its descriptor count with no client; every test
    checks that it comes back there.
    """

    daemon_: Daemon
    device: Device
    pki: Pki
    witness: Witness | None = None
    fresh = 0  # fresh clients so far (their tags differ)

    def plug(self, link: str) -> Device:
        """A new pty, drained, at ``link`` (a symlink replaced atomically)."""
        device = Device(self.pty())
        self.addCleanup(device.close)
        if os.path.lexists(link + ".new"):
            os.unlink(link + ".new")
        os.symlink(device.path, link + ".new")
        os.replace(link + ".new", link)
        self.device = device
        return device

    def start(
        self,
        device: str | None = None,
        protocols: Sequence[str] = PROTOCOLS,
        flags: Sequence[str] = (),
        argv_prefix: Sequence[str] = (),
        extra_ports: Sequence[dict[str, Any]] = (),
        **server: Any,
    ) -> Daemon:
        """Start the daemon; ``device`` is a path (default: a new pty, drained)."""
        if device is None:
            self.device = Device(self.pty())
            self.addCleanup(self.device.close)
            device = self.device.path
        self.device_path = device
        self.pki = Pki(self.tempdir())
        self.ports: dict[str, int] = {}
        servers: list[dict[str, Any]] = []
        for proto in protocols:
            if proto == "socket":
                self.unix_path = os.path.join(self.tempdir(), "ser2tcp.sock")
                servers.append({"protocol": "socket", "address": self.unix_path, **server})
                continue
            port = self.ports[proto] = free_port()
            entry: dict[str, Any] = {"protocol": proto, "address": "127.0.0.1", "port": port, **server}
            if proto == "ssl":
                entry["ssl"] = self.pki.ssl_config()
            elif proto == "rfc2217":  # TELNET with RFC 2217, whose clients may change the port
                entry.update(protocol="telnet", rfc2217={"settings": "apply"})
            servers.append(entry)
        config = self.config({"ports": [port_config(device, *servers), *extra_ports]})
        self.daemon_ = self.daemon([*argv_prefix, SER2TCP, "-c", config, *flags])
        listen = list(self.ports.values())
        for extra in extra_ports:
            listen += [s["port"] for s in extra["servers"] if "port" in s]
        self.daemon_.wait_listening(listen)
        if "socket" in protocols:
            wait_until(lambda: os.path.exists(self.unix_path), what="the Unix socket file")
        self.idle_fds = fd_count(self.daemon_.pid)
        return self.daemon_

    # clients

    def raw(self, proto: str, rcvbuf: int | None = None, sndbuf: int | None = None) -> socket.socket:
        """A plain connected socket to the ``proto`` server (no TLS, no greeting read)."""
        if proto == "socket":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.settimeout(TIMEOUT)
        if proto == "socket":
            sock.connect(self.unix_path)
        else:
            sock.connect(("127.0.0.1", self.ports[proto]))
        return sock

    def client(self, proto: str, **kw: Any) -> socket.socket:
        """A client of ``proto`` ready for data (TLS handshake done, TELNET greeting read)."""
        sock = self.raw(proto, **kw)
        if proto == "ssl":
            sock = self.pki.client_context().wrap_socket(sock, server_hostname="localhost")
            self.addCleanup(sock.close)
        elif proto in TELNETS:
            self.assertEqual(recv_exactly(sock, len(GREETING), self.deadline()), GREETING)
        return sock

    def start_witness(self, sock: socket.socket | None = None) -> Witness:
        """A tcp client (``sock``) receiving the device's stream from now on."""
        if sock is None:
            sock = self.client("tcp")
        self.joined(sock, b"<witness>")
        self.witness = witness = Witness(self.device, sock)
        self.addCleanup(witness.stop)
        witness.wait_received(256 * KiB)
        return witness

    def joined(self, sock: Any, tag: bytes) -> None:
        """Send ``tag``; once it reached the device the client is a session."""
        since = self.device.position()
        if isinstance(sock, TlsBio):
            sock.send(tag)
        else:
            sock.sendall(tag)
        try:
            self.device.wait_for(tag, since)
        except AssertionError as e:
            came = self.device.position() - since
            tail = self.daemon_.output()[-3000:]
            raise AssertionError(f"{e} ({came} byte(s) came since); the daemon said:\n{tail}") from None

    def assert_serves(self, proto: str, size: int = 16 * KiB) -> None:
        """A fresh ``proto`` client gets every byte the device sends."""
        witness = self.witness
        if witness is not None:
            witness.pause()  # the device says only what this test writes now
        sock = self.client(proto)
        self.fresh += 1
        self.joined(sock, b"<fresh %s client %d>" % (proto.encode(), self.fresh))
        data = ALL_BYTES * 2 + os.urandom(size) + ALL_BYTES[::-1]
        if witness is not None:
            witness.expect(data)
        self.device.write(data)
        want = escape(data) if proto in TELNETS else data
        got = recv_exactly(sock, len(want), self.deadline(30))
        self.assertSame(got, want, f"fresh {proto} client")
        sock.close()
        if witness is not None:
            witness.resume()

    # the daemon's health

    def wait_fds(self, count: int | None = None, timeout: float = 30.0) -> None:
        """Wait until the daemon's descriptors are back to ``count`` (idle)."""
        want = self.idle_fds if count is None else count
        pid = self.daemon_.pid

        def settled() -> bool:
            if not self.daemon_.running():
                raise AssertionError(f"the daemon died:\n{self.daemon_.output()}")
            return fd_count(pid) == want

        try:
            wait_until(settled, timeout, f"{want} open descriptors in the daemon", interval=0.02)
        except AssertionError as e:
            kinds = collections.Counter(link.split(":[")[0] for link in fd_links(pid))
            raise AssertionError(f"{e}: it has {sum(kinds.values())}: {dict(kinds)}") from None

    def assert_clean_log(self) -> str:
        """No traceback, error or critical line in the daemon's output."""
        log = self.daemon_.output()
        self.assertNotIn("Traceback", log)
        bad = [line for line in log.splitlines() if line[:2] in ("E:", "C:")]
        self.assertEqual(bad, [], log[-4000:])
        return log

    def assertSame(self, got: bytes, want: bytes, what: str = "stream") -> None:
        if got == want:
            return
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        self.fail(f"{what}: {len(got)} bytes instead of {len(want)}, first difference at byte {at}")


class Witness:
    """A client that keeps receiving the device's stream meanwhile.

    A feeder thread writes :class:`Stream` to the device while a reader
    thread receives it; the feeder stays at most ``window`` bytes ahead of
    the reader, so that a starved test process never makes the daemon drop
    the witness (that would be its ``send_timeout`` working, not a fault).
    :meth:`finish` stops the feeder and checks that the witness received
    exactly what was written, in order.  Counts are of the bytes on the
    witness's wire (``telnet``: with 0xFF doubled).
    """

    def __init__(
        self, device: Device, sock: socket.socket, window: int = 512 * KiB, telnet: bool = False
    ) -> None:
        self.device = device
        self.sock = sock
        self._wire: Callable[[bytes], bytes] = escape if telnet else bytes
        self.stream = Stream(SEED + 1)
        self.window = window
        self.written = 0
        self.received = 0
        self._paused = False
        self._writing = False
        self._digest = hashlib.sha256()
        self._expected = hashlib.sha256()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done_reading = threading.Event()
        self._errors: list[BaseException] = []
        self._feeder = threading.Thread(target=self._guard, args=(self._feed,), daemon=True)
        self._reader = threading.Thread(target=self._guard, args=(self._read,), daemon=True)
        self._feeder.start()
        self._reader.start()

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as e:
            self._errors.append(e)
            self._stop.set()
            with self._cond:
                self._cond.notify_all()

    def _feed(self) -> None:
        fd = self.device.pty.fd()
        end = time.monotonic() + 600
        k = 0
        for _ in range(MAX_ITERATIONS):
            if time.monotonic() > end:
                return
            with self._cond:
                self._cond.wait_for(lambda: self._stop.is_set() or self._may_write(), 1.0)
                if self._stop.is_set():
                    return
                if not self._may_write():
                    continue
                self._writing = True
            chunk = self.stream.chunk(k)
            k += 1
            wire = self._wire(chunk)
            write_fd(fd, chunk, time.monotonic() + 60)
            with self._cond:
                self._expected.update(wire)
                self.written += len(wire)
                self._writing = False
                self._cond.notify_all()

    def _may_write(self) -> bool:
        return not self._paused and self.written - self.received < self.window

    def pause(self, timeout: float = 60.0) -> None:
        """Stop writing, and wait until the witness received all that was written."""
        with self._cond:
            self._paused = True
            ok = self._cond.wait_for(
                lambda: (not self._writing and self.received >= self.written) or bool(self._errors), timeout
            )
        if self._errors:
            raise self._errors[0]
        if not ok:
            raise AssertionError(f"the witness got {self.received} of {self.written} bytes in time")

    def expect(self, data: bytes) -> None:
        """The test (paused) writes ``data`` to the device: the witness gets it too."""
        wire = self._wire(data)
        with self._cond:
            assert self._paused
            self._expected.update(wire)
            self.written += len(wire)

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def _read(self) -> None:
        self.sock.settimeout(0.2)
        end = time.monotonic() + 600
        for _ in ticks(end):
            if self._done_reading.is_set():
                return
            try:
                data = self.sock.recv(256 * KiB)
            except socket.timeout:
                continue
            if not data:
                raise AssertionError(f"the witness was disconnected after {self.received} bytes")
            self._digest.update(data)
            with self._cond:
                self.received += len(data)
                self._cond.notify_all()

    def wait_received(self, n: int, timeout: float = TIMEOUT) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: self.received >= n or bool(self._errors), timeout)
        if self._errors:
            raise self._errors[0]
        if not ok:
            raise AssertionError(f"the witness got {self.received} of {n} bytes in time")

    def finish(self, timeout: float = 60.0) -> int:
        """Stop; check every byte written arrived in order; the byte count."""
        self._stop.set()
        self._feeder.join(timeout)
        if self._feeder.is_alive():
            raise AssertionError("the feeder did not stop")
        if self._errors:
            raise self._errors[0]
        self.wait_received(self.written, timeout)
        self._done_reading.set()
        self._reader.join(timeout)
        if self._errors:
            raise self._errors[0]
        if self.received != self.written:
            raise AssertionError(f"the witness got {self.received} bytes of {self.written}")
        if self._digest.hexdigest() != self._expected.hexdigest():
            raise AssertionError(f"the witness got {self.written} bytes, but not the stream in order")
        return self.written

    def stop(self) -> None:
        """Stop both threads without checking (cleanup)."""
        self._stop.set()
        self._done_reading.set()
        self._feeder.join(TIMEOUT)
        self._reader.join(TIMEOUT)


# (1) garbage and abuse on every listener

HTTP_REQUESTS = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Content-Length: 27\r\n\r\n{"user":"a","pass":"\xff\x00"}',
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"OPTIONS * HTTP/1.0\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
    b"GET /" + b"A" * 8000 + b" HTTP/1.1\r\n" + b"X-Long: " + b"b" * 16000 + b"\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n",
)


class GarbageTests(RobustCase):
    """Whatever arrives on any listener, the daemon serves the next client
    and comes back to its idle descriptors."""

    def recover(self, proto: str) -> None:
        """The state after an abuse of ``proto``: a fresh client of the
        same listener is served (so the abusers were all accepted before),
        then the descriptors come back to idle."""
        self.assert_serves(proto)
        self.wait_fds()

    def send_and_close(self, sock: socket.socket, data: bytes, rst: bool) -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the TLS server may close first
        if rst:
            reset(sock)
        else:
            sock.close()

    def test_random_bytes(self) -> None:
        self.start(flags=("-v",))  # INFO lines: what the daemon did, should it fail
        rng = random.Random(SEED)
        for proto in PROTOCOLS:
            for i in range(8):
                sock = self.raw(proto)
                data = rng.randbytes(rng.randint(1, 32 * KiB))
                if proto != "ssl":
                    self.send_and_close(sock, data, rst=i % 2 == 1)
                    continue
                # Not TLS: the server closes it (at once, or after
                # handshake_timeout if the bytes looked like a record).
                try:
                    sock.sendall(data)
                except OSError:
                    pass
                _, how = recv_until_closed(sock, self.deadline(30), limit=MiB)
                self.assertIn(how, ("eof", "reset"))
                sock.close()
            self.recover(proto)
        self.assert_clean_log()

    def test_tls_on_plain_ports_and_plain_text_on_the_tls_port(self) -> None:
        self.start()
        hello = client_hello(self.pki.client_context())
        for proto in ("tcp", "telnet", "socket"):
            for rst in (False, True):
                self.send_and_close(self.raw(proto), hello, rst)
            self.recover(proto)
        # A real TLS client on the TELNET port fails at once: the greeting is not TLS.
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            self.pki.client_context().wrap_socket(self.raw("telnet"), server_hostname="localhost")
        self.recover("telnet")
        for text in (
            b"hello device\r\n",
            b"\xff\xfb\x01\xff\xfb\x03\xff\xfd\x00",
            b"\x00" * 300,
            b"AT+GMR\r\n" * 100,
        ):
            sock = self.raw("ssl")
            try:
                sock.sendall(text)
            except OSError:
                pass
            data, how = recv_until_closed(sock, self.deadline(30), limit=MiB)
            self.assertIn(how, ("eof", "reset"), text)
            self.assertNotIn(b"hello", data)
            sock.close()
        self.recover("ssl")
        self.assert_clean_log()

    def test_http_requests(self) -> None:
        self.start()
        for proto in PROTOCOLS:
            for i, request in enumerate(HTTP_REQUESTS):
                sock = self.raw(proto)
                if proto != "ssl":
                    self.send_and_close(sock, request, rst=i % 2 == 1)
                    continue
                try:
                    sock.sendall(request)
                except OSError:
                    pass
                data, how = recv_until_closed(sock, self.deadline(30), limit=MiB)
                self.assertIn(how, ("eof", "reset"))
                self.assertFalse(data.startswith(b"HTTP"), data[:100])
                sock.close()
            self.recover(proto)
        self.assert_clean_log()

    def test_half_open_connections(self) -> None:
        """Connections that stop half way (nothing sent, a partial TLS hello,
        an unfinished TELNET subnegotiation, a request line without its end)
        and stay open: they delay nobody, and cost nothing once closed."""
        self.start()
        hello = client_hello(self.pki.client_context())
        partial = {
            "tcp": (b"", b"AT+", b"GET / HTTP/1.1\r\nHost: x"),
            "telnet": (b"", b"\xff", b"\xff\xfa\x18\x00" + b"x" * 2000, b"\xff\xfd"),
            "ssl": (b"", hello[:5], hello[:40], hello[:-1]),
            "socket": (b"", b"\x00", b"GET / HTTP/1.1\r\n"),
        }
        for proto in PROTOCOLS:
            idle = fd_count(self.daemon_.pid)
            held = []
            for i in range(20):
                sock = self.raw(proto)
                data = partial[proto][i % len(partial[proto])]
                if data:
                    sock.sendall(data)
                held.append(sock)
            self.assert_serves(proto)
            # Each of them holds exactly its own socket in the daemon (plus
            # the device while some are clients of the port).
            self.assertGreaterEqual(fd_count(self.daemon_.pid), idle + len(held))
            for i, sock in enumerate(held):
                if i % 2:
                    reset(sock)
                else:
                    sock.close()
            self.wait_fds()
        self.assert_clean_log()

    def test_connect_and_reset_at_once(self) -> None:
        self.start()
        for proto in PROTOCOLS:
            for _ in range(100):
                reset(self.raw(proto))
            self.recover(proto)
        self.assert_clean_log()


# (2) client faults at every stage


class ClientFaultTests(RobustCase):
    """Clients that fail at any stage harm neither the daemon nor the
    others: a witness client receives the device's stream all along."""

    def test_tls_reset_before_during_and_after_the_handshake(self) -> None:
        self.start(send_timeout=30)
        witness = self.start_witness()
        busy = fd_count(self.daemon_.pid)  # the witness and the open device
        hello = client_hello(self.pki.client_context())
        for _ in range(20):  # before: nothing sent
            reset(self.raw("ssl"))
        for cut in (1, 5, 11, 40, len(hello) // 2, len(hello) - 1, len(hello)):
            sock = self.raw("ssl")  # during: part of the ClientHello
            sock.sendall(hello[:cut])
            reset(sock)
        for _ in range(5):  # during: after the ServerHello, before the client's Finished
            sock = self.raw("ssl")
            sock.sendall(hello)
            self.assertTrue(sock.recv(5), "no ServerHello")
            reset(sock)
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            for with_data in (False, True):  # after: complete, then RST
                ctx = self.pki.client_context(version)
                sock = ctx.wrap_socket(self.raw("ssl"), server_hostname="localhost")
                if with_data:
                    sock.sendall(b"<tls then reset>")
                reset(sock)
        self.assert_serves("ssl")
        self.wait_fds(busy)
        written = witness.finish()
        report("witness bytes during TLS resets", str(written))
        self.assert_clean_log()

    def test_reset_while_the_port_is_being_opened(self) -> None:
        """Clients leave while their port is opening; nothing is left behind.

        Ports given as pyserial URLs open in a thread.  ``loop://`` opens
        too fast to be sure a reset lands in that window, so the device here
        is ``socket://``: a TCP server of the test whose accept queue is
        full, so that the daemon's open hangs in connect() until the test
        lets it through (pyserial gives it 5 s).  Until the port is open the
        daemon does not read its clients, so it sees them gone only then.
        """
        device = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(device.close)
        device.bind(("127.0.0.1", 0))
        device.listen(0)  # one queued connection fills it
        device.settimeout(TIMEOUT)
        url = f"socket://127.0.0.1:{device.getsockname()[1]}"
        wport = free_port()
        dev = Device(self.pty())
        self.addCleanup(dev.close)
        self.start(
            device=url,
            flags=("-v",),
            extra_ports=[port_config(dev.path, tcp_server(wport, send_timeout=30))],
        )
        self.device = dev
        witness = self.start_witness(self.connect(wport))
        busy = fd_count(self.daemon_.pid)
        threads = proc_status(self.daemon_.pid, "Threads")
        connected = disconnected = 0
        for round_ in (1, 2):
            blocker = socket.create_connection(device.getsockname(), timeout=TIMEOUT)
            self.addCleanup(blocker.close)
            wait_until(lambda: accept_queue(device.getsockname()[1]) >= 1, what="the blocker queued")
            leavers = [self.raw(proto) for proto in PROTOCOLS if proto != "ssl"]
            tls = self.pki.client_context().wrap_socket(self.raw("ssl"), server_hostname="localhost")
            leavers.append(tls)
            stayer = self.raw("tcp") if round_ == 2 else None
            connected += len(leavers) + (stayer is not None)
            self.daemon_.wait_output("Client connected", connected)
            self.daemon_.wait_output("TLS handshake completed", round_)
            for i, sock in enumerate(leavers):
                if i % 2:
                    sock.close()
                else:
                    reset(sock)
            disconnected += len(leavers)
            self.assertEqual(self.daemon_.output().count(f"Serial {port_name(url)} opened"), round_ - 1)
            # Let the daemon's connect() through: its SYN is retried.
            queued, _ = device.accept()
            queued.close()
            blocker.close()
            far, _ = device.accept()
            self.addCleanup(far.close)
            far.settimeout(TIMEOUT)
            self.daemon_.wait_output(f"Serial {port_name(url)} opened", round_)
            self.daemon_.wait_output("Client disconnected", disconnected)
            if stayer is not None:
                stayer.sendall(b"<stayed>")
                self.assertEqual(recv_exactly(far, 8, self.deadline()), b"<stayed>")
                data = ALL_BYTES * 4 + os.urandom(32 * KiB)
                far.sendall(data)
                self.assertSame(recv_exactly(stayer, len(data), self.deadline()), data, "the stayer")
                stayer.close()
            self.daemon_.wait_output(f"Serial {port_name(url)} closed", round_)
            self.assertEqual(recv_until_closed(far, self.deadline()), (b"", "eof"))
            far.close()
        self.wait_fds(busy)
        # The port's reader and writer threads end with it; the reactor's
        # thread pool keeps the one worker that opened the port, idle.
        wait_until(
            lambda: proc_status(self.daemon_.pid, "Threads") <= threads + 1,
            what=f"the daemon's threads back to {threads} + 1",
        )
        witness.finish()
        self.assert_clean_log()

    def test_reset_while_data_is_queued(self) -> None:
        """Non-reading clients of every protocol, data queued for them in
        the daemon, then a reset: they are freed, the stream goes on."""
        self.start(send_timeout=60)
        witness = self.start_witness()
        busy = fd_count(self.daemon_.pid)
        stuck: dict[str, socket.socket] = {}
        for proto in PROTOCOLS:
            sock = self.client(proto, rcvbuf=4096)
            self.joined(sock, b"<stuck %s>" % proto.encode())
            stuck[proto] = sock
        witness.wait_received(witness.received + 4 * MiB, 60)
        # The daemon has read 4 MiB from the device that these clients did
        # not take: it holds it for them, the kernel shows part of it.
        for proto in ("tcp", "telnet", "ssl"):
            queues = tcp_rx_tx(self.ports[proto], stuck[proto].getsockname()[1])
            self.assertIsNotNone(queues, proto)
            assert queues is not None
            self.assertGreater(queues[1], 0, f"nothing queued for the {proto} client")
        for sock in stuck.values():
            reset(sock)
        at_reset = witness.received
        witness.wait_received(at_reset + 2 * MiB, 60)
        self.assert_serves("tcp")
        self.wait_fds(busy)
        witness.finish()
        self.assert_clean_log()

    # half-close: the client says it will send no more.  ser2tcp takes that
    # as the client leaving (as the original did): what it sent reaches the
    # device, its connection is closed, and nobody else notices.

    def check_half_close(self, proto: str) -> None:
        self.start(protocols=(proto, "tcp") if proto != "tcp" else ("tcp",))
        if proto == "ssl":
            sock: Any = TlsBio(self.raw("ssl"), self.pki.client_context())
            sock.handshake(self.deadline())
            raw = sock.raw
        else:
            sock = raw = self.client(proto)
        other = self.client("tcp")
        self.joined(other, b"<other>")
        self.joined(sock, b"<half %s>" % proto.encode())
        since = self.device.position()
        if proto == "ssl":
            sock.send(b"last words")
        else:
            sock.sendall(b"last words")
        raw.shutdown(socket.SHUT_WR)
        self.device.wait_for(b"last words", since)
        # The daemon closes the half-closed connection: EOF (or a reset).
        _, how = recv_until_closed(raw, self.deadline(), limit=MiB)
        self.assertIn(how, ("eof", "reset"), f"the half-closed {proto} client was not closed")
        data = ALL_BYTES * 4 + os.urandom(32 * KiB)
        self.device.write(data)
        self.assertSame(recv_exactly(other, len(data), self.deadline()), data, "the other client")
        raw.close()
        other.close()
        self.wait_fds()
        self.assert_clean_log()

    def test_half_close_tcp(self) -> None:
        self.check_half_close("tcp")

    def test_half_close_telnet(self) -> None:
        self.check_half_close("telnet")

    def test_half_close_socket(self) -> None:
        self.check_half_close("socket")

    def test_half_close_ssl(self) -> None:
        self.check_half_close("ssl")


# (3) device faults


class DeviceFaultTests(RobustCase):
    def assert_refused(self, proto: str, why: str) -> None:
        """A ``proto`` client is closed without a byte of data (TELNET
        clients, people, get one line saying ``why``)."""
        sock = self.client(proto)
        data, how = recv_until_closed(sock, self.deadline(), limit=MiB)
        self.assertEqual(how, "eof", proto)
        if proto == "telnet":
            self.assertTrue(data.startswith(b"ser2tcp: ") and data.endswith(b"\r\n"), data)
            self.assertIn(why.encode(), data)
            self.assertEqual(data.count(b"\n"), 1, data)
        else:
            self.assertEqual(data, b"", proto)
        sock.close()

    def test_device_vanishes_before_the_open(self) -> None:
        """The device goes away while no client is connected (its node is
        removed): the next clients are refused, each with a WARNING, and the
        daemon serves again once a device is back."""
        link = os.path.join(self.tempdir(), "ttyROBUST")
        first = self.plug(link)
        self.start(device=link)
        self.device = first
        self.assert_serves("tcp")
        self.wait_fds()
        first.unplug()
        wait_until(lambda: not os.path.exists(link), what="the pty node to vanish")
        for i, proto in enumerate(PROTOCOLS):
            self.assert_refused(proto, "cannot open serial port")
            log = self.daemon_.wait_output(f"W: Serial {port_name(link)}: cannot open", i + 1)
            self.wait_fds()
        self.assertEqual(log.count("cannot open"), len(PROTOCOLS), log)
        self.assertTrue(self.daemon_.running())
        self.plug(link)
        for proto in PROTOCOLS:
            self.assert_serves(proto)
        self.wait_fds()
        self.assert_clean_log()

    def test_refused_tls_client_is_released_when_it_leaves(self) -> None:
        """A client refused because its device cannot be opened gets an EOF
        (TLS: close_notify); once it has closed its end too, the daemon
        frees its socket at once, TLS or not, rather than holding it until
        ``send_timeout`` (600 s here) runs out."""
        gone = os.path.join(self.tempdir(), "ttyGONE")
        self.start(device=gone, protocols=("tcp", "telnet", "socket", "ssl"), send_timeout=600)
        for i, proto in enumerate(("tcp", "telnet", "socket", "ssl")):
            self.assert_refused(proto, "cannot open serial port")
            self.daemon_.wait_output(f"W: Serial {port_name(gone)}: cannot open", i + 1)
            self.wait_fds(timeout=20)
        self.assert_clean_log()

    def test_device_path_is_a_directory_or_a_regular_file(self) -> None:
        tmp = self.tempdir()
        directory = os.path.join(tmp, "ttyDIR")
        os.mkdir(directory)
        regular = os.path.join(tmp, "ttyFILE")
        with open(regular, "wb") as f:
            f.write(b"precious\n")
        before = os.stat(regular)
        dir_port, file_port = free_port(), free_port()
        self.start(
            extra_ports=[
                port_config(directory, tcp_server(dir_port)),
                port_config(regular, tcp_server(file_port)),
            ]
        )
        for path, port in ((directory, dir_port), (regular, file_port)):
            for attempt in range(1, 11):
                sock = self.connect(port)
                sock.sendall(b"must not reach the file\n")
                self.assertEqual(recv_until_closed(sock, self.deadline()), (b"", "eof"))
                sock.close()
                self.daemon_.wait_output(f"W: Serial {port_name(path)}: cannot open", attempt)
                self.wait_fds()
            self.assertTrue(self.daemon_.running())
        with open(regular, "rb") as f:
            self.assertEqual(f.read(), b"precious\n")
        self.assertEqual(os.stat(regular).st_mtime_ns, before.st_mtime_ns)
        self.assertTrue(os.path.isdir(directory))
        for proto in PROTOCOLS:  # the good port is unaffected
            self.assert_serves(proto)
        self.wait_fds()
        self.assert_clean_log()


# (4) a slow device


class Sender:
    """Sends ``data`` on a blocking socket in a thread, counting progress."""

    def __init__(self, sock: socket.socket, data: bytes, timeout: float = 120.0) -> None:
        self.sent = 0
        self.done = threading.Event()
        self._task = Background(self._send, sock, data, time.monotonic() + timeout)

    def _send(self, sock: socket.socket, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        try:
            for left in ticks(deadline):
                if self.sent == len(data):
                    return
                sock.settimeout(left)
                self.sent += sock.send(view[self.sent : self.sent + 64 * KiB])
            raise AssertionError(f"sent {self.sent} of {len(data)} bytes in time")
        finally:
            self.done.set()

    def result(self, timeout: float = 120.0) -> None:
        self._task.result(timeout)


def slow_read(fd: int, n: int, deadline: float, piece: int = 512, pause_every: int = 2 * KiB) -> bytes:
    """Read ``n`` bytes from a pty master in small pieces, pausing now and
    then: a device slower than its client."""
    buf = bytearray()
    for left in ticks(deadline):
        if len(buf) >= n:
            break
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        try:
            data = os.read(fd, min(piece, n - len(buf)))
        except BlockingIOError:
            continue
        buf += data
        if len(buf) % pause_every < len(data):
            time.sleep(0.001)  # pacing: a slow device, not synchronisation
    if len(buf) != n:
        raise AssertionError(f"the slow device read {len(buf)} of {n} bytes in time")
    return bytes(buf)


def held_up(port: int, sock: socket.socket, sender: Sender, queued: int) -> bool:
    """Whether ``sock``'s data waits in the kernel on both ends of the
    connection to the daemon's ``port`` (the daemon is not reading it), or
    the sender is done."""
    if sender.done.is_set():
        return True
    daemon_side = tcp_rx_tx(port, sock.getsockname()[1])
    client_side = tcp_rx_tx(sock.getsockname()[1], port)
    return (
        daemon_side is not None
        and client_side is not None
        and daemon_side[0] >= queued
        and client_side[1] >= queued
    )


class SlowDeviceTests(RobustCase):
    def test_slow_device_gets_everything_in_order_and_others_flow(self) -> None:
        pty = self.pty()
        self.start(device=pty.path, protocols=("tcp",))
        port, pid = self.ports["tcp"], self.daemon_.pid
        writer = self.connect(port, host="127.0.0.1")
        writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * KiB)
        writer.sendall(b"<w>")
        self.assertEqual(pty.read(3), b"<w>")
        other = self.connect(port)
        other.sendall(b"<o>")
        self.assertEqual(pty.read(3), b"<o>")
        idle = rss(pid)
        data = os.urandom(2_000_000)
        sender = Sender(writer, data)
        # Nobody reads the device yet: the writer is held up by TCP.
        wait_until(lambda: held_up(port, writer, sender, 8 * KiB), 30, "the writer blocked")
        self.assertFalse(sender.done.is_set(), "the daemon took 2 MB the device did not read")
        # Device -> client traffic goes on meanwhile.
        for i in range(4):
            down = os.urandom(64 * KiB) + ALL_BYTES
            pty.write(down)
            self.assertSame(recv_exactly(other, len(down), self.deadline()), down, f"other, burst {i}")
            self.assertSame(recv_exactly(writer, len(down), self.deadline()), down, f"writer, burst {i}")
        self.assertFalse(sender.done.is_set(), "the writer was not held up while the other got data")
        # Now the device reads, slowly.
        reader = Background(slow_read, pty.fd(), len(data), self.deadline(120))
        peak = idle
        for _ in ticks(self.deadline(120)):
            peak = max(peak, rss(pid))
            if sender.done.wait(0.05):
                break
        self.assertSame(reader.result(120), data, "what the device read")
        sender.result()
        growth = peak - idle
        report("RSS growth, 2 MB into a slow device", f"{growth / MiB:.1f} MiB")
        self.assertLess(growth, 16 * MiB)
        writer.close()
        other.close()
        self.wait_fds()
        self.assert_clean_log()

    def test_stalled_device_bounds_memory(self) -> None:
        """A client pushes 48 MiB at a device that takes nothing: the daemon
        stops reading it, so its memory does not grow by what was pushed."""
        pty = self.pty()
        self.start(device=pty.path, protocols=("tcp",))
        port, pid = self.ports["tcp"], self.daemon_.pid
        sock = self.connect(port)
        sock.sendall(b"<w>")
        self.assertEqual(pty.read(3), b"<w>")
        idle = rss(pid)
        data = os.urandom(48 * MiB)
        sender = Sender(sock, data)
        wait_until(lambda: held_up(port, sock, sender, 8 * KiB), 60, "the client blocked")
        self.assertFalse(sender.done.is_set(), "the daemon read 48 MiB the device did not take")
        growth = rss(pid) - idle
        report("stalled device: sent before the stall", f"{sender.sent / MiB:.1f} MiB")
        report("stalled device: RSS growth", f"{growth / MiB:.1f} MiB")
        self.assertLess(sender.sent, 16 * MiB)
        self.assertLess(growth, 16 * MiB)
        self.assertSame(pty.read(len(data), self.deadline(120)), data, "what the device read")
        sender.result()
        self.assert_clean_log()


class LostDeviceTlsTests(RobustCase):
    def test_paused_tls_clients_of_a_lost_device_are_released_when_they_leave(self) -> None:
        """The device stops taking data (the daemon stops reading every
        client), then is unplugged: every client is closed (TLS ones get
        close_notify); once they have closed their ends too, the daemon
        frees their sockets, rather than holding the TLS ones until
        ``send_timeout`` (600 s here) runs out."""
        pty = self.pty()  # not drained: it takes no more once its buffer is full
        self.start(device=pty.path, protocols=("tcp", "ssl"), send_timeout=600)
        port = self.ports["tcp"]
        tls = self.client("ssl")
        tls.sendall(b"<tls>")
        self.assertEqual(pty.read(5), b"<tls>")
        writer = self.client("tcp")
        writer.sendall(b"<w>")
        self.assertEqual(pty.read(3), b"<w>")
        sender = Sender(writer, os.urandom(8 * MiB))
        wait_until(lambda: held_up(port, writer, sender, 8 * KiB), 30, "the device full")
        self.assertFalse(sender.done.is_set())
        pty.close()  # unplugged
        for sock in (tls, writer):
            _, how = recv_until_closed(sock, self.deadline(), limit=MiB)
            self.assertIn(how, ("eof", "reset"))
            sock.close()
        self.daemon_.wait_output(f"W: Serial {port_name(pty.path)} lost")
        self.wait_fds(timeout=20)
        self.assert_clean_log()


# RFC 2217: TELNET clients that may change the port


def com_port(command: int, value: bytes = b"") -> bytes:
    """``IAC SB COM-PORT-OPTION command value IAC SE`` (value IAC-escaped)."""
    return bytes((IAC, 250, 44, command)) + escape(value) + bytes((IAC, 240))


#: A client agreeing to RFC 2217 both ways (WILL and DO COM-PORT-OPTION).
COM_PORT_ON = bytes((IAC, 251, 44, IAC, 253, 44))


class Rfc2217Tests(RobustCase):
    def test_suspended_client_costs_bounded_memory(self) -> None:
        """A client that sends FLOWCONTROL-SUSPEND and never resumes, while
        the device streams 64 MiB: the data held for it must not grow
        without bound (with the default config: no buffer_limit; a held
        client is exempt from send_timeout)."""
        self.start(protocols=("rfc2217",))
        pid = self.daemon_.pid
        reader = self.client("rfc2217")
        self.joined(reader, b"<reader>")
        held = self.client("rfc2217")
        held.sendall(COM_PORT_ON + com_port(8))  # FLOWCONTROL-SUSPEND
        self.joined(held, b"<held>")  # it arrived after the suspension, in order
        idle = rss(pid)
        witness = Witness(self.device, reader, telnet=True)
        self.addCleanup(witness.stop)
        peak = idle
        total = 64 * MiB
        for _ in ticks(self.deadline(300)):
            peak = max(peak, rss(pid))
            if witness.received >= total:
                break
            witness.wait_received(min(total, witness.received + 4 * MiB), 120)
        peak = max(peak, rss(pid))
        witness.finish()
        growth = peak - idle
        report("RSS growth, 64 MiB streamed with an RFC 2217 client suspended", f"{growth / MiB:.1f} MiB")
        self.assertLess(growth, 32 * MiB, "the daemon holds everything for a suspended client")
        self.assert_clean_log()


# (5) resource limits

#: Runs argv[2:] with the soft RLIMIT_NOFILE set to argv[1] (exec: same pid).
LIMIT_WRAPPER = (
    "import os, resource, sys\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def with_fd_limit(limit: int) -> list[str]:
    """An argv prefix running the daemon with at most ``limit`` descriptors:
    the hard limit too, as the daemon raises its soft limit to the hard one."""
    return [sys.executable, "-c", LIMIT_WRAPPER, str(limit)]


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer closed ``sock`` (EOF or reset pending); never blocks.
    Only for sockets on which no data is expected."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except ConnectionResetError:
        return True
    except BlockingIOError:
        return False
    if data:
        raise AssertionError(f"unexpected data {data!r}")
    return True


class FdLimitTests(RobustCase):
    LIMIT = 64

    def test_at_the_descriptor_limit(self) -> None:
        self.start(protocols=("tcp", "socket"), argv_prefix=with_fd_limit(self.LIMIT))
        pid, port = self.daemon_.pid, self.ports["tcp"]
        with open(f"/proc/{pid}/limits", encoding="ascii") as f:
            self.assertRegex(f.read(), rf"Max open files\s+{self.LIMIT}\s")
        first = self.client("tcp")
        self.joined(first, b"<first>")
        # More clients than it has descriptors for.
        socks = [self.raw("tcp") for _ in range(self.LIMIT)]
        wait_until(
            lambda: accept_queue(port) == 0 and fd_count(pid) == self.LIMIT,
            30,
            "the daemon at its descriptor limit, with nothing left to accept",
        )
        closed = [s for s in socks if closed_by_peer(s)]
        kept = [s for s in socks if s not in closed]
        report(
            f"at RLIMIT_NOFILE {self.LIMIT}",
            f"{fd_count(pid)} descriptors, {len(kept) + 1} clients kept, {len(closed)} closed at once",
        )
        self.assertGreater(len(kept), 0)
        self.assertGreater(len(closed), 0)
        for sock in closed:
            self.assertEqual(recv_until_closed(sock, self.deadline()), (b"", "eof"))
            sock.close()
        # New clients of both listeners are closed at once too.
        for proto in ("tcp", "socket", "tcp"):
            sock = self.raw(proto)
            self.assertEqual(recv_until_closed(sock, self.deadline()), (b"", "eof"), proto)
            sock.close()
        # Those it kept are served.
        data = ALL_BYTES * 8 + os.urandom(8 * KiB)
        self.device.write(data)
        for i, got in enumerate(recv_each([first, *kept], len(data), self.deadline(30))):
            self.assertSame(got, data, f"client {i}")
        # It does not spin while at the limit, with clients knocking: a
        # daemon that left them in its accept queue would be woken for them
        # again and again.
        cpu0, wall0 = cpu_seconds(pid), time.monotonic()
        knocking = [self.raw("tcp") for _ in range(3)]
        for _ in ticks(wall0 + 2.0, 100):
            time.sleep(0.05)  # a measurement window, not synchronisation
        cpu = cpu_seconds(pid) - cpu0
        wall = time.monotonic() - wall0
        report(f"CPU at the descriptor limit over {wall:.1f} s", f"{cpu:.2f} s ({100 * cpu / wall:.0f}%)")
        self.assertLess(cpu / wall, 0.5)
        for sock in knocking:
            self.assertEqual(recv_until_closed(sock, self.deadline()), (b"", "eof"))
            sock.close()
        # Free some: service resumes.
        for sock in kept[:10]:
            sock.close()
        self.wait_fds(self.LIMIT - 10, 30)
        for proto in ("tcp", "socket"):
            self.assert_serves(proto)
        # The refusals were logged, every one counted (last, so that a
        # failure here does not hide the checks above).
        refused = len(closed) + 3 + len(knocking)

        def counted() -> int:
            pattern = r"(?m)^W: Out of file descriptors: (\d+) new connection"
            found = re.findall(pattern, self.daemon_.output())
            return sum(map(int, found))

        wait_until(lambda: counted() >= refused, 10, f"{refused} refusals in the log")
        self.assertEqual(counted(), refused, self.daemon_.output()[-3000:])
        self.assert_clean_log()


# (7) shutdown under load


class Load:
    """Device data at full speed into many clients, all read at full speed."""

    def __init__(self, device: Device, socks: Sequence[socket.socket]) -> None:
        self.device = device
        self.socks = list(socks)
        self.received = [0] * len(self.socks)
        self.ended: list[str | None] = [None] * len(self.socks)
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._guard, args=(self._feed,), daemon=True),
            threading.Thread(target=self._guard, args=(self._read,), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as e:
            self._errors.append(e)

    def _feed(self) -> None:
        fd = self.device.pty.fd()
        block = os.urandom(64 * KiB)
        for _ in ticks(time.monotonic() + 300):
            if self._stop.is_set():
                return
            _, writable, _ = select.select([], [fd], [], 0.05)
            if not writable:
                continue
            try:
                os.write(fd, block)
            except (BlockingIOError, OSError):
                continue  # full, or the daemon is gone: keep trying until stopped

    def _read(self) -> None:
        for sock in self.socks:
            sock.setblocking(False)
        index = {sock.fileno(): i for i, sock in enumerate(self.socks)}
        for _ in ticks(time.monotonic() + 300):
            if self._stop.is_set():
                return
            live = [s for i, s in enumerate(self.socks) if self.ended[i] is None]
            if not live:
                return
            readable, _, _ = select.select(live, [], [], 0.05)
            for sock in readable:
                i = index[sock.fileno()]
                for _ in range(64):  # TLS sockets may hold more than select shows
                    try:
                        data = sock.recv(256 * KiB)
                    except (BlockingIOError, ssl.SSLWantReadError):
                        break
                    except (ConnectionError, ssl.SSLError) as e:
                        self.ended[i] = type(e).__name__
                        break
                    if not data:
                        self.ended[i] = "eof"
                        break
                    self.received[i] += len(data)

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        def check() -> bool:
            if self._errors:
                raise self._errors[0]
            return predicate()

        wait_until(check, timeout, what)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(TIMEOUT)


class ShutdownTests(RobustCase):
    CLIENTS = 100

    def test_sigterm_under_load(self) -> None:
        self.start(send_timeout=60)
        pid = self.daemon_.pid
        socks = []
        for i in range(self.CLIENTS):
            proto = PROTOCOLS[i % len(PROTOCOLS)]
            sock = self.client(proto)
            self.joined(sock, b"<load client %d>" % i)
            socks.append(sock)
        load = Load(self.device, socks)
        self.addCleanup(load.stop)
        load.wait(lambda: min(load.received) >= 256 * KiB, "every client receiving")
        kids = children(pid)
        session = [p for p in processes_where(6, pid) if p != pid]
        report("children of the daemon before SIGTERM", str(kids))
        # Right before the signal, every client is still taking data.
        before = list(load.received)
        load.wait(
            lambda: all(now - then >= 64 * KiB for now, then in zip(load.received, before)),
            "every client receiving more",
        )
        started = time.monotonic()
        self.daemon_.proc.send_signal(15)
        try:
            code = self.daemon_.proc.wait(30)
        except Exception:
            self.fail(f"the daemon did not exit within 30 s of SIGTERM:\n{self.daemon_.output()[-3000:]}")
        elapsed = time.monotonic() - started
        report("exit after SIGTERM with 100 clients at full speed", f"{elapsed:.3f} s")
        self.assertEqual(code, 0, self.daemon_.output()[-3000:])
        self.assertLessEqual(elapsed, 5.0)
        self.assertFalse(os.path.lexists(self.unix_path), "the Unix socket file is left")
        for kid in kids + session:
            self.assertFalse(alive(kid), f"process {kid} outlived the daemon")
        self.assertEqual([p for p in processes_where(6, pid) if alive(p)], [])
        load.wait(lambda: all(load.ended), "every client to see its connection end", 30)
        load.stop()
        self.assertNotIn("Traceback", self.daemon_.output())


# (8) seeded fuzzing of every protocol


def telnet_noise(rng: random.Random) -> bytes:
    """A few TELNET tokens, well-formed or not."""
    out = bytearray()
    for _ in range(rng.randint(1, 40)):
        kind = rng.randrange(9)
        if kind == 0:
            out += bytes((IAC, rng.choice((251, 252, 253, 254)), rng.randrange(256)))
        elif kind == 1:  # a subnegotiation, maybe unterminated, maybe huge
            out += bytes((IAC, 250, rng.randrange(256))) + rng.randbytes(rng.choice((0, 3, 200, 1500)))
            if rng.random() < 0.7:
                out += bytes((IAC, 240))
        elif kind == 2:
            out += bytes((IAC, IAC))
        elif kind == 3:
            out += bytes((IAC, rng.randrange(236, 256)))
        elif kind == 4:
            out += bytes((IAC,))
        elif kind == 5:
            out += rng.choice((b"\r\n", b"\r\x00", b"\r", b"\n", b"\x00"))
        elif kind == 6:
            out += bytes((IAC, 240))  # SE without SB
        else:
            out += rng.randbytes(rng.randint(1, 64))
    return bytes(out)


def tls_noise(rng: random.Random, hello: bytes) -> bytes:
    """A ClientHello mutated, truncated or repeated, or TLS-like records."""
    kind = rng.randrange(5)
    if kind == 0:
        data = bytearray(hello)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 1:
        return hello[: rng.randrange(1, len(hello))]
    if kind == 2:
        return hello * rng.randint(2, 4)
    if kind == 3:  # a record announcing more than it has
        return (
            bytes((rng.choice((20, 21, 22, 23, 24)), 3, rng.randrange(5))) + b"\xff\xff" + rng.randbytes(100)
        )
    return bytes((0x80 | rng.randrange(128), rng.randrange(256), 1)) + rng.randbytes(rng.randint(0, 300))


def rfc2217_noise(rng: random.Random) -> bytes:
    """COM-PORT-OPTION agreement and subnegotiations with random values
    (never XON/XOFF flow control, which would let the pty swallow bytes)."""
    out = bytearray(COM_PORT_ON if rng.random() < 0.8 else rng.choice((COM_PORT_ON[:3], COM_PORT_ON[3:])))
    for _ in range(rng.randint(1, 12)):
        command = rng.choice((*range(13), *range(100, 113), rng.randrange(256)))
        value = rng.randbytes(rng.choice((0, 1, 1, 4, 4, 7)))
        if command == 5 and value[:1] in (b"\x02", b"\x0f"):
            value = b"\x01"
        out += com_port(command, value)
        if rng.random() < 0.1:
            out += bytes((IAC, 250, 44)) + rng.randbytes(rng.randint(0, 8))  # unterminated
    return bytes(out)


def fuzz_stream(rng: random.Random, hello: bytes, proto: str = "tcp") -> bytes:
    parts = [rfc2217_noise(rng)] if proto == "rfc2217" else []
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5 if proto == "rfc2217" else 4)
        if kind == 4:
            parts.append(rfc2217_noise(rng))
        elif kind == 0:
            parts.append(rng.randbytes(rng.randint(0, 8 * KiB)))
        elif kind == 1:
            parts.append(telnet_noise(rng))
        elif kind == 2:
            parts.append(tls_noise(rng, hello))
        else:
            parts.append(rng.choice(HTTP_REQUESTS)[: rng.randint(1, 400)])
    return b"".join(parts)


#: Every protocol, and TELNET with RFC 2217 on.
FUZZED = (*PROTOCOLS, "rfc2217")


class FuzzTests(RobustCase):
    SESSIONS = 400

    def fuzz_session(self, rng: random.Random, hello: bytes, kept: list[socket.socket]) -> None:
        proto = rng.choice(FUZZED)
        sock: Any = self.raw(proto)
        if proto == "ssl" and rng.random() < 0.4:
            # A real TLS client sending random application data (which
            # reaches the device).
            sock = self.pki.client_context().wrap_socket(sock, server_hostname="localhost")
            self.addCleanup(sock.close)
        data = fuzz_stream(rng, hello, proto)
        try:
            for _ in range(64):
                if not data:
                    break
                n = rng.randint(1, max(1, len(data)))
                sock.sendall(data[:n])
                data = data[n:]
                if rng.random() < 0.3:  # read whatever came back, if anything
                    sock.settimeout(0)
                    try:
                        sock.recv(64 * KiB)
                    except (BlockingIOError, ssl.SSLWantReadError):
                        pass
                    finally:
                        sock.settimeout(TIMEOUT)
        except (OSError, ssl.SSLError):
            pass  # the server closed on it (a TLS port given garbage)
        end = rng.randrange(4)
        if end == 0:
            sock.close()
        elif end == 1:
            reset(sock)
        else:
            if end == 2:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            kept.append(sock)
            if len(kept) > 16:
                reset(kept.pop(rng.randrange(len(kept))))

    def test_seeded_fuzz_on_every_protocol(self) -> None:
        report("fuzz seed (SER2TCP_FUZZ_SEED)", str(SEED))
        rng = random.Random(SEED)
        self.start(protocols=FUZZED)
        hello = client_hello(self.pki.client_context())
        kept: list[socket.socket] = []
        for _ in range(self.SESSIONS):
            self.fuzz_session(rng, hello, kept)
            self.assertTrue(
                self.daemon_.running(), f"the daemon died (seed {SEED}):\n{self.daemon_.output()}"
            )
        for sock in kept:
            sock.close()
        # Closed, so that the next open applies the configured settings again.
        self.wait_fds()
        for proto in FUZZED:
            self.assert_serves(proto)
        self.wait_fds()
        self.assertTrue(self.daemon_.running())
        self.assert_clean_log()

    def test_hypothesis_streams_on_every_protocol(self) -> None:
        """The same with Hypothesis (derandomized: the same examples every
        run), which shrinks a failing stream to a minimal one.  After each
        example a fresh client of the same protocol is served."""
        self.start(protocols=FUZZED)
        hello = client_hello(self.pki.client_context())
        telnet_token = st.one_of(
            st.builds(
                lambda v, o: bytes((IAC, v, o)), st.sampled_from((251, 252, 253, 254)), st.integers(0, 255)
            ),
            st.lists(st.sampled_from((IAC, 250, 240, 251, 253, 13, 10, 0, 65)), max_size=64).map(bytes),
        )
        com_port_command = st.builds(com_port, st.integers(0, 255), st.binary(max_size=8)).filter(
            lambda sb: (
                not sb.startswith(bytes((IAC, 250, 44, 5, 2)))
                and not sb.startswith(bytes((IAC, 250, 44, 5, 15)))
            )
        )
        piece = st.one_of(
            st.binary(max_size=2 * KiB),
            st.just(COM_PORT_ON),
            com_port_command,
            telnet_token,
            st.integers(1, len(hello)).map(lambda n: hello[:n]),
            st.sampled_from(HTTP_REQUESTS),
        )

        @settings(
            max_examples=60,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.sampled_from(FUZZED), st.lists(piece, min_size=1, max_size=6), st.integers(0, 2))
        def one(proto: str, pieces: list[bytes], end: int) -> None:
            sock = self.raw(proto)
            try:
                for data in pieces:
                    sock.sendall(data)
                if end == 2:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the TLS server closed on garbage
            if end == 1:
                reset(sock)
            else:
                sock.close()
            self.assertTrue(self.daemon_.running(), self.daemon_.output()[-3000:])
            self.assert_serves(proto, size=KiB)

        one()
        self.wait_fds()
        self.assert_clean_log()
