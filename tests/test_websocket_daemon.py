"""WebSocket clients and the terminal page on the real daemon, with a pty as
the device: byte-exact both ways, fan-out with TCP clients, a stalled client
cut off, logins and origins, controls, and the page in a real browser."""

from __future__ import annotations

import base64
import json
import os
import socket
import termios
import time
from typing import Any

from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from ser2tcp import passwords
from tests.helpers import (
    Case,
    Pty,
    free_port,
    recv_exactly,
    tcp_server,
    ticks,
    wait_until,
)
from tests.proto_helpers import headless_chromium

ALL_BYTES = bytes(range(256))


def ws_server(endpoint: str = "dev", **extra: Any) -> dict[str, Any]:
    return {"protocol": "websocket", "endpoint": endpoint, **extra}


class WsCase(Case):
    def start(self, *servers: dict[str, Any], http: dict[str, Any] | None = None, **root: Any) -> Any:
        self.pty_: Pty = self.pty()
        self.http = free_port()
        self.tcp = free_port()
        config = {
            "ports": [
                {
                    "name": "lab1",
                    "serial": {"port": self.pty_.path},
                    "servers": [tcp_server(self.tcp), *servers],
                }
            ],
            "http": {"address": "127.0.0.1", "port": self.http, **(http or {})},
            **root,
        }
        self.d = self.ser2tcp(config, "-v", listen=[self.http, self.tcp])
        return self.d

    def ws(self, endpoint: str = "dev", **kw: Any) -> ClientConnection:
        conn = connect(f"ws://127.0.0.1:{self.http}/ws/{endpoint}", open_timeout=10, max_size=None, **kw)
        self.addCleanup(conn.close)
        state = json.loads(conn.recv(timeout=10))  # the port's state comes first
        self.assertEqual(state["port"], "lab1")
        return conn

    def text_until(self, conn: ClientConnection, want: Any, timeout: float = 10) -> dict[str, Any]:
        """The first text message (the port's state, an error) ``want`` accepts."""
        for left in ticks(time.monotonic() + timeout):
            message = conn.recv(timeout=left)
            if isinstance(message, str):
                decoded = json.loads(message)
                if want(decoded):
                    return dict(decoded)
        raise AssertionError("no such message")

    def recv_binary(self, conn: ClientConnection, n: int, timeout: float = 10) -> bytes:
        """Exactly ``n`` bytes of device data (binary messages); text
        messages (state, notices) are skipped."""
        got = bytearray()
        for left in ticks(time.monotonic() + timeout):
            if len(got) >= n:
                break
            message = conn.recv(timeout=left)
            if isinstance(message, bytes):
                got += message
        self.assertEqual(len(got), n)
        return bytes(got)


class DataTests(WsCase):
    def test_one_mib_both_ways_every_byte_value(self) -> None:
        self.start(ws_server())
        conn = self.ws()
        self.d.wait_holds(self.pty_.path)
        down = ALL_BYTES * 4096  # 1 MiB
        self.pty_.write(down, self.deadline(30))
        self.assertEqual(self.recv_binary(conn, len(down), 30), down)
        up = (ALL_BYTES * 4096)[::-1]
        for i in range(0, len(up), 32768):
            conn.send(up[i : i + 32768])
        self.assertEqual(self.pty_.read(len(up), self.deadline(30)), up)

    def test_text_messages_reach_the_device_as_utf8(self) -> None:
        self.start(ws_server())
        conn = self.ws()
        self.d.wait_holds(self.pty_.path)
        conn.send("héllo {not json\r\n")
        expected = "héllo {not json\r\n".encode()
        self.assertEqual(self.pty_.read(len(expected)), expected)

    def test_fan_out_with_tcp_clients(self) -> None:
        self.start(ws_server())
        conns = [self.ws() for _ in range(3)]
        socks = [self.connect(self.tcp) for _ in range(2)]
        self.d.wait_output("Client connected", 5)
        data = os.urandom(200_000)
        self.pty_.write(data, self.deadline(30))
        for conn in conns:
            self.assertEqual(self.recv_binary(conn, len(data)), data)
        for sock in socks:
            self.assertEqual(recv_exactly(sock, len(data), self.deadline()), data)

    def test_a_stalled_client_is_cut_off_and_delays_nobody(self) -> None:
        self.start(ws_server(send_timeout=1))
        stalled = connect(f"ws://127.0.0.1:{self.http}/ws/dev", open_timeout=10, max_size=None)
        self.addCleanup(stalled.close)
        # The stalled client's socket is never read: shrink its buffer.
        stalled.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader = self.connect(self.tcp)
        self.d.wait_output("Client connected", 2)
        self.d.wait_holds(self.pty_.path)
        data = os.urandom(8 << 20)
        self.pty_.write(data, self.deadline(60))
        self.assertEqual(recv_exactly(reader, len(data), self.deadline(60)), data)
        self.d.wait_output("WEBSOCKET: no send progress for 1 s (send_timeout)")


