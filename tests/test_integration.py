"""The real ``ser2tcp`` daemon on a pty, with real loopback clients."""

from __future__ import annotations

import errno
import json
import os
import re
import select
import selectors
import signal
import socket
import termios
import time

from twisted.trial.unittest import SkipTest

from .helpers import (
    REPO,
    Background,
    Case,
    Pty,
    free_port,
    has_ipv6_loopback,
    port_config,
    port_name,
    recv_each,
    recv_exactly,
    recv_until_closed,
    send_all,
    tcp_server,
)

MiB = 1 << 20
ALL_BYTES = bytes(range(256))


class Base(Case):
    def serve(self, pty_path: str, flags=("-v",), settings=None, **server):
        """``ser2tcp`` sharing ``pty_path`` on one TCP server: (daemon, port)."""
        port = free_port()
        config = [port_config(pty_path, tcp_server(port, **server), **(settings or {}))]
        return self.ser2tcp(config, *flags, listen=[port]), port

    def handshake(self, sock: socket.socket, pty: Pty, tag: bytes = b"?") -> None:
        """Client -> device: once it arrived, the device is open and flushed."""
        sock.sendall(tag)
        self.assertEqual(pty.read(len(tag)), tag)

    def assertSame(self, got: bytes, want: bytes, what: str = "stream") -> None:
        """Byte-exact equality, reported without dumping megabytes."""
        if got == want:
            return
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        self.fail(f"{what}: {len(got)} bytes instead of {len(want)}, first difference at byte {at}")

    def clients(self, port: int, n: int, daemon, pty: Pty, **kw) -> list[socket.socket]:
        """``n`` clients, all attached to the open device (needs -v)."""
        socks = [self.connect(port, **kw) for _ in range(n)]
        daemon.wait_output("Client connected", n)
        daemon.wait_output(f"Serial {port_name(pty.path)} opened")
        return socks


class DataTests(Base):
    def test_all_byte_values_device_to_client(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path)
        (sock,) = self.clients(port, 1, daemon, pty)
        data = ALL_BYTES * 4 + ALL_BYTES[::-1] * 4
        pty.write(data)
        self.assertSame(recv_exactly(sock, len(data), self.deadline()), data)

    def test_all_byte_values_client_to_device(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path)
        sock = self.connect(port)
        data = ALL_BYTES * 4 + ALL_BYTES[::-1] * 4
        sock.sendall(data)
        self.assertSame(pty.read(len(data)), data)

    def test_4mib_device_to_client(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path)
        (sock,) = self.clients(port, 1, daemon, pty)
        data = os.urandom(4 * MiB)
        writer = Background(pty.write, data, self.deadline(30))
        self.assertSame(recv_exactly(sock, len(data), self.deadline(30)), data)
        writer.result()

    def test_4mib_client_to_device(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path)
        sock = self.connect(port)
        data = os.urandom(4 * MiB)
        sender = Background(send_all, sock, data, self.deadline(30))
        self.assertSame(pty.read(len(data), self.deadline(30)), data)
        sender.result()

    def test_4mib_both_ways_at_once(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path)
        (sock,) = self.clients(port, 1, daemon, pty)
        down, up = os.urandom(4 * MiB), os.urandom(4 * MiB)
        writer = Background(pty.write, down, self.deadline(30))
        reader = Background(pty.read, len(up), self.deadline(30))
        sender = Background(send_all, sock, up, self.deadline(30))
        self.assertSame(recv_exactly(sock, len(down), self.deadline(30)), down)
        self.assertSame(reader.result(30), up)
        writer.result()
        sender.result()


class FanOutTests(Base):
    def test_twelve_clients_get_the_same_stream(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path)
        socks = self.clients(port, 12, daemon, pty)
        data = os.urandom(MiB)
        writer = Background(pty.write, data, self.deadline(30))
        received = recv_each(socks, len(data), self.deadline(30))
        writer.result()
        for i, got in enumerate(received):
            self.assertSame(got, data, f"client {i}")

    def test_client_data_is_not_echoed_to_anyone(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path)
        socks = self.clients(port, 12, daemon, pty)
        for i, sock in enumerate(socks):
            tag = f"<from client {i}>".encode()
            self.handshake(sock, pty, tag)
        # Every client's bytes reached the device before the device speaks:
        # an echo would have been queued to the clients before this mark.
        pty.write(b"MARK")
        for got in recv_each(socks, 4, self.deadline()):
            self.assertEqual(got, b"MARK")


