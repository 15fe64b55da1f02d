"""Tests for ser2tcp.ipfilter: which peer addresses allow/deny let in."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ser2tcp.ipfilter import IpFilter, parse_address, parse_network


class ParseTests(SynchronousTestCase):
    def test_networks(self) -> None:
        self.assertEqual(str(parse_network("10.0.0.0/8")), "10.0.0.0/8")
        self.assertEqual(str(parse_network("::1")), "::1/128")
        self.assertEqual(str(parse_network("2001:db8::/32")), "2001:db8::/32")
        self.assertEqual(str(parse_network("192.168.1.7")), "192.168.1.7/32")

    def test_host_bits_allowed(self) -> None:
        self.assertEqual(str(parse_network("10.1.2.3/8")), "10.0.0.0/8")

    def test_mapped_network_is_ipv4(self) -> None:
        self.assertEqual(str(parse_network("::ffff:10.0.0.0/104")), "10.0.0.0/8")
        self.assertEqual(str(parse_network("::ffff:10.1.2.3")), "10.1.2.3/32")

    def test_invalid(self) -> None:
        for text in ("10.0.0.300/8", "foo", "", "10.0.0.0/33", "::1/129", "1.2.3.4/8/8"):
            with self.assertRaises(ValueError) as caught:
                parse_network(text)
            self.assertIn(repr(text), str(caught.exception))

    def test_addresses(self) -> None:
        self.assertEqual(str(parse_address("::ffff:10.1.2.3")), "10.1.2.3")
        self.assertEqual(str(parse_address("fe80::1%eth0")), "fe80::1")
        self.assertIsNone(parse_address("/run/x.sock"))
        self.assertIsNone(parse_address(""))


class FilterTests(SynchronousTestCase):
    def test_no_rules_lets_everyone_in(self) -> None:
        self.assertFalse(IpFilter().active)
        self.assertIsNone(IpFilter().refusal("203.0.113.9"))

    def test_allow(self) -> None:
        rules = IpFilter.from_lists(allow=["127.0.0.1/32", "10.0.0.0/8"])
        self.assertIsNone(rules.refusal("127.0.0.1"))
        self.assertIsNone(rules.refusal("10.255.255.255"))
        self.assertEqual(rules.refusal("127.0.0.2"), "not in allow")
        self.assertEqual(rules.refusal("11.0.0.0"), "not in allow")
        self.assertEqual(rules.refusal("::1"), "not in allow")

    def test_cidr_edges(self) -> None:
        rules = IpFilter.from_lists(allow=["192.168.4.0/22"])
        self.assertIsNone(rules.refusal("192.168.4.0"))
        self.assertIsNone(rules.refusal("192.168.7.255"))
        self.assertEqual(rules.refusal("192.168.3.255"), "not in allow")
        self.assertEqual(rules.refusal("192.168.8.0"), "not in allow")

    def test_deny_wins_over_allow(self) -> None:
        rules = IpFilter.from_lists(allow=["10.0.0.0/8"], deny=["10.0.5.0/24"])
        self.assertIsNone(rules.refusal("10.0.4.1"))
        self.assertEqual(rules.refusal("10.0.5.1"), "deny 10.0.5.0/24")

    def test_deny_alone(self) -> None:
        rules = IpFilter.from_lists(deny=["2001:db8::/32"])
        self.assertEqual(rules.refusal("2001:db8::5"), "deny 2001:db8::/32")
        self.assertIsNone(rules.refusal("2001:db9::5"))
        self.assertIsNone(rules.refusal("10.0.0.1"))

    def test_ipv4_mapped_peer_matches_ipv4_rules(self) -> None:
        # What a "::" listener sees of an IPv4 client.
        rules = IpFilter.from_lists(allow=["10.0.0.0/8"], deny=["10.9.0.0/16"])
        self.assertIsNone(rules.refusal("::ffff:10.1.2.3"))
        self.assertEqual(rules.refusal("::ffff:10.9.0.1"), "deny 10.9.0.0/16")
        self.assertEqual(rules.refusal("::ffff:11.1.2.3"), "not in allow")

    def test_ipv6(self) -> None:
        rules = IpFilter.from_lists(allow=["::1"])
        self.assertIsNone(rules.refusal("::1"))
        self.assertEqual(rules.refusal("::2"), "not in allow")
        self.assertEqual(rules.refusal("127.0.0.1"), "not in allow")

    def test_non_ip_peer_is_refused_when_rules_exist(self) -> None:
        rules = IpFilter.from_lists(deny=["10.0.0.0/8"])
        self.assertEqual(rules.refusal("/run/x.sock"), "/run/x.sock is not an IP address")
