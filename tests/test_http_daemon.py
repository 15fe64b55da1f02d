"""The HTTP side on the real daemon: the status document after known
traffic, DELETE, logins and tokens, TLS with client certificates,
allow/deny, metrics, bounded requests, and the status page in a browser."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    SER2TCP,
    Case,
    Pty,
    free_port,
    recv_exactly,
    recv_until_closed,
    run,
    tcp_server,
    wait_until,
)
from tests.proto_helpers import GREETING, Pki


def hash_password(password: str) -> str:
    """The hash ``ser2tcp --hash-password`` prints for ``password``."""
    result = subprocess.run(
        [SER2TCP, "--hash-password"], input=password + "\n", capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class HttpCase(Case):
    def start(self, http: dict[str, Any] | None = None, flags: tuple[str, ...] = ("-v",), **root: Any) -> Any:
        self.pty_: Pty = self.pty()
        self.tcp, self.telnet, self.http = free_port(), free_port(), free_port()
        config = {
            "ports": [
                {
                    "name": "lab1",
                    "serial": {"port": self.pty_.path, "baudrate": 115200},
                    "servers": [
                        tcp_server(self.tcp),
                        {
                            "protocol": "telnet",
                            "address": "127.0.0.1",
                            "port": self.telnet,
                            "max_connections": 4,
                        },
                    ],
                }
            ],
            "http": {"address": "127.0.0.1", "port": self.http, **(http or {})},
            **root,
        }
        self.d = self.ser2tcp(config, *flags, listen=[self.http, self.tcp, self.telnet])
        return self.d

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        **kw: Any,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http, timeout=15, **kw)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            return answer.status, dict(answer.getheaders()), answer.read()
        finally:
            conn.close()

    def status(self, **kw: Any) -> dict[str, Any]:
        code, _, body = self.request("GET", "/api/status", **kw)
        self.assertEqual(code, 200, body)
        return dict(json.loads(body))


def basic(login: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()}


class StatusTests(HttpCase):
    def test_values_after_known_traffic(self) -> None:
        self.start()
        sock = self.connect(self.tcp)
        self.d.wait_output("Client connected")
        self.d.wait_holds(self.pty_.path)
        up, down = os.urandom(1234), os.urandom(4321)
        sock.sendall(up)
        self.assertEqual(self.pty_.read(len(up)), up)
        self.pty_.write(down)
        self.assertEqual(recv_exactly(sock, len(down), self.deadline()), down)
        (port,) = self.status()["ports"]
        self.assertEqual(
            (port["name"], port["state"], port["device"], port["bytes_from_device"], port["bytes_to_device"]),
            ("lab1", "open", self.pty_.path, len(down), len(up)),
        )
        self.assertEqual(port["settings"]["baudrate"], 115200)
        tcp, telnet = port["servers"]
        self.assertEqual(
            (tcp["protocol"], tcp["listen"], tcp["access"]), ("tcp", f"127.0.0.1:{self.tcp}", "rw")
        )
        self.assertEqual(telnet["max_connections"], 4)
        (client,) = tcp["clients"]
        host, sport = sock.getsockname()
        self.assertEqual(
            {k: client[k] for k in ("peer", "protocol", "bytes_sent", "bytes_received", "queued_bytes")},
            {
                "peer": f"{host}:{sport}",
                "protocol": "tcp",
                "bytes_sent": len(down),
                "bytes_received": len(up),
                "queued_bytes": 0,
            },
        )
        self.assertEqual(telnet["clients"], [])
        sock.close()
        wait_until(lambda: self.status()["ports"][0]["servers"][0]["clients"] == [], what="the client gone")

    def test_delete_disconnects_a_client(self) -> None:
        self.start()
        person = self.connect(self.telnet)
        self.assertEqual(recv_exactly(person, len(GREETING), self.deadline()), GREETING)
        self.d.wait_output("Client connected")
        (client,) = self.status()["ports"][0]["servers"][1]["clients"]
        code, _, _ = self.request("DELETE", f"/api/clients/{client['id']}")
        self.assertEqual(code, 204)
        data, how = recv_until_closed(person, self.deadline())
        self.assertIn(b"ser2tcp: disconnected by an unauthenticated user over HTTP\r\n", data)
        self.assertEqual(how, "eof")
        self.d.wait_output("disconnected over HTTP by")
        self.assertEqual(self.request("DELETE", f"/api/clients/{client['id']}")[0], 404)
        self.assertEqual(self.request("DELETE", "/api/clients/nonsense")[0], 404)


class LoginTests(HttpCase):
    def test_users_and_tokens(self) -> None:
        salt = "0123456789abcdef"
        weak = f"sha256:{salt}:{hashlib.sha256((salt + 'old').encode()).hexdigest()}"
        self.start(
            users=[
                {"login": "alice", "password": hash_password("wonderland")},
                {"login": "bob", "password": weak},
            ],
            tokens=[{"token": "p" * 24, "name": "prometheus"}],
        )
        self.d.wait_output("users[1].password: a sha256 hash is fast to brute-force")
        conn = http.client.HTTPConnection("127.0.0.1", self.http, timeout=15)
        conn.request("GET", "/api/status")
        answer = conn.getresponse()
        self.assertEqual(answer.status, 401)
        challenges = " ".join(answer.msg.get_all("WWW-Authenticate") or [])
        conn.close()
        self.assertIn("basic realm=", challenges.lower())  # a browser asks
        self.assertIn("bearer", challenges.lower())
        self.assertEqual(self.request("GET", "/api/status", basic("alice", "Wonderland"))[0], 401)
        self.assertEqual(self.request("GET", "/api/status", basic("mallory", "wonderland"))[0], 401)
        self.status(headers=basic("alice", "wonderland"))
        self.status(headers=basic("bob", "old"))
        self.assertEqual(self.request("GET", "/metrics", {"Authorization": "Bearer " + "p" * 24})[0], 200)
        self.assertEqual(self.request("GET", "/metrics", {"Authorization": "Bearer " + "q" * 24})[0], 401)
        self.assertEqual(self.request("GET", "/metrics")[0], 401)
        self.assertEqual(self.request("GET", "/", basic("alice", "wonderland"))[0], 200)
        self.d.wait_output("HTTP login failed from 127.0.0.1:")

    def test_public_metrics(self) -> None:
        self.start({"metrics_public": True}, tokens=[{"token": "p" * 24, "name": "prometheus"}])
        self.assertEqual(self.request("GET", "/metrics")[0], 200)
        self.assertEqual(self.request("GET", "/api/status")[0], 401)

    def test_plain_text_password_is_a_config_error(self) -> None:
        pty = self.pty()
        config = {
            "ports": [{"serial": {"port": pty.path}, "servers": [tcp_server(free_port())]}],
            "users": [{"login": "alice", "password": "wonderland"}],
        }
        result = run([SER2TCP, "-c", self.config(config)])
        self.assertEqual(result.returncode, 1)
        (line,) = result.stderr.splitlines()
        self.assertIn("users[0].password: not a password hash", line)

    def test_open_api_on_a_public_address_warns(self) -> None:
        self.start({"address": "0.0.0.0"}, flags=())
        self.d.wait_output("needs no login (no users or tokens configured)")


class TlsAndFilterTests(HttpCase):
    def test_tls_with_client_certificates(self) -> None:
        pki = Pki(self.tempdir())
        self.start({"tls": pki.ssl_config(ca_certs=True)})
        ctx = pki.client_context(cert=(pki.client_cert, pki.client_key))
        conn = http.client.HTTPSConnection("localhost", self.http, context=ctx, timeout=15)
        conn.request("GET", "/api/status")
        self.assertEqual(conn.getresponse().status, 200)
        conn.close()
        without = http.client.HTTPSConnection(
            "localhost", self.http, context=pki.client_context(), timeout=15
        )
        with self.assertRaises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            without.request("GET", "/api/status")
            without.getresponse()
        without.close()

    def test_allow_list(self) -> None:
        self.start({"allow": ["127.0.0.1/32"]})
        self.status()
        code, _, _ = self.request("GET", "/api/status", source_address=("127.0.0.2", 0))
        self.assertEqual(code, 403)
        self.d.wait_output("HTTP request refused: 127.0.0.2 (not in allow)")


class MetricsTests(HttpCase):
    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        code, _, body = self.request("GET", "/metrics")
        self.assertEqual(code, 200)
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }

    def test_exposition(self) -> None:
        self.start()
        sock = self.connect(self.tcp)
        self.d.wait_output("Client connected")
        self.d.wait_holds(self.pty_.path)
        self.pty_.write(b"x" * 1000)
        recv_exactly(sock, 1000, self.deadline())
        samples = self.samples()
        port = (("port", "lab1"),)
        self.assertEqual(samples[("ser2tcp_port_open", port)], 1)
        self.assertEqual(samples[("ser2tcp_port_bytes_total", (("direction", "from_device"), *port))], 1000)
        self.assertEqual(samples[("ser2tcp_clients", (*port, ("protocol", "tcp")))], 1)
        self.assertEqual(samples[("ser2tcp_client_connections_total", (*port, ("protocol", "tcp")))], 1)
        self.assertEqual(samples[("ser2tcp_device_opens_total", port)], 1)
        self.assertTrue(any(name == "process_cpu_seconds_total" for name, _ in samples))
        sock.close()
        wait_until(lambda: self.samples()[("ser2tcp_port_open", port)] == 0, what="the port closed")


class LimitTests(HttpCase):
    def test_bounded_requests(self) -> None:
        self.start()
        code, _, _ = self.request("POST", "/api/status", body=b"x" * (65 * 1024))
        self.assertEqual(code, 413)
        try:
            code = self.request("GET", "/api/status", {"X-Big": "y" * 20000})[0]
        except (http.client.RemoteDisconnected, ConnectionResetError):
            code = 0  # closed without an answer: refused too
        self.assertIn(code, (0, 400, 431))
        slow = socket.create_connection(("127.0.0.1", self.http), timeout=20)
        self.addCleanup(slow.close)
        started = time.monotonic()
        slow.sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
        data, how = recv_until_closed(slow, self.deadline(20))
        self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data[:40])
        self.assertGreater(time.monotonic() - started, 9)
        self.status()  # still serving
