"""The HTTP side of the real ``ser2tcp`` daemon: the JSON status, client
disconnection, authentication, TLS, allow/deny, Prometheus metrics and the
request limits, over loopback with a plain blocking HTTP client."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .helpers import (
    SER2TCP,
    TIMEOUT,
    Case,
    Daemon,
    Pty,
    free_port,
    port_config,
    port_name,
    recv_exactly,
    recv_until_closed,
    run,
    tcp_server,
    wait_until,
)
from .proto_helpers import Pki

PASSWORD = "correct horse battery"
TOKEN = "tok-0123456789abcdef"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    #: The client's own port, as the daemon's log names the peer.
    local_port: int

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str = "GET",
    path: str = "/api/status",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    host: str = "127.0.0.1",
    source: str | None = None,
    context: ssl.SSLContext | None = None,
    timeout: float = TIMEOUT,
) -> Reply:
    """One HTTP request on a fresh connection."""
    address = (source, 0) if source is not None else None
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection(
            host, port, timeout=timeout, source_address=address, context=context
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout, source_address=address)
    try:
        conn.connect()
        assert conn.sock is not None
        local_port = conn.sock.getsockname()[1]
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return Reply(answer.status, answer.msg, answer.read(), local_port)
    finally:
        conn.close()


def basic(login: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def run_hash_password(stdin: str) -> subprocess.CompletedProcess[str]:
    """``ser2tcp --hash-password`` reading ``stdin`` (a pipe, not a terminal)."""
    return subprocess.run(
        [SER2TCP, "--hash-password"], input=stdin, capture_output=True, text=True, timeout=30, check=False
    )


def hash_password(password: str) -> str:
    """The hash ``ser2tcp --hash-password`` prints for ``password``."""
    result = run_hash_password(password + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return lines[0]


def sha256_hash(password: str, salt: str = "s4lt") -> str:
    """A hash as the newer original ser2tcp (3.x) wrote them."""
    return f"sha256:{salt}:{hashlib.sha256((salt + password).encode()).hexdigest()}"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


class HttpCase(Case):
    """A daemon with one serial port on a pty and HTTP servers."""

    def start(
        self,
        servers: list[dict[str, Any]] | None = None,
        http: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> Daemon:
        """``ser2tcp -v``; ``self.tty``, ``self.port`` (a TCP server unless
        ``servers``) and ``self.http`` (an HTTP server on 127.0.0.1 unless
        ``http``) are set first; ``port`` adds keys to the port, the other
        keywords to the config's root."""
        if servers is None:
            servers = [tcp_server(self.port)]
        if http is None:
            http = [{"address": "127.0.0.1", "port": self.http}]
        config = {"ports": [port_config(self.tty.path, *servers)], "http": http}
        config["ports"][0].update(extra.pop("port", {}))
        config.update(extra)
        wanted = [s["port"] for s in servers if "port" in s] + [h["port"] for h in http]
        return self.ser2tcp(config, "-v", listen=wanted)

    def setUp(self) -> None:
        self.tty: Pty = self.pty()
        self.port = free_port()
        self.http = free_port()

    def client(self, daemon: Daemon, port: int | None = None, n: int = 1) -> socket.socket:
        """A TCP client joined to the port (the n-th client of the daemon)."""
        sock = self.connect(self.port if port is None else port)
        daemon.wait_output("Client connected", n)
        return sock

    def handshake(self, sock: socket.socket, data: bytes = b"?") -> None:
        """Client -> device: once it arrived, the device is open and flushed."""
        sock.sendall(data)
        self.assertEqual(self.tty.read(len(data)), data)

    def status(self, headers: dict[str, str] | None = None) -> dict[str, Any]:
        reply = request(self.http, headers=headers)
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(reply.headers.get("Content-Type"), "application/json")
        return dict(reply.json())

    def metrics(self, headers: dict[str, str] | None = None, port: int | None = None) -> Samples:
        reply = request(self.http if port is None else port, path="/metrics", headers=headers)
        self.assertEqual(reply.status, 200, reply.body)
        return parse_metrics(reply.body.decode())

    def clients(self, document: dict[str, Any], server: int = 0) -> list[dict[str, Any]]:
        return list(document["ports"][0]["servers"][server]["clients"])


