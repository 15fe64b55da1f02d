"""Reload on the real daemon: SIGHUP and ``POST /api/reload``, with
pseudo-terminals for devices and real sockets on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import termios
import urllib.error
import urllib.request
from typing import Any

from tests.helpers import (
    SER2TCP,
    TWIST,
    Background,
    Case,
    Daemon,
    clean_env,
    free_port,
    listening_ports,
    recv_exactly,
    recv_until_closed,
    tcp_server,
    wait_until,
)
from tests.proto_helpers import GREETING
from tests.test_console_daemon import telnet_server
from tests.test_sdnotify import notify_socket

#: A pattern whose every 256-byte block is the same: a lost or doubled
#: chunk shows as a mismatch at its offset.
STREAM = bytes(range(256)) * (4 * 4096)  # 4 MiB


def named(name: str, device: str, *servers: dict[str, Any], **serial: Any) -> dict[str, Any]:
    return {"name": name, "serial": {"port": device, **serial}, "servers": list(servers)}


class ReloadCase(Case):
    def start(self, config: dict[str, Any], listen: list[int]) -> tuple[Daemon, str]:
        path = self.config(config)
        return self.ser2tcp(path, "-v", listen=listen), path

    def rewrite(self, path: str, config: Any) -> None:
        """Replace the file at once, as an editor or a deployment does."""
        with open(path + ".new", "w", encoding="utf-8") as f:
            f.write(config if isinstance(config, str) else json.dumps(config))
        os.replace(path + ".new", path)

    def reload(self, daemon: Daemon, what: str = "Reloaded ") -> str:
        """SIGHUP, then the output once the reload said ``what``; returns
        that output."""
        count = daemon.output().count(what) + 1
        daemon.proc.send_signal(signal.SIGHUP)
        return daemon.wait_output(what, count)


class ReloadTests(ReloadCase):
    def test_unchanged_port_streams_through_a_reload(self) -> None:
        a, b, c = self.pty(), self.pty(), self.pty()
        pa, pb, pc = free_port(), free_port(), free_port()
        config = {"ports": [named("a", a.path, tcp_server(pa)), named("b", b.path, tcp_server(pb))]}
        daemon, path = self.start(config, [pa, pb])
        client = self.connect(pa, rcvbuf=65536)  # the device is still sending at the reload
        daemon.wait_holds(a.path)
        writer = Background(a.write, STREAM, self.deadline(30))
        got = recv_exactly(client, 1 << 20, self.deadline(30))
        # Mid-stream: another port changes, one is added, "a" moves in the list.
        config = {
            "ports": [
                named("b", b.path, tcp_server(pb), baudrate=57600),
                named("c", c.path, tcp_server(pc)),
                named("a", a.path, tcp_server(pa)),
            ]
        }
        self.rewrite(path, config)
        out = self.reload(daemon)
        got += recv_exactly(client, len(STREAM) - len(got), self.deadline(30))
        writer.result(30)
        self.assertEqual(len(got), len(STREAM))
        self.assertTrue(got == STREAM, "the stream was changed by the reload")
        self.assertIn("Reloaded", out)
        line = next(x for x in out.splitlines() if "Reloaded" in x)
        self.assertIn("added c", line)
        self.assertIn("changed b", line)
        self.assertIn("1 port unchanged", line)
        self.assertNotIn("Client disconnected", daemon.output())
        # Still connected both ways, and the new port serves.
        client.sendall(b"still here")
        self.assertEqual(a.read(10), b"still here")
        new = self.connect(pc)
        daemon.wait_holds(c.path)
        c.write(b"from c")
        self.assertEqual(recv_exactly(new, 6, self.deadline()), b"from c")

    def test_baudrate_applied_to_the_open_device_without_disconnecting(self) -> None:
        pty = self.pty()
        raw_port, telnet_port = free_port(), free_port()
        servers = [tcp_server(raw_port), telnet_server(telnet_port)]
        config = {"ports": [named("board", pty.path, *servers, baudrate=9600)]}
        daemon, path = self.start(config, [raw_port, telnet_port])
        raw = self.connect(raw_port)
        telnet = self.connect(telnet_port)
        self.assertEqual(recv_exactly(telnet, len(GREETING), self.deadline()), GREETING)
        daemon.wait_holds(pty.path)
        wait_until(lambda: pty.speeds() == (termios.B9600, termios.B9600), what="9600 baud")
        config["ports"][0]["serial"]["baudrate"] = 115200
        self.rewrite(path, config)
        out = self.reload(daemon)
        self.assertIn("changed board (serial settings applied)", out)
        wait_until(lambda: pty.speeds() == (termios.B115200, termios.B115200), what="115200 baud")
        pty.write(b"after")
        self.assertEqual(recv_exactly(raw, 5, self.deadline()), b"after")
        self.assertEqual(recv_exactly(telnet, 5, self.deadline()), b"after")
        raw.sendall(b"typed")
        self.assertEqual(pty.read(5), b"typed")
        self.assertNotIn("Client disconnected", daemon.output())
        self.assertNotIn("Serial board closed", daemon.output())

    def test_a_new_device_is_opened_with_the_clients_kept(self) -> None:
        first, second = self.pty(), self.pty()
        port = free_port()
        daemon, path = self.start({"ports": [named("board", first.path, tcp_server(port))]}, [port])
        client = self.connect(port)
        daemon.wait_holds(first.path)
        self.rewrite(path, {"ports": [named("board", second.path, tcp_server(port))]})
        self.assertIn("changed board (device reopened)", self.reload(daemon))
        daemon.wait_holds(second.path)
        daemon.wait_holds(first.path, held=False)
        second.write(b"new device")
        self.assertEqual(recv_exactly(client, 10, self.deadline()), b"new device")
        self.assertNotIn("Client disconnected", daemon.output())

    def test_removed_server_closes_its_clients_only(self) -> None:
        pty = self.pty()
        raw_port, telnet_port = free_port(), free_port()
        servers = [tcp_server(raw_port), telnet_server(telnet_port)]
        daemon, path = self.start({"ports": [named("board", pty.path, *servers)]}, [raw_port, telnet_port])
        raw = self.connect(raw_port)
        telnet = self.connect(telnet_port)
        self.assertEqual(recv_exactly(telnet, len(GREETING), self.deadline()), GREETING)
        daemon.wait_output("Client connected", 2)
        self.rewrite(path, {"ports": [named("board", pty.path, tcp_server(raw_port))]})
        self.assertIn("changed board (1 server removed)", self.reload(daemon))
        data, how = recv_until_closed(telnet, self.deadline())
        self.assertEqual(how, "eof")
        notice = f"ser2tcp: server TELNET 127.0.0.1:{telnet_port} removed from the config; connect again"
        self.assertIn(notice.encode() + b"\r\n", data)
        wait_until(lambda: telnet_port not in listening_ports(daemon.pid), what="the TELNET port closed")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", telnet_port), timeout=5).close()
        pty.write(b"for raw")
        self.assertEqual(recv_exactly(raw, 7, self.deadline()), b"for raw")

    def test_changed_server_keeps_its_socket_and_tells_its_clients(self) -> None:
        pty = self.pty()
        port = free_port()
        daemon, path = self.start({"ports": [named("board", pty.path, telnet_server(port))]}, [port])
        before = self.connect(port)
        self.assertEqual(recv_exactly(before, len(GREETING), self.deadline()), GREETING)
        daemon.wait_holds(pty.path)
        self.rewrite(path, {"ports": [named("board", pty.path, telnet_server(port, access="ro"))]})
        self.assertIn("changed board (1 server changed)", self.reload(daemon))
        data, how = recv_until_closed(before, self.deadline())
        self.assertIn(f"ser2tcp: server TELNET 127.0.0.1:{port} changed; connect again\r\n".encode(), data)
        # The new config is in force on the same socket: input is discarded.
        after = self.connect(port)
        self.assertEqual(recv_exactly(after, len(GREETING), self.deadline()), GREETING)
        daemon.wait_holds(pty.path)
        after.sendall(b"ignored")
        pty.write(b"seen")
        self.assertEqual(recv_exactly(after, 4, self.deadline()), b"seen")
        after.close()
        daemon.wait_output("7 byte(s) of input discarded (read-only server)")

    def test_ports_added_and_removed(self) -> None:
        old, new = self.pty(), self.pty()
        old_port, new_port = free_port(), free_port()
        daemon, path = self.start({"ports": [named("old", old.path, telnet_server(old_port))]}, [old_port])
        client = self.connect(old_port)
        self.assertEqual(recv_exactly(client, len(GREETING), self.deadline()), GREETING)
        daemon.wait_holds(old.path)
        self.rewrite(path, {"ports": [named("new", new.path, tcp_server(new_port))]})
        out = self.reload(daemon)
        self.assertIn("added new; removed old", out)
        data, how = recv_until_closed(client, self.deadline())
        self.assertEqual(how, "eof")
        self.assertIn(b"ser2tcp: port old was removed from the config\r\n", data)
        daemon.wait_holds(old.path, held=False)
        daemon.wait_listening([new_port])
        wait_until(lambda: old_port not in listening_ports(daemon.pid), what="the old port closed")
        other = self.connect(new_port)
        daemon.wait_holds(new.path)
        new.write(b"hello")
        self.assertEqual(recv_exactly(other, 5, self.deadline()), b"hello")

    def test_a_renamed_port_keeps_its_sockets(self) -> None:
        pty = self.pty()
        port = free_port()
        daemon, path = self.start({"ports": [named("before", pty.path, tcp_server(port))]}, [port])
        self.rewrite(path, {"ports": [named("after", pty.path, tcp_server(port))]})
        self.assertIn("added after; removed before", self.reload(daemon))
        self.assertNotIn("cannot listen", daemon.output())
        client = self.connect(port)
        daemon.wait_holds(pty.path)
        daemon.wait_output("Client connected: 127.0.0.1")
        self.assertIn("to after", daemon.output().rsplit("Client connected", 1)[1])
        pty.write(b"renamed")
        self.assertEqual(recv_exactly(client, 7, self.deadline()), b"renamed")

    def test_invalid_config_changes_nothing(self) -> None:
        pty = self.pty()
        port = free_port()
        config = {"ports": [named("board", pty.path, tcp_server(port))]}
        daemon, path = self.start(config, [port])
        client = self.connect(port)
        daemon.wait_holds(pty.path)
        for bad, why in (
            ("{not json", "ser2tcp.json: invalid JSON"),
            ({"ports": [named("board", pty.path, tcp_server(port), baudrate="fast")]}, "baudrate"),
        ):
            self.rewrite(path, bad)
            out = self.reload(daemon, "Reload failed")
            line = next(x for x in reversed(out.splitlines()) if "Reload failed" in x)
            self.assertTrue(line.startswith("E: Reload failed, the running config stays: "), line)
            self.assertIn(why, line)
        self.assertNotIn("Traceback", daemon.output())
        pty.write(b"unchanged")
        self.assertEqual(recv_exactly(client, 9, self.deadline()), b"unchanged")
        # The bad file did not stick: fixing it and reloading works.
        config["ports"][0]["serial"]["baudrate"] = 19200
        self.rewrite(path, config)
        self.assertIn("changed board", self.reload(daemon))

    def test_a_listener_that_cannot_bind_keeps_the_old_config(self) -> None:
        a, b = self.pty(), self.pty()
        pa, pb = free_port(), free_port()
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        daemon, path = self.start(
            {"ports": [named("a", a.path, tcp_server(pa)), named("b", b.path, tcp_server(pb))]}, [pa, pb]
        )
        client = self.connect(pb)
        daemon.wait_holds(b.path)
        # "b" is removed and "a" gets a server on a place that is taken.
        self.rewrite(path, {"ports": [named("a", a.path, tcp_server(pa), tcp_server(busy))]})
        out = self.reload(daemon, "Reload failed")
        self.assertIn(f"cannot listen on TCP 127.0.0.1:{busy}: Address already in use", out)
        # Nothing of it happened: "b" still serves its client and listens.
        b.write(b"still b")
        self.assertEqual(recv_exactly(client, 7, self.deadline()), b"still b")
        self.assertTrue({pa, pb} <= listening_ports(daemon.pid))
        self.connect(pb).close()
        self.assertNotIn("Reloaded", daemon.output())


class ReloadAroundTests(ReloadCase):
    def test_systemd_is_told_reloading_then_ready(self) -> None:
        sock, notify = notify_socket(self)
        sock.settimeout(10)
        pty = self.pty()
        port = free_port()
        path = self.config({"ports": [named("board", pty.path, tcp_server(port))]})
        daemon = self.daemon([SER2TCP, "-v", "-c", path], env=clean_env(NOTIFY_SOCKET=notify))
        self.assertTrue(sock.recv(4096).startswith(b"READY=1\n"))
        daemon.proc.send_signal(signal.SIGHUP)
        reloading = sock.recv(4096).decode()
        self.assertRegex(reloading, r"\ARELOADING=1\nMONOTONIC_USEC=[0-9]+\Z")
        self.assertEqual(sock.recv(4096), b"READY=1\nSTATUS=1 port(s), 0 open, 0 client(s)")
        daemon.wait_output("Reloaded")

    def test_port_logs_are_reopened(self) -> None:
        pty = self.pty()
        port = free_port()
        directory = self.tempdir()
        log_path = os.path.join(directory, "board.log")
        config = {
            "ports": [
                {
                    **named("board", pty.path, tcp_server(port)),
                    "open": "always",
                    "log": {"path": log_path, "timestamps": False},
                }
            ]
        }
        daemon, path = self.start(config, [port])
        daemon.wait_holds(pty.path)
        pty.write(b"first\n")
        wait_until(
            lambda: os.path.exists(log_path) and open(log_path, "rb").read() == b"first\n", what="the log"
        )
        os.rename(log_path, log_path + ".1")  # as logrotate does
        self.reload(daemon)
        pty.write(b"second\n")
        wait_until(
            lambda: os.path.exists(log_path) and open(log_path, "rb").read() == b"second\n", what="a new log"
        )
        with open(log_path + ".1", "rb") as f:
            self.assertEqual(f.read(), b"first\n")


class CertificateRenewalTests(ReloadCase):
    def test_reload_reads_renewed_certificates(self) -> None:
        import shutil
        import ssl

        from tests.proto_helpers import Pki

        first, second = Pki(self.tempdir()), Pki(self.tempdir())
        directory = self.tempdir()
        cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        shutil.copy(first.server_cert, cert)
        shutil.copy(first.server_key, key)
        pty = self.pty()
        port = free_port()
        server = {
            "protocol": "ssl",
            "address": "127.0.0.1",
            "port": port,
            "ssl": {"certfile": cert, "keyfile": key},
        }
        daemon, path = self.start({"ports": [named("board", pty.path, server)]}, [port])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        def peer_certificate(sock: Any) -> bytes:
            return bytes(sock.getpeercert(binary_form=True))

        before = ctx.wrap_socket(self.connect(port))
        self.addCleanup(before.close)
        with open(first.server_cert, "rb") as f:
            self.assertEqual(peer_certificate(before), ssl.PEM_cert_to_DER_cert(f.read().decode()))
        daemon.wait_holds(pty.path)
        shutil.copy(second.server_cert, cert)  # renewed, same paths: the config is unchanged
        shutil.copy(second.server_key, key)
        self.assertIn("nothing changed", self.reload(daemon))
        after = ctx.wrap_socket(self.connect(port))
        self.addCleanup(after.close)
        with open(second.server_cert, "rb") as f:
            self.assertEqual(peer_certificate(after), ssl.PEM_cert_to_DER_cert(f.read().decode()))
        daemon.wait_output("Client connected", 2)
        pty.write(b"both")
        self.assertEqual(recv_exactly(before, 4, self.deadline()), b"both")  # the old session goes on
        self.assertEqual(recv_exactly(after, 4, self.deadline()), b"both")


class ReloadOverHttpTests(ReloadCase):
    def post(self, url: str, **headers: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(url, method="POST", data=b"", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def test_post_api_reload(self) -> None:
        pty, other = self.pty(), self.pty()
        port, http, added = free_port(), free_port(), free_port()
        config: dict[str, Any] = {
            "ports": [named("board", pty.path, tcp_server(port))],
            "http": {"address": "127.0.0.1", "port": http},
        }
        daemon, path = self.start(config, [port, http])
        url = f"http://127.0.0.1:{http}/api/reload"
        config["ports"].append(named("added", other.path, tcp_server(added)))
        self.rewrite(path, config)
        code, body = self.post(url, Origin="http://evil.example")
        self.assertEqual((code, body), (403, {"error": "origin not allowed"}))
        self.assertNotIn("Reloaded", daemon.output())
        code, body = self.post(url)
        self.assertEqual(
            (code, body["reloaded"], body["summary"]), (200, True, "added added; 1 port unchanged")
        )
        daemon.wait_listening([added])
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/status", timeout=10) as response:
            names = [p["name"] for p in json.load(response)["ports"]]
        self.assertEqual(names, ["board", "added"])
        self.rewrite(path, '{"ports": 1}')
        code, body = self.post(url)
        self.assertEqual(code, 409)
        self.assertFalse(body["reloaded"])
        self.assertIn("ser2tcp.json", body["error"])


class ReloadUnderTwistTests(ReloadCase):
    def test_sighup_reloads_under_twist(self) -> None:
        pty, other = self.pty(), self.pty()
        port, added = free_port(), free_port()
        config: dict[str, Any] = {"ports": [named("board", pty.path, tcp_server(port))]}
        path = self.config(config)
        daemon = self.daemon([TWIST, "ser2tcp", "-v", "-c", path], env=clean_env())
        daemon.wait_listening([port])
        config["ports"].append(named("added", other.path, tcp_server(added)))
        self.rewrite(path, config)
        self.assertIn("added added", self.reload(daemon))
        daemon.wait_listening([added])
        client = self.connect(added)
        daemon.wait_holds(other.path)
        other.write(b"twist")
        self.assertEqual(recv_exactly(client, 5, self.deadline()), b"twist")