class AccessTests(WsCase):
    def test_logins_protect_the_socket(self) -> None:
        stored = passwords.hash_password("pw")
        self.start(ws_server(), users=[{"login": "alice", "password": stored}])
        with self.assertRaises(InvalidStatus) as caught:
            connect(f"ws://127.0.0.1:{self.http}/ws/dev", open_timeout=10)
        self.assertEqual(caught.exception.response.status_code, 401)
        auth = "Basic " + base64.b64encode(b"alice:pw").decode()
        conn = self.ws(additional_headers={"Authorization": auth})
        self.d.wait_holds(self.pty_.path)
        self.pty_.write(b"ok")
        self.assertEqual(self.recv_binary(conn, 2), b"ok")
        self.d.wait_output("WEBSOCKET: authenticated as user alice")

    def test_a_page_of_another_site_is_refused(self) -> None:
        self.start(ws_server())
        with self.assertRaises(InvalidStatus) as caught:
            connect(f"ws://127.0.0.1:{self.http}/ws/dev", origin="http://evil.example", open_timeout=10)
        self.assertEqual(caught.exception.response.status_code, 403)
        self.assertFalse(self.d.holds(self.pty_.path))
        # Its own origin is fine.
        self.ws(origin=f"http://127.0.0.1:{self.http}")

    def test_limits_and_read_only(self) -> None:
        self.start(ws_server(max_connections=1), ws_server("watch", access="ro"))
        first = self.ws()
        with self.assertRaises(InvalidStatus) as caught:
            connect(f"ws://127.0.0.1:{self.http}/ws/dev", open_timeout=10)
        self.assertEqual(caught.exception.response.status_code, 503)
        watcher = self.ws("watch")
        self.d.wait_holds(self.pty_.path)
        watcher.send(b"typed by an observer")
        first.send(b"AT\r\n")
        self.assertEqual(self.pty_.read(4), b"AT\r\n")
        self.pty_.write(b"OK")
        self.assertEqual(self.recv_binary(watcher, 2), b"OK")
        watcher.send(json.dumps({"control": "baudrate", "value": 300}))
        first.close()
        watcher.close()
        self.d.wait_output("byte(s) of input discarded (read-only server)")
        self.assertNotEqual(self.pty_.speeds()[0], termios.B300)


