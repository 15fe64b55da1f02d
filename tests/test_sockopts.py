"""Tests for ser2tcp.sockopts: TCP keepalive on accepted client sockets."""

from __future__ import annotations

import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ser2tcp.sockopts import KEEPALIVE_PROBES, keepalive_timing, set_keepalive, tcp_socket


class Handle:
    """A transport (or a TLS layer over one) as far as getHandle goes."""

    def __init__(self, handle: Any, transport: Any = None) -> None:
        self.handle = handle
        self.transport = transport

    def getHandle(self) -> Any:
        return self.handle


class TimingTests(SynchronousTestCase):
    def test_detection_takes_about_the_keepalive(self) -> None:
        for seconds in (1, 5, 60, 600):
            idle, interval, probes = keepalive_timing(seconds)
            self.assertEqual(probes, KEEPALIVE_PROBES)
            total = idle + interval * probes
            self.assertGreaterEqual(total, seconds * 0.9, seconds)
            self.assertLessEqual(total, max(seconds * 1.2, 4), seconds)

    def test_never_zero(self) -> None:
        self.assertEqual(keepalive_timing(0.5), (1, 1, KEEPALIVE_PROBES))


class SocketTests(SynchronousTestCase):
    def accepted(self) -> socket.socket:
        """The server side of a real loopback TCP connection."""
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname(), timeout=5)
        self.addCleanup(client.close)
        accepted, _ = listener.accept()
        self.addCleanup(accepted.close)
        return accepted

    def test_options_are_set(self) -> None:
        sock = self.accepted()
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)
        set_keepalive(Handle(sock), 60)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        idle, interval, probes = keepalive_timing(60)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), idle)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), interval)
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), probes)

    def test_off(self) -> None:
        sock = self.accepted()
        for seconds in (None, 0):
            set_keepalive(Handle(sock), seconds)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)

    def test_found_under_a_tls_layer(self) -> None:
        sock = self.accepted()
        tls = Handle(object(), transport=Handle(sock))  # getHandle: the TLS connection
        self.assertIs(tcp_socket(tls), sock)
        set_keepalive(tls, 10)
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)

    def test_unix_socket_is_left_alone(self) -> None:
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.assertIsNone(tcp_socket(Handle(a)))
        set_keepalive(Handle(a), 10)  # no error, nothing to do
