"""TLS for ``ssl`` servers: certificates checked at startup, TLS 1.2 or newer.

With ``ca_certs`` a client certificate signed by one of those CAs is
required (mutual TLS).  Certificates and keys are loaded with
``cryptography`` so that every problem (missing, not PEM, encrypted key, key
not matching the certificate) is a one-line config error at startup.

TLS wraps the client factory rather than being an endpoint type, so it works
on any stream endpoint, including ``endpoint`` strings and Unix sockets.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IProtocolFactory
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _log
from .config import ConfigError, SslConfig
from .fastpath import immediate_writer
from .protocols import ClientFactory, RawClient, log


def _read(path: str, where: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror or e}") from None


#: The private keys OpenSSL can serve TLS with (what pyOpenSSL converts).
_TLS_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certificate_options(config: SslConfig, where: str) -> ssl.CertificateOptions:
    """Server ``CertificateOptions`` for ``config``; ``where`` is its key path."""
    cert_pem = _read(config.certfile, f"{where}.certfile")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ConfigError(f"{where}.certfile: {config.certfile} holds no PEM certificate") from None
    key_pem = _read(config.keyfile, f"{where}.keyfile")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (TypeError, ValueError, UnsupportedAlgorithm) as e:
        # cryptography says "Password was not given but private key is
        # encrypted" (TypeError) for an encrypted key.
        if isinstance(e, TypeError) or "encrypted" in str(e).lower():
            raise ConfigError(
                f"{where}.keyfile: {config.keyfile} is encrypted; ser2tcp needs an unencrypted key"
            ) from None
        raise ConfigError(f"{where}.keyfile: {config.keyfile} holds no PEM private key") from None
    if _public_der(chain[0].public_key()) != _public_der(key.public_key()):
        raise ConfigError(
            f"{where}.keyfile: {config.keyfile} does not match the certificate in {config.certfile}"
        )
    if not isinstance(key, _TLS_KEY_TYPES):
        raise ConfigError(
            f"{where}.keyfile: {config.keyfile} holds a {type(key).__name__}, which cannot serve TLS"
        )
    kwargs: dict[str, Any] = {}
    if config.ca_certs is not None:
        ca_pem = _read(config.ca_certs, f"{where}.ca_certs")
        try:
            cas = x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise ConfigError(f"{where}.ca_certs: {config.ca_certs} holds no PEM certificate") from None
        kwargs["trustRoot"] = ssl.trustRootFromCertificates(
            [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in cas]
        )
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        **kwargs,
    )
    # A TLS 1.2 client may not renegotiate: it buys nothing here and makes
    # the server redo its most expensive work on a client's demand.  OpenSSL
    # 3 refuses it by default; this keeps it so with any OpenSSL.  (The
    # context is made once and shared by every connection.)
    options.getContext().set_options(SSL.OP_NO_RENEGOTIATION)
    return options


@implementer(IHandshakeListener)
class TlsClient(RawClient):
    """A raw client behind TLS: it joins the port only after its handshake.

    Until then it cannot open the device nor receive data; a handshake that
    does not complete within ``handshake_timeout`` is aborted, so an idle
    connection to the TLS port costs nothing but a socket for a while."""

    _handshake_timer: IDelayedCall | None = None

    def ready(self) -> None:
        if _log.info:
            log.info("Client {peer}: waiting for its TLS handshake", peer=self.peer)
        self._handshake_timer = self.clock.callLater(self.server.handshake_timeout, self._handshake_expired)

    def handshakeCompleted(self) -> None:
        self._cancel_handshake_timer()
        if self.transport is None or self.transport.disconnecting:  # type: ignore[attr-defined]
            return
        log.info("Client {peer}: TLS handshake completed", peer=self.peer)
        refusal = self._name_refusal()
        if refusal is not None:
            log.info("Client rejected: {peer} ({why})", peer=self.peer, why=refusal)
            self.close(refusal)  # close_notify, then the connection (the outbox lets go first)
            return
        self.join()

    def _name_refusal(self) -> str | None:
        """Why the client's certificate name is not let in, or None.  The CA
        has verified the certificate already; this narrows who of its
        holders may use this server."""
        assert self.server.ssl is not None
        names = self.server.ssl.allow_client_cn
        if names is None:
            return None
        cert = self.transport.getPeerCertificate()  # type: ignore[union-attr]
        cn = cert.get_subject().commonName if cert is not None else None
        if cn in names:
            return None
        return f"client certificate CN {cn!r} not in allow_client_cn"

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        log.info(
            "Client rejected: {peer} (TLS handshake not completed within {t:g} s)",
            peer=self.peer,
            t=self.server.handshake_timeout,
        )
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            if self._handshake_timer.active():
                self._handshake_timer.cancel()
            self._handshake_timer = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        pending = self._handshake_timer is not None
        self._cancel_handshake_timer()
        if pending and reason is not None and isinstance(reason.value, SSL.Error):
            log.info(
                "Client rejected: {peer} (TLS handshake failed: {why})",
                peer=self.peer,
                why=_ssl_reason(reason.value),
            )
        super().connectionLost(reason)


def _ssl_reason(e: BaseException) -> str:
    """OpenSSL's reason strings, e.g. 'peer did not return a certificate'."""
    try:
        return "; ".join(str(err[2]) for err in e.args[0]) or str(e)
    except (IndexError, TypeError, KeyError):
        return str(e)


