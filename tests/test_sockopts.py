"""TCP keepalive of accepted connections (ser2tcp.sockopts), read back with
getsockopt from real loopback sockets."""

from __future__ import annotations

import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ser2tcp.sockopts import KEEPALIVE_PROBES, keepalive_timing, set_keepalive, tcp_socket


class FakeTransport:
    """A transport whose getHandle() is a real socket (as Twisted's TCP one)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def getHandle(self) -> Any:
        return self.handle


class FakeTlsTransport:
    """A TLS layer: getHandle() is not a socket; the TCP transport is below."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def getHandle(self) -> object:
        return object()  # stands for an OpenSSL connection


def timing_of(sock: socket.socket) -> tuple[int, int, int, int]:
    """(SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) of ``sock``."""
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


class KeepaliveTiming(SynchronousTestCase):
    def test_examples(self) -> None:
        """Idle for half the time, then the probes over the other half."""
        self.assertEqual(keepalive_timing(60), (30, 10, KEEPALIVE_PROBES))
        self.assertEqual(keepalive_timing(20), (10, 3, KEEPALIVE_PROBES))
        self.assertEqual(keepalive_timing(1), (1, 1, KEEPALIVE_PROBES))
        self.assertEqual(keepalive_timing(0.2), (1, 1, KEEPALIVE_PROBES))

    def test_drop_time_close_to_the_setting(self) -> None:
        """A silent peer is dropped after about ``seconds``; every value >= 1."""
        for seconds in (2, 5, 9, 10, 30, 59.5, 60, 300, 7200):
            idle, interval, probes = keepalive_timing(seconds)
            self.assertGreaterEqual(min(idle, interval, probes), 1, seconds)
            total = idle + interval * probes
            self.assertLessEqual(abs(total - seconds), probes, (seconds, total))


class SetKeepalive(SynchronousTestCase):
    def setUp(self) -> None:
        if not hasattr(socket, "TCP_KEEPIDLE"):
            raise self.skipTest("TCP_KEEPIDLE is Linux's")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        self.client = socket.create_connection(listener.getsockname(), timeout=5)
        self.addCleanup(self.client.close)
        self.accepted, _ = listener.accept()
        self.addCleanup(self.accepted.close)
        self.default = timing_of(self.accepted)
        self.assertEqual(self.default[0], 0, "keepalive is on before anyone set it")

    def test_sets_the_timing(self) -> None:
        """The accepted socket gets SO_KEEPALIVE and keepalive_timing()'s values."""
        set_keepalive(FakeTransport(self.accepted), 20)
        self.assertEqual(timing_of(self.accepted), (1, *keepalive_timing(20)))

    def test_looks_through_tls(self) -> None:
        """Under a TLS layer the TCP socket below is found and set."""
        transport = FakeTlsTransport(FakeTransport(self.accepted))
        self.assertIs(tcp_socket(transport), self.accepted)
        set_keepalive(transport, 9)
        self.assertEqual(timing_of(self.accepted), (1, *keepalive_timing(9)))

    def test_off(self) -> None:
        """None and 0 leave the socket as it was."""
        for off in (None, 0, 0.0):
            set_keepalive(FakeTransport(self.accepted), off)
            self.assertEqual(timing_of(self.accepted), self.default)

    def test_unix_socket_ignored(self) -> None:
        """A Unix socket has no keepalive: nothing is done, nothing raised."""
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertIsNone(tcp_socket(FakeTransport(a)))
        set_keepalive(FakeTransport(a), 20)
        self.assertEqual(a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)

    def test_closed_socket(self) -> None:
        """A socket already closed (the peer left) raises nothing."""
        self.accepted.close()
        set_keepalive(FakeTransport(self.accepted), 20)
