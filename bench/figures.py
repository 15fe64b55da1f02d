"""The figures: each measures one thing against one running proxy.

A figure function takes a :class:`Env` (the pty playing the device, the
running proxy, the sizes, a deadline) and returns a dict of metrics.  It
raises :class:`~harness.VerifyError` when a byte is wrong or missing and
:class:`~harness.FigureTimeout` when the proxy stalls; the runner turns those
into the figure's status ("failed", "timeout").

Every stream is random data that the receiving side compares, byte for
byte, with what was sent.  Device -> client streams start with a preamble of
NUL bytes (written until every client has seen some, which proves the proxy
has the device open and the client attached) and a 32-byte start marker;
clients discard everything up to the marker.
"""

from __future__ import annotations

import math
import os
import random
import select
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

from harness import (
    PREAMBLE,
    FigureTimeout,
    Pty,
    VerifyError,
    check,
    close_quietly,
    connect,
    cpu_seconds,
    fd_count,
    make_magic,
    peer_gone,
    proxy_socket,
    recv_some,
    rss_kib,
    send_all,
    unread_bytes,
)
from proxies import ProxyProcess

MiB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    """How much each figure does; ``QUICK`` is for smoke tests."""

    throughput_bytes: int
    fanout_clients: tuple[int, ...]
    fanout_bytes: int
    round_trips: int
    slow_seconds: float
    churn_cycles: int
    idle_clients: int = 100


FULL = Sizes(32 * MiB, (1, 10, 100, 500), 4 * MiB, 2000, 10.0, 2000)
QUICK = Sizes(1 * MiB, (1, 10), 256 * 1024, 200, 2.0, 200)

#: Slow-client figure: the device writes one chunk of this size every
#: interval (1 MB/s), each chunk starting with its sequence number.
SLOW_CHUNK = 10_000
SLOW_INTERVAL = 0.01
#: ser2tcp's limits in that figure (the brief's values).
SLOW_SEND_TIMEOUT = 2.0
SLOW_BUFFER_LIMIT = 1_048_576