class TlsFactory(ClientFactory):
    protocol_class = TlsClient


#: Largest plaintext of one TLS record.
RECORD = 2**14
#: What one read of the send BIO takes: the records of a 64 KiB write.
BIO_READ = 4 * RECORD + 1024


class DirectTLS(TLSMemoryBIOProtocol):
    """Twisted's TLS layer, moving whole chunks rather than records.

    Twisted's default (``BufferingTLSTransport``) holds a small write until
    the next reactor turn to join it with others, then hands each 16 KiB
    record to the socket's transport, which sends on the turn after.  A
    proxy writes what one device read brought, already gathered, and a
    console wants it now.  Here:

    * a write is encrypted whole and all its records leave in one send, at
      once when the socket is idle (:func:`~ser2tcp.fastpath.immediate_writer`);
    * what one socket read brings is decrypted whole and handed up as one
      chunk: one device write per read, not one per record.

    Only the three methods that move bytes are replaced; handshake,
    shutdown, producers and errors stay Twisted's.
    """

    def makeConnection(self, transport: Any) -> None:
        self._send_now = immediate_writer(transport)
        super().makeConnection(transport)

    def _flushSendBIO(self) -> None:
        chunks = []
        while True:
            try:
                chunk = self._tlsConnection.bio_read(BIO_READ)
            except SSL.WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < BIO_READ:
                break  # that was all: no call that only raises WantReadError
        if chunks:
            self._send_now(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _write(self, bytes: bytes) -> None:  # noqa: A002  # Twisted's parameter name
        if self._lostTLSConnection:
            return
        data = memoryview(bytes)
        connection = self._tlsConnection
        while data:
            try:
                sent = connection.send(data)  # one record: partial writes are on
            except SSL.WantReadError:
                # A renegotiation waits for the peer: keep the rest for later.
                self._flushSendBIO()
                self._bufferedWrite(data.tobytes())
                return
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
                return
            data = data[sent:]
        self._flushSendBIO()

    def _flushReceiveBIO(self) -> None:
        chunks: list[bytes] = []
        while not self._lostTLSConnection:
            try:
                chunks.append(self._tlsConnection.recv(RECORD))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # close_notify: what came before it first
                self._deliver(chunks)
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._deliver(chunks)
                self._tlsShutdownFinished(Failure())
        self._deliver(chunks)
        # What was received may call for an answer (a key update).
        self._flushSendBIO()

    def _deliver(self, chunks: list[bytes]) -> None:
        if chunks and not self._aborted:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            ProtocolWrapper.dataReceived(self, data)


class DirectTLSFactory(TLSMemoryBIOFactory):
    protocol = DirectTLS


def wrap_tls(factory: IProtocolFactory, options: ssl.CertificateOptions, clock: Any) -> TLSMemoryBIOFactory:
    return DirectTLSFactory(options, False, factory, clock=clock)
