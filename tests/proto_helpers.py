"""Helpers of the protocol tests (TELNET, TLS, Unix sockets).

A test PKI made at test time with ``cryptography``, TLS client contexts, a
tmux session on a private server for driving the real ``telnet`` program, and
subprocess pipes read with deadlines.  Everything blocks with a deadline and
every loop is bounded.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import select
import shutil
import ssl
import subprocess
import tempfile
import time
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer, error
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from ser2tcp.config import SerialConfig
from ser2tcp.interface import ISerialLink
from tests.helpers import TIMEOUT, clean_env, ticks, wait_until


@implementer(ISerialLink)
class InstantLink:
    """An ISerialLink that opens (or fails to open) at once; the device is a
    transport made by ``make_device`` (a StringTransport: it records writes)."""

    def __init__(
        self,
        name: str = "/dev/ttyFAKE1",
        fail: str | None = None,
        make_device: Callable[[], StringTransport] = StringTransport,
    ) -> None:
        self.name = name
        self.config = SerialConfig(settings={"port": name})
        self.fail = fail
        self.make_device = make_device
        self.device: StringTransport | None = None
        self.protocol: Any = None
        self.opened = 0

    def open(self, protocol: Any, in_effect: Any = None) -> defer.Deferred[Any]:
        self.opened += 1
        if self.fail is not None:
            return defer.fail(OSError(2, self.fail))
        self.protocol = protocol
        self.device = self.make_device()
        protocol.makeConnection(self.device)
        return defer.succeed(self.device)

    def close(self, abort: bool = False) -> None:
        self.protocol.connectionLost(Failure(error.ConnectionDone()))

    def closed(self) -> None:
        self.device = None


# TELNET bytes
IAC, DONT, DO, WONT, WILL, SB, SE = b"\xff", b"\xfe", b"\xfd", b"\xfc", b"\xfb", b"\xfa", b"\xf0"
BINARY, ECHO, SGA, LINEMODE = b"\x00", b"\x01", b"\x03", b"\x22"
#: What the server sends first: IAC WILL ECHO, IAC WILL SGA, IAC DO BINARY.
GREETING = bytes.fromhex("fffb01fffb03fffd00")


def missing(*programs: str) -> str | None:
    """A skip reason if one of ``programs`` is not installed."""
    absent = [p for p in programs if shutil.which(p) is None]
    return f"not installed: {', '.join(absent)}" if absent else None


# A test PKI


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: Any,
    issuer: str,
    issuer_key: Any,
    ca: bool = False,
    server: bool = False,
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: Any, password: bytes | None = None) -> bytes:
    encryption: Any = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


class Pki:
    """Certificates and keys in ``directory``, as file paths.

    ``ca`` signs ``server`` (localhost, 127.0.0.1, ::1) and ``client``;
    ``other_ca`` signs ``other_client``.  Bad files: ``encrypted_key``,
    ``wrong_key`` (valid, but not the server certificate's), ``not_pem``, and
    ``x25519_cert`` with its ``x25519_key``: a key-agreement key, which no TLS
    server can authenticate with.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        ca_key, other_ca_key = _key(), _key()
        ca = _cert("ser2tcp test CA", ca_key, "ser2tcp test CA", ca_key, ca=True)
        other_ca = _cert("other CA", other_ca_key, "other CA", other_ca_key, ca=True)
        server_key, client_key, other_client_key = _key(), _key(), _key()
        server = _cert("localhost", server_key, "ser2tcp test CA", ca_key, server=True)
        client = _cert("client", client_key, "ser2tcp test CA", ca_key, client=True)
        other_client = _cert("other client", other_client_key, "other CA", other_ca_key, client=True)
        self._ca_key = ca_key
        self.ca = self._write("ca.pem", _pem_cert(ca))
        self.other_ca = self._write("other-ca.pem", _pem_cert(other_ca))
        self.server_cert = self._write("server.pem", _pem_cert(server))
        self.server_key = self._write("server.key", _pem_key(server_key))
        self.server_chain = self._write("server-chain.pem", _pem_cert(server) + _pem_cert(ca))
        self.client_cert = self._write("client.pem", _pem_cert(client))
        self.client_key = self._write("client.key", _pem_key(client_key))
        self.other_client_cert = self._write("other-client.pem", _pem_cert(other_client))
        self.other_client_key = self._write("other-client.key", _pem_key(other_client_key))
        self.encrypted_key = self._write("encrypted.key", _pem_key(server_key, b"secret"))
        self.wrong_key = self._write("wrong.key", _pem_key(_key()))
        self.not_pem = self._write("not-pem.txt", b"this is not PEM\n\x00\x01\x02")
        x25519_key = x25519.X25519PrivateKey.generate()
        x25519_cert = _cert("localhost", x25519_key, "ser2tcp test CA", ca_key, server=True)
        self.x25519_cert = self._write("x25519.pem", _pem_cert(x25519_cert))
        self.x25519_key = self._write("x25519.key", _pem_key(x25519_key))

    def issue_client(self, cn: str) -> tuple[str, str]:
        """A client certificate with Common Name ``cn``, signed by ``ca``:
        (certificate path, key path)."""
        key = _key()
        cert = _cert(cn, key, "ser2tcp test CA", self._ca_key, client=True)
        stem = "client-" + "".join(c if c.isalnum() else "_" for c in cn)
        return self._write(f"{stem}.pem", _pem_cert(cert)), self._write(f"{stem}.key", _pem_key(key))

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def ssl_config(self, ca_certs: bool = False) -> dict[str, str]:
        config = {"certfile": self.server_cert, "keyfile": self.server_key}
        if ca_certs:
            config["ca_certs"] = self.ca
        return config

    def client_context(
        self,
        version: ssl.TLSVersion | None = None,
        cert: tuple[str, str] | None = None,
    ) -> ssl.SSLContext:
        """A client context trusting ``ca``, limited to ``version`` if given."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.ca)
        if version is not None:
            if version < ssl.TLSVersion.TLSv1_2:
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.minimum_version = version
            ctx.maximum_version = version
        if cert is not None:
            ctx.load_cert_chain(*cert)
        return ctx


def client_hello(ctx: ssl.SSLContext | None = None) -> bytes:
    """The first flight of a TLS client, made in memory (no socket)."""
    if ctx is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def memory_handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> str:
    """Handshake two in-memory TLS ends; the version agreed, or SSLError."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(20):
        for i, end in enumerate((client, server)):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done):
            return str(client.version())
    raise AssertionError("in-memory handshake did not finish")