@dataclass
class Env:
    pty: Pty
    proxy: ProxyProcess
    sizes: Sizes
    deadline: float
    rng: random.Random

    def payload(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    def magic(self) -> bytes:
        return make_magic(self.rng.randbytes(32))


def _first_difference(expected: bytes, offset: int, got: bytes | memoryview) -> str:
    got = bytes(got)
    for i, b in enumerate(got):
        pos = offset + i
        if pos >= len(expected):
            return f"{len(got) - i} unexpected byte(s) after the {len(expected)} expected"
        if expected[pos] != b:
            return f"byte {pos}: expected 0x{expected[pos]:02x}, got 0x{b:02x}"
    return "mismatch"


class Receiver:
    """One client reading a device -> client stream.

    It discards the preamble, finds the start marker, then checks every byte
    against ``expected``.  With ``chunk`` set it also records when each
    chunk-sized piece of the stream was complete (the slow-client lag).
    """

    def __init__(self, sock: socket.socket, magic: bytes, expected: bytes, chunk: int = 0) -> None:
        self.sock = sock
        self.magic = magic
        self.expected = expected
        self.offset = 0
        self.seen = 0
        self.synced = False
        self.done = False
        self.error: str | None = None
        self.t_done: float | None = None
        self._tail = b""
        self.chunk = chunk
        self.chunk_times: list[float] = []

    def feed(self, data: memoryview | bytes) -> None:
        """Take what one recv() returned."""
        if not self.synced:
            self.seen += len(data)
            hay = self._tail + bytes(data)
            i = hay.find(self.magic)
            if i < 0:
                self._tail = hay[-(len(self.magic) - 1) :]
                return
            self.synced = True
            self._tail = b""
            data = memoryview(hay)[i + len(self.magic) :]
            if not self.expected and not data:
                self._finish()
                return
        n = len(data)
        if not n:
            return
        expected = self.expected
        if self.offset + n > len(expected) or not expected.startswith(data, self.offset):
            self.error = _first_difference(expected, self.offset, data)
            return
        self.offset += n
        if self.chunk:
            now = time.monotonic()
            while (len(self.chunk_times) + 1) * self.chunk <= self.offset:
                self.chunk_times.append(now)
        if self.offset == len(expected):
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self.t_done = time.monotonic()


def _read_loop(receivers: list[Receiver], deadline: float, stop: threading.Event) -> None:
    """Read every receiver's socket with a selector until each is done,
    failed or closed, or until ``stop``/``deadline``."""
    sel = selectors.DefaultSelector()
    for r in receivers:
        sel.register(r.sock, selectors.EVENT_READ, r)
    buf = bytearray(256 * 1024)
    view = memoryview(buf)
    active = len(receivers)
    try:
        while active and not stop.is_set() and time.monotonic() < deadline:
            for key, _ in sel.select(0.1):
                r: Receiver = key.data
                try:
                    n = r.sock.recv_into(buf)
                except BlockingIOError:
                    continue
                except OSError as e:
                    r.error = r.error or f"connection error: {e}"
                    n = 0
                if n == 0:
                    if not r.error and not r.done:
                        r.error = f"closed by the proxy after {r.offset} bytes"
                else:
                    r.feed(view[:n])
                if n == 0 or r.done or r.error:
                    sel.unregister(r.sock)
                    active -= 1
    finally:
        sel.close()


class Readers:
    """Reader threads, each with a selector over a share of the clients."""

    def __init__(self, receivers: list[Receiver], deadline: float, per_thread: int = 256) -> None:
        self.receivers = receivers
        self.stop = threading.Event()
        count = max(1, math.ceil(len(receivers) / per_thread))
        self.threads = [
            threading.Thread(target=_read_loop, args=(receivers[i::count], deadline, self.stop), daemon=True)
            for i in range(count)
        ]

    def __enter__(self) -> Readers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


def wait_all_seen(pty: Pty, ready: Callable[[], bool], deadline: float) -> None:
    """Write the preamble until ``ready()``: every client has data from the
    device, so the proxy has the device open and every client attached."""
    while not ready():
        check(deadline, "waiting for every client to receive the preamble")
        pty.try_write(PREAMBLE)
        time.sleep(0.005)


def sync_single(pty: Pty, sock: socket.socket, magic: bytes, deadline: float) -> None:
    """Bring one client to the point where nothing is in flight: preamble
    until it sees a byte, then the marker, read up to its end."""
    r = Receiver(sock, magic, b"")
    while not r.seen:
        check(deadline, "waiting for the proxy to open the device")
        pty.try_write(PREAMBLE)
        ready, _, _ = select.select([sock], [], [], 0.005)
        if ready:
            data = recv_some(sock, 65536, deadline)
            if not data:
                raise VerifyError("closed by the proxy before any data")
            r.feed(data)
    pty.write_all(magic, deadline)
    while not r.synced:
        data = recv_some(sock, 65536, deadline)
        if not data:
            raise VerifyError("closed by the proxy during the preamble")
        r.feed(data)
    if r.error:
        raise VerifyError(r.error)


def _connect_many(proxy: ProxyProcess, count: int, deadline: float) -> list[socket.socket]:
    """Connect ``count`` clients, each after the proxy accepted the previous
    one (its fd count grew, 0.2 s at most).  Without this pacing a proxy with
    a tiny listen backlog (ser2tcp 2.3.0 listens with 1) drops SYNs and each
    dropped one costs a 1 s retransmission: setting up 500 clients would
    take minutes.  Connection setup is not what these figures measure; the
    churn figure does, without pacing."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            before = fd_count(proxy.pid) or 0
            socks.append(connect(proxy.port, deadline))
            until = min(deadline, time.monotonic() + 0.2)
            while (fd_count(proxy.pid) or 0) <= before and time.monotonic() < until:
                time.sleep(0.0005)
    except BaseException:
        close_quietly(socks)
        raise
    return socks


def _errors(receivers: list[Receiver]) -> list[str]:
    return [f"client {i}: {r.error}" for i, r in enumerate(receivers) if r.error]


# 1 and 2: device -> clients (one client is figure 1, many is the fan-out)


def device_to_clients(env: Env, clients: int, size: int) -> dict[str, object]:
    """Every client receives the same ``size`` random bytes from the device;
    aggregate rate = clients * size / (time from the first payload byte
    written to the last client complete)."""
    pid = env.proxy.pid
    payload = env.payload(size)
    magic = env.magic()
    socks = _connect_many(env.proxy, clients, env.deadline)
    receivers = [Receiver(s, magic, payload) for s in socks]
    try:
        with Readers(receivers, env.deadline):
            wait_all_seen(env.pty, lambda: all(r.seen or r.error for r in receivers), env.deadline)
            if _errors(receivers):
                raise VerifyError("; ".join(_errors(receivers)[:3]))
            cpu0 = cpu_seconds(pid)
            own0 = time.process_time()
            t0 = time.monotonic()
            try:
                env.pty.write_all(magic, env.deadline)
                env.pty.write_all(payload, env.deadline)
                while not all(r.done or r.error for r in receivers):
                    check(env.deadline, f"delivering {size} bytes to {clients} client(s)")
                    time.sleep(0.002)
            except FigureTimeout as e:
                elapsed = time.monotonic() - t0
                delivered = sum(r.offset for r in receivers)
                e.partial = {
                    "clients": clients,
                    "delivered_bytes": delivered,
                    "partial_mib_s": delivered / MiB / elapsed if elapsed > 0 else None,
                }
                raise
            cpu1 = cpu_seconds(pid)
            own = time.process_time() - own0
        errors = _errors(receivers)
        if errors:
            raise VerifyError(f"{len(errors)} of {clients} client(s) failed: " + "; ".join(errors[:3]))
        t_end = max(r.t_done for r in receivers if r.t_done is not None)
        seconds = t_end - t0
        total = clients * size
        cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        return {
            "clients": clients,
            "bytes_per_client": size,
            "seconds": seconds,
            "mib_s": total / MiB / seconds,
            "cpu_s": cpu,
            "cpu_s_per_mib": None if cpu is None else cpu / (total / MiB),
            # the clients' own CPU: near the seconds above, they were the bottleneck
            "bench_cpu_s": own,
            "verified_bytes": sum(r.offset for r in receivers),
        }
    finally:
        close_quietly(socks)


def client_to_device(env: Env, size: int) -> dict[str, object]:
    """One client sends ``size`` random bytes; the device side reads and
    compares them.  Rate = size / (first byte sent -> last byte verified)."""
    pid = env.proxy.pid
    payload = env.payload(size)
    sock = connect(env.proxy.port, env.deadline)
    try:
        sync_single(env.pty, sock, env.magic(), env.deadline)
        env.pty.drain()
        failure: list[BaseException] = []

        def sender() -> None:
            try:
                send_all(sock, payload, env.deadline)
            except BaseException as e:  # reported by the main thread
                failure.append(e)

        cpu0 = cpu_seconds(pid)
        t0 = time.monotonic()
        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        offset = 0
        try:
            while offset < size:
                data = env.pty.read_some(256 * 1024, env.deadline)
                n = len(data)
                if offset + n > size or not payload.startswith(data, offset):
                    raise VerifyError("device received " + _first_difference(payload, offset, data))
                offset += n
        except FigureTimeout as e:
            elapsed = time.monotonic() - t0
            e.partial = {"delivered_bytes": offset, "partial_mib_s": offset / MiB / elapsed}
            raise
        t1 = time.monotonic()
        cpu1 = cpu_seconds(pid)
        thread.join(max(0.1, env.deadline - time.monotonic()))
        if failure:
            raise failure[0]
        cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        return {
            "bytes": size,
            "seconds": t1 - t0,
            "mib_s": size / MiB / (t1 - t0),
            "cpu_s": cpu,
            "cpu_s_per_mib": None if cpu is None else cpu / (size / MiB),
            "verified_bytes": offset,
        }
    finally:
        sock.close()


# 3: round trips


def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)

    def pct(p: float) -> float:
        return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] / 1000

    return {
        "round_trips": len(s),
        "p50_us": pct(50),
        "p99_us": pct(99),
        "mean_us": sum(s) / len(s) / 1000,
        "max_us": s[-1] / 1000,
    }


def round_trip(env: Env, count: int) -> dict[str, object]:
    """A client sends one byte; the device (this thread, on the pty master)
    reads it and writes it back; the client reads it.  One at a time."""
    sock = connect(env.proxy.port, env.deadline, nodelay=True)
    try:
        sync_single(env.pty, sock, env.magic(), env.deadline)
        env.pty.drain()
        samples: list[int] = []
        for i in range(count):
            byte = bytes([i % 256])
            t0 = time.perf_counter_ns()
            sock.send(byte)
            got = env.pty.read_some(16, env.deadline)
            if got != byte:
                raise VerifyError(f"round trip {i}: device got {got!r}, expected {byte!r}")
            env.pty.write_all(got, env.deadline)
            back = recv_some(sock, 16, env.deadline)
            samples.append(time.perf_counter_ns() - t0)
            if back != byte:
                raise VerifyError(f"round trip {i}: client got {back!r}, expected {byte!r}")
        return _percentiles(samples)
    finally:
        sock.close()


def round_trip_pty(count: int, timeout: float = 60.0) -> dict[str, object]:
    """Baseline without a proxy: master -> slave -> master in one thread."""
    pty = Pty()
    deadline = time.monotonic() + timeout
    try:
        os.set_blocking(pty.slave, False)
        samples: list[int] = []
        for i in range(count):
            byte = bytes([i % 256])
            t0 = time.perf_counter_ns()
            os.write(pty.master, byte)
            select.select([pty.slave], [], [], check(deadline, "pty baseline"))
            got = os.read(pty.slave, 16)
            os.write(pty.slave, got)
            back = pty.read_some(16, deadline)
            samples.append(time.perf_counter_ns() - t0)
            if got != byte or back != byte:
                raise VerifyError(f"pty baseline {i}: {got!r} / {back!r}")
        return _percentiles(samples)
    finally:
        pty.close()


def pty_throughput(size: int, timeout: float = 120.0) -> dict[str, object]:
    """Baseline without a proxy: ``size`` bytes master -> slave, written by a
    thread and verified by this one.  The ceiling of figure 1 on this
    machine: a pty moves data in small pieces, whoever reads it."""
    pty = Pty()
    deadline = time.monotonic() + timeout
    payload = random.Random(1).randbytes(size)
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            pty.write_all(payload, deadline)
        except BaseException as e:  # reported below
            failure.append(e)

    try:
        os.set_blocking(pty.slave, False)
        thread = threading.Thread(target=writer, daemon=True)
        t0 = time.monotonic()
        thread.start()
        offset = 0
        while offset < size:
            try:
                data = os.read(pty.slave, 256 * 1024)
            except BlockingIOError:
                select.select([pty.slave], [], [], min(0.5, check(deadline, "pty baseline")))
                continue
            if not payload.startswith(data, offset):
                raise VerifyError("pty baseline: " + _first_difference(payload, offset, data))
            offset += len(data)
        seconds = time.monotonic() - t0
        thread.join(5)
        if failure:
            raise failure[0]
        return {"bytes": size, "seconds": seconds, "mib_s": size / MiB / seconds}
    finally:
        pty.close()


def round_trip_tcp(count: int, timeout: float = 60.0) -> dict[str, object]:
    """Baseline without a proxy: a loopback echo in one thread."""
    deadline = time.monotonic() + timeout
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    socks = [listener]
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = connect(listener.getsockname()[1], deadline, nodelay=True)
        socks.append(client)
        server, _ = listener.accept()
        socks.append(server)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server.setblocking(False)
        samples: list[int] = []
        for i in range(count):
            byte = bytes([i % 256])
            t0 = time.perf_counter_ns()
            client.send(byte)
            got = recv_some(server, 16, deadline)
            server.send(got)
            back = recv_some(client, 16, deadline)
            samples.append(time.perf_counter_ns() - t0)
            if got != byte or back != byte:
                raise VerifyError(f"tcp baseline {i}: {got!r} / {back!r}")
        return _percentiles(samples)
    finally:
        close_quietly(socks)


# 4: slow client


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(round(q * (len(ordered) - 1)))]


def slow_client(env: Env, seconds: float, send_timeout: float | None) -> dict[str, object]:
    """A client that never reads (4 KiB receive buffer) and a fast one share
    a device streaming 1 MB/s.  Measures the fast client's rate and lag, when
    the slow one is cut off and how much the proxy's memory grows."""
    pid = env.proxy.pid
    port = env.proxy.port
    nchunks = int(round(seconds / SLOW_INTERVAL))
    body = env.payload(nchunks * SLOW_CHUNK)
    stream = b"".join(
        struct.pack(">Q", i) + body[i * SLOW_CHUNK + 8 : (i + 1) * SLOW_CHUNK] for i in range(nchunks)
    )
    magic = env.magic()
    fast_sock = connect(port, env.deadline)
    slow_sock = connect(port, env.deadline, rcvbuf=4096)
    slow_port = slow_sock.getsockname()[1]
    fast = Receiver(fast_sock, magic, stream, chunk=SLOW_CHUNK)
    samples: dict[str, list] = {"rss": [], "txq": []}
    cut: list[float] = []
    stop = threading.Event()

    def monitor() -> None:
        """Every 20 ms: proxy RSS, the proxy's send queue to the slow client,
        and whether the slow client has been cut off yet."""
        while not stop.is_set():
            now = time.monotonic()
            rss = rss_kib(pid)
            if rss is not None:
                samples["rss"].append(rss)
            if not cut:
                side = proxy_socket(port, slow_port)
                if side is not None and side[0] and not peer_gone(slow_sock):
                    samples["txq"].append((now, side[1]))
                else:
                    cut.append(now)
            stop.wait(0.02)

    try:
        with Readers([fast], env.deadline):
            wait_all_seen(
                env.pty, lambda: bool(fast.seen or fast.error) and unread_bytes(slow_sock) > 0, env.deadline
            )
            rss0 = rss_kib(pid) or 0
            mon = threading.Thread(target=monitor, daemon=True)
            mon.start()
            written: list[float] = []
            device_blocked = False
            t0 = time.monotonic()
            env.pty.write_all(magic, env.deadline)
            # The device may fall behind only if the proxy stops reading it.
            stream_deadline = min(env.deadline, t0 + seconds + 2.0)
            try:
                for i in range(nchunks):
                    delay = t0 + i * SLOW_INTERVAL - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    env.pty.write_all(stream[i * SLOW_CHUNK : (i + 1) * SLOW_CHUNK], stream_deadline)
                    written.append(time.monotonic())
            except FigureTimeout:
                device_blocked = True
            t_stream_end = time.monotonic()
            written_bytes = len(written) * SLOW_CHUNK
            # Let the fast client catch up, and the slow one be cut off.
            grace_end = min(env.deadline, time.monotonic() + 3.0)
            while fast.offset < written_bytes and not fast.error and time.monotonic() < grace_end:
                time.sleep(0.01)
            if send_timeout is not None:
                cut_end = min(env.deadline, time.monotonic() + send_timeout + 2.0)
                while not cut and time.monotonic() < cut_end:
                    time.sleep(0.02)
            stop.set()
            mon.join(2)
        if fast.error:
            raise VerifyError(f"fast client: {fast.error}")
        lags = [fast.chunk_times[i] - written[i] for i in range(min(len(written), len(fast.chunk_times)))]
        txq = samples["txq"]
        t_full = None
        if txq:
            top = max(q for _, q in txq)
            t_full = next(t for t, q in txq if q == top)
        got_all = fast.offset == len(stream)
        return {
            "stream_seconds": seconds,
            "planned_bytes": len(stream),
            "device_written_bytes": written_bytes,
            "device_blocked": device_blocked,
            "fast_received_bytes": fast.offset,
            "fast_got_every_byte": got_all,
            "fast_mb_s": fast.offset / 1e6 / max(t_stream_end - t0, 1e-9),
            "fast_worst_lag_ms": max(lags) * 1000 if lags else None,
            "fast_p50_lag_ms": _quantile(lags, 0.5) * 1000 if lags else None,
            "fast_p99_lag_ms": _quantile(lags, 0.99) * 1000 if lags else None,
            "fast_lags_over_20ms": sum(1 for lag in lags if lag > 0.02),
            "slow_cut_after_s": cut[0] - t0 if cut else None,
            "slow_buffers_full_after_s": None if t_full is None else t_full - t0,
            "slow_cut_after_full_s": cut[0] - t_full if cut and t_full is not None else None,
            "slow_max_kernel_queue_bytes": max((q for _, q in txq), default=None),
            "rss_before_kib": rss0,
            "rss_growth_kib": max(samples["rss"], default=rss0) - rss0,
            "verified_bytes": fast.offset,
        }
    finally:
        stop.set()
        close_quietly([fast_sock, slow_sock])


# 5: churn


def churn(env: Env, cycles: int, anchor: bool = True) -> dict[str, object]:
    """Plain connect/close cycles, one after another.  The rate counts until
    the proxy's fd count is back to its idle value (it has accepted and
    closed every one), so a kernel backlog cannot flatter it.

    With ``anchor``, one client stays connected throughout, so the device
    stays open: the case of a port scanner or a monitor hitting a port that
    is in use.  Without it, a proxy that opens the device for its first
    client (ser2tcp, ser2net) opens and closes the device every cycle, and
    the figure measures the device's open/close instead."""
    pid = env.proxy.pid
    anchor_sock = socket.create_connection(("127.0.0.1", env.proxy.port), timeout=5) if anchor else None
    time.sleep(0.3)
    fds0 = fd_count(pid)
    if fds0 is None:
        raise RuntimeError("proxy not running")
    t0 = time.monotonic()
    done = 0
    try:
        for _ in range(cycles):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.settimeout(check(env.deadline, "connecting"))
                try:
                    s.connect(("127.0.0.1", env.proxy.port))
                except socket.timeout:
                    raise FigureTimeout("timeout while connecting") from None
            finally:
                s.close()
            done += 1
        t_loop = time.monotonic()
        t_back = None
        while True:
            n = fd_count(pid)
            if n is None:
                raise RuntimeError(f"proxy died during churn: {env.proxy.log_tail()}")
            if n <= fds0:
                t_back = time.monotonic()
                break
            check(env.deadline, "waiting for the proxy to close churned connections")
            time.sleep(0.001)
        time.sleep(0.5)
        fds1 = fd_count(pid)  # with the anchor still there, as fds0
    except FigureTimeout as e:
        elapsed = time.monotonic() - t0
        e.partial = {"cycles_done": done, "partial_per_s": done / elapsed, "fds_before": fds0}
        raise
    finally:
        if anchor_sock is not None:
            anchor_sock.close()
    return {
        "anchor_client": anchor,
        "cycles": cycles,
        "seconds": t_back - t0,
        "per_s": cycles / (t_back - t0),
        "client_loop_per_s": cycles / (t_loop - t0),
        "fds_before": fds0,
        "fds_after": fds1,
        "fd_leak": None if fds1 is None else fds1 - fds0,
    }


# 6: memory


def memory(env: Env, clients: int) -> dict[str, object]:
    """RSS idle, then with ``clients`` idle connected clients (0: idle only)."""
    pid = env.proxy.pid
    time.sleep(0.5)
    idle = rss_kib(pid)
    fds0 = fd_count(pid) or 0
    result: dict[str, object] = {"idle_rss_kib": idle}
    if not clients:
        return result
    socks = _connect_many(env.proxy, clients, env.deadline)
    try:
        # Accepted by the proxy: one fd per client (plus the device's).
        while (fd_count(pid) or 0) < fds0 + clients:
            check(env.deadline, f"waiting for the proxy to accept {clients} clients")
            time.sleep(0.02)
        time.sleep(0.5)
        loaded = rss_kib(pid)
        gone = [s for s in socks if peer_gone(s)]
        if gone:
            raise VerifyError(f"{len(gone)} idle client(s) were disconnected")
        result.update(
            {
                "clients": clients,
                "clients_rss_kib": loaded,
                "per_client_kib": None if idle is None or loaded is None else (loaded - idle) / clients,
            }
        )
        return result
    finally:
        close_quietly(socks)
