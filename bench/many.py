#!/usr/bin/env python3
"""Hundreds of ports on one host: N ports x M clients on pseudo-terminals.

    python bench/many.py [--scenarios 256x10,64x10] [--baud 115200]
                         [--idle 5] [--seconds 10] [--startup 1024]
                         [--profiles ser2tcp,ser2tcp-console,ser2net,ser2tcp-2.3.0]
                         [--markdown bench/RESULTS.md] [--json FILE]

Every daemon is started with a soft descriptor limit of 1024 (the hard one
unchanged), as a login shell or a systemd unit would start it.  For each
scenario and profile, on fresh pseudo-terminals and a fresh daemon:

* start: seconds from the start to every port listening;
* every client connects, and is seen to get device data (NUL bytes);
* idle (``--idle`` s, ``--settle`` s after the last client joined): the
  daemon's CPU share and its wake-ups per second (context switches of all
  its threads, from /proc);
* load (``--seconds`` s): every device sends random bytes at the byte rate
  of ``--baud`` (8N1: baud / 10 bytes a second), written every
  ``--tick`` s; the daemon's CPU share, CPU seconds per MiB delivered to
  clients, RSS at the end, and the load carried (bytes the devices could
  write against the bytes offered: a daemon that does not read its devices
  fast enough leaves them full);
* then every client must have received every byte its device sent, in
  order.

Profiles: ``ser2tcp``; ``ser2tcp-console`` (every port ``open: always``, a
timestamped ``log``, 64 KiB of ``scrollback``, and an HTTP server whose
``/metrics`` is scraped once a second during the load); ``ser2net``
(as shipped, ``max-connections`` = M); ``ser2tcp-2.3.0`` (the original).
``--startup N`` also times N always-open ports of ``ser2tcp-console``
from start to listening.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Pty, cpu_seconds, raise_nofile, rss_kib  # noqa: E402
from report import replace_section  # noqa: E402

MiB = 1 << 20
SOFT_LIMIT = 1024
ORIGINAL = Path(__file__).resolve().parent / ".peers" / "ser2tcp-2.3.0" / "bin" / "ser2tcp"
SER2TCP = Path(sys.executable).parent / "ser2tcp"
BEGIN, END = "<!-- many ports: begin -->", "<!-- many ports: end -->"


def listening(ports: set[int]) -> set[int]:
    """Those of ``ports`` something listens on (127.0.0.1, from /proc)."""
    found = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "0A":
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port in ports:
                    found.add(port)
    return found


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports, held until all are picked."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wakeups(pid: int) -> int:
    """Context switches of every thread of ``pid`` so far."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def with_soft_limit(argv: list[str], soft: int | None = SOFT_LIMIT) -> list[str]:
    """``argv`` started with a soft descriptor limit of ``soft`` (None: the
    hard limit)."""
    limit = "hard" if soft is None else str(soft)
    code = (
        "import os, resource, sys; hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, hard)); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code, *argv]


# configs


def ser2tcp_config(
    tmp: Path, ptys: list[Pty], ports: list[int], console: bool, http: int | None
) -> list[str]:
    entries = []
    for i, (pty, port) in enumerate(zip(ptys, ports)):
        entry: dict[str, Any] = {
            "serial": {"port": pty.path, "baudrate": 115200},
            "servers": [{"protocol": "tcp", "address": "127.0.0.1", "port": port}],
        }
        if console:
            entry.update(
                name=f"p{i}",
                open="always",
                scrollback=65536,
                log={"path": str(tmp / f"p{i}.log"), "timestamps": True},
            )
        entries.append(entry)
    config: dict[str, Any] = {"ports": entries}
    if http is not None:
        config["http"] = {"address": "127.0.0.1", "port": http}
    path = tmp / "ser2tcp.json"
    path.write_text(json.dumps(config))
    return ["-c", str(path)]


def ser2net_config(tmp: Path, ptys: list[Pty], ports: list[int], clients: int) -> list[str]:
    lines = []
    for i, (pty, port) in enumerate(zip(ptys, ports)):
        lines += [
            f"connection: &con{i}",
            f"  accepter: tcp,127.0.0.1,{port}",
            f"  connector: serialdev,{pty.path},115200n81,local",
            "  options:",
            f"    max-connections: {clients}",
        ]
    path = tmp / "ser2net.yaml"
    path.write_text("\n".join(lines) + "\n")
    return ["-n", "-d", "-u", "-P", str(tmp / "ser2net.pid"), "-c", str(path)]


# clients


class Clients:
    """Every client socket, read by one thread with poll(), each checked
    against what its device sent (after the NULs that proved it joined)."""

    def __init__(self, ports: list[int], per_port: int, budget: float) -> None:
        self.socks: list[socket.socket] = []
        self.port_of: dict[int, int] = {}
        end = time.monotonic() + budget
        for i, port in enumerate(ports):
            for _ in range(per_port):
                left = end - time.monotonic()
                if left <= 0:
                    self.close()
                    raise TimeoutError(
                        f"{len(self.socks)} of {len(ports) * per_port} connected in {budget:g} s"
                    )
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=left)
                except OSError as e:
                    self.close()
                    raise OSError(f"{len(self.socks)} of {len(ports) * per_port} connected ({e})") from None
                s.setblocking(False)
                self.socks.append(s)
                self.port_of[s.fileno()] = i
        self.by_fd = {s.fileno(): s for s in self.socks}
        self.joined: set[int] = set()
        self.expected: list[bytearray] = [bytearray() for _ in ports]
        self.offset: dict[int, int] = {fd: -1 for fd in self.by_fd}  # -1: still in the NULs
        self.received = 0
        self.errors: list[str] = []
        self.closed = 0
        self._poll = select.poll()
        for fd in self.by_fd:
            self._poll.register(fd, select.POLLIN)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self, timeout: float) -> None:
        for fd, _ in self._poll.poll(timeout * 1000):
            try:
                data = self.by_fd[fd].recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self._poll.unregister(fd)
                self.closed += 1
                continue
            self.joined.add(fd)
            offset = self.offset[fd]
            if offset < 0:
                data = data.lstrip(b"\0")
                if not data:
                    continue
                offset = 0
            expected = self.expected[self.port_of[fd]]
            if expected[offset : offset + len(data)] != data and len(self.errors) < 10:
                self.errors.append(f"client fd {fd} of port {self.port_of[fd]}: wrong bytes at {offset}")
            self.offset[fd] = offset + len(data)
            self.received += len(data)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.read(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def missing(self) -> int:
        """Clients that lack bytes their device sent."""
        return sum(1 for fd, off in self.offset.items() if off < len(self.expected[self.port_of[fd]]))

    def close(self) -> None:
        for s in self.socks:
            s.close()


def write_paced(
    ptys: list[Pty], clients: Clients, rate: float, seconds: float, tick: float
) -> tuple[int, int]:
    """Random bytes to every device at ``rate`` bytes/s: (offered, written)."""
    rng = random.Random(1)
    written = [0] * len(ptys)
    start = time.monotonic()
    offered = 0
    for _ in range(int(seconds / tick) + 1):
        now = time.monotonic() - start
        if now > seconds:
            break
        offered = int(rate * min(now + tick, seconds))
        for i, pty in enumerate(ptys):
            want = offered - written[i]
            if want <= 0:
                continue
            data = (
                bytes([rng.randrange(1, 256)]) + rng.randbytes(want - 1)
                if written[i] == 0
                else rng.randbytes(want)
            )
            # What a client must see is known before it can arrive: append
            # first, then take back what the device did not accept.
            expected = clients.expected[i]
            expected += data
            n = pty.try_write(data)
            if n < len(data):
                del expected[len(expected) - (len(data) - n) :]
            written[i] += n
        time.sleep(max(0.0, start + (_ + 1) * tick - time.monotonic()))
    return offered * len(ptys), sum(written)


class Scraper:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.ok = 0
        self.failed = 0
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    answer.read()
                self.ok += 1
            except OSError:
                self.failed += 1
            self.slowest = max(self.slowest, time.monotonic() - started)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# one run


def run_one(
    profile: str, nports: int, per_port: int, args: argparse.Namespace, soft: int | None = SOFT_LIMIT
) -> dict[str, Any]:
    shown = profile if soft == SOFT_LIMIT else f"{profile} (hard limit)"
    result: dict[str, Any] = {"profile": shown, "ports": nports, "clients": per_port * nports}
    ptys = [Pty() for _ in range(nports)]
    ports = free_ports(nports)
    proc = None
    clients = None
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            http = free_ports(1)[0] if profile == "ser2tcp-console" else None
            if profile.startswith("ser2tcp-2"):
                argv = [str(ORIGINAL), *ser2tcp_config(tmp, ptys, ports, False, None)]
            elif profile.startswith("ser2tcp"):
                argv = [str(SER2TCP), *ser2tcp_config(tmp, ptys, ports, profile == "ser2tcp-console", http)]
            else:
                argv = [shutil.which("ser2net") or "ser2net", *ser2net_config(tmp, ptys, ports, per_port)]
            started = time.monotonic()
            proc = subprocess.Popen(
                with_soft_limit(argv, soft), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            wanted = set(ports)
            while listening(wanted) != wanted:
                if proc.poll() is not None or time.monotonic() - started > 60:
                    result["status"] = "did not start: " + (
                        proc.stderr.read(300).decode() if proc.stderr else ""
                    )
                    return result
                time.sleep(0.005)
            result["start_s"] = time.monotonic() - started
            try:
                clients = Clients(ports, per_port, args.join_timeout)
            except OSError as e:
                result["status"] = f"did not manage: clients could not connect: {e}"
                return result
            deadline = time.monotonic() + args.join_timeout
            while len(clients.joined) < len(clients.socks) and time.monotonic() < deadline:
                waiting = {clients.port_of[fd] for fd in clients.by_fd if fd not in clients.joined}
                for i in waiting:
                    ptys[i].try_write(b"\0")
                clients.read(0.1)
            if len(clients.joined) < len(clients.socks) or clients.closed:
                result["status"] = (
                    f"did not manage: {len(clients.joined)} of {len(clients.socks)} clients got data "
                    f"within {args.join_timeout:g} s ({clients.closed} closed)"
                )
                return result
            for i in range(len(ptys)):
                ptys[i].drain()
            clients.read(0.5)  # the last NULs
            # What joining set off (port logs flushing the NULs) settles first.
            time.sleep(args.settle)
            clients.read(0)
            # idle
            pid = proc.pid
            cpu0, wake0, t0 = cpu_seconds(pid) or 0.0, wakeups(pid), time.monotonic()
            time.sleep(args.idle)
            cpu1, wake1, t1 = cpu_seconds(pid) or 0.0, wakeups(pid), time.monotonic()
            result["idle_cpu_pct"] = 100 * (cpu1 - cpu0) / (t1 - t0)
            result["idle_wakeups_s"] = (wake1 - wake0) / (t1 - t0)
            # load
            scraper = Scraper(http) if http is not None else None
            clients.start()
            received0 = clients.received
            offered, written = write_paced(ptys, clients, args.baud / 10, args.seconds, args.tick)
            t2 = time.monotonic()
            cpu2 = cpu_seconds(pid) or 0.0
            for _ in range(int(args.drain / 0.1)):
                if not clients.missing():
                    break
                time.sleep(0.1)
            clients.stop()
            cpu3 = cpu_seconds(pid) or 0.0
            if scraper is not None:
                scraper.stop()
                result["scrapes_ok"], result["scrapes_failed"] = scraper.ok, scraper.failed
                result["scrape_slowest_s"] = scraper.slowest
            delivered = clients.received - received0
            result["load_cpu_pct"] = 100 * (cpu2 - cpu1) / (t2 - t1)
            result["cpu_s_per_mib"] = (cpu3 - cpu1) / (delivered / MiB) if delivered else None
            result["carried"] = written / offered if offered else 0.0
            result["delivered_mib"] = delivered / MiB
            result["rss_mib"] = (rss_kib(pid) or 0) / 1024
            result["missing_clients"] = clients.missing()
            result["errors"] = clients.errors
            result["every_byte"] = not clients.missing() and not clients.errors and not clients.closed
            result["status"] = "ok"
            return result
        finally:
            if clients is not None:
                clients.stop()
                clients.close()
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            for pty in ptys:
                pty.close()


def startup(n: int) -> dict[str, Any]:
    """Seconds from start to listening for ``n`` always-open ports (console config)."""
    ptys = [Pty() for _ in range(n)]
    ports = free_ports(n)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        argv = [str(SER2TCP), *ser2tcp_config(tmp, ptys, ports, True, None)]
        started = time.monotonic()
        proc = subprocess.Popen(with_soft_limit(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wanted = set(ports)
            while listening(wanted) != wanted:
                if proc.poll() is not None or time.monotonic() - started > 60:
                    return {"ports": n, "status": "did not start"}
                time.sleep(0.005)
            return {"ports": n, "status": "ok", "start_s": time.monotonic() - started}
        finally:
            proc.terminate()
            proc.wait(30)
            for pty in ptys:
                pty.close()


# report


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(data: dict[str, Any]) -> str:
    args = data["args"]
    lines = [
        BEGIN,
        "## Many ports (`bench/many.py`)",
        "",
        f"Measured {data['date']} with `python bench/many.py --scenarios {args['scenarios']} "
        f"--baud {args['baud']} --idle {args['idle']:g} --seconds {args['seconds']:g} "
        f"--startup {args['startup']}`.  Every daemon started with a soft descriptor limit of "
        f"{SOFT_LIMIT}; every device sends random bytes at {args['baud']} baud (8N1) during the load.",
        "",
        "| scenario | profile | start (s) | idle CPU % | idle wake-ups/s | load CPU % | CPU s/MiB "
        "| load carried | every byte | RSS MiB | /metrics during load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        scenario = f"{r['ports']} × {r['clients'] // max(r['ports'], 1)}"
        if r.get("status") != "ok":
            lines.append(f"| {scenario} | {r['profile']} | {r.get('status')} |" + " |" * 9)
            continue
        scrapes = f"{r['scrapes_ok']} ok, {r['scrapes_failed']} failed" if "scrapes_ok" in r else "-"
        lines.append(
            f"| {scenario} | {r['profile']} | {r['start_s']:.2f} | {r['idle_cpu_pct']:.2f} | "
            f"{r['idle_wakeups_s']:.1f} | {r['load_cpu_pct']:.1f} | {fmt(r['cpu_s_per_mib'], '.4f')} | "
            f"{100 * r['carried']:.1f} % | {'yes' if r['every_byte'] else 'NO'} | {r['rss_mib']:.1f} "
            f"| {scrapes} |"
        )
    if data.get("startup"):
        s = data["startup"]
        lines += [
            "",
            f"Start to every port listening, {s['ports']} always-open ports (console config): "
            + (f"{s['start_s']:.2f} s." if s.get("status") == "ok" else s.get("status", "-")),
        ]
    lines.append(END)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scenarios", default="256x10,64x10")
    parser.add_argument("--profiles", default="ser2tcp,ser2tcp-console,ser2net,ser2tcp-2.3.0")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds between joining and the idle window"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tick", type=float, default=0.05)
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument(
        "--join-timeout", type=float, default=180.0, help="seconds for every client to connect"
    )
    parser.add_argument("--original-max-ports", type=int, default=64)
    parser.add_argument("--startup", type=int, default=1024, help="0: skip")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    biggest = max(int(s.split("x")[0]) * (int(s.split("x")[1]) + 3) for s in args.scenarios.split(","))
    raise_nofile(max(biggest, 3 * args.startup) + 256)
    runs = []
    for scenario in args.scenarios.split(","):
        nports, per_port = (int(x) for x in scenario.split("x"))
        for profile in args.profiles.split(","):
            if profile == "ser2net" and shutil.which("ser2net") is None:
                runs.append(
                    {
                        "profile": profile,
                        "ports": nports,
                        "clients": nports * per_port,
                        "status": "not installed",
                    }
                )
                continue
            if profile == "ser2tcp-2.3.0" and nports > args.original_max_ports:
                status = f"not run above {args.original_max_ports} ports (it accepts too slowly)"
                runs.append(
                    {"profile": profile, "ports": nports, "clients": nports * per_port, "status": status}
                )
                continue
            if profile == "ser2tcp-2.3.0" and not os.access(ORIGINAL, os.X_OK):
                runs.append(
                    {
                        "profile": profile,
                        "ports": nports,
                        "clients": nports * per_port,
                        "status": "not installed",
                    }
                )
                continue
            print(f"{scenario} {profile}", file=sys.stderr)
            runs.append(run_one(profile, nports, per_port, args))
            print(json.dumps(runs[-1]), file=sys.stderr)
            if runs[-1]["status"] != "ok" and profile == "ser2net":
                # A peer that does not raise its own limit: measured again
                # with the hard limit, so that its data path is compared too.
                runs.append(run_one(profile, nports, per_port, args, soft=None))
                print(json.dumps(runs[-1]), file=sys.stderr)
    data: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": runs,
        "startup": startup(args.startup) if args.startup else None,
    }
    section = markdown(data)
    print(section)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
    if args.markdown:
        replace_section(args.markdown, section, BEGIN, END)


if __name__ == "__main__":
    main()
