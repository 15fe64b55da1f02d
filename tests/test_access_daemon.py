"""Who may connect, how many, and what they may do, in the real daemon.

``ser2tcp -c cfg -v`` shares a pty; clients are real sockets on loopback
(127.0.0.1, 127.0.0.2 and ::1) and Unix sockets: allow/deny lists,
max_connections of a server and of a port (refuse or kick_oldest),
read-only and write-only servers, TLS allow_client_cn, half-closed clients,
TCP keepalive and the join line's client count.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import select
import socket
import ssl
import subprocess
import time
from typing import Any

from ser2tcp.sockopts import keepalive_timing
from tests.helpers import (
    TIMEOUT,
    Case,
    Daemon,
    fd_table,
    free_port,
    has_ipv6_loopback,
    port_config,
    port_name,
    recv_exactly,
    recv_until_closed,
    tcp_server,
    ticks,
    wait_until,
)
from tests.proto_helpers import GREETING, Pki, Program, Tmux, client_hello, missing, read_pipe

#: The first byte of a TLS handshake record (a ServerHello starts with it).
TLS_HANDSHAKE = 0x16


def telnet_server(port: int, **extra: Any) -> dict[str, Any]:
    return {"protocol": "telnet", "address": "127.0.0.1", "port": port, **extra}


def unix_server(path: str, **extra: Any) -> dict[str, Any]:
    return {"protocol": "socket", "address": path, **extra}


def name_of(sock: socket.socket) -> str:
    """How the daemon's log names the peer ``sock`` (its local address)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ipv4_mapped_on_ipv6() -> bool:
    """Whether a "::" listener also accepts IPv4 clients (bindv6only off)."""
    try:
        with open("/proc/sys/net/ipv6/bindv6only") as f:
            return f.read().strip() == "0"
    except OSError:
        return False


def tls_recv_until_closed(sock: ssl.SSLSocket, deadline: float) -> bytes:
    """Everything a TLS client receives until the server ends the connection
    (close_notify, FIN or RST alike)."""
    chunks = []
    for left in ticks(deadline):
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        except (ssl.SSLError, ConnectionError):
            return b"".join(chunks)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
    raise AssertionError(f"the TLS connection was not closed in time: {b''.join(chunks)[:100]!r}")


def assert_nothing_to_read(sock: socket.socket, seconds: float = 0.5) -> None:
    """``sock`` has neither data nor EOF pending for ``seconds``."""
    readable, _, _ = select.select([sock], [], [], seconds)
    if readable:
        sock.setblocking(False)
        try:
            data = sock.recv(100)
        except BlockingIOError:
            data = None
        finally:
            sock.settimeout(TIMEOUT)
        raise AssertionError(f"expected nothing to read, got {data!r}")


# The daemon's side of a connection, seen from outside


def ss_seconds(text: str) -> float:
    """An ``ss -o`` timer ("1min14sec", "29sec", "4.998ms", "998ms") in seconds."""
    m = re.fullmatch(r"(?:(\d+)min)?(?:(\d+)(sec|\.))?(?:(\d+)ms)?", text)
    if m is None or not text:
        raise AssertionError(f"unexpected ss timer {text!r}")
    minutes, secs, _, msecs = m.groups()
    return int(minutes or 0) * 60 + int(secs or 0) + int(msecs or 0) / 1000