# Subprocess pipes


def read_pipe(fd: int, want: bytes, deadline: float, got: bytearray | None = None) -> bytes:
    """Read a pipe until what was read contains ``want``; returns all of it."""
    buf = bytearray() if got is None else got
    for left in ticks(deadline):
        if want in buf:
            return bytes(buf)
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        data = os.read(fd, 65536)
        if not data:
            break
        buf += data
    if want in buf:
        return bytes(buf)
    raise AssertionError(f"{want!r} not read in time; got {bytes(buf[-200:])!r}")


def read_pipe_to_eof(fd: int, deadline: float) -> bytes:
    buf = bytearray()
    for left in ticks(deadline):
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        data = os.read(fd, 65536)
        if not data:
            return bytes(buf)
        buf += data
    raise AssertionError(f"no EOF in time; got {bytes(buf[-200:])!r}")


class Program:
    """A client program with its stdin, stdout and stderr as pipes."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_until(self, want: bytes, timeout: float = TIMEOUT) -> bytes:
        assert self.proc.stdout is not None
        return read_pipe(self.proc.stdout.fileno(), want, time.monotonic() + timeout, self.out)

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.proc.args[0]} did not exit within {timeout:g} s") from None

    def stderr(self) -> bytes:
        assert self.proc.stderr is not None
        if self.proc.poll() is None:
            return b""
        return self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


# tmux


class Tmux:
    """One tmux session on a tmux server of its own, whose socket lives in a
    directory of its own (removed by :meth:`close`)."""

    def __init__(self, command: str, width: int = 100, height: int = 20) -> None:
        self.directory = tempfile.mkdtemp(prefix="ser2tcp-tmux-")
        self.socket = os.path.join(self.directory, "tmux.sock")
        self.session = "t"
        try:
            self._tmux("new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height), command)
        except BaseException:
            self.close()
            raise

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = clean_env(TERM="xterm")
        env.pop("TMUX", None)
        return subprocess.run(
            ["tmux", "-S", self.socket, "-f", "/dev/null", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=env,
            check=False,
        )

    def _tmux(self, *args: str) -> str:
        result = self._run(*args)
        if result.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def send_literal(self, text: str) -> None:
        self._tmux("send-keys", "-t", self.session, "-l", text)

    def capture(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.session)

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> str:
        def screen() -> str | None:
            shown = self.capture()
            return shown if text in shown else None

        return str(wait_until(screen, timeout, f"{text!r} on the tmux pane", interval=0.02))

    def close(self) -> None:
        if os.path.exists(self.socket):
            self._run("kill-server")
        shutil.rmtree(self.directory, ignore_errors=True)


def headless_chromium(profile_dir: str) -> Any:
    """Debian's chromium driven by selenium, headless, with a fresh profile
    in ``profile_dir``; SkipTest (with the reason) where it is not installed
    (``.ci/run`` installs it).  The caller quits it."""
    from twisted.trial.unittest import SkipTest

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise SkipTest("not installed: selenium (pip)") from None
    if chromium is None or chromedriver is None:
        raise SkipTest("not installed: chromium and chromium-driver (Debian)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        f"--user-data-dir={profile_dir}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    return driver