class LazyOpenTests(Base):
    def test_serial_is_opened_by_the_first_client_and_closed_after_the_last(self):
        pty = self.pty()
        port, loop_port = free_port(), free_port()
        config = [
            port_config(pty.path, tcp_server(port)),
            port_config("loop://", tcp_server(loop_port)),
        ]
        daemon = self.ser2tcp(config, "-v", listen=[port, loop_port])
        # A round trip through the other port: the daemon is fully started.
        echo = self.connect(loop_port)
        echo.sendall(b"ping")
        self.assertEqual(recv_exactly(echo, 4, self.deadline()), b"ping")
        self.assertFalse(daemon.holds(pty.path))
        self.assertFalse(pty.slave_open())

        first = self.connect(port)
        daemon.wait_holds(pty.path)
        second = self.connect(port)
        self.handshake(second, pty)
        first.close()
        daemon.wait_output("Client disconnected", 1)
        self.assertTrue(daemon.holds(pty.path), "closed while a client is still connected")
        second.close()
        daemon.wait_holds(pty.path, held=False)
        daemon.wait_output(f"Serial {port_name(pty.path)} closed")
        self.assertFalse(pty.slave_open())

        # and opened again by the next client
        third = self.connect(port)
        self.handshake(third, pty)
        self.assertTrue(daemon.holds(pty.path))

    def test_what_a_leaving_client_sent_still_reaches_the_device(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path)
        # Clients that send and close at once, one after the other: the port
        # closes and opens again between them, and no byte is lost.
        tags = [b"<%03d>" % i for i in range(20)]
        reader = Background(pty.read, len(b"".join(tags)), self.deadline(30))
        for tag in tags:
            sock = self.connect(port)
            sock.sendall(tag)
            sock.close()
        self.assertEqual(reader.result(30), b"".join(tags))
        # and a big write, closed before the device took it
        data = os.urandom(2 * MiB)
        reader = Background(pty.read, len(data), self.deadline(30))
        sock = self.connect(port)
        sock.sendall(data)
        sock.close()
        self.assertSame(reader.result(30), data)
        daemon.wait_holds(pty.path, held=False)


class SlowClientTests(Base):
    STREAM = 16 * MiB

    def stream_with_a_stuck_client(self, daemon, port, pty):
        """A client that never reads and one that does; the device streams.

        Returns (stuck socket, reading socket, stream); the reading client
        got all of the stream, checked here.
        """
        stuck = self.connect(port, rcvbuf=4096)
        fast = self.connect(port)
        daemon.wait_output("Client connected", 2)
        daemon.wait_output(f"Serial {port_name(pty.path)} opened")
        data = os.urandom(self.STREAM)
        writer = Background(pty.write, data, self.deadline(60))
        got = recv_exactly(fast, len(data), self.deadline(60))
        writer.result()
        self.assertSame(got, data, "the reading client")
        return stuck, fast, data

    def assert_cut_off(self, daemon, stuck, fast, data, why):
        log = daemon.wait_output(why)
        received, how = recv_until_closed(stuck, self.deadline(), limit=len(data))
        self.assertIn(how, ("eof", "reset"))
        self.assertLess(len(received), len(data))
        self.assertTrue(data.startswith(received), "the cut-off client got bytes out of order")
        dropped = [line for line in log.splitlines() if "Client dropped" in line]
        self.assertEqual(len(dropped), 1, log)
        self.assertIn(f"127.0.0.1:{stuck.getsockname()[1]} ", dropped[0])
        self.assertIn(why, dropped[0])

    def test_send_timeout_cuts_off_a_stuck_client(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path, send_timeout=1)
        stuck, fast, data = self.stream_with_a_stuck_client(daemon, port, pty)
        self.assert_cut_off(daemon, stuck, fast, data, "send_timeout")
        pty.write(b"still here")
        self.assertEqual(recv_exactly(fast, 10, self.deadline()), b"still here")

    def test_buffer_limit_cuts_off_a_stuck_client(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path, send_timeout=30, buffer_limit=65536)
        stuck, fast, data = self.stream_with_a_stuck_client(daemon, port, pty)
        self.assert_cut_off(daemon, stuck, fast, data, "buffer_limit")
        pty.write(b"still here")
        self.assertEqual(recv_exactly(fast, 10, self.deadline()), b"still here")


