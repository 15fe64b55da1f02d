"""DirectTLS, the TLS layer of ``ssl`` servers, without sockets: a pyOpenSSL
client in memory talks to it over a StringTransport that counts writes."""

from __future__ import annotations

import os
import shutil
import tempfile

from OpenSSL import SSL
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ser2tcp.config import SslConfig
from ser2tcp.tls import BIO_READ, DirectTLS, certificate_options, wrap_tls
from tests.proto_helpers import Pki


class Recorder(Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        super().write(data)


class DirectTlsTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = tempfile.mkdtemp(prefix="ser2tcp-pki-")
        self.addCleanup(shutil.rmtree, directory, True)
        self.pki = Pki(directory)
        options = certificate_options(SslConfig(self.pki.server_cert, self.pki.server_key), "ssl")
        self.recorder = Recorder()
        factory = wrap_tls(Factory.forProtocol(lambda: self.recorder), options, Clock())
        self.server = factory.buildProtocol(None)
        self.assertIsInstance(self.server, DirectTLS)
        self.wire = CountingTransport()
        self.server.makeConnection(self.wire)

    def client(self, version: int = SSL.TLS1_3_VERSION) -> SSL.Connection:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_max_proto_version(version)
        client = SSL.Connection(ctx, None)
        client.set_connect_state()
        for _ in range(10):
            try:
                client.do_handshake()
            except SSL.WantReadError:
                pass
            self.to_server(client)
            self.to_client(client)
        self.assertTrue(self.server._handshakeDone)
        return client

    def to_server(self, client: SSL.Connection) -> None:
        try:
            data = client.bio_read(1 << 20)
        except SSL.WantReadError:
            return
        self.server.dataReceived(data)

    def to_client(self, client: SSL.Connection) -> None:
        data = self.wire.value()
        self.wire.clear()
        if data:
            client.bio_write(data)

    def read_client(self, client: SSL.Connection) -> bytes:
        self.to_client(client)
        got = b""
        for _ in range(1000):
            try:
                got += client.recv(1 << 16)
            except SSL.WantReadError:
                break
        return got

    def test_a_write_leaves_in_one_send_and_in_order(self) -> None:
        client = self.client()
        data = os.urandom(3 * BIO_READ + 123)  # more than one read of the send BIO
        self.wire.writes.clear()
        self.server.write(data[:10])
        self.server.write(data[10:])
        self.assertEqual(len(self.wire.writes), 2)  # one per write, however many records
        self.assertEqual(self.read_client(client), data)

    def test_what_one_read_brings_is_handed_up_as_one_chunk(self) -> None:
        client = self.client()
        records = [os.urandom(n) for n in (16384, 16384, 5000, 1)]
        for record in records:
            client.send(record)
        self.recorder.chunks.clear()
        self.to_server(client)  # four records in one TCP read
        self.assertEqual(self.recorder.chunks, [b"".join(records)])

    def test_records_split_across_reads(self) -> None:
        client = self.client()
        client.send(b"abc" * 1000)
        wire = client.bio_read(1 << 20)
        self.recorder.chunks.clear()
        for i in range(0, len(wire), 7):
            self.server.dataReceived(wire[i : i + 7])
        self.assertEqual(b"".join(self.recorder.chunks), b"abc" * 1000)

    def test_data_before_close_notify_is_delivered_first(self) -> None:
        client = self.client()
        client.send(b"last words")
        try:
            client.shutdown()
        except SSL.Error:
            pass
        self.recorder.chunks.clear()
        self.to_server(client)
        self.assertEqual(self.recorder.chunks, [b"last words"])
        self.assertTrue(self.wire.disconnecting)  # our close_notify, then the socket closes
        self.to_client(client)
        with self.assertRaises(SSL.ZeroReturnError):
            client.recv(100)

    def test_lose_connection_sends_data_then_close_notify(self) -> None:
        client = self.client()
        self.server.write(b"goodbye")
        self.server.loseConnection()
        self.to_client(client)
        self.assertEqual(client.recv(100), b"goodbye")
        with self.assertRaises(SSL.ZeroReturnError):
            client.recv(100)

    def test_tls12_renegotiation_is_refused(self) -> None:
        client = self.client(SSL.TLS1_2_VERSION)
        client.send(b"before")
        self.recorder.chunks.clear()
        self.to_server(client)
        self.assertEqual(self.recorder.chunks, [b"before"])
        client.renegotiate()
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        self.to_server(client)
        # The server answers with a no_renegotiation alert or closes; it
        # never starts a new handshake, and nothing raises.
        self.to_client(client)
        with self.assertRaises(SSL.Error):
            for _ in range(10):
                client.do_handshake()
                client.recv(100)
        self.assertEqual(b"".join(self.recorder.chunks), b"before")

    def test_the_methods_replaced_are_twisteds(self) -> None:
        """DirectTLS replaces private methods of Twisted's TLS layer: a
        Twisted release that renames them must fail here, not silently
        fall back to the slower path."""
        for name in ("_write", "_flushSendBIO", "_flushReceiveBIO"):
            self.assertIn(name, vars(TLSMemoryBIOProtocol))
            self.assertIn(name, vars(DirectTLS))
        for name in ("_tlsConnection", "_lostTLSConnection", "_aborted", "_handshakeDone"):
            self.assertTrue(hasattr(self.server, name), name)

    def tearDown(self) -> None:
        self.server.connectionLost(Failure(Exception("done")))
