"""The console-server features on the real daemon, with pseudo-terminals:
a replug under held sessions, always-open ports with scrollback and replay,
clients waiting for a device that is not there yet."""

from __future__ import annotations

import os
import signal
import socket
import termios
import time
from typing import Any

import serial

from tests.helpers import (
    SER2TCP,
    Case,
    Pty,
    free_port,
    port_name,
    recv_exactly,
    run,
    tcp_server,
    wait_until,
)
from tests.proto_helpers import GREETING

NOTICE_LOST = b"ser2tcp: serial port board lost: "


def telnet_server(port: int, **extra: Any) -> dict[str, Any]:
    return {"protocol": "telnet", "address": "127.0.0.1", "port": port, **extra}


def recv_until(sock: socket.socket, marker: bytes, deadline: float, limit: int = 1 << 20) -> bytes:
    """What ``sock`` receives up to and including ``marker``."""
    got = b""
    for _ in range(10_000):
        if marker in got:
            break
        left = deadline - time.monotonic()
        if left <= 0 or len(got) > limit:
            raise AssertionError(f"{marker!r} not received; got {got[-200:]!r}")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"EOF before {marker!r}; got {got[-200:]!r}")
        got += data
    return got


class ReplugTests(Case):
    def plug(self, link: str) -> Pty:
        """A new pty at ``link``, as a re-enumerated USB adapter would be."""
        pty = self.pty()
        os.symlink(pty.path, link + ".new")
        os.replace(link + ".new", link)
        return pty

    def test_sessions_survive_a_replug(self) -> None:
        link = os.path.join(self.tempdir(), "ttyBOARD")
        first = self.plug(link)
        raw_port, telnet_port, rfc_port = free_port(), free_port(), free_port()
        config = {
            "ports": [
                {
                    "name": "board",
                    "serial": {"port": link, "baudrate": 115200},
                    "on_loss": "hold",
                    "reopen_interval": 0.1,
                    "servers": [
                        tcp_server(raw_port),
                        telnet_server(telnet_port),
                        telnet_server(rfc_port, rfc2217=True),
                    ],
                }
            ]
        }
        daemon = self.ser2tcp(config, "-v", listen=[raw_port, telnet_port, rfc_port])
        raw = self.connect(raw_port)
        telnet = self.connect(telnet_port)
        self.assertEqual(recv_exactly(telnet, len(GREETING), self.deadline()), GREETING)
        ser = serial.serial_for_url(f"rfc2217://127.0.0.1:{rfc_port}", baudrate=57600, timeout=5)
        self.addCleanup(ser.close)
        daemon.wait_output("Client connected", 3)
        wait_until(lambda: first.speeds() == (termios.B57600, termios.B57600), what="57600 baud on the pty")
        first.write(b"before\n")
        self.assertEqual(recv_exactly(raw, 7, self.deadline()), b"before\n")
        self.assertEqual(ser.read(7), b"before\n")

        first.close()  # unplugged
        self.assertTrue(recv_until(telnet, b"waiting for it\r\n", self.deadline()).startswith(b"before\n"))
        daemon.wait_output("Serial board lost")
        raw.sendall(b"typed while away")  # discarded: no device to take it

        second = self.plug(link)  # back, as another pty
        daemon.wait_output("device is back")
        self.assertIn(
            b"ser2tcp: serial port board is back\r\n", recv_until(telnet, b"back\r\n", self.deadline())
        )
        # The settings the RFC 2217 client chose are in effect on the new device.
        self.assertEqual(second.speeds(), (termios.B57600, termios.B57600))
        second.write(b"after\n")
        self.assertEqual(recv_exactly(raw, 6, self.deadline()), b"after\n")
        self.assertEqual(recv_exactly(telnet, 6, self.deadline()), b"after\n")
        self.assertEqual(ser.read(6), b"after\n")
        raw.sendall(b"to the new one")
        self.assertEqual(second.read(14), b"to the new one")
        log = daemon.wait_output("byte(s) of client input discarded while the device was away")
        self.assertIn("16 byte(s) of client input discarded", log)
        self.assertEqual(log.count("Client disconnected"), 0)


class AlwaysOpenTests(Case):
    def test_scrollback_replayed_to_a_late_client(self) -> None:
        pty = self.pty()
        watch_port, replay_port = free_port(), free_port()
        config = {
            "ports": [
                {
                    "serial": {"port": pty.path},
                    "open": "always",
                    "scrollback": 4096,
                    "servers": [tcp_server(watch_port), telnet_server(replay_port, replay=True)],
                }
            ]
        }
        daemon = self.ser2tcp(config, "-v", listen=[watch_port, replay_port])
        daemon.wait_output(f"Serial {port_name(pty.path)} opened")
        daemon.wait_holds(pty.path)
        before = b"".join(b"boot line %04d\r\n" % i for i in range(200))  # 3200 bytes, nobody listening
        pty.write(before)
        watcher = self.connect(watch_port)  # no replay: live data only
        daemon.wait_output("Client connected")
        during = b"login: "
        pty.write(during)
        # Live data only (how much of the boot log it sees depends on when
        # the daemon read it); once "during" is through, so is the boot log.
        seen = recv_until(watcher, during, self.deadline())
        self.assertTrue((before + during).endswith(seen), seen[:40])

        late = self.connect(replay_port)
        expected = GREETING + (before + during)[-4096:]
        self.assertEqual(recv_exactly(late, len(expected), self.deadline()), expected)
        pty.write(b"root\r\n")
        self.assertEqual(recv_exactly(late, 6, self.deadline()), b"root\r\n")
        self.assertEqual(recv_exactly(watcher, 6, self.deadline()), b"root\r\n")
        # No client left: the device stays open.
        watcher.close()
        late.close()
        daemon.wait_output("Client disconnected", 2)
        self.assertTrue(daemon.holds(pty.path))
        self.assertNotIn("closed", daemon.output())


