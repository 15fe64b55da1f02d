"""The HTTP side with fakes: password hashes, the credential checker, the
status document, the metrics collector and the request limits."""

from __future__ import annotations

import hashlib
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.cred import credentials, error
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from ser2tcp import passwords
from ser2tcp.admission import Admission
from ser2tcp.config import PortConfig, SerialConfig, ServerConfig
from ser2tcp.config_http import TokenConfig, UserConfig
from ser2tcp.hub import PortHub
from ser2tcp.metrics import make_registry
from ser2tcp.protocols import ClientFactory
from ser2tcp.status import find_client, status_document
from ser2tcp.web import MAX_BODY, REQUEST_TIMEOUT, LimitedChannel
from ser2tcp.webauth import Checker, TokenCredentials
from tests.proto_helpers import InstantLink


class PasswordTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        stored = passwords.hash_password("correct horse")
        self.assertIsNone(passwords.check_format(stored))
        self.assertTrue(stored.startswith("scrypt$16384$8$1$"))
        self.assertTrue(passwords.verify(stored, "correct horse"))
        self.assertFalse(passwords.verify(stored, "correct horse "))
        self.assertNotEqual(passwords.hash_password("correct horse"), stored)  # salted

    def test_sha256_of_the_newer_original(self) -> None:
        salt = "00112233445566778899aabbccddeeff"
        stored = f"sha256:{salt}:{hashlib.sha256((salt + 'pw').encode()).hexdigest()}"
        self.assertIsNone(passwords.check_format(stored))
        self.assertTrue(passwords.is_weak(stored))
        self.assertTrue(passwords.verify(stored, "pw"))
        self.assertFalse(passwords.verify(stored, "PW"))

    def test_plain_text_is_not_a_hash(self) -> None:
        for text in ("hunter2", "", "scrypt$1$2", "sha256:x:y", "scrypt$3$8$1$AAAA$AAAA"):
            self.assertIsNotNone(passwords.check_format(text), text)


class CheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.checker = Checker(
            [UserConfig("alice", passwords.hash_password("wonderland"))],
            [TokenConfig("t" * 20, "monitoring")],
        )

    def login(self, creds: Any) -> Any:
        return self.checker.requestAvatarId(creds)

    def test_users_and_tokens(self) -> None:
        ok = credentials.UsernamePassword(b"alice", b"wonderland")
        ok.peer = "127.0.0.1:1"  # type: ignore[attr-defined]
        self.assertEqual(self.successResultOf(self.login(ok)), b"user alice")
        self.assertEqual(self.successResultOf(self.login(ok)), b"user alice")  # remembered
        for login, password in ((b"alice", b"Wonderland"), (b"bob", b"wonderland")):
            bad = credentials.UsernamePassword(login, password)
            bad.peer = "127.0.0.1:2"  # type: ignore[attr-defined]
            self.failureResultOf(self.login(bad), error.UnauthorizedLogin)
        token = TokenCredentials(b"t" * 20, "127.0.0.1:3")
        self.assertEqual(self.successResultOf(self.login(token)), b"token monitoring")
        self.failureResultOf(self.login(TokenCredentials(b"t" * 19, "x")), error.UnauthorizedLogin)

    def test_unknown_login_costs_a_hash_too(self) -> None:
        checked: list[str] = []
        real = passwords.verify

        def counting(stored: str, password: str) -> bool:
            checked.append(stored)
            return real(stored, password)

        self.patch(passwords, "verify", counting)
        bad = credentials.UsernamePassword(b"mallory", b"x")
        bad.peer = "127.0.0.1:2"  # type: ignore[attr-defined]
        self.failureResultOf(self.login(bad), error.UnauthorizedLogin)
        self.assertEqual(checked, [passwords.DUMMY])