class FlowControlTests(Base):
    def test_slow_device_gets_everything_in_order(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path)
        sock = self.connect(port)
        data = os.urandom(1_000_000)

        def slow_reader():
            chunks = []
            got = 0
            end = time.monotonic() + 60
            for _ in range(len(data)):
                if got >= len(data):
                    break
                chunk = pty.read(min(1024, len(data) - got), end)
                chunks.append(chunk)
                got += len(chunk)
                time.sleep(0.0005)  # pacing: a slow device, not synchronisation
            return b"".join(chunks)

        reader = Background(slow_reader)
        send_all(sock, data, self.deadline(60))
        self.assertSame(reader.result(60), data)

    def test_clients_are_paused_while_the_device_does_not_take_data(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path)
        sock = self.connect(port)
        self.handshake(sock, pty)
        # Nobody reads the device now.  Without flow control the daemon would
        # read all of this into memory; with it the client stalls once the
        # kernel buffers and the daemon's 64 KiB are full.
        data = os.urandom(32 * MiB)
        sock.setblocking(False)
        sent = 0
        end = self.deadline(30)
        for _ in range(len(data)):
            if sent == len(data) or time.monotonic() > end:
                break
            _, writable, _ = select.select([], [sock], [], 1.0)
            if not writable:
                break  # no progress for a second: stalled
            try:
                sent += sock.send(data[sent : sent + 65536])
            except BlockingIOError:
                continue
        sock.settimeout(10)
        self.assertLess(sent, len(data), "the client was never paused")
        self.assertTrue(daemon.running())
        self.assertSame(pty.read(sent, self.deadline(30)), data[:sent])
        # and reading resumes once the device drained
        send_all(sock, b"after", self.deadline())
        self.assertEqual(pty.read(5), b"after")


class UnplugTests(Base):
    def test_device_lost_and_plugged_again(self):
        tmp = self.tempdir()
        link = os.path.join(tmp, "ttyTEST")
        first = self.pty()
        os.symlink(first.path, link)
        daemon, port = self.serve(link, settings={"baudrate": 115200})
        socks = [self.connect(port) for _ in range(3)]
        for i, sock in enumerate(socks):
            self.handshake(sock, first, b"%d" % i)
        self.assertEqual(first.speeds(), (termios.B115200, termios.B115200))

        first.close()  # unplugged
        for sock in socks:
            received, how = recv_until_closed(sock, self.deadline())
            self.assertEqual((received, how), (b"", "eof"))
        log = daemon.wait_output(f"Serial {port_name(link)} lost")
        self.assertRegex(log, rf"(?m)^W: Serial {re.escape(port_name(link))} lost: .*3 client")
        daemon.wait_holds(first.path, held=False)
        self.assertTrue(daemon.running())
        daemon.wait_listening([port])

        second = self.pty()  # plugged in again, as another pty
        self.assertEqual(second.speeds(), (termios.B9600, termios.B9600))
        os.symlink(second.path, link + ".new")
        os.replace(link + ".new", link)
        sock = self.connect(port)
        self.handshake(sock, second, b"up again")
        second.write(b"down again")
        self.assertEqual(recv_exactly(sock, 10, self.deadline()), b"down again")
        self.assertEqual(second.speeds(), (termios.B115200, termios.B115200))
        self.assertEqual(daemon.output().count(f"Serial {port_name(link)} opened"), 2)

    def test_open_failure_refuses_clients_and_the_daemon_goes_on(self):
        tmp = self.tempdir()
        missing = os.path.join(tmp, "no-such-tty")
        pty = self.pty()
        bad_port, good_port = free_port(), free_port()
        config = [
            port_config(missing, tcp_server(bad_port)),
            port_config(pty.path, tcp_server(good_port)),
        ]
        daemon = self.ser2tcp(config, listen=[bad_port, good_port])  # default level: warnings only

        for attempt in (1, 2):
            sock = self.connect(bad_port)
            self.assertEqual(recv_until_closed(sock, self.deadline()), (b"", "eof"))
            log = daemon.wait_output(f"Serial {port_name(missing)}: cannot open", attempt)
        warnings = [line for line in log.splitlines() if missing in line]
        self.assertEqual(len(warnings), 2, log)
        for line in warnings:
            self.assertTrue(line.startswith("W: "), line)
        self.assertNotIn("Traceback", log)

        good = self.connect(good_port)
        self.handshake(good, pty, b"works")
        pty.write(b"both ways")
        self.assertEqual(recv_exactly(good, 9, self.deadline()), b"both ways")
        self.assertTrue(daemon.running())
        self.assertEqual(daemon.stop(), 0)