class StatusTests(HttpCase):
    def test_status_after_known_traffic(self) -> None:
        telnet = free_port()
        servers = [
            tcp_server(self.port, max_connections=2),
            {"protocol": "telnet", "address": "127.0.0.1", "port": telnet, "access": "ro"},
        ]
        daemon = self.start(servers, port={"name": "bench-1"})
        before = self.status()
        (port,) = before["ports"]
        self.assertEqual(port["name"], "bench-1")
        self.assertEqual(port["state"], "closed")
        self.assertIsNone(port["device"])
        self.assertEqual((port["bytes_from_device"], port["bytes_to_device"]), (0, 0))

        sock = self.client(daemon)
        to_device = b"to the device: \x00\xff\r\n" * 3
        self.handshake(sock, to_device)
        from_device = bytes(range(256)) * 4 + b"tail"
        self.tty.write(from_device)
        self.assertEqual(recv_exactly(sock, len(from_device), self.deadline()), from_device)

        (port,) = self.status()["ports"]
        self.assertEqual(port["name"], "bench-1")
        self.assertEqual(port["state"], "open")
        self.assertEqual(port["device"], self.tty.path)
        self.assertEqual(port["bytes_from_device"], len(from_device))
        self.assertEqual(port["bytes_to_device"], len(to_device))
        self.assertEqual(port["settings"]["baudrate"], 9600)
        tcp, tel = port["servers"]
        self.assertEqual(
            {k: tcp[k] for k in ("protocol", "listen", "access", "max_connections")},
            {"protocol": "tcp", "listen": f"127.0.0.1:{self.port}", "access": "rw", "max_connections": 2},
        )
        self.assertEqual(
            {k: tel[k] for k in ("protocol", "listen", "access", "max_connections", "clients")},
            {
                "protocol": "telnet",
                "listen": f"127.0.0.1:{telnet}",
                "access": "ro",
                "max_connections": 0,
                "clients": [],
            },
        )
        (client,) = tcp["clients"]
        self.assertIsInstance(client["id"], int)
        self.assertEqual(client["peer"], f"127.0.0.1:{sock.getsockname()[1]}")
        self.assertEqual(client["protocol"], "tcp")
        self.assertEqual(client["bytes_sent"], len(from_device))
        self.assertEqual(client["bytes_received"], len(to_device))
        self.assertEqual(client["queued_bytes"], 0)
        self.assertRegex(client["connected_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_clients_appear_and_leave(self) -> None:
        daemon = self.start()
        first = self.client(daemon)
        self.handshake(first)
        second = self.client(daemon, n=2)
        document = self.status()
        peers = {c["peer"]: c["id"] for c in self.clients(document)}
        mine = {f"127.0.0.1:{s.getsockname()[1]}" for s in (first, second)}
        self.assertEqual(set(peers), mine)
        self.assertEqual(len(set(peers.values())), 2, "ids are unique")

        first.close()
        second_peer = f"127.0.0.1:{second.getsockname()[1]}"
        wait_until(
            lambda: [c["peer"] for c in self.clients(self.status())] == [second_peer],
            what="only the second client listed",
        )
        self.assertEqual(self.status()["ports"][0]["state"], "open")
        second.close()
        wait_until(lambda: self.clients(self.status()) == [], what="no client listed")
        wait_until(lambda: self.status()["ports"][0]["state"] == "closed", what="the port closed")
        self.assertIsNone(self.status()["ports"][0]["device"])


class DisconnectTests(HttpCase):
    def users(self) -> dict[str, Any]:
        return {
            "users": [{"login": "alice", "password": hash_password(PASSWORD)}],
            "tokens": [{"token": TOKEN, "name": "monitoring"}],
        }

    def test_delete_tcp_client(self) -> None:
        daemon = self.start(**self.users())
        sock = self.client(daemon)
        other = self.client(daemon, n=2)
        self.handshake(sock)
        auth = basic("alice", PASSWORD)
        (client,) = [
            c for c in self.clients(self.status(auth)) if c["peer"].endswith(f":{sock.getsockname()[1]}")
        ]
        reply = request(self.http, "DELETE", f"/api/clients/{client['id']}", headers=auth)
        self.assertEqual(reply.status, 204, reply.body)
        self.assertEqual(reply.body, b"")
        self.assertEqual(recv_until_closed(sock, self.deadline()), (b"", "eof"))
        peer = f"127.0.0.1:{sock.getsockname()[1]} TCP"
        output = daemon.wait_output(f"I: Client {peer}: disconnected over HTTP by user alice from 127.0.0.1")
        self.assertNotIn("Traceback", output)
        remaining = self.clients(self.status(auth))
        self.assertEqual([c["peer"] for c in remaining], [f"127.0.0.1:{other.getsockname()[1]}"])
        # The other client is still served.
        self.tty.write(b"still here")
        self.assertEqual(recv_exactly(other, 10, self.deadline()), b"still here")

    def test_delete_with_a_token_names_the_token(self) -> None:
        daemon = self.start(**self.users())
        sock = self.client(daemon)
        (client,) = self.clients(self.status(bearer(TOKEN)))
        reply = request(self.http, "DELETE", f"/api/clients/{client['id']}", headers=bearer(TOKEN))
        self.assertEqual(reply.status, 204)
        self.assertEqual(recv_until_closed(sock, self.deadline())[1], "eof")
        daemon.wait_output("disconnected over HTTP by token monitoring from 127.0.0.1")

    def test_delete_telnet_client_tells_the_person(self) -> None:
        servers = [{"protocol": "telnet", "address": "127.0.0.1", "port": self.port}]
        daemon = self.start(servers)
        sock = self.client(daemon)
        (client,) = self.clients(self.status())
        self.assertEqual(client["protocol"], "telnet")
        reply = request(self.http, "DELETE", f"/api/clients/{client['id']}")
        self.assertEqual(reply.status, 204)
        data, how = recv_until_closed(sock, self.deadline())
        self.assertEqual(how, "eof")
        lines = [line for line in data.split(b"\r\n") if b"disconnected by" in line]
        self.assertEqual(len(lines), 1, data)
        self.assertIn(b"over HTTP", lines[0])
        daemon.wait_output("disconnected over HTTP by an unauthenticated user from 127.0.0.1")

    def test_unknown_client_is_404(self) -> None:
        daemon = self.start()
        sock = self.client(daemon)
        self.handshake(sock)
        (client,) = self.clients(self.status())
        for path in (f"/api/clients/{client['id'] + 1000}", "/api/clients/abc", "/api/clients/-1"):
            reply = request(self.http, "DELETE", path)
            self.assertEqual(reply.status, 404, path)
            self.assertEqual(reply.json(), {"error": "no such client"})
        self.assertEqual([c["id"] for c in self.clients(self.status())], [client["id"]])
        self.tty.write(b"unharmed")
        self.assertEqual(recv_exactly(sock, 8, self.deadline()), b"unharmed")
        self.assertNotIn("disconnected over HTTP", daemon.output())

    def test_delete_twice_counts_one_kick(self) -> None:
        """A client that is slow to take its last data is still being
        disconnected: a second DELETE must not disconnect (and count) it again."""
        daemon = self.start([tcp_server(self.port, send_timeout=30)])
        sock = self.connect(self.port, rcvbuf=4096)
        daemon.wait_output("Client connected")
        self.handshake(sock)
        self.tty.write(os.urandom(8 << 20), self.deadline(30))
        wait_until(
            lambda: self.clients(self.status())[0]["queued_bytes"] > 0,
            what="data queued for the client that does not read",
        )
        (client,) = self.clients(self.status())
        path = f"/api/clients/{client['id']}"
        self.assertEqual(request(self.http, "DELETE", path).status, 204)
        second = request(self.http, "DELETE", path).status
        kicked = sample(
            self.metrics(), "ser2tcp_client_drops_total", port=port_name(self.tty.path), reason="kicked"
        )
        self.assertEqual(
            (kicked, daemon.output().count("disconnected over HTTP")),
            (1.0, 1),
            f"second DELETE answered {second}",
        )


class AuthTests(HttpCase):
    def setUp(self) -> None:
        super().setUp()
        self.hash = hash_password(PASSWORD)
        self.public = free_port()
        self.daemon = self.start(
            http=[
                {"address": "127.0.0.1", "port": self.http},
                {"address": "127.0.0.1", "port": self.public, "metrics_public": True},
            ],
            users=[
                {"login": "alice", "password": self.hash},
                {"login": "bob", "password": sha256_hash("old")},
            ],
            tokens=[{"token": TOKEN, "name": "monitoring"}],
        )

    def assertChallenged(self, reply: Reply) -> None:
        self.assertEqual(reply.status, 401, reply.body)
        challenges = [c.lower() for c in reply.headers.get_all("WWW-Authenticate") or []]
        self.assertIn('basic realm="ser2tcp"', challenges)
        self.assertNotIn(b'"ports"', reply.body)

    def test_hash_password_makes_salted_scrypt_hashes(self) -> None:
        self.assertTrue(self.hash.startswith("scrypt$"), self.hash)
        self.assertNotIn(PASSWORD, self.hash)
        self.assertNotEqual(hash_password(PASSWORD), self.hash)
        empty = run_hash_password("\n")
        self.assertEqual((empty.returncode, empty.stdout), (1, ""))

    def test_no_credentials(self) -> None:
        for method, path in (
            ("GET", "/"),
            ("GET", "/api/status"),
            ("GET", "/metrics"),
            ("DELETE", "/api/clients/1"),
        ):
            self.assertChallenged(request(self.http, method, path))

    def test_right_password_from_hash_password(self) -> None:
        document = request(self.http, headers=basic("alice", PASSWORD)).json()
        self.assertEqual(document["ports"][0]["name"], port_name(self.tty.path))
        page = request(self.http, path="/", headers=basic("alice", PASSWORD))
        self.assertEqual(page.status, 200)
        self.assertIn(b"api/status", page.body)
        # Verified answers are remembered: asking again is no different.
        self.assertEqual(request(self.http, headers=basic("alice", PASSWORD)).status, 200)

    def test_wrong_password_is_logged_with_the_peer(self) -> None:
        reply = request(self.http, headers=basic("alice", PASSWORD + "!"))
        self.assertChallenged(reply)
        self.daemon.wait_output(f"I: HTTP login failed from 127.0.0.1:{reply.local_port}: login 'alice'")

    def test_unknown_login_is_logged(self) -> None:
        reply = request(self.http, headers=basic("mallory", PASSWORD))
        self.assertChallenged(reply)
        self.daemon.wait_output(f"I: HTTP login failed from 127.0.0.1:{reply.local_port}: login 'mallory'")

    def test_malformed_basic_is_401(self) -> None:
        for value in ("Basic !!!not-base64", "Basic " + base64.b64encode(b"no colon").decode(), "Digest x=1"):
            self.assertChallenged(request(self.http, headers={"Authorization": value}))
        self.assertEqual(request(self.http, headers=basic("alice", PASSWORD)).status, 200)

    def test_bearer_token(self) -> None:
        self.assertEqual(request(self.http, headers=bearer(TOKEN)).status, 200)
        reply = request(self.http, headers=bearer(TOKEN[:-1] + "X"))
        self.assertChallenged(reply)
        self.daemon.wait_output(f"I: HTTP login failed from 127.0.0.1:{reply.local_port}: an unknown token")
        self.assertChallenged(request(self.http, headers={"Authorization": "Bearer"}))
        # A token is not a password, nor a password a token.
        self.assertChallenged(request(self.http, headers=basic("monitoring", TOKEN)))
        self.assertChallenged(request(self.http, headers=bearer(PASSWORD)))

    def test_metrics_public_only_where_configured(self) -> None:
        self.assertChallenged(request(self.http, path="/metrics"))
        samples = self.metrics(bearer(TOKEN))
        self.assertEqual(sample(samples, "ser2tcp_port_open", port=port_name(self.tty.path)), 0.0)
        public = self.metrics(port=self.public)
        self.assertEqual(sample(public, "ser2tcp_port_open", port=port_name(self.tty.path)), 0.0)
        # Only /metrics is public there.
        self.assertChallenged(request(self.public))
        self.assertChallenged(request(self.public, path="/"))
        self.assertChallenged(request(self.public, "DELETE", "/api/clients/1"))

    def test_unauthenticated_delete_leaves_the_client(self) -> None:
        sock = self.client(self.daemon)
        self.handshake(sock)
        (client,) = self.clients(self.status(bearer(TOKEN)))
        self.assertChallenged(request(self.http, "DELETE", f"/api/clients/{client['id']}"))
        self.assertChallenged(request(self.public, "DELETE", f"/api/clients/{client['id']}"))
        self.tty.write(b"still")
        self.assertEqual(recv_exactly(sock, 5, self.deadline()), b"still")
        self.assertEqual(len(self.clients(self.status(bearer(TOKEN)))), 1)

    def test_sha256_hash_of_3x_works_with_a_warning(self) -> None:
        self.assertEqual(request(self.http, headers=basic("bob", "old")).status, 200)
        self.assertChallenged(request(self.http, headers=basic("bob", "older")))
        output = self.daemon.output()
        warnings = [line for line in output.splitlines() if "users[1].password" in line]
        self.assertEqual(len(warnings), 1, output)
        self.assertTrue(warnings[0].startswith("W: "), warnings[0])
        self.assertIn("sha256", warnings[0])
        self.assertIn("--hash-password", warnings[0])
        self.assertNotIn("users[0].password", output)


class ConfigTests(HttpCase):
    def test_plain_text_password_is_refused(self) -> None:
        path = self.config(
            {
                "ports": [port_config(self.tty.path, tcp_server(self.port))],
                "http": {"address": "127.0.0.1", "port": self.http},
                "users": [{"login": "alice", "password": "hunter22"}],
            }
        )
        result = run([SER2TCP, "-c", path, "-v"])
        self.assertEqual(result.returncode, 1, result.stderr)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith(f"{path}: users[0].password: "), lines[0])
        self.assertNotIn("hunter22", result.stderr)
        self.assertEqual(result.stdout, "")

    def test_open_api_on_a_public_address_is_warned_about(self) -> None:
        anywhere = free_port("0.0.0.0")
        daemon = self.start(http=[{"address": "0.0.0.0", "port": anywhere}])
        self.assertEqual(request(anywhere).status, 200)  # started: startup logging is done
        lines = [line for line in daemon.output().splitlines() if "needs no login" in line]
        self.assertEqual(len(lines), 1, daemon.output())
        self.assertTrue(lines[0].startswith("W: http[0]: "), lines[0])
        self.assertIn(f"0.0.0.0:{anywhere}", lines[0])

    def test_no_warning_on_loopback_or_with_users(self) -> None:
        daemon = self.start()
        self.assertEqual(request(self.http).status, 200)
        self.assertNotIn("needs no login", daemon.output())
        daemon.stop()
        anywhere = free_port("0.0.0.0")
        users = [{"login": "alice", "password": sha256_hash("x")}]
        daemon = self.start(http=[{"address": "0.0.0.0", "port": anywhere}], users=users)
        self.assertEqual(request(anywhere, headers=basic("alice", "x")).status, 200)
        self.assertNotIn("needs no login", daemon.output())


class TlsTests(HttpCase):
    def setUp(self) -> None:
        super().setUp()
        self.pki = Pki(self.tempdir())

    def start_tls(self, servers: list[dict[str, Any]] | None = None) -> Daemon:
        tls = {"address": "127.0.0.1", "port": self.http, "ssl": self.pki.ssl_config(ca_certs=True)}
        return self.start(servers, http=[tls])

    def check_client_certificates(self, daemon: Daemon) -> None:
        good = self.pki.client_context(cert=(self.pki.client_cert, self.pki.client_key))
        reply = request(self.http, context=good)
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(reply.json()["ports"][0]["name"], port_name(self.tty.path))
        for what, context in (
            ("no client certificate", self.pki.client_context()),
            (
                "another CA's client",
                self.pki.client_context(cert=(self.pki.other_client_cert, self.pki.other_client_key)),
            ),
        ):
            try:
                reply = request(self.http, context=context)
            except TimeoutError as e:
                self.fail(f"{what}: timed out instead of failing: {e!r}")
            except (ssl.SSLError, ConnectionError, http.client.HTTPException):
                pass
            else:
                self.fail(f"{what}: answered {reply.status}")
        # Plain HTTP on the TLS server gets no status document.
        try:
            plain = request(self.http)
        except (ConnectionError, http.client.HTTPException):
            pass
        else:
            self.assertNotIn(b'"ports"', plain.body)
        self.assertEqual(request(self.http, context=good).status, 200)
        self.assertTrue(daemon.running())

    def test_tls_with_client_certificates(self) -> None:
        """The HTTP server alone needs TLS (the port's server is plain TCP)."""
        self.check_client_certificates(self.start_tls())

    def test_tls_beside_a_tls_port_server(self) -> None:
        tls_port = {
            "protocol": "ssl",
            "address": "127.0.0.1",
            "port": self.port,
            "ssl": self.pki.ssl_config(),
        }
        self.check_client_certificates(self.start_tls([tls_port]))


class FilterTests(HttpCase):
    def test_allow_refuses_other_addresses(self) -> None:
        daemon = self.start(http=[{"address": "127.0.0.1", "port": self.http, "allow": ["127.0.0.1/32"]}])
        refused = request(self.http, source="127.0.0.2")
        self.assertEqual(refused.status, 403)
        self.assertNotIn(b'"ports"', refused.body)
        self.assertEqual(request(self.http, "DELETE", "/api/clients/1", source="127.0.0.2").status, 403)
        self.assertEqual(request(self.http, path="/metrics", source="127.0.0.2").status, 403)
        self.assertEqual(request(self.http, source="127.0.0.1").status, 200)
        daemon.wait_output("HTTP request refused: 127.0.0.2")

    def test_deny_before_credentials(self) -> None:
        http = [{"address": "127.0.0.1", "port": self.http, "deny": ["127.0.0.2/32"], "metrics_public": True}]
        self.start(http=http, tokens=[{"token": TOKEN, "name": "t"}])
        self.assertEqual(request(self.http, headers=bearer(TOKEN), source="127.0.0.2").status, 403)
        self.assertEqual(request(self.http, path="/metrics", source="127.0.0.2").status, 403)
        self.assertEqual(request(self.http, source="127.0.0.2").status, 403)
        self.assertEqual(request(self.http, headers=bearer(TOKEN), source="127.0.0.1").status, 200)


class MetricsTests(HttpCase):
    def test_port_counters(self) -> None:
        daemon = self.start()
        name = port_name(self.tty.path)
        samples = self.metrics()
        self.assertEqual(sample(samples, "ser2tcp_port_open", port=name), 0.0)
        self.assertEqual(sample(samples, "ser2tcp_clients", port=name, protocol="tcp"), 0.0)
        self.assertIsNotNone(sample(samples, "process_cpu_seconds_total"))
        self.assertIsNotNone(sample(samples, "process_resident_memory_bytes"))

        sock = self.client(daemon)
        self.handshake(sock, b"12345")
        data = os.urandom(3000)
        self.tty.write(data)
        self.assertEqual(recv_exactly(sock, len(data), self.deadline()), data)
        samples = self.metrics()
        self.assertEqual(sample(samples, "ser2tcp_port_open", port=name), 1.0)
        self.assertEqual(
            sample(samples, "ser2tcp_port_bytes_total", port=name, direction="from_device"), 3000.0
        )
        self.assertEqual(sample(samples, "ser2tcp_port_bytes_total", port=name, direction="to_device"), 5.0)
        self.assertEqual(sample(samples, "ser2tcp_clients", port=name, protocol="tcp"), 1.0)
        self.assertEqual(sample(samples, "ser2tcp_client_connections_total", port=name, protocol="tcp"), 1.0)
        self.assertEqual(sample(samples, "ser2tcp_device_opens_total", port=name), 1.0)

        sock.close()
        wait_until(
            lambda: sample(self.metrics(), "ser2tcp_port_open", port=name) == 0.0, what="port_open back to 0"
        )
        samples = self.metrics()
        self.assertEqual(sample(samples, "ser2tcp_clients", port=name, protocol="tcp"), 0.0)
        self.assertEqual(sample(samples, "ser2tcp_client_connections_total", port=name, protocol="tcp"), 1.0)
        self.assertEqual(
            sample(samples, "ser2tcp_port_bytes_total", port=name, direction="from_device"), 3000.0
        )

    def test_kick_oldest_is_counted(self) -> None:
        daemon = self.start(
            [tcp_server(self.port, max_connections=1, on_full="kick_oldest")], port={"name": "k"}
        )
        first = self.client(daemon)
        self.handshake(first)
        self.assertIsNone(sample(self.metrics(), "ser2tcp_client_drops_total", port="k", reason="kicked"))
        second = self.client(daemon, n=2)
        self.assertEqual(recv_until_closed(first, self.deadline())[1], "eof")
        self.handshake(second, b"second")
        samples = self.metrics()
        self.assertEqual(sample(samples, "ser2tcp_client_drops_total", port="k", reason="kicked"), 1.0)
        self.assertEqual(sample(samples, "ser2tcp_client_connections_total", port="k", protocol="tcp"), 2.0)
        self.assertEqual(sample(samples, "ser2tcp_clients", port="k", protocol="tcp"), 1.0)
        self.assertEqual(sample(samples, "ser2tcp_port_open", port="k"), 1.0)
        (client,) = self.clients(self.status())
        self.assertEqual(client["peer"], f"127.0.0.1:{second.getsockname()[1]}")


class LimitTests(HttpCase):
    """Requests that are too slow or too big get a 4xx, never a 500, and the
    daemon keeps serving."""

    def raw(self, data: bytes, timeout: float = TIMEOUT) -> tuple[bytes, str, float]:
        """Send ``data`` on a fresh connection; what came back until the
        daemon closed it, how, and after how many seconds."""
        sock = self.connect(self.http)
        started = time.monotonic()
        sock.sendall(data)
        answer, how = recv_until_closed(sock, started + timeout)
        return answer, how, time.monotonic() - started

    def assertStatus(self, answer: bytes, *codes: int) -> None:
        match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
        self.assertIsNotNone(match, f"no status line in {answer[:200]!r}")
        assert match is not None
        self.assertIn(int(match.group(1)), codes, answer[:200])

    def assertServing(self, daemon: Daemon) -> None:
        self.assertEqual(request(self.http).status, 200)
        output = daemon.output()
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Unhandled", output)

    def test_headers_that_never_finish(self) -> None:
        daemon = self.start()
        sock = self.connect(self.http)
        started = time.monotonic()
        sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        # Meanwhile others are served at once.
        self.assertEqual(request(self.http).status, 200)
        answer, how = recv_until_closed(sock, started + 15)
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 13, "the deadline is 10 s")
        self.assertGreater(elapsed, 5, "a request is given its 10 s")
        if answer:
            self.assertStatus(answer, 408)
        self.assertServing(daemon)

    def test_body_too_large(self) -> None:
        daemon = self.start()
        header = b"DELETE /api/clients/1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
        answer, how, _ = self.raw(header % (64 * 1024 + 1))
        self.assertStatus(answer, 413)
        # Within the limit: an ordinary answer.
        small = request(self.http, "DELETE", "/api/clients/1", body=b"x" * 1000)
        self.assertEqual(small.status, 404)
        self.assertServing(daemon)

    def test_chunked_body_too_large(self) -> None:
        daemon = self.start()
        chunk = b"2000\r\n" + b"y" * 0x2000 + b"\r\n"
        head = b"POST /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        answer, how, _ = self.raw(head + chunk * 9)  # 72 KiB
        self.assertStatus(answer, 413)
        self.assertServing(daemon)

    def test_oversized_header_line(self) -> None:
        daemon = self.start()
        answer, how, _ = self.raw(
            b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        )
        self.assertStatus(answer, 400, 431)
        self.assertServing(daemon)

    def test_oversized_headers(self) -> None:
        daemon = self.start()
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(200))
        answer, how, _ = self.raw(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n")
        self.assertStatus(answer, 400, 431)
        self.assertServing(daemon)

    def test_odd_requests_are_never_500(self) -> None:
        daemon = self.start()
        for method, path in (
            ("GET", "/nope"),
            ("GET", "/api"),
            ("GET", "/api/clients"),
            ("POST", "/api/status"),
            ("PUT", "/api/clients/1"),
            ("GET", "/api/clients/1"),
            ("DELETE", "/api/status"),
            ("GET", "/api/status/extra"),
            ("GET", "/%ff%00"),
        ):
            reply = request(self.http, method, path)
            self.assertNotEqual(reply.status, 500, (method, path, reply.body[:200]))
            self.assertNotIn(b"Traceback", reply.body)
        self.assertServing(daemon)