class ControlTests(WsCase):
    def test_baud_rate_and_lines(self) -> None:
        self.start(ws_server())
        conn = self.ws()
        self.d.wait_holds(self.pty_.path)
        self.text_until(conn, lambda m: m.get("state") == "open")  # the page's state follows the port
        conn.send(json.dumps({"control": "baudrate", "value": 57600}))
        self.text_until(conn, lambda m: (m.get("settings") or {}).get("baudrate") == 57600)
        self.assertEqual(self.pty_.speeds(), (termios.B57600, termios.B57600))
        conn.send(json.dumps({"control": "dtr", "value": False}))
        self.text_until(conn, lambda m: (m.get("settings") or {}).get("dtr") is False)
        conn.send(json.dumps({"control": "break", "ms": 50}))
        conn.send(json.dumps({"control": "nonsense"}))
        self.assertIn("unknown control", self.text_until(conn, lambda m: "error" in m)["error"])
        self.d.wait_output('{"control": "dtr", "value": false}')

    def test_ignore_policy_changes_nothing(self) -> None:
        self.start(ws_server(settings="ignore"))
        conn = self.ws()
        self.d.wait_holds(self.pty_.path)
        conn.send(json.dumps({"control": "baudrate", "value": 57600}))
        self.d.wait_output("control baudrate ignored (server policy)")
        self.assertNotEqual(self.pty_.speeds()[0], termios.B57600)
        conn.send(b"still a client")
        self.assertEqual(self.pty_.read(14), b"still a client")


class TerminalPageTests(WsCase):
    def screen(self, driver: Any) -> str:
        return str(
            driver.execute_script(
                "const b = window.term.buffer.active; const out = [];"
                "for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));"
                "return out.join('\\n');"
            )
        )

    def test_typing_and_colours_in_a_real_browser(self) -> None:
        self.start(ws_server(), ws_server("watch", access="ro"))
        driver = headless_chromium(self.tempdir())
        self.addCleanup(driver.quit)
        driver.get(f"http://127.0.0.1:{self.http}/xterm/dev")
        wait_until(lambda: driver.execute_script("return !!window.term"), what="xterm.js loaded")
        self.d.wait_output("Client connected")
        self.d.wait_holds(self.pty_.path)
        wait_until(
            lambda: driver.find_element("id", "name").text == "lab1", what="the port's name on the page"
        )
        driver.find_element("css selector", ".xterm-helper-textarea").send_keys("ls -l\n")
        self.assertEqual(self.pty_.read(6), b"ls -l\r")
        self.pty_.write(b"\x1b[31mred\x1b[0m and plain\r\n")
        wait_until(lambda: "red and plain" in self.screen(driver), what="device text in the terminal")
        colour = driver.execute_script(
            "const cell = window.term.buffer.active.getLine(0).getCell(0); return cell.getFgColor();"
        )
        self.assertEqual(colour, 1)  # ANSI red
        # BREAK and the DTR pulse reach the port's controls (logged).
        driver.find_element("id", "break").click()
        self.d.wait_output('{"control": "break", "ms": 250}')
        driver.find_element("id", "reset").click()
        self.d.wait_output('"control": "pulse", "line": "dtr", "ms": 100')

    def test_read_only_page_cannot_type(self) -> None:
        self.start(ws_server("watch", access="ro"))
        driver = headless_chromium(self.tempdir())
        self.addCleanup(driver.quit)
        driver.get(f"http://127.0.0.1:{self.http}/xterm/watch")
        wait_until(lambda: driver.execute_script("return !!window.term"), what="xterm.js loaded")
        self.d.wait_output("Client connected")
        self.d.wait_holds(self.pty_.path)
        wait_until(lambda: driver.find_element("id", "name").text == "lab1", what="the page's state")
        self.assertFalse(driver.find_element("id", "controls").is_displayed())
        driver.find_element("css selector", ".xterm-helper-textarea").send_keys("reboot\n")
        self.pty_.write(b"prompt> ")
        wait_until(lambda: "prompt>" in self.screen(driver), what="device output on the page")
        driver.quit()
        self.d.wait_output("Client disconnected")
        # Nothing typed reached the device (the page does not even send it):
        # the device is closed, and reading it finds no byte (slave_open
        # fails on one).
        self.d.wait_holds(self.pty_.path, held=False)
        self.assertFalse(self.pty_.slave_open())
