"""Admission and session policies with fakes: allow/deny, connection limits
with refuse and kick_oldest, read-only and write-only servers, half-close.

Real PortHub, real client factories and protocols; StringTransports for the
connections and an InstantLink for the device; the clock is a task.Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ser2tcp.admission import Admission, PortCount
from ser2tcp.config import ServerConfig
from ser2tcp.hub import PortHub
from ser2tcp.ipfilter import IpFilter
from ser2tcp.protocols import ClientFactory, RawClient, Refused
from ser2tcp.telnet import TelnetFactory
from tests.proto_helpers import GREETING, InstantLink
from tests.test_serial_control import LogCapture


def server(protocol: str = "tcp", **kw: Any) -> ServerConfig:
    return ServerConfig(**{"protocol": protocol, "address": "127.0.0.1", "port": 7000, **kw})


class Harness:
    """One port: a hub on an InstantLink, and factories sharing its count."""

    def __init__(self, port_limit: int = 0) -> None:
        self.clock = Clock()
        self.link = InstantLink()
        self.hub = PortHub(self.link, self.clock)
        self.count = PortCount(port_limit)

    def factory(self, config: ServerConfig, kind: type[ClientFactory] = ClientFactory) -> ClientFactory:
        return kind(self.hub, config, self.clock, Admission(config, self.count))

    def connect(self, factory: ClientFactory, host: str = "127.0.0.1", port: int = 40000) -> tuple[Any, Any]:
        """Accept a connection from ``host``: (protocol, transport)."""
        if ":" in host:
            address: Any = IPv6Address("TCP", host, port)
        else:
            address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def lose(self, protocol: Any) -> None:
        protocol.connectionLost(Failure(ConnectionDone()))


class AllowDenyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        rules = IpFilter.from_lists(allow=["127.0.0.0/8", "::1"], deny=["127.0.0.2/32"])
        self.factory = self.h.factory(server(ipfilter=rules))

    def test_allowed_peer_joins(self) -> None:
        protocol, transport = self.h.connect(self.factory)
        self.assertIsInstance(protocol, RawClient)
        self.assertIn(protocol, self.h.hub.sessions)
        self.assertEqual(self.h.link.opened, 1)

    def test_denied_peer_gets_nothing_and_opens_nothing(self) -> None:
        logs = LogCapture(self)
        for host in ("127.0.0.2", "10.0.0.1", "::2"):
            protocol, transport = self.h.connect(self.factory, host)
            self.assertIsInstance(protocol, Refused)
            self.assertEqual(transport.value(), b"")
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.h.link.opened, 0)
        self.assertEqual(self.h.hub.sessions, {})
        self.assertEqual(self.h.count.count, 0)
        text = logs.text(LogLevel.info)
        self.assertIn("Client denied: 127.0.0.2:40000 TCP to /dev/ttyFAKE1 (deny 127.0.0.2/32)", text)
        self.assertIn("Client denied: [::2]:40000 TCP to /dev/ttyFAKE1 (not in allow)", text)

    def test_denied_peer_does_not_disturb_a_client(self) -> None:
        client, transport = self.h.connect(self.factory)
        self.h.connect(self.factory, "127.0.0.2")
        self.h.link.protocol.dataReceived(b"still here")
        self.assertEqual(transport.value(), b"still here")
        self.assertFalse(transport.disconnecting)

    def test_tls_refusal_is_an_abort_without_a_byte(self) -> None:
        factory = self.h.factory(server("ssl", ipfilter=IpFilter.from_lists(deny=["127.0.0.0/8"])))
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.assertIsInstance(protocol, Refused)
        self.assertTrue(protocol.abort)
        self.assertIsNone(protocol.line)


class LimitTests(SynchronousTestCase):
    def test_server_limit_refuses_the_next_client(self) -> None:
        h = Harness()
        factory = h.factory(server(max_connections=1))
        first, first_transport = h.connect(factory)
        refused, transport = h.connect(factory, port=40001)
        self.assertIsInstance(refused, Refused)
        self.assertEqual(transport.value(), b"")  # a program gets no byte
        self.assertTrue(transport.disconnecting)
        self.assertFalse(first_transport.disconnecting)
        # The slot is free again once the first has gone.
        h.lose(first)
        again, _ = h.connect(factory, port=40002)
        self.assertIsInstance(again, RawClient)

    def test_telnet_client_is_told_why(self) -> None:
        h = Harness()
        factory = h.factory(server("telnet", max_connections=1), TelnetFactory)
        h.connect(factory)
        refused, transport = h.connect(factory, port=40001)
        self.assertEqual(transport.value(), b"ser2tcp: port busy: max_connections 1 reached\r\n")

    def test_port_limit_counts_every_server(self) -> None:
        h = Harness(port_limit=2)
        tcp = h.factory(server(max_connections=2))
        telnet = h.factory(server("telnet", max_connections=2), TelnetFactory)
        h.connect(tcp)
        h.connect(telnet, port=40001)
        for factory in (tcp, telnet):
            refused, transport = h.connect(factory, port=40002)
            self.assertIsInstance(refused, Refused)
        self.assertEqual(transport.value(), b"ser2tcp: port busy: the port's max_connections 2 reached\r\n")
        self.assertEqual(h.count.count, 2)

    def test_no_limit(self) -> None:
        h = Harness()
        factory = h.factory(server())
        for port in range(20):
            self.assertIsInstance(h.connect(factory, port=port + 1)[0], RawClient)
        self.assertEqual(len(h.hub.sessions), 20)


class KickOldestTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.factory = self.h.factory(
            server("telnet", max_connections=1, on_full="kick_oldest"), TelnetFactory
        )

    def test_newcomer_replaces_the_oldest(self) -> None:
        old, old_transport = self.h.connect(self.factory, port=1)
        new, new_transport = self.h.connect(self.factory, port=2)
        self.assertIsInstance(new, RawClient)
        self.assertEqual(list(self.h.hub.sessions), [new])
        self.assertTrue(
            old_transport.value().endswith(b"replaced by a new connection from 127.0.0.1:2 TELNET\r\n")
        )
        self.assertTrue(old_transport.disconnecting)
        self.h.link.protocol.dataReceived(b"to the new one")
        self.assertTrue(new_transport.value().endswith(b"to the new one"))
        self.assertNotIn(b"to the new one", old_transport.value())
        # The device stayed open from one client to the next.
        self.assertEqual(self.h.link.opened, 1)
        self.assertIsNotNone(self.h.link.device)
        # The kicked client's leaving changes nothing more.
        self.h.lose(old)
        self.assertEqual(list(self.h.hub.sessions), [new])
        self.assertEqual(self.h.count.count, 1)

    def test_the_oldest_goes_first(self) -> None:
        factory = self.h.factory(server(max_connections=2, on_full="kick_oldest"))
        a, a_transport = self.h.connect(factory, port=1)
        b, b_transport = self.h.connect(factory, port=2)
        c, _ = self.h.connect(factory, port=3)
        self.assertTrue(a_transport.disconnecting)
        self.assertFalse(b_transport.disconnecting)
        self.assertEqual(list(self.h.hub.sessions), [b, c])
        self.assertEqual(a_transport.value(), b"")  # raw clients are not told


class AccessTests(SynchronousTestCase):
    def test_read_only_input_is_discarded_and_counted(self) -> None:
        h = Harness()
        rw, _ = h.connect(h.factory(server()), port=1)
        ro_factory = h.factory(server("telnet", access="ro", port=7001), TelnetFactory)
        ro, ro_transport = h.connect(ro_factory, port=2)
        logs = LogCapture(self)
        ro.dataReceived(b"typed by an observer")
        rw.dataReceived(b"AT\r\n")
        ro.dataReceived(b"\xff\xfb\x03more")  # negotiation still works
        h.link.protocol.dataReceived(b"OK")
        h.lose(ro)
        self.assertEqual(h.link.device.value(), b"AT\r\n")
        self.assertTrue(ro_transport.value().startswith(GREETING))
        self.assertIn(b"OK", ro_transport.value())
        text = logs.text(LogLevel.info)
        self.assertIn("Client 127.0.0.1:2 TELNET: 24 byte(s) of input discarded (read-only server)", text)

    def test_write_only_is_sent_nothing(self) -> None:
        h = Harness()
        wo, wo_transport = h.connect(h.factory(server(access="wo")), port=1)
        rw, rw_transport = h.connect(h.factory(server(port=7001)), port=2)
        wo.dataReceived(b"feed")
        h.link.protocol.dataReceived(b"answer")
        self.assertEqual(h.link.device.value(), b"feed")
        self.assertEqual(wo_transport.value(), b"")
        self.assertEqual(rw_transport.value(), b"answer")


class HalfCloseTests(SynchronousTestCase):
    def test_half_closed_client_still_receives(self) -> None:
        h = Harness()
        client, transport = h.connect(h.factory(server(half_close=2.0)))
        client.dataReceived(b"AT\r\n")
        client.readConnectionLost()
        h.link.protocol.dataReceived(b"OK\r\n")
        self.assertEqual(transport.value(), b"OK\r\n")
        self.assertFalse(transport.disconnecting)
        h.clock.advance(1.9)
        self.assertFalse(transport.disconnecting)
        h.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.link.device.value(), b"AT\r\n")
        h.lose(client)
        self.assertEqual(h.hub.sessions, {})
        self.assertIsNone(h.link.device)  # the last client out closed it
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_zero_window_ends_at_the_fin(self) -> None:
        h = Harness()
        client, transport = h.connect(h.factory(server(half_close=0.0)))
        client.readConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_lost_during_the_window_cancels_the_timer(self) -> None:
        h = Harness()
        client, _ = h.connect(h.factory(server()))
        client.readConnectionLost()
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)
        h.lose(client)
        self.assertEqual(h.clock.getDelayedCalls(), [])
