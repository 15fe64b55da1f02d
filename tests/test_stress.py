"""Stress: the heavy robustness tests, sized by ``SER2TCP_STRESS_SCALE``.

``SER2TCP_STRESS_SCALE`` (a positive number, default ``1``) multiplies the
size of every test here; at 1 they are the sizes the issue asks for:

==============================  ===========  ====================================
test                            at scale 1   what
==============================  ===========  ====================================
connect/disconnect cycles       5,000        over the four listeners, FIN or RST,
                                             some after a TLS handshake
device unplugs                  50           10 clients each, 3 of them writing
fast device stream              100 MB       into 10 clients, one not reading
                                             (never less than 20 MB)
simultaneous clients            1,000        64 KiB to each (never less than 100)
==============================  ===========  ====================================

At scale 1 the four take about 15 s on a shared 2-core machine (measured:
5,000 cycles in 2-3 s, 50 unplugs in 2-3 s, 100 MB in 3-5 s, 1,000 clients
in 1 s), so CI runs them at full size; ``0.2`` makes a quick run, ``5`` a
soak (5,000 clients needs RLIMIT_NOFILE above 10,000).  Nothing asserts a
speed: the numbers measured are printed as ``ROBUSTNESS <name>: <value>``
lines.  The helpers and checks
(idle descriptors, clean log, a fresh client per protocol) are those of
:mod:`tests.test_robustness`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import selectors
import socket
import ssl
import threading
import time

from ser2tcp.telnet_codec import escape
from tests.helpers import TIMEOUT, port_name, recv_each, recv_until_closed, ticks, wait_until
from tests.test_robustness import (
    ALL_BYTES,
    PROTOCOLS,
    SEED,
    KiB,
    MiB,
    RobustCase,
    Stream,
    accept_queue,
    fd_count,
    raise_fd_limit,
    report,
    reset,
    rss,
    write_fd,
)


def _scale() -> float:
    raw = os.environ.get("SER2TCP_STRESS_SCALE", "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"SER2TCP_STRESS_SCALE must be a number, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"SER2TCP_STRESS_SCALE must be positive, got {raw!r}")
    return value


SCALE = _scale()


def scaled(full: int, minimum: int = 1) -> int:
    return max(minimum, round(full * SCALE))


CYCLES = scaled(5000, 40)
UNPLUGS = scaled(50, 2)
STREAM_BYTES = scaled(100_000_000, 20_000_000)
CLIENTS = scaled(1000, 100)


class CycleTests(RobustCase):
    def one_cycle(self, proto: str, i: int) -> None:
        """Connect and disconnect once: RST or FIN, sometimes after a
        complete TLS handshake or after the TELNET greeting."""
        if proto == "socket":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: object = self.unix_path
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = ("127.0.0.1", self.ports[proto])
        try:
            sock.settimeout(TIMEOUT)
            for _ in ticks(time.monotonic() + 60):
                try:
                    sock.connect(address)
                    break
                except BlockingIOError:
                    # A Unix socket's backlog is full: the daemon is behind.
                    time.sleep(0.005)  # polling interval
            else:
                raise AssertionError(f"cannot connect to {address} in time")
            if i % 10 == 0 and proto == "ssl":
                sock = self.pki.client_context().wrap_socket(sock, server_hostname="localhost")
            elif i % 10 == 0 and proto == "telnet":
                sock.recv(64)
        finally:
            if i % 2:
                reset(sock)
            else:
                sock.close()

    def test_connect_disconnect_cycles(self) -> None:
        self.start()
        per = CYCLES // len(PROTOCOLS)
        started = time.monotonic()
        for proto in PROTOCOLS:
            for i in range(per):
                self.one_cycle(proto, i)
                if i % 100 == 99 and proto != "socket":
                    # Keep the accept queue short: a full one drops SYNs,
                    # and their retransmission would only make this slow.
                    wait_until(lambda p=proto: accept_queue(self.ports[p]) < 200, 60, "the accept queue")
            self.assert_serves(proto)
            self.wait_fds(timeout=60)
        elapsed = time.monotonic() - started
        report("connect/disconnect cycles", f"{per * len(PROTOCOLS)} in {elapsed:.1f} s")
        report("descriptors of the idle daemon", f"{self.idle_fds} before and after the cycles")
        self.assertTrue(self.daemon_.running())
        self.assert_clean_log()


class UnplugTests(RobustCase):
    def test_unplug_with_clients_connected_and_writing(self) -> None:
        link = os.path.join(self.tempdir(), "ttyUNPLUG")
        self.plug(link)
        self.start(device=link)
        started = time.monotonic()
        for round_ in range(1, UNPLUGS + 1):
            socks = [self.client(PROTOCOLS[i % len(PROTOCOLS)]) for i in range(10)]
            for i, sock in enumerate(socks):
                self.joined(sock, b"<round %d client %d>" % (round_, i))
            # Every client gets the device's data (no 0xFF: the same bytes
            # on every protocol)...
            data = ALL_BYTES[:255] + os.urandom(8 * KiB).replace(b"\xff", b"\x00")
            self.device.write(data)
            for i, got in enumerate(recv_each(socks, len(data), self.deadline(30))):
                self.assertTrue(got == data, f"round {round_} client {i}")
            # ...and three of them (TCP, TELNET, socket) keep writing.
            writers = [socks[0], socks[1], socks[3]]
            stop = threading.Event()
            self.addCleanup(stop.set)
            threads = [
                threading.Thread(target=self.keep_writing, args=(s, stop), daemon=True) for s in writers
            ]
            for t in threads:
                t.start()
            since = self.device.position()
            wait_until(lambda s=since: self.device.position() > s + 64 * KiB, 30, "the writers' data")
            self.device.unplug()
            for i, sock in enumerate(socks):
                _, how = recv_until_closed(sock, self.deadline(30), limit=16 * MiB)
                self.assertIn(how, ("eof", "reset"), f"round {round_} client {i}")
            stop.set()
            for t in threads:
                t.join(TIMEOUT)
            for sock in socks:
                sock.close()
            self.daemon_.wait_output(f"W: Serial {port_name(link)} lost", round_, timeout=30)
            self.wait_fds()  # every client and the lost device released
            self.plug(link)
        elapsed = time.monotonic() - started
        report("unplug rounds (10 clients, 3 writing)", f"{UNPLUGS} in {elapsed:.1f} s")
        for proto in PROTOCOLS:
            self.assert_serves(proto)
        self.wait_fds()
        self.assert_clean_log()

    @staticmethod
    def keep_writing(sock: socket.socket, stop: threading.Event) -> None:
        chunk = os.urandom(16 * KiB)
        for _ in ticks(time.monotonic() + 120):
            if stop.is_set():
                return
            try:
                sock.send(chunk)
            except OSError:
                return  # the daemon closed it: the device is gone


class FastDeviceTests(RobustCase):
    """A device that streams faster than one of its clients reads."""

    WINDOW = 512 * KiB  # how far the device may run ahead of the slowest reader

    def test_stream_into_ten_clients_one_not_reading(self) -> None:
        buffer_limit = MiB
        self.start(flags=("-v",), buffer_limit=buffer_limit, send_timeout=600)
        pid = self.daemon_.pid
        kinds = ["tcp", "tcp", "tcp", "telnet", "telnet", "ssl", "ssl", "socket", "socket"]
        readers = [self.client(proto) for proto in kinds]
        stuck = self.client("tcp", rcvbuf=4096)
        for i, sock in enumerate([*readers, stuck]):
            self.joined(sock, b"<stream client %d>" % i)
        self.daemon_.wait_output("Client connected", 10)
        idle = rss(pid)
        stream = Stream(SEED + 2)
        total = STREAM_BYTES
        expected = {"raw": hashlib.sha256(), "telnet": hashlib.sha256()}
        wire = {"raw": 0, "telnet": 0}  # bytes each kind of reader should get so far
        digests = [hashlib.sha256() for _ in readers]
        received = [0] * len(readers)
        cond = threading.Condition()
        errors: list[BaseException] = []
        stop = threading.Event()  # set by the cleanup, should the test fail

        def feed() -> None:
            fd = self.device.pty.fd()
            end = time.monotonic() + 600
            for chunk in stream.chunks(total):
                telnet = escape(chunk)
                with cond:
                    ok = cond.wait_for(
                        lambda: (
                            bool(errors)
                            or stop.is_set()
                            or all(
                                wire["telnet" if kinds[i] == "telnet" else "raw"] - received[i] < self.WINDOW
                                for i in range(len(readers))
                            )
                        ),
                        max(0.0, end - time.monotonic()),
                    )
                    if errors or stop.is_set() or not ok:
                        return
                write_fd(fd, chunk, end)
                with cond:
                    expected["raw"].update(chunk)
                    expected["telnet"].update(telnet)
                    wire["raw"] += len(chunk)
                    wire["telnet"] += len(telnet)

        def read() -> None:
            sel = selectors.DefaultSelector()
            for i, sock in enumerate(readers):
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ, i)
            for _ in ticks(time.monotonic() + 600):
                if stop.is_set():
                    return
                with cond:
                    done = wire["raw"] == total and all(
                        received[i] == wire["telnet" if k == "telnet" else "raw"] for i, k in enumerate(kinds)
                    )
                if done:
                    return
                for key, _ in sel.select(0.1):
                    i = key.data
                    for _ in range(64):
                        try:
                            data = readers[i].recv(256 * KiB)
                        except (BlockingIOError, ssl.SSLWantReadError):
                            break
                        if not data:
                            raise AssertionError(f"reader {i} ({kinds[i]}) cut off after {received[i]} bytes")
                        digests[i].update(data)
                        with cond:
                            received[i] += len(data)
                            cond.notify_all()

        def guard(fn):
            def run() -> None:
                try:
                    fn()
                except BaseException as e:
                    with cond:
                        errors.append(e)
                        cond.notify_all()

            return run

        started = time.monotonic()
        feeder = threading.Thread(target=guard(feed), daemon=True)
        reader = threading.Thread(target=guard(read), daemon=True)
        self.addCleanup(reader.join, TIMEOUT)
        self.addCleanup(feeder.join, TIMEOUT)
        self.addCleanup(stop.set)
        feeder.start()
        reader.start()
        peak = idle
        for _ in ticks(time.monotonic() + 600):
            peak = max(peak, rss(pid))
            reader.join(0.1)
            if not reader.is_alive():
                break
        feeder.join(TIMEOUT)
        elapsed = time.monotonic() - started
        if errors:
            raise errors[0]
        self.assertFalse(reader.is_alive(), "the stream did not complete in time")
        self.assertEqual(wire["raw"], total)
        for i, kind in enumerate(kinds):
            want = expected["telnet" if kind == "telnet" else "raw"].hexdigest()
            self.assertEqual(digests[i].hexdigest(), want, f"reader {i} ({kind}): not the stream")
        # The one that did not read was cut off, at buffer_limit, having
        # received a prefix of the stream (no holes).
        got, how = recv_until_closed(stuck, self.deadline(), limit=total)
        self.assertIn(how, ("eof", "reset"))
        self.assertLess(len(got), total)
        prefix = b"".join(stream.chunks(len(got)))
        self.assertTrue(got == prefix, "the cut-off client got something other than a prefix")
        log = self.daemon_.wait_output("Client dropped")
        dropped = [line for line in log.splitlines() if "Client dropped" in line]
        self.assertEqual(len(dropped), 1, dropped)
        self.assertIn(f":{stuck.getsockname()[1]} TCP: buffer_limit", dropped[0])
        growth = peak - idle
        report(
            "fast device",
            f"{total / 1e6:.0f} MB into 9 readers + 1 stuck in {elapsed:.1f} s "
            f"({total / 1e6 / elapsed:.0f} MB/s per client); peak RSS growth {growth / MiB:.1f} MiB",
        )
        self.assertLess(growth, 10 * buffer_limit + 64 * MiB)
        self.assert_clean_log()


class ManyClientsTests(RobustCase):
    def test_simultaneous_clients(self) -> None:
        soft = raise_fd_limit(2 * CLIENTS + 256)
        if soft < 2 * CLIENTS + 64:
            self.skipTest(f"RLIMIT_NOFILE {soft} is too low for {CLIENTS} clients")
        self.start(protocols=("tcp",), send_timeout=60)
        pid, port = self.daemon_.pid, self.ports["tcp"]
        idle = rss(pid)
        first = self.client("tcp")
        self.joined(first, b"<first>")
        base = fd_count(pid)  # the device and one client
        socks = [first]
        started = time.monotonic()
        for _ in range(CLIENTS - 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.addCleanup(sock.close)
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", port))
            self.assertIn(code, (0, errno.EINPROGRESS))
            socks.append(sock)
        wait_until(lambda: fd_count(pid) == base + CLIENTS - 1, 60, f"{CLIENTS} clients in the daemon")
        for sock in socks:
            self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), 0)
        connected = time.monotonic() - started
        per_client = (rss(pid) - idle) / CLIENTS
        data = os.urandom(64 * KiB)
        self.device.write(data, self.deadline(60))
        for i, got in enumerate(recv_each(socks, len(data), self.deadline(120))):
            self.assertTrue(got == data, f"client {i} did not get the 64 KiB")
        delivered = time.monotonic() - started - connected
        report(f"{CLIENTS} clients", f"connected in {connected:.1f} s, 64 KiB to each in {delivered:.1f} s")
        report("memory per idle client", f"{per_client / KiB:.1f} KiB (RSS idle {idle / MiB:.1f} MiB)")
        report("descriptors", f"{self.idle_fds} idle, {base + CLIENTS - 1} with {CLIENTS} clients")
        self.assertLess(per_client, 200 * KiB)
        for sock in socks:
            sock.close()
        self.wait_fds(timeout=60)
        self.assert_serves("tcp")
        self.assert_clean_log()