class LoopDeviceTests(Base):
    def test_readme_loop_example_echoes(self):
        with open(os.path.join(REPO, "examples", "loop.json"), encoding="utf-8") as f:
            config = json.load(f)
        port, telnet, http = free_port(), free_port(), free_port()
        servers = config["ports"][0]["servers"]
        self.assertEqual(servers[0]["port"], 10001)
        servers[0]["port"] = port
        servers[1]["port"] = telnet
        config["http"]["port"] = http
        self.ser2tcp(config, listen=[port, telnet, http])
        sock = self.connect(port)
        data = ALL_BYTES + os.urandom(256 * 1024)
        sender = Background(send_all, sock, data, self.deadline(30))
        self.assertSame(recv_exactly(sock, len(data), self.deadline(30)), data, "echo")
        sender.result()


class AddressTests(Base):
    def check_serves(self, server, host):
        """A pty served by ``server`` (a function of the port) to clients of ``host``."""
        pty = self.pty()
        port = free_port("::1" if host == "::1" else "127.0.0.1")
        daemon = self.ser2tcp([port_config(pty.path, server(port))], listen=[port])
        sock = socket.create_connection((host, port), timeout=10)
        self.addCleanup(sock.close)
        self.handshake(sock, pty, b"hello")
        pty.write(b"world")
        self.assertEqual(recv_exactly(sock, 5, self.deadline()), b"world")
        self.assertEqual(daemon.stop(), 0)

    def require_ipv6(self):
        if not has_ipv6_loopback():
            raise SkipTest("no IPv6 loopback (cannot bind ::1)")

    def test_ipv6_address(self):
        self.require_ipv6()
        self.check_serves(lambda port: tcp_server(port, "::1"), "::1")

    def test_localhost(self):
        self.check_serves(lambda port: tcp_server(port, "localhost"), "localhost")

    def test_tcp6_endpoint(self):
        self.require_ipv6()
        self.check_serves(
            lambda port: {"protocol": "tcp", "endpoint": f"tcp6:port={port}:interface=\\:\\:1"}, "::1"
        )


class ManyClientsTests(Base):
    def test_hundred_clients_connecting_at_once(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path)
        socks = []
        for _ in range(100):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.addCleanup(sock.close)
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", port))
            self.assertIn(code, (0, errno.EINPROGRESS))
            socks.append(sock)
        deadline = self.deadline()
        with selectors.DefaultSelector() as sel:
            for sock in socks:
                sel.register(sock, selectors.EVENT_WRITE)
            pending = len(socks)
            for _ in range(1000):
                if not pending or time.monotonic() > deadline:
                    break
                for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                    sel.unregister(key.fileobj)
                    pending -= 1
        self.assertEqual(pending, 0, "connections still pending")
        for sock in socks:
            self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), 0)
        daemon.wait_output("Client connected", 100)
        daemon.wait_output(f"Serial {port_name(pty.path)} opened")
        pty.write(b"!")
        self.assertEqual(recv_each(socks, 1, self.deadline()), [b"!"] * 100)


class SignalTests(Base):
    def check_stops(self, sig):
        pty = self.pty()
        daemon, port = self.serve(pty.path)
        socks = [self.connect(port) for _ in range(3)]
        for sock in socks:
            self.handshake(sock, pty)
        self.assertTrue(daemon.holds(pty.path))
        started = time.monotonic()
        self.assertEqual(daemon.stop(sig, timeout=5), 0)
        for sock in socks:
            received, how = recv_until_closed(sock, started + 5)
            self.assertEqual(received, b"")
            self.assertIn(how, ("eof", "reset"))
        self.assertFalse(daemon.holds(pty.path))
        self.assertFalse(pty.slave_open(), "the pty is still open")
        self.assertNotIn("Traceback", daemon.output())

    def test_sigterm(self):
        self.check_stops(signal.SIGTERM)

    def test_sigint(self):
        self.check_stops(signal.SIGINT)

    def test_stopping_logs_every_client_leaving(self):
        pty = self.pty()
        daemon, port = self.serve(pty.path)  # -v: clients leaving are logged
        socks = self.clients(port, 3, daemon, pty)
        self.assertEqual(daemon.stop(), 0)
        log = daemon.output()
        for sock in socks:
            self.assertIn(f"I: Client disconnected: 127.0.0.1:{sock.getsockname()[1]} TCP\n", log)