class WaitForDeviceTests(Case):
    def test_client_waits_for_an_absent_device(self) -> None:
        link = os.path.join(self.tempdir(), "ttyLATE")
        port = free_port()
        config = {
            "ports": [
                {
                    "serial": {"port": link},
                    "on_loss": "hold",
                    "reopen_interval": 0.1,
                    "servers": [tcp_server(port)],
                }
            ]
        }
        daemon = self.ser2tcp(config, "-v", listen=[port])
        sock = self.connect(port)
        daemon.wait_output("cannot open")
        pty = self.pty()
        os.symlink(pty.path, link)
        daemon.wait_output("device is back")
        pty.write(b"hello")
        self.assertEqual(recv_exactly(sock, 5, self.deadline()), b"hello")


class PortLogDaemonTests(Case):
    def start(self, log: dict[str, Any], **port: Any) -> tuple[Any, Pty, int]:
        pty = self.pty()
        tcp = free_port()
        config = {
            "ports": [
                {
                    "name": "lab1",
                    "serial": {"port": pty.path},
                    "log": log,
                    "servers": [tcp_server(tcp)],
                    **port,
                }
            ]
        }
        daemon = self.ser2tcp(config, "-v", listen=[tcp])
        return daemon, pty, tcp

    def read(self, path: str, want: bytes) -> bytes:
        def has() -> bytes | None:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return None
            return data if want in data else None

        return wait_until(has, what=f"{want!r} in {path}")

    def test_boot_log_captured_with_nobody_connected(self) -> None:
        path = os.path.join(self.tempdir(), "lab1.log")
        daemon, pty, tcp = self.start({"path": path}, open="always")
        daemon.wait_holds(pty.path)
        pty.write(b"U-Boot 2024.01\r\nDRAM:  512 MiB\r\n")
        data = self.read(path, b"512 MiB\r\n")
        lines = data.splitlines(keepends=True)
        self.assertRegex(lines[0], rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[ser2tcp\] device opened: ")
        self.assertRegex(lines[1], rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z U-Boot 2024.01\r\n$")
        self.assertTrue(lines[2].endswith(b"Z DRAM:  512 MiB\r\n"))
        sock = self.connect(tcp)
        self.read(path, b"TCP connected\n")
        sock.close()
        self.read(path, b"TCP disconnected\n")

    def test_byte_exact_rotation_and_reopen(self) -> None:
        directory = self.tempdir()
        path = os.path.join(directory, "lab1.log")
        daemon, pty, tcp = self.start({"path": path, "timestamps": False, "max_bytes": 4096, "backups": 2})
        sock = self.connect(tcp)
        daemon.wait_output("Client connected")
        daemon.wait_holds(pty.path)
        first, second = os.urandom(3000) + bytes(range(256)) * 8, os.urandom(3000)
        data = first + second
        pty.write(first)
        self.assertEqual(recv_exactly(sock, len(first), self.deadline()), first)
        # Past max_bytes: the next write rotates the file first.
        wait_until(lambda: os.path.getsize(path) == len(first), what="the first part in the log")
        pty.write(second)
        self.assertEqual(recv_exactly(sock, len(second), self.deadline()), second)

        def rotated() -> bytes | None:
            names = sorted(os.listdir(directory))
            if names != ["lab1.log", "lab1.log.1"]:
                return None
            with open(path + ".1", "rb") as old, open(path, "rb") as new:
                both = old.read() + new.read()
            return both if len(both) == len(data) else None

        self.assertEqual(wait_until(rotated, what="the log rotated"), data)
        # logrotate moves the file away and sends SIGUSR1.
        os.rename(path, path + ".moved")
        daemon.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: os.path.exists(path), what="the log reopened")
        pty.write(b"after rotation")
        self.assertEqual(self.read(path, b"after rotation"), b"after rotation")
        self.assertTrue(daemon.running())

    def test_unopenable_log_stops_the_start(self) -> None:
        directory = self.tempdir()
        os.mkdir(os.path.join(directory, "lab1.log"))  # a directory where the file should be
        pty = self.pty()
        config = {
            "ports": [
                {
                    "serial": {"port": pty.path},
                    "log": {"path": os.path.join(directory, "lab1.log")},
                    "servers": [tcp_server(free_port())],
                }
            ]
        }
        result = run([SER2TCP, "-c", self.config(config)])
        self.assertEqual(result.returncode, 1)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("ports[0].log.path: cannot open", lines[0])
