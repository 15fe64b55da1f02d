"""TLS servers: certificate checks at startup, versions, client certificates,
handshakes that never finish, and clients that misbehave.

Certificates are made at test time (see :class:`tests.proto_helpers.Pki`).
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import ssl
import struct
import tempfile
import time
import warnings
from typing import Any

from twisted.internet import ssl as tssl
from twisted.trial.unittest import SynchronousTestCase

from ser2tcp.config import ConfigError, SslConfig
from ser2tcp.tls import certificate_options
from tests.helpers import (
    SER2TCP,
    Background,
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
    ticks,
    write_config,
)
from tests.proto_helpers import (
    Pki,
    Program,
    client_hello,
    memory_handshake,
    missing,
    read_pipe,
    read_pipe_to_eof,
)

WHERE = "ports[0].servers[0].ssl"


class CertificateOptions(SynchronousTestCase):
    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="ser2tcp-pki-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.pki = Pki(directory)

    def check_error(self, config: SslConfig, key: str, *words: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            certificate_options(config, WHERE)
        text = str(caught.exception)
        self.assertNotIn("\n", text)
        self.assertTrue(text.startswith(f"{WHERE}.{key}: "), text)
        for word in words:
            self.assertIn(word, text)
        return text

    def test_good(self) -> None:
        options = certificate_options(SslConfig(self.pki.server_cert, self.pki.server_key), WHERE)
        self.assertIsInstance(options, tssl.CertificateOptions)
        options.getContext()

    def test_good_with_ca_and_chain(self) -> None:
        config = SslConfig(self.pki.server_chain, self.pki.server_key, self.pki.ca)
        options = certificate_options(config, WHERE)
        self.assertIsInstance(options, tssl.CertificateOptions)
        self.assertTrue(options.verify)
        self.assertTrue(options.requireCertificate)
        options.getContext()

    def test_encrypted_key(self) -> None:
        config = SslConfig(self.pki.server_cert, self.pki.encrypted_key)
        self.check_error(config, "keyfile", self.pki.encrypted_key, "encrypted")

    def test_key_not_matching(self) -> None:
        config = SslConfig(self.pki.server_cert, self.pki.wrong_key)
        self.check_error(config, "keyfile", self.pki.wrong_key, "does not match")

    def test_key_not_pem(self) -> None:
        self.check_error(SslConfig(self.pki.server_cert, self.pki.not_pem), "keyfile", self.pki.not_pem)

    def test_key_is_a_certificate(self) -> None:
        config = SslConfig(self.pki.server_cert, self.pki.server_cert)
        self.check_error(config, "keyfile", self.pki.server_cert)

    def test_key_that_cannot_serve_tls(self) -> None:
        config = SslConfig(self.pki.x25519_cert, self.pki.x25519_key)
        self.check_error(config, "keyfile", self.pki.x25519_key, "X25519PrivateKey", "cannot serve TLS")

    def test_cert_not_pem(self) -> None:
        self.check_error(SslConfig(self.pki.not_pem, self.pki.server_key), "certfile", self.pki.not_pem)

    def test_cert_is_a_key(self) -> None:
        config = SslConfig(self.pki.server_key, self.pki.server_key)
        self.check_error(config, "certfile", self.pki.server_key)

    def test_ca_not_pem(self) -> None:
        config = SslConfig(self.pki.server_cert, self.pki.server_key, self.pki.not_pem)
        self.check_error(config, "ca_certs", self.pki.not_pem)

    def test_missing_files(self) -> None:
        gone = os.path.join(self.pki.directory, "gone.pem")
        self.check_error(SslConfig(gone, self.pki.server_key), "certfile", gone)
        self.check_error(SslConfig(self.pki.server_cert, gone), "keyfile", gone)
        self.check_error(SslConfig(self.pki.server_cert, self.pki.server_key, gone), "ca_certs", gone)

    def test_bad_key_in_daemon_config(self) -> None:
        """The same one line, with the config file, from the ser2tcp command."""
        config = write_config(
            {
                "ports": [
                    port_config(
                        "/dev/null",
                        {
                            "protocol": "ssl",
                            "address": "127.0.0.1",
                            "port": free_port(),
                            "ssl": {"certfile": self.pki.server_cert, "keyfile": self.pki.encrypted_key},
                        },
                    )
                ]
            },
            self.pki.directory,
        )
        result = run([SER2TCP, "-c", config], timeout=20)
        self.assertEqual(result.returncode, 1, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(f"{config}: {WHERE}.keyfile: ", lines[0])
        self.assertIn("encrypted", lines[0])


def _quiet_context(pki: Pki, version: ssl.TLSVersion) -> ssl.SSLContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pki.client_context(version)


class TlsDaemon(Case):
    def start(
        self,
        ca_certs: bool = False,
        with_tcp: bool = False,
        handshake_timeout: float | None = None,
        device: str | None = None,
    ) -> None:
        self.pki = Pki(self.tempdir())
        self.pty_: Pty = self.pty()
        self.port = free_port()
        server: dict[str, Any] = {
            "protocol": "ssl",
            "address": "127.0.0.1",
            "port": self.port,
            "ssl": self.pki.ssl_config(ca_certs),
        }
        if handshake_timeout is not None:
            server["handshake_timeout"] = handshake_timeout
        servers = [server]
        self.tcp_port = free_port() if with_tcp else None
        if self.tcp_port is not None:
            servers.append(tcp_server(self.tcp_port))
        listen = [self.port] + ([self.tcp_port] if self.tcp_port else [])
        config = {"ports": [port_config(device or self.pty_.path, *servers)]}
        self.d: Daemon = self.ser2tcp(config, "-v", listen=listen)

    def tls(self, ctx: ssl.SSLContext | None = None) -> ssl.SSLSocket:
        raw = self.connect(self.port)
        sock = (ctx or self.pki.client_context()).wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(sock.close)
        return sock

    def assert_rejected(self, ctx: ssl.SSLContext) -> str:
        """The handshake fails (at once, or on the first read for TLS 1.3)."""
        raw = self.connect(self.port)
        try:
            sock = ctx.wrap_socket(raw, server_hostname="localhost")
        except (ssl.SSLError, ConnectionError) as e:
            return str(e)
        self.addCleanup(sock.close)
        try:
            data = sock.recv(100)
        except (ssl.SSLError, ConnectionError) as e:
            return str(e)
        except socket.timeout:
            self.fail("the server kept a client it should have rejected")
        self.assertEqual(data, b"", "a rejected client received data")
        return "EOF"

    def assert_pty_never_opened(self) -> None:
        self.assertFalse(self.d.holds(self.pty_.path), "the daemon opened the pty for a rejected client")
        self.assertNotIn("Serial", self.d.output())

    def both_ways(self, sock: socket.socket, size: int = 4096) -> None:
        down = os.urandom(size) + bytes(range(256))
        self.pty_.write(down)
        self.assertEqual(recv_exactly(sock, len(down), self.deadline()), down)
        up = os.urandom(size) + bytes(range(256))
        sock.sendall(up)
        self.assertEqual(self.pty_.read(len(up)), up)

    # (1) versions, data

    def test_tls12_and_tls13(self) -> None:
        self.start()
        for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
            sock = self.tls(self.pki.client_context(version))
            self.assertEqual(sock.version(), name)
            self.d.wait_holds(self.pty_.path)
            self.both_ways(sock)
            sock.close()
            # Let the port close before the next client, so that nothing the
            # device writes is flushed by the next open.
            self.d.wait_holds(self.pty_.path, held=False)

    def test_tls11_refused(self) -> None:
        self.start()
        old = _quiet_context(self.pki, ssl.TLSVersion.TLSv1_1)
        # Control: this client can speak TLS 1.1 to a server that allows it.
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        try:
            server.set_ciphers("DEFAULT:@SECLEVEL=0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                server.minimum_version = ssl.TLSVersion.TLSv1_1
            control = memory_handshake(old, server)
        except (ssl.SSLError, ValueError) as e:
            raise self.skipTest(f"this OpenSSL cannot speak TLS 1.1 at all: {e}")
        self.assertEqual(control, "TLSv1.1")
        raw = self.connect(self.port)
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            old.wrap_socket(raw, server_hostname="localhost")
        self.d.wait_output("Client rejected")
        self.assert_pty_never_opened()
        # and a current client still gets in
        self.both_ways_after_join(self.tls())

    def both_ways_after_join(self, sock: socket.socket) -> None:
        self.d.wait_holds(self.pty_.path)
        self.both_ways(sock)

    def test_large_single_write_reaches_device_whole(self) -> None:
        self.start()
        sock = self.tls()
        self.d.wait_holds(self.pty_.path)
        data = os.urandom(100 * 1024)
        writer = Background(sock.sendall, data)  # one write; nothing after it
        self.assertEqual(self.pty_.read(len(data)), data)
        writer.result()
        # and 100 KB the other way
        down = os.urandom(100 * 1024)
        self.pty_.write(down)
        self.assertEqual(recv_exactly(sock, len(down), self.deadline()), down)

    def test_data_right_after_handshake(self) -> None:
        self.start()
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            sock = self.tls(self.pki.client_context(version))
            # No waiting for the daemon to open the device: the bytes may come
            # in the same segment as the end of the handshake.
            sock.sendall(b"first bytes\xff")
            self.assertEqual(self.pty_.read(12), b"first bytes\xff")
            sock.close()
            self.d.wait_holds(self.pty_.path, held=False)

    def test_unopenable_device_closes_without_data(self) -> None:
        gone = os.path.join(self.tempdir(), "ttyGONE")
        self.start(device=gone)
        sock = self.tls()
        sock.settimeout(10)
        try:
            data = sock.recv(100)
        except (ssl.SSLError, ConnectionError):
            data = b""
        self.assertEqual(data, b"")
        out = self.d.wait_output("cannot open")
        self.assertIn(gone, out)
        self.assertTrue(self.d.running())

    def start_on_unix_endpoint(self) -> str:
        self.pki = Pki(self.tempdir())
        self.pty_ = self.pty()
        path = os.path.join(self.tempdir(), "tls.sock")
        server = {"protocol": "ssl", "endpoint": f"unix:{path}", "ssl": self.pki.ssl_config()}
        self.d = self.ser2tcp({"ports": [port_config(self.pty_.path, server)]}, "-v")
        self.d.wait_output("Listening:")
        return path

    def tls_unix(self, path: str) -> ssl.SSLSocket:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(raw.close)
        raw.settimeout(10)
        raw.connect(path)
        sock = self.pki.client_context().wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(sock.close)
        return sock

    def test_tls_over_unix_socket_endpoint(self) -> None:
        path = self.start_on_unix_endpoint()
        sock = self.tls_unix(path)
        self.d.wait_holds(self.pty_.path)
        self.both_ways(sock)

    def test_tls_over_unix_socket_logs_the_path(self) -> None:
        # Unix peers have no address of their own: logs name the socket path,
        # as they do for "socket" servers.
        path = self.start_on_unix_endpoint()
        self.tls_unix(path)
        out = self.d.wait_output("TLS handshake completed")
        self.assertIn(f"Client connected: {path} SSL to {port_name(self.pty_.path)}", out)
        self.assertNotIn("UNIXAddress", out)

    # (2) client certificates

    def test_client_certificate_required(self) -> None:
        self.start(ca_certs=True)
        self.assert_rejected(self.pki.client_context())
        out = self.d.wait_output("Client rejected")
        self.assertRegex(out, r"Client rejected: 127\.0\.0\.1:\d+ SSL \(TLS handshake failed: \S")
        self.assert_pty_never_opened()
        other = self.pki.client_context(cert=(self.pki.other_client_cert, self.pki.other_client_key))
        self.assert_rejected(other)
        out = self.d.wait_output("Client rejected", count=2)
        self.assertEqual(out.count("TLS handshake failed: "), 2, out)
        self.assert_pty_never_opened()
        good = self.pki.client_context(cert=(self.pki.client_cert, self.pki.client_key))
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            good.minimum_version = good.maximum_version = version
            sock = self.tls(good)
            self.d.wait_holds(self.pty_.path)
            self.both_ways(sock)
            sock.close()
            self.d.wait_holds(self.pty_.path, held=False)

    # (3) openssl s_client

    def s_client(self, *extra: str) -> Program:
        program = Program(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{self.port}",
                "-quiet",
                "-CAfile",
                self.pki.ca,
                *extra,
            ]
        )
        self.addCleanup(program.close)
        return program

    def test_openssl_s_client(self) -> None:
        reason = missing("openssl")
        if reason:
            raise self.skipTest(reason)
        self.start(ca_certs=True)
        # without a certificate: refused, and it ends
        refused = self.s_client()
        assert refused.proc.stdout is not None
        self.assertEqual(read_pipe_to_eof(refused.proc.stdout.fileno(), self.deadline()), b"")
        self.assertNotEqual(refused.wait(), 0)
        self.d.wait_output("Client rejected")
        self.assert_pty_never_opened()
        # with one: a terminal to the device
        client = self.s_client("-cert", self.pki.client_cert, "-key", self.pki.client_key)
        self.d.wait_holds(self.pty_.path)
        client.write(b"hello from s_client\n")
        self.assertEqual(self.pty_.read(20), b"hello from s_client\n")
        self.pty_.write(b"hello from the device\xff\x00\n")
        self.assertEqual(client.read_until(b"\n"), b"hello from the device\xff\x00\n")
        self.assertEqual(self.d.output().count("Client rejected"), 1)

    def test_openssl_s_client_without_ca_certs(self) -> None:
        reason = missing("openssl")
        if reason:
            raise self.skipTest(reason)
        self.start()
        for extra in ((), ("-cert", self.pki.client_cert, "-key", self.pki.client_key)):
            client = self.s_client(*extra, "-verify_return_error")
            self.d.wait_holds(self.pty_.path)
            client.write(b"up\n")
            self.assertEqual(self.pty_.read(3), b"up\n")
            self.pty_.write(b"down\n")
            self.assertEqual(client.read_until(b"down\n"), b"down\n")
            client.close()
            self.d.wait_holds(self.pty_.path, held=False)

    # (4) a client that never says hello

    def test_silent_client_delays_nobody_and_is_dropped(self) -> None:
        self.start(with_tcp=True, handshake_timeout=1)
        assert self.tcp_port is not None
        silent = self.connect(self.port)
        connected_at = time.monotonic()
        self.d.wait_output("waiting for its TLS handshake")
        tcp = self.connect(self.tcp_port)
        self.d.wait_holds(self.pty_.path)
        self.pty_.write(b"\xffdata\x00")
        self.assertEqual(recv_exactly(tcp, 6, self.deadline()), b"\xffdata\x00")
        data_at = time.monotonic()
        _, how = recv_until_closed(silent, self.deadline(5))
        closed_at = time.monotonic()
        self.assertIn(how, ("eof", "reset"))
        self.assertLess(data_at - connected_at, 0.9, "data to the TCP client waited for the TLS client")
        self.assertGreater(closed_at - connected_at, 0.9, "closed before handshake_timeout")
        self.assertLess(closed_at - connected_at, 4.0)
        self.d.wait_output("TLS handshake not completed within 1 s")
        # The TCP client is still served.
        self.pty_.write(b"more")
        self.assertEqual(recv_exactly(tcp, 4, self.deadline()), b"more")
        tcp.sendall(b"up")
        self.assertEqual(self.pty_.read(2), b"up")

    def test_completed_handshake_is_not_dropped(self) -> None:
        self.start(handshake_timeout=1)
        sock = self.tls()
        self.d.wait_holds(self.pty_.path)
        self.both_ways(sock, 16)
        # Past the timeout the connection is still open (the timer was
        # cancelled): nothing to read, no EOF.
        for left in ticks(time.monotonic() + 1.5):
            readable, _, _ = select.select([sock], [], [], min(left, 0.1))
            self.assertEqual(readable, [], "the server closed or wrote to an idle client")
        self.both_ways(sock, 16)
        self.assertNotIn("Client rejected", self.d.output())

    def test_sigterm_with_handshake_pending(self) -> None:
        self.start()
        silent = self.connect(self.port)
        self.d.wait_output("waiting for its TLS handshake")
        started = time.monotonic()
        self.assertEqual(self.d.stop(timeout=5), 0)
        self.assertLess(time.monotonic() - started, 1.5)
        _, how = recv_until_closed(silent, self.deadline(2))
        self.assertIn(how, ("eof", "reset"))

    def test_stalled_client_hello_is_dropped(self) -> None:
        self.start(handshake_timeout=1)
        stalled = self.connect(self.port)
        connected_at = time.monotonic()
        stalled.sendall(client_hello()[:40])
        _, how = recv_until_closed(stalled, self.deadline(5))
        elapsed = time.monotonic() - connected_at
        self.assertIn(how, ("eof", "reset"))
        self.assertGreater(elapsed, 0.9)
        self.assertLess(elapsed, 4.0)
        self.d.wait_output("TLS handshake not completed within 1 s")
        self.assert_pty_never_opened()

    # (5) a reset in mid-handshake

    def test_reset_mid_handshake(self) -> None:
        self.start(with_tcp=True)
        assert self.tcp_port is not None
        tcp = self.connect(self.tcp_port)
        self.d.wait_holds(self.pty_.path)
        hello = client_hello()
        for cut in (5, 60, len(hello) - 1):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            try:
                sock.sendall(hello[:cut])
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                sock.close()  # RST
        self.d.wait_output("Client disconnected", count=3)
        self.assertTrue(self.d.running())
        self.pty_.write(b"still here")
        self.assertEqual(recv_exactly(tcp, 10, self.deadline()), b"still here")
        sock = self.tls()
        self.both_ways(sock)
        self.assertEqual(recv_exactly(tcp, 4096 + 256, self.deadline())[-256:], bytes(range(256)))
        self.assertNotIn("Traceback", self.d.output())

    # (6) not TLS at all

    def test_plain_text_rejected(self) -> None:
        self.start(with_tcp=True)
        assert self.tcp_port is not None
        tcp = self.connect(self.tcp_port)
        self.d.wait_holds(self.pty_.path)
        plain = self.connect(self.port)
        plain.sendall(b"GET / HTTP/1.0\r\n\r\nhello device\n")
        data, how = recv_until_closed(plain, self.deadline())
        self.assertNotIn(b"hello", data)
        self.d.wait_output("Client rejected")
        self.assertIn("TLS handshake failed", self.d.output())
        # The device never saw the plain text; the TCP client is unaffected.
        tcp.sendall(b"<marker>")
        seen = read_pipe(self.pty_.fd(), b"<marker>", self.deadline())
        self.assertEqual(seen, b"<marker>")
        self.pty_.write(b"after")
        self.assertEqual(recv_exactly(tcp, 5, self.deadline()), b"after")
        self.assertTrue(self.d.running())
