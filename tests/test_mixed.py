"""One serial port served over TCP, TELNET, TLS and a Unix socket at once."""

from __future__ import annotations

import os
import socket

from tests.helpers import Case, free_port, port_config, recv_exactly, tcp_server
from tests.proto_helpers import GREETING, Pki


class AllProtocols(Case):
    def test_four_protocols_share_one_device(self) -> None:
        pki = Pki(self.tempdir())
        pty = self.pty()
        path = os.path.join(self.tempdir(), "mixed.sock")
        tcp_port, telnet_port, ssl_port = free_port(), free_port(), free_port()
        servers = [
            tcp_server(tcp_port),
            {"protocol": "telnet", "address": "127.0.0.1", "port": telnet_port},
            {"protocol": "ssl", "address": "127.0.0.1", "port": ssl_port, "ssl": pki.ssl_config()},
            {"protocol": "socket", "address": path},
        ]
        d = self.ser2tcp(
            {"ports": [port_config(pty.path, *servers)]}, "-v", listen=[tcp_port, telnet_port, ssl_port]
        )
        d.wait_output(f"Listening: SOCKET {path}\n")

        tcp = self.connect(tcp_port)
        telnet = self.connect(telnet_port)
        self.assertEqual(recv_exactly(telnet, len(GREETING), self.deadline()), GREETING)
        tls = pki.client_context().wrap_socket(self.connect(ssl_port), server_hostname="localhost")
        self.addCleanup(tls.close)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(unix.close)
        unix.settimeout(10)
        unix.connect(path)
        # Every client has joined once its connection is logged (the TLS one
        # once its handshake is).
        d.wait_output("Client connected", count=4)
        d.wait_output("TLS handshake completed")
        d.wait_holds(pty.path)

        down = bytes(range(256)) * 4 + os.urandom(4000) + b"\xff\xff\r\n\x00"
        pty.write(down)
        escaped = down.replace(b"\xff", b"\xff\xff")
        for name, sock, expected in (
            ("tcp", tcp, down),
            ("telnet", telnet, escaped),
            ("ssl", tls, down),
            ("socket", unix, down),
        ):
            self.assertEqual(recv_exactly(sock, len(expected), self.deadline()), expected, name)

        for name, sock, sent, expected in (
            ("tcp", tcp, b"from tcp \xff\x00\r\n", b"from tcp \xff\x00\r\n"),
            ("telnet", telnet, b"from telnet \xff\xff\x00\r\n\xff\xf1", b"from telnet \xff\x00\r\n"),
            ("ssl", tls, b"from ssl \xff\x00\r\n", b"from ssl \xff\x00\r\n"),
            ("socket", unix, b"from socket \xff\x00\r\n", b"from socket \xff\x00\r\n"),
        ):
            sock.sendall(sent)
            self.assertEqual(pty.read(len(expected)), expected, name)
        # Nothing else reached the device (TELNET's NOP above included).
        tcp.sendall(b"#")
        self.assertEqual(pty.read(1), b"#")