class Ports:
    """One port with a TCP server, a client connected and some traffic."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1796425502.5)
        self.config = PortConfig(
            serial=SerialConfig(settings={"port": "/dev/ttyFAKE1", "baudrate": 115200}),
            servers=(),
            name="lab1",
        )
        self.server = ServerConfig(protocol="tcp", address="127.0.0.1", port=7000, max_connections=3)
        self.link = InstantLink()
        self.hub = PortHub(self.link, self.clock, self.config)
        self.admissions = [Admission(self.server)]
        factory = ClientFactory(self.hub, self.server, self.clock, self.admissions[0])
        self.client = factory.buildProtocol(IPv4Address("TCP", "10.0.0.5", 41234))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.5", 41234))
        self.client.makeConnection(self.transport)
        self.link.protocol.dataReceived(b"hello!")
        self.client.dataReceived(b"AT\r\n")


class StatusTests(SynchronousTestCase):
    def test_document(self) -> None:
        ports = Ports()
        doc = status_document([ports], started_at=1796425500.0)  # type: ignore[list-item]
        self.assertEqual(doc["started_at"], "2026-12-04T23:05:00.000Z")
        (port,) = doc["ports"]
        self.assertEqual(
            {k: port[k] for k in ("name", "state", "bytes_from_device", "bytes_to_device", "opened_at")},
            {
                "name": "lab1",
                "state": "open",
                "bytes_from_device": 6,
                "bytes_to_device": 4,
                "opened_at": "2026-12-04T23:05:02.500Z",
            },
        )
        self.assertEqual(port["device"], None)  # InstantLink names no path
        self.assertEqual(port["settings"]["dtr"], True)
        (server,) = port["servers"]
        self.assertEqual(
            (server["protocol"], server["listen"], server["access"], server["max_connections"]),
            ("tcp", "127.0.0.1:7000", "rw", 3),
        )
        (client,) = server["clients"]
        self.assertEqual(
            client,
            {
                "id": ports.client.id,
                "peer": "10.0.0.5:41234",
                "protocol": "tcp",
                "connected_at": "2026-12-04T23:05:02.500Z",
                "bytes_sent": 6,
                "bytes_received": 4,
                "queued_bytes": 0,
            },
        )
        self.assertIs(find_client([ports], ports.client.id), ports.client)  # type: ignore[list-item]
        self.assertIsNone(find_client([ports], -1))  # type: ignore[list-item]

    def test_closed_port_shows_the_configured_settings(self) -> None:
        ports = Ports()
        ports.client.connectionLost(None)
        (port,) = status_document([ports], 0.0)["ports"]  # type: ignore[list-item]
        self.assertEqual(port["state"], "closed")
        self.assertEqual(port["settings"]["baudrate"], 115200)
        self.assertEqual(port["servers"][0]["clients"], [])


class MetricsTests(SynchronousTestCase):
    def test_exposition(self) -> None:
        ports = Ports()
        ports.hub.stats.drops["kicked"] += 2
        text = generate_latest(make_registry(lambda: [ports])).decode()  # type: ignore[list-item]
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        port = (("port", "lab1"),)
        self.assertEqual(samples[("ser2tcp_port_open", port)], 1)
        self.assertEqual(samples[("ser2tcp_port_bytes_total", (("direction", "from_device"), *port))], 6)
        self.assertEqual(samples[("ser2tcp_port_bytes_total", (("direction", "to_device"), *port))], 4)
        self.assertEqual(samples[("ser2tcp_clients", (*port, ("protocol", "tcp")))], 1)
        self.assertEqual(samples[("ser2tcp_client_connections_total", (*port, ("protocol", "tcp")))], 1)
        self.assertEqual(samples[("ser2tcp_client_drops_total", (*port, ("reason", "kicked")))], 2)
        self.assertEqual(samples[("ser2tcp_device_opens_total", port)], 1)
        self.assertEqual(samples[("ser2tcp_device_open_failures_total", port)], 0)
        self.assertEqual(samples[("ser2tcp_device_losses_total", port)], 0)
        self.assertIn("process_cpu_seconds_total", text)

    def test_page_renders_in_the_calling_thread(self) -> None:
        """The exposition is made during render(), in the reactor's thread
        (no thread pool reading the ports while the reactor changes them);
        OpenMetrics when the scraper asks for it."""
        from twisted.web.test.requesthelper import DummyRequest

        from ser2tcp.web import MetricsPage

        ports = Ports()
        page = MetricsPage(make_registry(lambda: [ports]))  # type: ignore[list-item]
        request = DummyRequest([b""])
        body = page.render(request)
        self.assertIsInstance(body, bytes)
        self.assertIn(b'ser2tcp_port_open{port="lab1"} 1.0', body)
        self.assertTrue(request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"accept", [b"application/openmetrics-text; version=1.0.0"])
        body = page.render(request)
        self.assertTrue(body.endswith(b"# EOF\n"))


class ChannelLimitTests(SynchronousTestCase):
    def channel(self) -> tuple[LimitedChannel, StringTransport, Clock]:
        clock = Clock()
        channel = LimitedChannel()
        channel.callLater = clock.callLater  # type: ignore[method-assign]
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport, clock

    def test_request_not_complete_in_time(self) -> None:
        channel, transport, clock = self.channel()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(9):  # a slow drip does not extend the deadline
            clock.advance(1)
            channel.dataReceived(b"X-a: b\r\n")
        clock.advance(REQUEST_TIMEOUT - 9)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(transport.disconnecting)

    def test_body_too_large(self) -> None:
        channel, transport, clock = self.channel()
        channel.dataReceived(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_chunked_body_too_large(self) -> None:
        channel, transport, clock = self.channel()
        channel.dataReceived(b"POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (8192, b"x" * 8192)
        for _ in range(10):
            channel.dataReceived(chunk)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))


class SiteTimerTests(SynchronousTestCase):
    def test_a_started_site_arms_no_timer(self) -> None:
        """Twisted's HTTP factory refreshes its access log's date every
        second; ours has no access log and must not wake up idle."""
        from twisted.web import resource

        from ser2tcp.config_http import HttpConfig
        from ser2tcp.web import build_site

        clock = Clock()
        listen = ServerConfig("tcp", address="127.0.0.1", port=8080)
        site = build_site(HttpConfig(listen), resource.Resource(), None, clock)
        site.doStart()
        self.assertEqual(clock.getDelayedCalls(), [])
        site.doStop()
