#!/usr/bin/env python3
"""WebSocket clients against raw TCP clients of the same ser2tcp, in one run.

    python bench/ws.py [--mib 16] [--rounds 3] [--trips 2000]

One daemon serves one pseudo-terminal on a TCP server and a websocket
server (with its HTTP server).  Rounds alternate TCP and WebSocket so that
the machine's noise hits both; the medians are compared:

* device -> client throughput: MiB/s for ``--mib`` MiB of random data,
  every byte verified;
* round trip: the client sends one byte, the benchmark (the device) echoes
  it back, the client waits for it; p50 and p99 over ``--trips`` trips.

Targets: WebSocket throughput >= 0.7 x TCP, round trip p50 <= 1.5 x TCP.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Pty, free_port, is_listening  # noqa: E402

MiB = 1 << 20


def start_daemon(pty: Pty, tmp: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    tcp, http = free_port(), free_port()
    config = {
        "ports": [
            {
                "serial": {"port": pty.path},
                "servers": [
                    {"protocol": "tcp", "address": "127.0.0.1", "port": tcp},
                    {"protocol": "websocket", "endpoint": "dev"},
                ],
            }
        ],
        "http": {"address": "127.0.0.1", "port": http},
    }
    path = tmp / "ws.json"
    path.write_text(json.dumps(config))
    exe = Path(sys.executable).parent / "ser2tcp"
    proc = subprocess.Popen([str(exe), "-c", str(path)])
    deadline = time.monotonic() + 15
    while not (is_listening(tcp) and is_listening(http)):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("ser2tcp did not start")
        time.sleep(0.01)
    return proc, tcp, http


class TcpClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def recv(self) -> bytes:
        return self.sock.recv(1 << 20)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


class WsClient:
    """A minimal WebSocket client on a plain socket (RFC 6455 framing): a
    library client with a reader thread would add its own hand-over to
    every round trip, and this measures ser2tcp, not the client."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws/dev HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise SystemExit(f"handshake refused: {head[:60]!r}")
        self._frame()  # the port's state (text)

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(1 << 20)
            if not data:
                raise SystemExit("connection closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _frame(self) -> tuple[int, bytes]:
        b0, b1 = self._need(2)
        size = b1 & 0x7F
        if size == 126:
            size = struct.unpack("!H", self._need(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self._need(8))[0]
        return b0 & 0x0F, self._need(size)

    def recv(self) -> bytes:
        while True:
            opcode, payload = self._frame()
            if opcode == 2:
                return payload

    def send(self, data: bytes) -> None:
        mask = os.urandom(4)
        size = len(data)
        if size < 126:
            head = struct.pack("!BB", 0x82, 0x80 | size)
        elif size < 65536:
            head = struct.pack("!BBH", 0x82, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x82, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(head + mask + masked)

    def close(self) -> None:
        self.sock.close()


def joined(pty: Pty, client: TcpClient | WsClient) -> None:
    """Wait until the client is a session: a byte it sends reaches the device."""
    client.send(b"?")
    pty.read_some(1, time.monotonic() + 10)


def throughput(pty: Pty, client: TcpClient | WsClient, size: int) -> float:
    data = os.urandom(size)
    writer = threading.Thread(target=pty.write_all, args=(data, time.monotonic() + 120), daemon=True)
    got = bytearray()
    started = time.perf_counter()
    writer.start()
    while len(got) < size:
        chunk = client.recv()
        if not chunk:
            raise SystemExit("connection closed")
        got += chunk
    elapsed = time.perf_counter() - started
    writer.join()
    if bytes(got) != data:
        raise SystemExit("data differs")
    return size / MiB / elapsed


def round_trips(pty: Pty, client: TcpClient | WsClient, trips: int) -> tuple[float, float]:
    times = []
    for _ in range(trips):
        started = time.perf_counter()
        client.send(b"x")
        pty.write_all(pty.read_some(1, time.monotonic() + 10), time.monotonic() + 10)
        if client.recv() != b"x":
            raise SystemExit("echo differs")
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trips", type=int, default=2000)
    args = parser.parse_args()
    pty = Pty()
    with tempfile.TemporaryDirectory() as tmp:
        proc, tcp, http = start_daemon(pty, Path(tmp))
        try:
            results: dict[str, dict[str, list[float]]] = {"tcp": {}, "websocket": {}}
            for _ in range(args.rounds):
                for kind, make in (("tcp", lambda: TcpClient(tcp)), ("websocket", lambda: WsClient(http))):
                    client = make()
                    joined(pty, client)
                    r = results[kind]
                    r.setdefault("mib_s", []).append(throughput(pty, client, args.mib * MiB))
                    p50, p99 = round_trips(pty, client, args.trips)
                    r.setdefault("p50_us", []).append(p50)
                    r.setdefault("p99_us", []).append(p99)
                    client.close()
                    time.sleep(0.2)  # let the daemon close the device between clients
        finally:
            proc.terminate()
            proc.wait(10)
            pty.close()
    median = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in results.items()}
    for kind, values in median.items():
        print(f"{kind:10s} " + "  ".join(f"{m}={v:.1f}" for m, v in values.items()))
    t, w = median["tcp"], median["websocket"]
    print(
        f"websocket / tcp: throughput {w['mib_s'] / t['mib_s']:.2f} x (target >= 0.7), "
        f"round trip p50 {w['p50_us'] / t['p50_us']:.2f} x (target <= 1.5), "
        f"p99 {w['p99_us'] / t['p99_us']:.2f} x"
    )
    print(json.dumps({"rounds": results, "median": median}))


if __name__ == "__main__":
    main()
