"""Stopping the real daemon under load: every client is closed in order (FIN,
TLS close_notify) after what was read for it is sent; only a client that
does not take its data by the deadline is reset."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import ssl
import threading
import time
from typing import Any

from tests.helpers import Case, Pty, free_port, port_config, tcp_server, ticks
from tests.proto_helpers import GREETING, Pki

PATTERN = bytes(range(256)) * 64  # 16 KiB; the device sends it over and over


class Streamer:
    """Writes PATTERN to the pty master as fast as the daemon reads it."""

    def __init__(self, pty: Pty) -> None:
        self.fd = pty.fd()
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_WRITE)
        try:
            for _ in range(10_000_000):
                if self._stop.is_set():
                    return
                if not sel.select(0.05):
                    continue
                offset = self.written % len(PATTERN)
                try:
                    self.written += os.write(self.fd, PATTERN[offset:])
                except BlockingIOError:
                    continue
                except OSError:
                    return  # the daemon closed the device
        finally:
            sel.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def read_all_until_closed(socks: list[Any], deadline: float) -> list[tuple[bytes, str]]:
    """Read every socket until its peer closes it: (data, "eof" | "reset")."""
    data = [bytearray() for _ in socks]
    ends: list[str | None] = [None] * len(socks)
    sel = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, i)
    try:
        for left in ticks(deadline):
            if all(ends):
                break
            for key, _ in sel.select(min(left, 0.5)):
                i = key.data
                for _ in range(64):
                    try:
                        chunk = socks[i].recv(1 << 20)
                    except (BlockingIOError, ssl.SSLWantReadError):
                        break
                    except ConnectionResetError:
                        chunk, ends[i] = b"", "reset"
                    if not chunk:
                        ends[i] = ends[i] or "eof"
                        sel.unregister(socks[i])
                        break
                    data[i] += chunk
    finally:
        sel.close()
    if not all(ends):
        raise AssertionError(f"{ends.count(None)} client(s) not closed in time")
    return [(bytes(d), str(e)) for d, e in zip(data, ends)]


def is_pattern_prefix(data: bytes) -> bool:
    """Whether ``data`` is the device's stream from its start, no byte missing."""
    whole, rest = divmod(len(data), len(PATTERN))
    view = memoryview(data)
    return (
        all(view[i * len(PATTERN) : (i + 1) * len(PATTERN)] == PATTERN for i in range(whole))
        and bytes(view[whole * len(PATTERN) :]) == PATTERN[:rest]
    )


class StopTests(Case):
    def test_stop_under_load_closes_every_client_in_order(self) -> None:
        pki = Pki(self.tempdir())
        pty = self.pty()
        tcp, telnet, tls = free_port(), free_port(), free_port()
        unix_path = os.path.join(self.tempdir(), "s.sock")
        servers = [
            tcp_server(tcp),
            {"protocol": "telnet", "address": "127.0.0.1", "port": telnet},
            {"protocol": "ssl", "address": "127.0.0.1", "port": tls, "ssl": pki.ssl_config()},
            {"protocol": "socket", "address": unix_path},
        ]
        daemon = self.ser2tcp({"ports": [port_config(pty.path, *servers)]}, "-v", listen=[tcp, telnet, tls])
        socks: list[Any] = [self.connect(tcp) for _ in range(20)]
        telnet_sock = self.connect(telnet)
        unix_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(unix_sock.close)
        unix_sock.connect(unix_path)
        # A missing close_notify raises SSLEOFError instead of reading as an end.
        tls_sock = pki.client_context().wrap_socket(
            self.connect(tls), server_hostname="localhost", suppress_ragged_eofs=False
        )
        self.addCleanup(tls_sock.close)
        everyone = [*socks, telnet_sock, unix_sock, tls_sock]
        daemon.wait_output("Client connected", len(everyone))
        daemon.wait_holds(pty.path)

        streamer = Streamer(pty)
        self.addCleanup(streamer.stop)
        # Let the stream run for a while at full speed, then stop the daemon.
        for _ in ticks(time.monotonic() + 10):
            if streamer.written > 4 * len(PATTERN):
                break
            time.sleep(0.01)  # waiting for the stream to build up, not for an event
        stopped_at = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        results = read_all_until_closed(everyone, self.deadline())
        self.assertEqual(daemon.wait(5), 0)
        elapsed = time.monotonic() - stopped_at
        streamer.stop()

        lengths = set()
        for i, (data, how) in enumerate(results):
            self.assertEqual(how, "eof", f"client {i} was reset")
            if everyone[i] is telnet_sock:
                self.assertTrue(data.startswith(GREETING))
                notice = b"ser2tcp: ser2tcp is stopping\r\n"
                self.assertTrue(data.endswith(notice), data[-60:])
                data = data[len(GREETING) : -len(notice)].replace(b"\xff\xff", b"\xff")
            self.assertTrue(is_pattern_prefix(data), f"client {i}: a hole or a foreign byte")
            lengths.add(len(data))
        # Everything the daemon read before the signal went to every client.
        self.assertEqual(len(lengths), 1, f"clients got different amounts: {sorted(lengths)}")
        self.assertGreater(lengths.pop(), 4 * len(PATTERN))
        self.assertLess(elapsed, 3.0)

    def test_a_client_that_does_not_read_is_reset_at_the_deadline(self) -> None:
        pty = self.pty()
        port = free_port()
        daemon = self.ser2tcp({"ports": [port_config(pty.path, tcp_server(port))]}, "-v", listen=[port])
        reader = self.connect(port)
        self.connect(port, rcvbuf=4096)  # stuck: never reads
        daemon.wait_output("Client connected", 2)
        daemon.wait_holds(pty.path)
        streamer = Streamer(pty)
        self.addCleanup(streamer.stop)
        # Until the stuck client's buffers are full and data waits for it.
        got = 0
        reader.settimeout(5)
        for _ in ticks(time.monotonic() + 10):
            got += len(reader.recv(1 << 20))
            if got > 4 << 20:
                break
        stopped_at = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        results = read_all_until_closed([reader], self.deadline())
        self.assertEqual(daemon.wait(5), 0)
        elapsed = time.monotonic() - stopped_at
        self.assertEqual(results[0][1], "eof")
        self.assertLess(elapsed, 2.0)
        self.assertIn("aborted, its data not taken within", daemon.output())
