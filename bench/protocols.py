#!/usr/bin/env python3
"""TLS and TELNET clients against raw TCP, socat and ser2net, in one run.

    python bench/protocols.py [--mib 48] [--rounds 3] [--trips 2000]
                              [--fanout 100] [--fanout-mib 2] [--churn 3]
                              [--markdown bench/RESULTS.md] [--json FILE]

One ser2tcp daemon serves one pseudo-terminal on a TCP, a TELNET and a TLS
server.  Its peers, on their own pseudo-terminals: ``socat
OPENSSL-LISTEN`` (a new socat per client, as it serves one; with ``fork``
for the handshake rate) and ser2net 4 with an ``ssl`` and a ``telnet``
accepter (64 KiB buffers, no chardelay).  Every round runs every variant
one after the other, so the machine's noise hits all of them; medians of
the rounds are compared.  Certificates (ECDSA P-256) are made for each run.

* device -> client and client -> device: MiB/s and the server's CPU
  seconds per MiB (user + system of all its threads, from /proc), every byte
  verified;
* round trip: one byte to the device, echoed, back; p50 and p99;
* fan-out: ``--fanout`` TLS clients against as many raw clients of the same
  daemon, aggregate MiB/s delivered;
* handshakes: full TLS handshakes (new session each) per second, one
  client at a time, for ``--churn`` seconds.

TELNET is measured with data without 0xFF (nothing to escape) and with
random bytes (one byte in 256 doubled), against a raw client of the same
daemon with the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Pty, cpu_seconds, free_port, is_listening, raise_nofile  # noqa: E402
from report import replace_section  # noqa: E402

from ser2tcp.telnet_codec import TelnetDecoder  # noqa: E402

MiB = 1 << 20
BEGIN, END = "<!-- protocols: begin -->", "<!-- protocols: end -->"


# servers


class Server:
    """A proxy process serving one pty on one or more ports."""

    def __init__(self, argv: list[str], ports: list[int], pty: Pty) -> None:
        self.pty = pty
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not all(is_listening(p) for p in ports):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise SystemExit(f"{argv[0]} did not start")
            time.sleep(0.005)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) or 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def make_certificate(tmp: Path) -> tuple[str, str]:
    cert, key = str(tmp / "cert.pem"), str(tmp / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-subj", "/CN=localhost", "-days", "2", "-keyout", key, "-out", cert],
        check=True,
        capture_output=True,
    )
    return cert, key


def start_ser2tcp(tmp: Path, cert: str, key: str) -> tuple[Server, dict[str, int]]:
    pty = Pty()
    ports = {"tcp": free_port(), "telnet": free_port(), "tls": free_port()}
    servers = [
        {"protocol": "tcp", "address": "127.0.0.1", "port": ports["tcp"]},
        {"protocol": "telnet", "address": "127.0.0.1", "port": ports["telnet"]},
        {
            "protocol": "ssl",
            "address": "127.0.0.1",
            "port": ports["tls"],
            "ssl": {"certfile": cert, "keyfile": key},
        },
    ]
    path = tmp / "ser2tcp.json"
    path.write_text(json.dumps({"ports": [{"serial": {"port": pty.path}, "servers": servers}]}))
    exe = Path(sys.executable).parent / "ser2tcp"
    return Server([str(exe), "-c", str(path)], list(ports.values()), pty), ports


def start_socat(cert: str, key: str, fork: bool = False) -> tuple[Server, int]:
    pty = Pty()
    port = free_port()
    listen = f"OPENSSL-LISTEN:{port},reuseaddr,bind=127.0.0.1,cert={cert},key={key},verify=0"
    if fork:
        listen += ",fork"
    return Server(["socat", listen, f"FILE:{pty.path},raw,echo=0"], [port], pty), port


def start_ser2net(tmp: Path, cert: str, key: str) -> tuple[Server, dict[str, int]]:
    pty = Pty()
    ports = {"tls": free_port(), "telnet": free_port()}
    accepters = {
        "tls": f"ssl(key={key},cert={cert}),tcp,127.0.0.1,{ports['tls']}",
        "telnet": f"telnet(rfc2217=false),tcp,127.0.0.1,{ports['telnet']}",
    }
    text = []
    for i, accepter in enumerate(accepters.values()):
        text += [
            f"connection: &con{i}",
            f"  accepter: {accepter}",
            f"  connector: serialdev,{pty.path},115200n81,local",
            "  options:",
            "    max-connections: 1000",
            "    dev-to-net-bufsize: 65536",
            "    net-to-dev-bufsize: 65536",
            "    chardelay: false",
        ]
    path = tmp / "ser2net.yaml"
    path.write_text("\n".join(text) + "\n")
    argv = ["ser2net", "-n", "-d", "-u", "-P", str(tmp / "ser2net.pid"), "-c", str(path)]
    return Server(argv, list(ports.values()), pty), ports


# clients


def tls_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client:
    """A raw, TLS or TELNET client on a blocking socket."""

    def __init__(self, kind: str, port: int, ctx: ssl.SSLContext | None = None) -> None:
        self.kind = kind
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kind == "tls":
            sock = (ctx or tls_context()).wrap_socket(sock)
        self.sock: Any = sock
        self.decoder = TelnetDecoder() if kind == "telnet" else None

    def recv(self) -> bytes:
        data: bytes = self.sock.recv(1 << 20)
        if not data:
            raise SystemExit(f"{self.kind}: connection closed")
        if self.decoder is not None:
            return b"".join(e for e in self.decoder.feed(data) if isinstance(e, bytes))
        return data

    def send(self, data: bytes) -> None:
        if self.decoder is not None:
            data = data.replace(b"\xff", b"\xff\xff")
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def join(pty: Pty, client: Client) -> None:
    """Wait until the client is a session: device data reaches it."""
    deadline = time.monotonic() + 10
    client.sock.settimeout(0.05)
    for _ in range(1000):
        pty.write_all(b"\x00", deadline)
        try:
            if b"\x00" in client.recv():
                break
        except (TimeoutError, ssl.SSLWantReadError):
            if time.monotonic() > deadline:
                raise SystemExit(f"{client.kind}: no device data") from None
    client.sock.settimeout(0.3)
    for _ in range(1000):  # whatever else of the preamble is on its way
        try:
            client.recv()
        except (TimeoutError, ssl.SSLWantReadError):
            break
    client.sock.settimeout(30)
    pty.drain()


def payload(size: int, kind: str) -> bytes:
    data = os.urandom(size)
    return data.replace(b"\xff", b"\xfe") if kind == "plain" else data


def down(server: Server, client: Client, data: bytes) -> tuple[float, float]:
    """Device -> client: MiB/s and the server's CPU seconds per MiB."""
    pty = server.pty
    writer = threading.Thread(target=pty.write_all, args=(data, time.monotonic() + 300), daemon=True)
    got = bytearray()
    cpu = server.cpu()
    started = time.perf_counter()
    writer.start()
    while len(got) < len(data):
        got += client.recv()
    elapsed = time.perf_counter() - started
    cpu = server.cpu() - cpu
    writer.join()
    if got != data:
        raise SystemExit(f"{client.kind}: device data differs")
    mib = len(data) / MiB
    return mib / elapsed, cpu / mib


