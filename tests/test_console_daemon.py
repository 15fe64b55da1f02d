"""The console-server features on the real daemon, with pseudo-terminals:
a replug under held sessions, always-open ports with scrollback and replay,
clients waiting for a device that is not there yet."""

from __future__ import annotations

import os
import socket
import termios
import time
from typing import Any

import serial

from tests.helpers import (
    Case,
    Pty,
    free_port,
    port_name,
    recv_exactly,
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