def ss_line(local: tuple[str, int], peer: tuple[str, int]) -> str | None:
    """``ss -tno``'s line for the established connection ``local`` -> ``peer``."""
    result = subprocess.run(
        ["ss", "-Htno", "state", "established"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    want = [f"{local[0]}:{local[1]}", f"{peer[0]}:{peer[1]}"]
    for line in result.stdout.splitlines():
        if line.split()[2:4] == want:
            return line
    return None


def ss_settled_line(local: tuple[str, int], peer: tuple[str, int]) -> str:
    """The connection's ``ss`` line once no retransmission timer hides the
    keepalive timer (sent data is acknowledged at once on loopback)."""

    def settled() -> str | None:
        line = ss_line(local, peer)
        return line if line is not None and "timer:(on," not in line else None

    return str(wait_until(settled, what=f"ss to show {local} -> {peer}", interval=0.05))


_PIDFD_GETFD = 438  # the same number on every architecture but alpha


def dup_from(pid: int, fd: int) -> int:
    """A copy of descriptor ``fd`` of process ``pid`` (``pidfd_getfd(2)``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        copy = libc.syscall(_PIDFD_GETFD, pidfd, fd, 0)
        if copy < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return int(copy)
    finally:
        os.close(pidfd)


def daemon_socket(pid: int, local: tuple[str, int], peer: tuple[str, int]) -> socket.socket:
    """A duplicate of the daemon's socket of the connection ``local`` -> ``peer``."""
    for fd, link in sorted(fd_table(pid).items()):
        if not link.startswith("socket:"):
            continue
        try:
            copy = dup_from(pid, fd)
        except OSError as e:
            if e.errno == errno.EBADF:
                continue  # closed meanwhile
            raise
        sock = socket.socket(fileno=copy)
        try:
            if sock.family == socket.AF_INET and sock.getsockname() == local and sock.getpeername() == peer:
                return sock
        except OSError:  # listening, or not connected
            pass
        sock.close()
    raise AssertionError(f"no socket {local} -> {peer} in process {pid}")


class AccessCase(Case):
    """A pty shared by the daemon under test."""

    def setUp(self) -> None:
        self.pty_ = self.pty()
        self.name = port_name(self.pty_.path)  # how the daemon names the port

    def start(self, *servers: dict[str, Any], port_max: int | None = None) -> Daemon:
        """``ser2tcp -v`` serving the pty on ``servers``, once it listens."""
        port = port_config(self.pty_.path, *servers)
        if port_max is not None:
            port["max_connections"] = port_max
        listen = [s["port"] for s in servers if "port" in s]
        d = self.ser2tcp({"ports": [port]}, "-v", listen=listen)
        for server in servers:
            if server["protocol"] == "socket":
                d.wait_output(f"Listening: SOCKET {server['address']}\n")
        return d

    def telnet(self, port: int, **kw: Any) -> socket.socket:
        """A TELNET client (a raw socket) past the server's greeting."""
        sock = self.connect(port, **kw)
        self.assertEqual(recv_exactly(sock, len(GREETING), self.deadline()), GREETING)
        return sock

    def unix(self, path: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        return sock

    def assert_refused_silently(self, sock: socket.socket, hello: bytes = b"") -> str:
        """``sock`` receives no byte at all, then EOF or a reset; how it ended."""
        if hello:
            try:
                sock.sendall(hello)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused before it could send
        data, how = recv_until_closed(sock, self.deadline())
        self.assertEqual(data, b"", "a refused client received bytes")
        self.assertIn(how, ("eof", "reset"))
        return how

    def assert_never_opened(self, d: Daemon) -> None:
        self.assertFalse(d.holds(self.pty_.path), "the daemon opened the device for a refused client")
        self.assertNotIn("Serial", d.output())

    def assert_opened_once(self, d: Daemon) -> None:
        """The device was opened once and never closed (nor lost) since."""
        out = d.output()
        self.assertEqual(out.count(f"Serial {self.name} opened"), 1, out)
        self.assertNotIn(f"Serial {self.name} closed", out)
        self.assertNotIn(f"Serial {self.name} lost", out)
        self.assertTrue(d.holds(self.pty_.path))

    def down(self, data: bytes, *socks: socket.socket, telnet: tuple[socket.socket, ...] = ()) -> None:
        """Device data reaches every one of ``socks`` (and of ``telnet``, escaped) byte-exact."""
        self.pty_.write(data)
        for sock in socks:
            self.assertEqual(recv_exactly(sock, len(data), self.deadline()), data)
        escaped = data.replace(b"\xff", b"\xff\xff")
        for sock in telnet:
            self.assertEqual(recv_exactly(sock, len(escaped), self.deadline()), escaped)

    def up(self, sock: socket.socket, data: bytes) -> None:
        """What ``sock`` sends reaches the device byte-exact."""
        sock.sendall(data)
        self.assertEqual(self.pty_.read(len(data)), data)


class AllowDeny(AccessCase):
    """allow/deny lists: refused peers get nothing and open nothing."""

    def test_allow_list_refuses_other_peers(self) -> None:
        """127.0.0.2 outside ``allow: [127.0.0.1/32]`` is refused on TCP and
        TELNET without a byte, the device stays closed; 127.0.0.1 gets in."""
        port, tport = free_port(), free_port()
        d = self.start(tcp_server(port, allow=["127.0.0.1/32"]), telnet_server(tport, allow=["127.0.0.1/32"]))
        for p, proto in ((port, "TCP"), (tport, "TELNET")):
            denied = self.connect(p, source="127.0.0.2")
            name = name_of(denied)
            self.assert_refused_silently(denied, b"AT\r\n")
            d.wait_output(f"Client denied: {name} {proto} to {self.name} (not in allow)")
            self.assert_never_opened(d)
        self.assertNotIn("Client connected", d.output())
        # The same listeners let 127.0.0.1 in.
        ok = self.connect(port)
        d.wait_holds(self.pty_.path)
        self.down(bytes(range(256)), ok)
        self.up(ok, b"from 127.0.0.1\xff")
        tel = self.telnet(tport)
        d.wait_output(f"Client connected: {name_of(tel)} TELNET")
        self.down(b"\xffboth", ok, telnet=(tel,))

    def test_denied_peers_do_not_disturb_a_client(self) -> None:
        """With ``deny: [127.0.0.2/32]`` a client from 127.0.0.1 keeps its
        byte-exact stream while peers from 127.0.0.2 are refused."""
        port = free_port()
        d = self.start(tcp_server(port, deny=["127.0.0.2/32"]))
        ok = self.connect(port)
        d.wait_holds(self.pty_.path)
        first = os.urandom(32768) + bytes(range(256))
        self.pty_.write(first)
        for i in range(3):
            denied = self.connect(port, source="127.0.0.2")
            name = name_of(denied)
            self.assert_refused_silently(denied, b"denied %d" % i)
            d.wait_output(f"Client denied: {name} TCP to {self.name} (deny 127.0.0.2/32)")
        second = os.urandom(32768)
        self.pty_.write(second)
        self.assertEqual(recv_exactly(ok, len(first) + len(second), self.deadline()), first + second)
        # Nothing of the denied peers reached the device: only this comes.
        self.up(ok, b"<after>")
        self.assert_opened_once(d)
        self.assertEqual(d.output().count("Client denied"), 3)

    def test_ipv6_loopback(self) -> None:
        """::1 is denied by ``deny: [::1/128]`` and by an IPv4-only ``allow``,
        and let in by ``allow: [::1]``."""
        if not has_ipv6_loopback():
            raise self.skipTest("no IPv6 loopback")
        deny_port, v4_only, allow_port = free_port("::1"), free_port("::1"), free_port("::1")
        d = self.start(
            tcp_server(deny_port, address="::1", deny=["::1/128"]),
            tcp_server(v4_only, address="::1", allow=["127.0.0.0/8"]),
            tcp_server(allow_port, address="::1", allow=["::1"]),
        )
        for p, rule in ((deny_port, "deny ::1/128"), (v4_only, "not in allow")):
            denied = self.connect(p, "::1")
            name = name_of(denied)
            self.assertTrue(name.startswith("[::1]:"), name)
            self.assert_refused_silently(denied, b"AT\r\n")
            d.wait_output(f"Client denied: {name} TCP to {self.name} ({rule})")
            self.assert_never_opened(d)
        ok = self.connect(allow_port, "::1")
        d.wait_output(f"Client connected: {name_of(ok)} TCP to {self.name} (1 client)")
        d.wait_holds(self.pty_.path)
        self.down(bytes(range(256)), ok)
        self.up(ok, b"from ::1")

    def test_ipv4_mapped_peer_matches_ipv4_rule(self) -> None:
        """A "::" listener sees 127.0.0.1 as ::ffff:127.0.0.1: ``deny:
        [127.0.0.1/32]`` still refuses it; ::1 is let in."""
        if not has_ipv6_loopback():
            raise self.skipTest("no IPv6 loopback")
        if not ipv4_mapped_on_ipv6():
            raise self.skipTest("net.ipv6.bindv6only is set: a :: listener takes no IPv4 client")
        port = free_port("::")
        d = self.start(tcp_server(port, address="::", deny=["127.0.0.1/32"]))
        denied = self.connect(port, "127.0.0.1")
        sport = denied.getsockname()[1]
        self.assert_refused_silently(denied, b"AT\r\n")
        d.wait_output(f"Client denied: [::ffff:127.0.0.1]:{sport} TCP to {self.name} (deny 127.0.0.1/32)")
        self.assert_never_opened(d)
        ok = self.connect(port, "::1")
        d.wait_holds(self.pty_.path)
        self.down(b"to ::1\xff", ok)
        self.up(ok, b"from ::1")


class TlsAdmission(AccessCase):
    """TLS servers: refused before the handshake, names checked after it."""

    def tls_server(
        self, port: int, protocol: str = "ssl", block: str = "ssl", **extra: Any
    ) -> dict[str, Any]:
        if not hasattr(self, "pki"):
            self.pki = Pki(self.tempdir())
        return {
            "protocol": protocol,
            "address": "127.0.0.1",
            "port": port,
            block: self.pki.ssl_config(),
            **extra,
        }

    def tls(self, port: int, ctx: ssl.SSLContext | None = None, **kw: Any) -> ssl.SSLSocket:
        raw = self.connect(port, **kw)
        sock = (ctx or self.pki.client_context()).wrap_socket(raw, server_hostname="localhost")
        self.addCleanup(sock.close)
        return sock

    def check_denied_without_server_hello(self, protocol: str, block: str) -> None:
        port = free_port()
        d = self.start(self.tls_server(port, protocol, block, deny=["127.0.0.1/32"]))
        # Control: the same ClientHello from 127.0.0.2 gets a ServerHello.
        allowed = self.connect(port, source="127.0.0.2")
        allowed.sendall(client_hello())
        self.assertEqual(recv_exactly(allowed, 1, self.deadline())[0], TLS_HANDSHAKE)
        d.wait_output("waiting for its TLS handshake")
        allowed.close()
        try:
            denied = self.connect(port)
        except ConnectionResetError:
            # Reset before connect() returned: refused, and nothing received.
            out = d.wait_output(f"SSL to {self.name} (deny 127.0.0.1/32)")
        else:
            name = name_of(denied)
            self.assert_refused_silently(denied, client_hello())
            out = d.wait_output(f"Client denied: {name} SSL to {self.name} (deny 127.0.0.1/32)")
        self.assertEqual(out.count("waiting for its TLS handshake"), 1, out)
        self.assert_never_opened(d)

    def test_denied_tls_client_gets_no_server_hello(self) -> None:
        """A denied peer's ClientHello is answered by nothing at all."""
        self.check_denied_without_server_hello("ssl", "ssl")

    def test_denied_tls_spelling_gets_no_server_hello(self) -> None:
        """The same with ``"protocol": "tls"`` and a ``"tls"`` block."""
        self.check_denied_without_server_hello("tls", "tls")

    def test_protocol_tls_with_tls_block(self) -> None:
        """``"protocol": "tls"`` with a ``"tls"`` block serves like ``ssl``."""
        port, port2 = free_port(), free_port()
        d = self.start(self.tls_server(port, "tls", "tls"), self.tls_server(port2, "TLS", "ssl"))
        sock = self.tls(port)
        d.wait_output(f"Client connected: {name_of(sock)} SSL to {self.name} (1 client)")
        d.wait_holds(self.pty_.path)
        self.down(os.urandom(4096) + bytes(range(256)), sock)
        self.up(sock, os.urandom(4096))
        other = self.tls(port2)
        d.wait_output(f"Client connected: {name_of(other)} SSL to {self.name} (2 clients)")
        self.down(b"\xffto both", sock, other)

    def test_allow_client_cn(self) -> None:
        """Of two clients of the same CA only the one named in
        allow_client_cn joins; the other is closed after its handshake,
        opens nothing and never receives device data."""
        self.pki = Pki(self.tempdir())
        alice = self.pki.issue_client("alice")
        mallory = self.pki.issue_client("mallory")
        port = free_port()
        block = {**self.pki.ssl_config(ca_certs=True), "allow_client_cn": ["alice", "bob"]}
        d = self.start({"protocol": "ssl", "address": "127.0.0.1", "port": port, "ssl": block})
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            sock = self.tls(port, self.pki.client_context(version, cert=mallory))
            name = name_of(sock)
            self.assertEqual(tls_recv_until_closed(sock, self.deadline()), b"")
            d.wait_output(
                f"Client rejected: {name} SSL (client certificate CN 'mallory' not in allow_client_cn)"
            )
            self.assert_never_opened(d)
        good = self.tls(port, self.pki.client_context(cert=alice))
        d.wait_output(f"Client connected: {name_of(good)} SSL to {self.name} (1 client)")
        d.wait_holds(self.pty_.path)
        self.down(bytes(range(256)), good)
        self.up(good, b"from alice")
        # Mallory again, while the device is open: device data written once
        # its handshake is done on the server never reaches it.
        sock = self.tls(port, self.pki.client_context(cert=mallory))
        name = name_of(sock)
        d.wait_output(f"Client {name} SSL: TLS handshake completed")
        self.pty_.write(b"secret\xff")
        self.assertEqual(recv_exactly(good, 7, self.deadline()), b"secret\xff")
        self.assertEqual(tls_recv_until_closed(sock, self.deadline()), b"")
        out = d.wait_output(f"Client rejected: {name} SSL (client certificate CN 'mallory'")
        self.assertNotIn(f"Client connected: {name}", out)
        self.down(b"still alice", good)
        self.assert_opened_once(d)

    def test_rejected_name_frees_its_place(self) -> None:
        """A client rejected by allow_client_cn is closed by the server even
        while it keeps its own end open, and holds no place: with
        max_connections 1 the named client gets in after it."""
        self.pki = Pki(self.tempdir())
        alice = self.pki.issue_client("alice")
        mallory = self.pki.issue_client("mallory")
        port = free_port()
        block = {**self.pki.ssl_config(ca_certs=True), "allow_client_cn": ["alice"]}
        server = {"protocol": "ssl", "address": "127.0.0.1", "port": port, "ssl": block}
        d = self.start({**server, "max_connections": 1})
        sock = self.tls(port, self.pki.client_context(cert=mallory))
        name = name_of(sock)
        d.wait_output(f"Client rejected: {name} SSL")
        d.wait_output(f"Client disconnected: {name} SSL")
        good = self.tls(port, self.pki.client_context(cert=alice))
        d.wait_output(f"Client connected: {name_of(good)} SSL to {self.name} (1 client)")
        d.wait_holds(self.pty_.path)
        self.down(b"for alice", good)
        self.assertNotIn("Client refused", d.output())


class Limits(AccessCase):
    """max_connections of a server and of a port, refuse and kick_oldest."""

    def test_telnet_refused_gets_one_line(self) -> None:
        """A TELNET client over max_connections reads one line, then EOF;
        the client in place is undisturbed; a leaving client frees its place."""
        port = free_port()
        d = self.start(telnet_server(port, max_connections=1))
        first = self.telnet(port)
        d.wait_holds(self.pty_.path)
        second = self.connect(port)
        name = name_of(second)
        data, how = recv_until_closed(second, self.deadline())
        self.assertEqual(data, b"ser2tcp: port busy: max_connections 1 reached\r\n")
        self.assertEqual(how, "eof")
        d.wait_output(f"Client refused: {name} TELNET to {self.name} (max_connections 1 reached)")
        self.down(b"\xffstill served", telnet=(first,))
        self.up(first, b"up")
        first_name = name_of(first)
        first.close()
        d.wait_output(f"Client disconnected: {first_name} TELNET")
        third = self.telnet(port)
        d.wait_output(f"Client connected: {name_of(third)} TELNET to {self.name} (1 client)")
        d.wait_holds(self.pty_.path)
        self.down(b"third", telnet=(third,))

    def test_real_telnet_refused(self) -> None:
        """The real ``telnet`` program shows the refusal line to its user."""
        reason = missing("telnet", "tmux")
        if reason:
            raise self.skipTest(reason)
        port = free_port()
        d = self.start(telnet_server(port, max_connections=1))
        first = self.telnet(port)
        d.wait_holds(self.pty_.path)
        tmux = Tmux(f"telnet 127.0.0.1 {port}; sleep 30")
        self.addCleanup(tmux.close)
        screen = tmux.wait_for("Connection closed by foreign host")
        self.assertIn("ser2tcp: port busy: max_connections 1 reached", screen)
        d.wait_output("Client refused: 127.0.0.1:")
        self.down(b"first still here", telnet=(first,))

    def test_tcp_refused_gets_no_byte(self) -> None:
        """A raw TCP client over max_connections gets no byte (a program
        could take any for device data), then EOF."""
        port = free_port()
        d = self.start(tcp_server(port, max_connections=1))
        first = self.connect(port)
        d.wait_holds(self.pty_.path)
        second = self.connect(port)
        name = name_of(second)
        self.assert_refused_silently(second, b"AT\r\n")
        d.wait_output(f"Client refused: {name} TCP to {self.name} (max_connections 1 reached)")
        self.down(os.urandom(8192), first)
        self.up(first, b"<first only>")
        self.assert_opened_once(d)

    def test_kick_oldest_telnet(self) -> None:
        """With kick_oldest the newcomer joins and gets device data; the
        oldest reads why it was replaced, then EOF; the device stays open."""
        port = free_port()
        d = self.start(telnet_server(port, max_connections=1, on_full="kick_oldest"))
        first = self.telnet(port)
        first_name = name_of(first)
        d.wait_holds(self.pty_.path)
        self.down(b"one", telnet=(first,))
        second = self.telnet(port)
        second_name = name_of(second)
        data, how = recv_until_closed(first, self.deadline())
        self.assertEqual(how, "eof")
        prefix = f"ser2tcp: replaced by a new connection from {second_name}".encode()
        self.assertTrue(data.startswith(prefix), data)
        self.assertTrue(data.endswith(b"\r\n"), data)
        self.assertEqual(data.count(b"\n"), 1, data)
        out = d.wait_output(f"Client connected: {second_name} TELNET to {self.name} (1 client)")
        self.assertIn(f"Client disconnected: {first_name} TELNET: replaced by a new connection", out)
        self.down(b"two\xff", telnet=(second,))
        self.up(second, b"from the newcomer")
        self.assert_opened_once(d)

    def test_kick_oldest_tcp_replaces_the_oldest(self) -> None:
        """With max_connections 2 the third client replaces the first, the
        fourth the second; a kicked raw TCP client gets no byte, only EOF."""
        port = free_port()
        d = self.start(tcp_server(port, max_connections=2, on_full="kick_oldest"))
        a = self.connect(port)
        d.wait_output(f"Client connected: {name_of(a)} TCP")
        b = self.connect(port)
        d.wait_output(f"Client connected: {name_of(b)} TCP to {self.name} (2 clients)")
        d.wait_holds(self.pty_.path)
        self.down(b"ab", a, b)
        c = self.connect(port)
        self.assertEqual(recv_until_closed(a, self.deadline()), (b"", "eof"))
        d.wait_output(
            f"Client disconnected: {name_of(a)} TCP: replaced by a new connection from {name_of(c)}"
        )
        self.down(b"bc", b, c)
        e = self.connect(port)
        self.assertEqual(recv_until_closed(b, self.deadline()), (b"", "eof"))
        d.wait_output(
            f"Client disconnected: {name_of(b)} TCP: replaced by a new connection from {name_of(e)}"
        )
        self.down(b"ce", c, e)
        self.up(e, b"e")
        self.up(c, b"c")
        self.assert_opened_once(d)

    def test_port_and_server_limits_together(self) -> None:
        """Port max_connections 2 over a TCP and a TELNET server of 2 each:
        a third client on either is refused, whichever limit is reached."""
        tcp, tel = free_port(), free_port()
        d = self.start(tcp_server(tcp, max_connections=2), telnet_server(tel, max_connections=2), port_max=2)
        a = self.connect(tcp)
        b = self.telnet(tel)
        d.wait_output(f"Client connected: {name_of(b)} TELNET to {self.name} (2 clients)")
        d.wait_holds(self.pty_.path)
        # The port is full although neither server is.
        refused = self.connect(tcp)
        self.assert_refused_silently(refused, b"x")
        why = "the port's max_connections 2 reached"
        d.wait_output(f"Client refused: {name_of(refused)} TCP to {self.name} ({why})")
        refused = self.connect(tel)
        data, how = recv_until_closed(refused, self.deadline())
        self.assertEqual(data, b"ser2tcp: port busy: the port's max_connections 2 reached\r\n")
        self.assertEqual(how, "eof")
        self.down(b"\xffa and b", a, telnet=(b,))
        # One leaves: one more fits, on the other server.
        a_name = name_of(a)
        a.close()
        d.wait_output(f"Client disconnected: {a_name} TCP")
        c = self.telnet(tel)
        d.wait_output(f"Client connected: {name_of(c)} TELNET to {self.name} (2 clients)")
        # Now the TELNET server is full too: its own limit is named first.
        refused = self.connect(tel)
        data, how = recv_until_closed(refused, self.deadline())
        self.assertEqual((data, how), (b"ser2tcp: port busy: max_connections 2 reached\r\n", "eof"))
        refused = self.connect(tcp)
        self.assert_refused_silently(refused)
        self.down(b"b and c", telnet=(b, c))
        self.up(c, b"from c")
        self.assertEqual(d.output().count("Client refused"), 4)
        self.assert_opened_once(d)


class ReadWrite(AccessCase):
    """access "ro" and "wo"."""

    def test_read_only(self) -> None:
        """What ro clients (TCP and TELNET) type never reaches the device;
        only the rw client's bytes do, in order; ro clients receive device
        data; the discarded count is logged when they leave."""
        rw_port, ro_port, ro_tel = free_port(), free_port(), free_port()
        d = self.start(
            tcp_server(rw_port), tcp_server(ro_port, access="ro"), telnet_server(ro_tel, access="ro")
        )
        rw = self.connect(rw_port)
        ro = self.connect(ro_port)
        rot = self.telnet(ro_tel)
        d.wait_output(f"Client connected: {name_of(rot)} TELNET to {self.name} (3 clients)")
        d.wait_holds(self.pty_.path)
        self.down(bytes(range(256)) * 4, rw, ro, telnet=(rot,))
        expected = b""
        ro_sent = tel_sent = 0
        for i in range(20):
            for sock, text in ((ro, b"ro%d;" % i), (rot, b"RT%d;" % i), (rw, b"rw%d;" % i)):
                sock.sendall(text)
                if sock is rw:
                    expected += text
                elif sock is ro:
                    ro_sent += len(text)
                else:
                    tel_sent += len(text)
        rw.sendall(b"<end>")
        self.assertEqual(read_pipe(self.pty_.fd(), b"<end>", self.deadline()), expected + b"<end>")
        self.assertNotIn("discarded", d.output())
        ro_name, rot_name = name_of(ro), name_of(rot)
        ro.close()
        rot.close()
        d.wait_output(f"Client {ro_name} TCP: {ro_sent} byte(s) of input discarded (read-only server)")
        d.wait_output(f"Client {rot_name} TELNET: {tel_sent} byte(s) of input discarded (read-only server)")
        # Every ro byte was counted: none of them is on its way to the device.
        self.up(rw, b"<last>")
        self.assert_opened_once(d)

    def test_write_only(self) -> None:
        """A wo client's bytes reach the device; it is sent nothing while a
        rw client receives device data (a wo TELNET client only gets the
        negotiation)."""
        rw_port, wo_port, wo_tel = free_port(), free_port(), free_port()
        d = self.start(
            tcp_server(rw_port), tcp_server(wo_port, access="wo"), telnet_server(wo_tel, access="wo")
        )
        rw = self.connect(rw_port)
        wo = self.connect(wo_port)
        wot = self.telnet(wo_tel)
        d.wait_output(f"Client connected: {name_of(wot)} TELNET to {self.name} (3 clients)")
        d.wait_holds(self.pty_.path)
        self.up(wo, b"from wo\x00\xff")
        self.up(wot, b"from wo telnet")
        for _ in range(3):
            data = os.urandom(16384) + bytes(range(256))
            self.down(data, rw)
            # The rw client has it all: had the wo clients been sent it, it
            # would be in their sockets by now.
            assert_nothing_to_read(wo, 0.2)
            assert_nothing_to_read(wot, 0.2)
        self.up(wo, b"still connected")
        self.assertEqual(d.output().count("Client disconnected"), 0)


class HalfClose(AccessCase):
    """Clients that shut down their sending side still get the answer."""

    HALF_CLOSE = 1.5

    def ask(self, d: Daemon, sock: socket.socket, greeting: bytes = b"") -> None:
        """Request, FIN; the test answers as the device; the answer arrives,
        then EOF after about ``half_close`` seconds."""
        sock.sendall(b"AT\r\n")
        sock.shutdown(socket.SHUT_WR)
        fin_at = time.monotonic()
        self.assertEqual(self.pty_.read(4), b"AT\r\n")
        d.wait_holds(self.pty_.path)
        self.pty_.write(b"OK\r\n")
        data, how = recv_until_closed(sock, self.deadline(self.HALF_CLOSE + 10))
        elapsed = time.monotonic() - fin_at
        self.assertEqual(data, greeting + b"OK\r\n")
        self.assertEqual(how, "eof")
        self.assertGreaterEqual(elapsed, self.HALF_CLOSE - 0.05, "closed before half_close")
        self.assertLess(elapsed, self.HALF_CLOSE + 5)
        d.wait_holds(self.pty_.path, held=False)

    def test_tcp(self) -> None:
        """Raw TCP."""
        port = free_port()
        d = self.start(tcp_server(port, half_close=self.HALF_CLOSE))
        self.ask(d, self.connect(port))
        self.ask(d, self.connect(port))  # and again, from a closed device

    def test_telnet(self) -> None:
        """TELNET."""
        port = free_port()
        d = self.start(telnet_server(port, half_close=self.HALF_CLOSE))
        self.ask(d, self.connect(port), greeting=GREETING)

    def test_unix_socket(self) -> None:
        """Unix socket."""
        path = os.path.join(self.tempdir(), "s.sock")
        d = self.start(unix_server(path, half_close=self.HALF_CLOSE))
        self.ask(d, self.unix(path))

    def test_socat(self) -> None:
        """``printf 'AT\\r\\n' | socat -t 3 - TCP:...`` prints the answer."""
        reason = missing("socat")
        if reason:
            raise self.skipTest(reason)
        port = free_port()
        d = self.start(tcp_server(port, half_close=self.HALF_CLOSE))
        program = Program(["socat", "-t", "3", "-", f"TCP:127.0.0.1:{port}"])
        self.addCleanup(program.close)
        assert program.proc.stdin is not None and program.proc.stdout is not None
        program.write(b"AT\r\n")
        program.proc.stdin.close()
        self.assertEqual(self.pty_.read(4), b"AT\r\n")
        d.wait_holds(self.pty_.path)
        self.pty_.write(b"OK\r\n")
        self.assertEqual(program.read_until(b"OK\r\n"), b"OK\r\n")
        self.assertEqual(program.wait(), 0, program.stderr())
        d.wait_output("Client disconnected")
        d.wait_holds(self.pty_.path, held=False)

    def test_zero_drops_at_fin(self) -> None:
        """half_close 0: the client is dropped at its FIN and the device
        released."""
        port = free_port()
        d = self.start(tcp_server(port, half_close=0))
        sock = self.connect(port)
        d.wait_holds(self.pty_.path)
        sock.sendall(b"AT\r\n")
        self.assertEqual(self.pty_.read(4), b"AT\r\n")
        sock.shutdown(socket.SHUT_WR)
        fin_at = time.monotonic()
        self.assertEqual(recv_until_closed(sock, self.deadline()), (b"", "eof"))
        self.assertLess(time.monotonic() - fin_at, 1.0, "kept after its FIN")
        d.wait_holds(self.pty_.path, held=False)
        d.wait_output(f"Serial {self.name} closed")


class Keepalive(AccessCase):
    """TCP keepalive on accepted sockets, seen from outside the daemon."""

    def start_servers(self) -> tuple[Daemon, dict[str, tuple[int, float | None]]]:
        """TCP (20 s), TCP (null), TELNET (default 60 s), TLS (9 s)."""
        self.pki = Pki(self.tempdir())
        ports = {name: free_port() for name in ("tcp", "off", "telnet", "tls")}
        tls = {"protocol": "ssl", "address": "127.0.0.1", "port": ports["tls"], "ssl": self.pki.ssl_config()}
        d = self.start(
            tcp_server(ports["tcp"], keepalive=20),
            tcp_server(ports["off"], keepalive=None),
            telnet_server(ports["telnet"]),
            {**tls, "keepalive": 9},
        )
        return d, {
            "tcp": (ports["tcp"], 20.0),
            "off": (ports["off"], None),
            "telnet": (ports["telnet"], 60.0),
            "tls": (ports["tls"], 9.0),
        }

    def clients(self, d: Daemon, servers: dict[str, tuple[int, float | None]]) -> dict[str, socket.socket]:
        socks: dict[str, socket.socket] = {}
        for name, (port, _) in servers.items():
            if name == "tls":
                sock = self.pki.client_context().wrap_socket(self.connect(port), server_hostname="localhost")
                self.addCleanup(sock.close)
            else:
                sock = self.connect(port)
            socks[name] = sock
        d.wait_output("(4 clients)")
        return socks

    def test_ss_shows_keepalive_timer(self) -> None:
        """``ss -o`` shows the keepalive timer at most the configured idle
        time on the daemon's side (7200 s would be the kernel default), and
        no keepalive timer with ``keepalive: null``."""
        reason = missing("ss")
        if reason:
            raise self.skipTest(reason)
        d, servers = self.start_servers()
        socks = self.clients(d, servers)
        for name, (port, keepalive) in servers.items():
            local, peer = ("127.0.0.1", port), socks[name].getsockname()[:2]
            if keepalive is None:
                line = ss_settled_line(local, peer)
                self.assertNotIn("keepalive", line)
                continue
            idle = keepalive_timing(keepalive)[0]

            def timer(local: tuple[str, int] = local, peer: tuple[str, int] = peer) -> str | None:
                line = ss_line(local, peer)
                return line if line is not None and "timer:(keepalive," in line else None

            line = str(wait_until(timer, what=f"a keepalive timer on {name}", interval=0.05))
            shown = re.search(r"timer:\(keepalive,([^,]+),\d+\)", line)
            assert shown is not None, line
            left = ss_seconds(shown.group(1))
            self.assertLessEqual(left, idle + 0.5, line)
            self.assertGreater(left, idle - 5, line)

    def test_socket_options_of_the_daemon(self) -> None:
        """SO_KEEPALIVE and TCP_KEEPIDLE/INTVL/CNT of the daemon's sockets,
        read from a copy of its descriptors, are keepalive_timing()'s."""
        if not hasattr(os, "pidfd_open") or not hasattr(socket, "TCP_KEEPIDLE"):
            raise self.skipTest("needs pidfd_open and TCP_KEEPIDLE (Linux)")
        d, servers = self.start_servers()
        socks = self.clients(d, servers)
        try:
            os.close(dup_from(d.pid, 0))
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                raise self.skipTest(f"pidfd_getfd: {e.strerror}") from None
            raise
        for name, (port, keepalive) in servers.items():
            sock = daemon_socket(d.pid, ("127.0.0.1", port), socks[name].getsockname()[:2])
            try:
                on = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                timing = tuple(
                    sock.getsockopt(socket.IPPROTO_TCP, opt)
                    for opt in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
                )
            finally:
                sock.close()
            if keepalive is None:
                self.assertEqual(on, 0, name)
            else:
                self.assertNotEqual(on, 0, name)
                self.assertEqual(timing, keepalive_timing(keepalive), name)


class JoinLine(AccessCase):
    def test_join_line_names_the_count(self) -> None:
        """ "Client connected: <peer> <PROTO> to <device> (N clients)" counts
        the port's clients of every server, leavers excluded."""
        port, tport = free_port(), free_port()
        d = self.start(tcp_server(port), telnet_server(tport))
        a = self.connect(port)
        d.wait_output(f"Client connected: {name_of(a)} TCP to {self.name} (1 client)\n")
        b = self.telnet(tport)
        d.wait_output(f"Client connected: {name_of(b)} TELNET to {self.name} (2 clients)\n")
        c = self.connect(port)
        d.wait_output(f"Client connected: {name_of(c)} TCP to {self.name} (3 clients)\n")
        a_name = name_of(a)
        a.close()
        d.wait_output(f"Client disconnected: {a_name} TCP")
        e = self.connect(port)
        d.wait_output(f"Client connected: {name_of(e)} TCP to {self.name} (3 clients)\n")