def up(server: Server, client: Client, data: bytes) -> tuple[float, float]:
    """Client -> device: MiB/s and the server's CPU seconds per MiB."""
    pty = server.pty
    got = bytearray()
    sender = threading.Thread(target=client.send, args=(data,), daemon=True)
    cpu = server.cpu()
    started = time.perf_counter()
    sender.start()
    deadline = time.monotonic() + 300
    while len(got) < len(data):
        got += pty.read_some(1 << 20, deadline)
    elapsed = time.perf_counter() - started
    cpu = server.cpu() - cpu
    sender.join()
    if got != data:
        raise SystemExit(f"{client.kind}: client data differs")
    mib = len(data) / MiB
    return mib / elapsed, cpu / mib


def round_trips(server: Server, client: Client, trips: int) -> tuple[float, float]:
    pty = server.pty
    times = []
    for _ in range(trips):
        started = time.perf_counter()
        client.send(b"x")
        pty.write_all(pty.read_some(1, time.monotonic() + 10), time.monotonic() + 10)
        got = b""
        while not got:
            got = client.recv()
        if got != b"x":
            raise SystemExit(f"{client.kind}: echo differs: {got!r}")
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] * 1e6, times[int(len(times) * 0.99)] * 1e6


def fan_out(server: Server, port: int, kind: str, count: int, size: int) -> float:
    """Aggregate MiB/s delivered to ``count`` clients."""
    clients = [Client(kind, port) for _ in range(count)]
    try:
        for client in clients:
            join(server.pty, client)
        # Each client may still get the NULs that joined the later ones:
        # the payload starts with a non-NUL byte and leading NULs are skipped.
        data = b"\x01" + payload(size - 1, "random")
        received = {c: bytearray() for c in clients}
        sel = selectors.DefaultSelector()
        for client in clients:
            client.sock.setblocking(False)
            sel.register(client.sock, selectors.EVENT_READ, client)
        writer = threading.Thread(
            target=server.pty.write_all, args=(data, time.monotonic() + 300), daemon=True
        )
        started = time.perf_counter()
        writer.start()
        pending = len(clients)
        deadline = time.monotonic() + 300
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(1):
                client = key.data
                for _ in range(64):  # a TLS socket may hold several records
                    try:
                        chunk = client.sock.recv(1 << 20)
                    except (BlockingIOError, ssl.SSLWantReadError):
                        break
                    if not chunk:
                        raise SystemExit("fan-out: connection closed")
                    buf = received[client]
                    buf += chunk.lstrip(b"\x00") if not buf else chunk
                    if len(buf) >= size:
                        sel.unregister(client.sock)
                        pending -= 1
                        break
        elapsed = time.perf_counter() - started
        writer.join()
        if pending or any(bytes(b) != data for b in received.values()):
            raise SystemExit(f"fan-out {kind}: data differs or incomplete")
        return count * size / MiB / elapsed
    finally:
        for client in clients:
            client.close()


