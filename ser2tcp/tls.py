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
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IProtocolFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from .config import ConfigError, SslConfig


def _read(path: str, where: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror or e}") from None


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
    except TypeError:
        raise ConfigError(
            f"{where}.keyfile: {config.keyfile} is encrypted; ser2tcp needs an unencrypted key"
        ) from None
    except (ValueError, Exception) as e:
        if "encrypted" in str(e).lower() or "password" in str(e).lower():
            raise ConfigError(
                f"{where}.keyfile: {config.keyfile} is encrypted; ser2tcp needs an unencrypted key"
            ) from None
        raise ConfigError(f"{where}.keyfile: {config.keyfile} holds no PEM private key") from None
    if chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ConfigError(
            f"{where}.keyfile: {config.keyfile} does not match the certificate in {config.certfile}"
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
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        **kwargs,
    )


def wrap_tls(factory: IProtocolFactory, options: ssl.CertificateOptions, clock: Any) -> TLSMemoryBIOFactory:
    return TLSMemoryBIOFactory(options, False, factory, clock=clock)