def handshakes(port: int, seconds: float) -> float:
    """Full TLS handshakes per second, one after the other."""
    ctx = tls_context()
    done = 0
    started = time.perf_counter()
    end = started + seconds
    while time.perf_counter() < end:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                tls.do_handshake()
        done += 1
    return done / (time.perf_counter() - started)


# the run


def variant_measure(
    server: Server,
    kind: str,
    port: int,
    args: argparse.Namespace,
    data: dict[str, bytes],
    upward: bool = True,
) -> dict[str, float]:
    result: dict[str, float] = {}
    client = Client(kind, port)
    try:
        join(server.pty, client)
        kinds = ("plain", "random") if kind in ("telnet", "tcp") else ("random",)
        for dk in kinds:
            mib_s, cpu = down(server, client, data[dk])
            result[f"down_{dk}_mib_s"], result[f"down_{dk}_cpu_s_mib"] = mib_s, cpu
        if upward:
            mib_s, cpu = up(server, client, data["random"])
            result["up_mib_s"], result["up_cpu_s_mib"] = mib_s, cpu
        result["rtt_p50_us"], result["rtt_p99_us"] = round_trips(server, client, args.trips)
    finally:
        client.close()
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile(4 * args.fanout + 64)
    size = args.mib * MiB
    data = {"plain": payload(size, "plain"), "random": payload(size, "random")}
    rounds: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cert, key = make_certificate(tmp)
        ours, ports = start_ser2tcp(tmp, cert, key)
        theirs = None
        try:
            try:
                theirs, net_ports = start_ser2net(tmp, cert, key)
            except (SystemExit, FileNotFoundError) as e:
                print(f"ser2net skipped: {e}", file=sys.stderr)
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
                plan: list[tuple[str, Callable[[], dict[str, float]]]] = [
                    ("ser2tcp tcp", lambda: variant_measure(ours, "tcp", ports["tcp"], args, data)),
                    ("ser2tcp telnet", lambda: variant_measure(ours, "telnet", ports["telnet"], args, data)),
                    ("ser2tcp tls", lambda: variant_measure(ours, "tls", ports["tls"], args, data)),
                    ("socat tls", lambda: socat_measure(cert, key, args, data)),
                ]
                if theirs is not None:
                    plan += [
                        ("ser2net tls", lambda: variant_measure(theirs, "tls", net_ports["tls"], args, data)),
                        (
                            # ser2net's TELNET is not transparent upward (CR NUL): downward only
                            "ser2net telnet",
                            lambda: variant_measure(theirs, "telnet", net_ports["telnet"], args, data, False),
                        ),
                    ]
                for name, measure in plan:
                    rounds.setdefault(name, []).append(measure())
                    time.sleep(0.1)  # let the device close between clients
                fan = {
                    "fanout_tcp_mib_s": fan_out(
                        ours, ports["tcp"], "tcp", args.fanout, args.fanout_mib * MiB
                    ),
                    "fanout_tls_mib_s": fan_out(
                        ours, ports["tls"], "tls", args.fanout, args.fanout_mib * MiB
                    ),
                }
                rounds.setdefault("ser2tcp fan-out", []).append(fan)
                shakes = {"ser2tcp": handshakes(ports["tls"], args.churn)}
                forked, port = start_socat(cert, key, fork=True)
                try:
                    shakes["socat"] = handshakes(port, args.churn)
                finally:
                    forked.stop()
                    forked.pty.close()
                if theirs is not None:
                    shakes["ser2net"] = handshakes(net_ports["tls"], args.churn)
                rounds.setdefault("handshakes", []).append(shakes)
        finally:
            ours.stop()
            ours.pty.close()
            if theirs is not None:
                theirs.stop()
                theirs.pty.close()
    median = {
        name: {k: statistics.median(r[k] for r in results) for k in results[0]}
        for name, results in rounds.items()
    }
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rounds": rounds,
        "median": median,
    }


def socat_measure(cert: str, key: str, args: argparse.Namespace, data: dict[str, bytes]) -> dict[str, float]:
    server, port = start_socat(cert, key)
    try:
        return variant_measure(server, "tls", port, args, data)
    finally:
        server.stop()
        server.pty.close()


# the report


def div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f} ×" if b else "-"


def targets(m: dict[str, dict[str, float]], fanout: int) -> list[tuple[str, float, str, bool]]:
    """(target, ratio, how it reads, met)."""
    ours, socat = m["ser2tcp tls"], m["socat tls"]
    tcp, telnet = m["ser2tcp tcp"], m["ser2tcp telnet"]
    fan, shakes = m["ser2tcp fan-out"], m["handshakes"]
    rows = [
        (
            "TLS CPU/MiB device → client ≤ 1.1 × socat",
            div(ours["down_random_cpu_s_mib"], socat["down_random_cpu_s_mib"]),
            "le",
            1.1,
        ),
        (
            "TLS CPU/MiB client → device ≤ 1.1 × socat",
            div(ours["up_cpu_s_mib"], socat["up_cpu_s_mib"]),
            "le",
            1.1,
        ),
        ("TLS round trip p50 ≤ 1.15 × socat", div(ours["rtt_p50_us"], socat["rtt_p50_us"]), "le", 1.15),
        ("TLS round trip p99 ≤ 1.3 × socat", div(ours["rtt_p99_us"], socat["rtt_p99_us"]), "le", 1.3),
        (
            "TLS throughput device → client ≥ 0.95 × socat",
            div(ours["down_random_mib_s"], socat["down_random_mib_s"]),
            "ge",
            0.95,
        ),
        (
            "TLS throughput client → device ≥ 0.95 × socat",
            div(ours["up_mib_s"], socat["up_mib_s"]),
            "ge",
            0.95,
        ),
        ("TLS handshakes/s ≥ 3 × socat", div(shakes["ser2tcp"], shakes["socat"]), "ge", 3.0),
        (
            "TELNET throughput, no 0xFF ≥ 0.9 × raw",
            div(telnet["down_plain_mib_s"], tcp["down_plain_mib_s"]),
            "ge",
            0.9,
        ),
        (
            "TELNET CPU/MiB, no 0xFF ≤ 1.1 × raw",
            div(telnet["down_plain_cpu_s_mib"], tcp["down_plain_cpu_s_mib"]),
            "le",
            1.1,
        ),
        (
            "TELNET throughput, random ≥ 0.75 × raw",
            div(telnet["down_random_mib_s"], tcp["down_random_mib_s"]),
            "ge",
            0.75,
        ),
        (
            "TELNET CPU/MiB, random ≤ 1.25 × raw",
            div(telnet["down_random_cpu_s_mib"], tcp["down_random_cpu_s_mib"]),
            "le",
            1.25,
        ),
        ("TELNET round trip p50 ≤ 1.05 × raw", div(telnet["rtt_p50_us"], tcp["rtt_p50_us"]), "le", 1.05),
        (
            f"fan-out {fanout} TLS clients ≥ 0.5 × raw",
            div(fan["fanout_tls_mib_s"], fan["fanout_tcp_mib_s"]),
            "ge",
            0.5,
        ),
    ]
    return [(what, r, f"{r:.2f}", r <= bound if how == "le" else r >= bound) for what, r, how, bound in rows]


def markdown(result: dict[str, Any]) -> str:
    m = result["median"]
    args = result["args"]
    names = [n for n in m if n not in ("ser2tcp fan-out", "handshakes")]
    lines = [
        BEGIN,
        "## TLS and TELNET (`bench/protocols.py`)",
        "",
        f"Measured {result['date']} with `python bench/protocols.py --mib {args['mib']} "
        f"--rounds {args['rounds']} --trips {args['trips']} --fanout {args['fanout']}`: "
        f"medians of {args['rounds']} alternating rounds, "
        "same run.  CPU is the server process's (all threads) per MiB moved.",
        "",
        "| target | ratio | met |",
        "|---|---|---|",
    ]
    for what, _, shown, met in targets(m, args["fanout"]):
        lines.append(f"| {what} | {shown} | {'yes' if met else 'no'} |")
    lines += ["", "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    rows = [
        ("device → client MiB/s (random)", "down_random_mib_s", "{:.1f}"),
        ("CPU s/MiB, device → client (random)", "down_random_cpu_s_mib", "{:.4f}"),
        ("device → client MiB/s (no 0xFF)", "down_plain_mib_s", "{:.1f}"),
        ("CPU s/MiB, device → client (no 0xFF)", "down_plain_cpu_s_mib", "{:.4f}"),
        ("client → device MiB/s", "up_mib_s", "{:.1f}"),
        ("CPU s/MiB, client → device", "up_cpu_s_mib", "{:.4f}"),
        ("round trip p50 µs", "rtt_p50_us", "{:.0f}"),
        ("round trip p99 µs", "rtt_p99_us", "{:.0f}"),
    ]
    for label, key, fmt in rows:
        cells = [fmt.format(m[n][key]) if key in m[n] else "-" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    fan, shakes = m["ser2tcp fan-out"], m["handshakes"]
    lines += [
        "",
        f"Fan-out to {args['fanout']} clients ({args['fanout_mib']} MiB each, aggregate): raw TCP "
        f"{fan['fanout_tcp_mib_s']:.0f} MiB/s, TLS {fan['fanout_tls_mib_s']:.0f} MiB/s "
        f"({ratio(fan['fanout_tls_mib_s'], fan['fanout_tcp_mib_s'])}).",
        "",
        "TLS handshakes per second, one client at a time: "
        + ", ".join(f"{k} {v:.0f}" for k, v in shakes.items())
        + f" (ser2tcp / socat {ratio(shakes['ser2tcp'], shakes['socat'])}).",
        END,
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trips", type=int, default=2000)
    parser.add_argument("--fanout", type=int, default=100)
    parser.add_argument("--fanout-mib", type=int, default=2)
    parser.add_argument("--churn", type=float, default=3.0)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args)
    section = markdown(result)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.markdown:
        replace_section(args.markdown, section, BEGIN, END)


if __name__ == "__main__":
    main()
