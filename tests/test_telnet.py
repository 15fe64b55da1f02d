"""The TELNET server: option negotiation, IAC handling, refusals.

Unit tests drive :class:`ser2tcp.telnet.TelnetClient` over a StringTransport
with a fake hub (or a real PortHub on a fake device); integration tests run
the real daemon on a pty and reach it with the real ``telnet`` program (in
tmux) and with raw sockets.
"""

from __future__ import annotations

import gc
import os
import random
import socket
from typing import Any

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ser2tcp.config import ServerConfig
from ser2tcp.hub import PortHub
from ser2tcp.protocols import RawClient
from ser2tcp.telnet import TelnetClient
from tests.helpers import (
    Case,
    free_port,
    port_config,
    recv_exactly,
    recv_until_closed,
    send_all,
    tcp_server,
)
from tests.proto_helpers import (
    BINARY,
    DO,
    DONT,
    ECHO,
    GREETING,
    IAC,
    LINEMODE,
    SB,
    SE,
    SGA,
    WILL,
    WONT,
    InstantLink,
    Tmux,
    missing,
    read_pipe,
)

NOP, BRK, AYT, GA = b"\xf1", b"\xf3", b"\xf6", b"\xf9"
TTYPE, NAWS, STATUS = b"\x18", b"\x1f", b"\x05"
VERB_NAMES = {WILL: "WILL", WONT: "WONT", DO: "DO", DONT: "DONT"}

SERVER = ServerConfig(protocol="telnet", address="127.0.0.1", port=2323, where="ports[0].servers[0]")


def commands(wire: bytes) -> list[tuple[bytes, bytes]]:
    """A negotiation-only byte string as (verb, option) pairs."""
    assert len(wire) % 3 == 0, wire
    out = []
    for i in range(0, len(wire), 3):
        assert wire[i : i + 1] == IAC and wire[i + 1 : i + 2] in VERB_NAMES, wire
        out.append((wire[i + 1 : i + 2], wire[i + 2 : i + 3]))
    return out


class FakeHub:
    """Records what a client does to its hub."""

    name = "/dev/ttyFAKE0"

    def __init__(self) -> None:
        self.attached: list[Any] = []
        self.detached: list[Any] = []
        self.received: list[bytes] = []

    def attach(self, session: Any, access: str = "rw", replay: bool = False) -> None:
        self.attached.append(session)

    def event(self, text: str) -> None:
        pass

    def detach(self, session: Any) -> None:
        self.detached.append(session)

    def from_client(self, session: Any, data: bytes) -> None:
        self.received.append(data)

    def data(self) -> bytes:
        return b"".join(self.received)


def connect_client(hub: Any, cls: type[RawClient] = TelnetClient) -> tuple[Any, StringTransport]:
    client = cls(hub, SERVER, Clock())
    transport = StringTransport()
    client.makeConnection(transport)
    return client, transport


class Negotiation(SynchronousTestCase):
    def setUp(self) -> None:
        self.hub = FakeHub()
        self.client, self.transport = connect_client(self.hub)

    def exchange(self, data: bytes) -> bytes:
        """Feed the client's ``data``; what the server answered."""
        self.transport.clear()
        self.client.dataReceived(data)
        return self.transport.value()

    def test_greeting(self) -> None:
        self.assertEqual(self.transport.value(), GREETING)
        self.assertEqual(commands(self.transport.value()), [(WILL, ECHO), (WILL, SGA), (DO, BINARY)])
        self.assertEqual(self.hub.attached, [self.client])

    def test_sga_answer_gets_do_sga(self) -> None:
        self.assertEqual(commands(self.exchange(IAC + DO + SGA)), [(DO, SGA)])
        # The client agreeing in turn ends it.
        self.assertEqual(self.exchange(IAC + WILL + SGA), b"")

    def test_binary_answer_gets_will_binary(self) -> None:
        self.assertEqual(commands(self.exchange(IAC + WILL + BINARY)), [(WILL, BINARY)])
        self.assertEqual(self.exchange(IAC + DO + BINARY), b"")

    def test_echo_answer_ends_it(self) -> None:
        self.assertEqual(self.exchange(IAC + DO + ECHO), b"")

    def test_refusals_are_accepted_quietly(self) -> None:
        self.assertEqual(self.exchange(IAC + DONT + ECHO + IAC + DONT + SGA + IAC + WONT + BINARY), b"")
        # nothing was agreed, so nothing follows from them
        self.assertEqual(self.exchange(IAC + DONT + ECHO), b"")

    def test_supported_requests_agreed(self) -> None:
        # The client asks first: it will suppress go-ahead, we should do binary.
        self.assertEqual(commands(self.exchange(IAC + WILL + SGA)), [(DO, SGA)])
        self.assertEqual(commands(self.exchange(IAC + DO + BINARY)), [(WILL, BINARY)])
        # our own follow-ups, once the client answers, are not repeated
        self.assertEqual(self.exchange(IAC + DO + SGA), b"")
        self.assertEqual(self.exchange(IAC + WILL + BINARY), b"")

    def test_unsupported_requests_refused(self) -> None:
        cases = [
            (WILL, LINEMODE, DONT),
            (DO, LINEMODE, WONT),
            (WILL, TTYPE, DONT),
            (WILL, NAWS, DONT),
            (DO, STATUS, WONT),
            (WILL, ECHO, DONT),  # the client must not echo: we do
            (DO, b"\x2a", WONT),
            (WILL, b"\xfe", DONT),
        ]
        for verb, option, answer in cases:
            self.assertEqual(commands(self.exchange(IAC + verb + option)), [(answer, option)], option)

    def test_never_do_linemode(self) -> None:
        wire = self.transport.value()
        for data in (IAC + DO + SGA, IAC + WILL + BINARY, IAC + DO + ECHO, IAC + WILL + LINEMODE):
            wire += self.exchange(data)
        self.assertNotIn((DO, LINEMODE), commands(wire))
        self.assertNotIn((WILL, LINEMODE), commands(wire))

    def test_repeated_requests_bounded(self) -> None:
        # An already agreed option: repeating the request gets no reply.
        self.exchange(IAC + DO + SGA)
        self.assertEqual(self.exchange((IAC + DO + SGA) * 50), b"")
        self.assertEqual(self.exchange((IAC + DO + ECHO) * 50), b"")
        # A refused one: at most one reply per request, never more.
        replies = commands(self.exchange((IAC + WILL + TTYPE) * 50))
        self.assertLessEqual(len(replies), 50)
        self.assertEqual(set(replies), {(DONT, TTYPE)})

    def _converse(self, answer: dict[bytes, bytes]) -> int:
        """A naive client answering every command of the server; rounds taken."""
        pending = self.transport.value()
        for rounds in range(1, 21):
            if not pending:
                return rounds
            reply = b"".join(IAC + answer[verb] + option for verb, option in commands(pending))
            pending = self.exchange(reply)
        self.fail("negotiation loops")

    def test_agreeable_echoing_client_does_not_loop(self) -> None:
        rounds = self._converse({WILL: DO, DO: WILL, WONT: DONT, DONT: WONT})
        self.assertLessEqual(rounds, 4)

    def test_refusing_echoing_client_does_not_loop(self) -> None:
        rounds = self._converse({WILL: DONT, DO: WONT, WONT: DONT, DONT: WONT})
        self.assertLessEqual(rounds, 3)

    def test_lost_during_negotiation(self) -> None:
        self.client.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.hub.detached, [self.client])
        # The pending negotiations fail quietly: no unhandled error in a Deferred.
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])


class Data(SynchronousTestCase):
    def setUp(self) -> None:
        self.hub = FakeHub()
        self.client, self.transport = connect_client(self.hub)
        self.transport.clear()

    def test_device_iac_doubled(self) -> None:
        self.client.deliver(b"a\xffb\xff\xff")
        self.assertEqual(self.transport.value(), b"a\xff\xffb\xff\xff\xff\xff")

    def test_device_crlf_nul_unchanged(self) -> None:
        data = b"line\r\nx\r\x00y\rz\nw\x00\x00"
        self.client.deliver(data)
        self.assertEqual(self.transport.value(), data)

    def test_device_all_bytes(self) -> None:
        data = bytes(range(256))
        self.client.deliver(data)
        self.assertEqual(self.transport.value(), bytes(range(255)) + b"\xff\xff")

    def test_client_iac_iac(self) -> None:
        self.client.dataReceived(b"a\xff\xffb")
        self.assertEqual(self.hub.data(), b"a\xffb")

    def test_client_crlf_nul_unchanged(self) -> None:
        data = b"\r\n\r\x00\r\x00\n\x00"
        self.client.dataReceived(data)
        self.assertEqual(self.hub.data(), data)

    def test_commands_never_reach_hub(self) -> None:
        stream = (
            b"ab"
            + IAC * 2
            + b"c"
            + IAC
            + NOP
            + IAC
            + SB
            + TTYPE
            + b"\x00xterm"
            + IAC
            + SE
            + b"\r\n\r\x00"
            + IAC
            + AYT
            + IAC
            + BRK
            + IAC
            + GA
            + IAC
            + WILL
            + TTYPE
            + IAC
            + SE
            + b"z"
            + IAC
            + SB
            + NAWS
            + b"\x00\x50\xff\xff\x00\x18"
            + IAC
            + SE
        )
        self.client.dataReceived(stream)
        self.assertEqual(self.hub.data(), b"ab\xffc\r\n\r\x00z")
        self.assertEqual(commands(self.transport.value()), [(DONT, TTYPE)])

    def test_split_across_many_calls(self) -> None:
        stream = (
            b"ab"
            + IAC * 2
            + b"c"
            + IAC
            + SB
            + TTYPE
            + b"\x00xterm"
            + IAC
            + SE
            + b"\r\x00"
            + IAC
            + WILL
            + NAWS
            + b"\xff\xff"
            + IAC
            + NOP
            + b"d"
        )
        for i in range(len(stream)):
            self.client.dataReceived(stream[i : i + 1])
        self.assertEqual(self.hub.data(), b"ab\xffc\r\x00\xffd")
        self.assertEqual(commands(self.transport.value()), [(DONT, NAWS)])

    def test_random_splits(self) -> None:
        rng = random.Random(1)
        stream = (
            b"x" + IAC * 2 + IAC + DO + STATUS + b"\r\n" + IAC + SB + b"\x18abc" + IAC * 2 + IAC + SE + b"y"
        )
        for _ in range(50):
            hub = FakeHub()
            client, transport = connect_client(hub)
            i = 0
            for _ in range(len(stream) + 1):
                if i >= len(stream):
                    break
                step = rng.randint(1, 4)
                client.dataReceived(stream[i : i + step])
                i += step
            self.assertEqual(hub.data(), b"x\xff\r\ny")
            self.assertEqual(commands(transport.value()[len(GREETING) :]), [(WONT, STATUS)])


class WithPortHub(SynchronousTestCase):
    def test_refuse_sends_one_line_then_closes(self) -> None:
        link = InstantLink(fail="No such file or directory")
        hub = PortHub(link)
        client, transport = connect_client(hub)
        wire = transport.value()
        self.assertTrue(wire.startswith(GREETING), wire)
        text = wire[len(GREETING) :]
        self.assertTrue(text.endswith(b"\r\n"), text)
        self.assertEqual(text.count(b"\n"), 1, text)
        self.assertIn(b"No such file or directory", text)
        self.assertIn(b"/dev/ttyFAKE1", text)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(list(hub.sessions), [])

    def test_refuse_directly(self) -> None:
        hub = FakeHub()
        client, transport = connect_client(hub)
        transport.clear()
        client.refuse("cannot open serial port /dev/x: Permission denied")
        self.assertEqual(transport.value(), b"ser2tcp: cannot open serial port /dev/x: Permission denied\r\n")
        self.assertTrue(transport.disconnecting)

    def test_fan_out_escapes_per_protocol(self) -> None:
        link = InstantLink()
        hub = PortHub(link)
        telnet1, t1 = connect_client(hub)
        raw, r = connect_client(hub, RawClient)
        telnet2, t2 = connect_client(hub)
        for t in (t1, r, t2):
            t.clear()
        chunks = [b"\xff", b"a\xffb", b"plain", b"\xff\xff\r\n\x00"]
        for chunk in chunks:
            hub.from_device(chunk)
        raw_expected = b"".join(chunks)
        telnet_expected = raw_expected.replace(b"\xff", b"\xff\xff")
        self.assertEqual(r.value(), raw_expected)
        self.assertEqual(t1.value(), telnet_expected)
        self.assertEqual(t2.value(), telnet_expected)

    def test_client_bytes_reach_device(self) -> None:
        link = InstantLink()
        hub = PortHub(link)
        client, transport = connect_client(hub)
        assert link.device is not None
        for x in b"a" + IAC * 2 + IAC + DO + STATUS + b"b\r\x00":
            client.dataReceived(bytes((x,)))
        self.assertEqual(link.device.value(), b"a\xffb\r\x00")


# Integration: the real daemon on a pty


def telnet_config(pty_path: str, port: int, tcp_port: int | None = None) -> dict[str, Any]:
    servers = [{"protocol": "telnet", "address": "127.0.0.1", "port": port}]
    if tcp_port is not None:
        servers.append(tcp_server(tcp_port))
    return {"ports": [port_config(pty_path, *servers)]}


class TelnetDaemon(Case):
    def start(self, with_tcp: bool = False) -> None:
        self.pty_ = self.pty()
        self.port = free_port()
        self.tcp_port = free_port() if with_tcp else None
        listen = [self.port] + ([self.tcp_port] if self.tcp_port else [])
        self.d = self.ser2tcp(telnet_config(self.pty_.path, self.port, self.tcp_port), "-v", listen=listen)

    def telnet_socket(self) -> socket.socket:
        sock = self.connect(self.port)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.assertEqual(recv_exactly(sock, len(GREETING), self.deadline()), GREETING)
        self.d.wait_holds(self.pty_.path)
        return sock

    def test_real_telnet_character_mode_no_local_echo(self) -> None:
        reason = missing("telnet", "tmux")
        if reason:
            raise self.skipTest(reason)
        self.start()
        tmux = Tmux(f"telnet 127.0.0.1 {self.port}")
        self.addCleanup(tmux.close)
        self.d.wait_holds(self.pty_.path)
        # Device output after the negotiation: once it shows, the client has
        # seen our options.
        self.pty_.write(b"READY>")
        tmux.wait_for("READY>")
        tmux.send_literal("x")
        # The key reaches the device alone, without Enter.
        self.assertEqual(self.pty_.read(1), b"x")
        tmux.send_literal("yz")
        self.assertEqual(self.pty_.read(2), b"yz")
        self.pty_.write(b"<ack>")
        screen = tmux.wait_for("<ack>")
        line = next(line for line in screen.splitlines() if "READY>" in line)
        # Only what the device sent: no local echo of x, y or z.
        self.assertEqual(line.rstrip(), "READY><ack>")
        self.assertNotIn("x", screen.split("READY>", 1)[1])

    def test_split_iac_sequences_byte_by_byte(self) -> None:
        self.start()
        sock = self.telnet_socket()
        stream = (
            b"A"
            + IAC * 2
            + b"B"
            + IAC
            + DO
            + SGA
            + IAC
            + SB
            + NAWS
            + b"\x00\x50\x00\x18"
            + IAC
            + SE
            + b"\r\x00\r\n"
            + IAC
            + NOP
            + IAC
            + WILL
            + TTYPE
            + IAC
            + AYT
            + b"\x00\xfe"
            + IAC * 2
        )
        for x in stream:
            sock.sendall(bytes((x,)))
        expected = b"A\xffB\r\x00\r\n\x00\xfe\xff"
        self.assertEqual(self.pty_.read(len(expected)), expected)
        # Nothing more: a marker sent after comes right behind.
        sock.sendall(b"#")
        self.assertEqual(self.pty_.read(1), b"#")

    def test_device_bytes_doubled(self) -> None:
        self.start()
        sock = self.telnet_socket()
        data = bytes(range(256)) * 4 + b"\xff\xff\r\n\x00"
        self.pty_.write(data)
        expected = data.replace(b"\xff", b"\xff\xff")
        self.assertEqual(recv_exactly(sock, len(expected), self.deadline()), expected)

    def test_garbage_does_not_disturb_others(self) -> None:
        self.start(with_tcp=True)
        assert self.tcp_port is not None
        good = self.connect(self.tcp_port)
        self.d.wait_holds(self.pty_.path)
        bad = self.connect(self.port)
        self.assertEqual(recv_exactly(bad, len(GREETING), self.deadline()), GREETING)
        rng = random.Random(7)
        specials = [0xFF] * 4 + [0xFA, 0xF0, 0xFB, 0xFC, 0xFD, 0xFE, 0xF1, 0xF6, 0x0D, 0x00]
        garbage = bytes(
            rng.choice(specials) if rng.random() < 0.3 else rng.randrange(256) for _ in range(20000)
        )
        # "xyz" completes any command the random bytes ended in the middle of.
        garbage += b"xyz"
        send_all(bad, garbage, self.deadline())
        # then a subnegotiation of 1 MB that does not end
        send_all(bad, IAC + SB + TTYPE + bytes(range(255)) * 4112, self.deadline())
        # The other client is served: both directions.
        self.pty_.write(b"to-all")
        self.assertEqual(recv_exactly(good, 6, self.deadline()), b"to-all")
        good.sendall(b"<marker>")
        read_pipe(self.pty_.fd(), b"<marker>", self.deadline())
        self.assertTrue(self.d.running())
        # The SB ends at last: what follows it flows.
        bad.sendall(IAC + SE + b"after")
        self.assertEqual(self.pty_.read(5), b"after")
        self.assertTrue(self.d.running())
        self.assertNotIn("Traceback", self.d.output())
        # a new TELNET client still gets served too
        newcomer = self.connect(self.port)
        self.assertEqual(recv_exactly(newcomer, len(GREETING), self.deadline()), GREETING)
        self.pty_.write(b"\xff!")
        self.assertEqual(recv_exactly(newcomer, 3, self.deadline()), b"\xff\xff!")
        self.assertEqual(recv_exactly(good, 2, self.deadline()), b"\xff!")

    def test_unopenable_device_gets_one_line(self) -> None:
        directory = self.tempdir()
        device = os.path.join(directory, "ttyGONE")
        port = free_port()
        d = self.ser2tcp(telnet_config(device, port), listen=[port])
        sock = self.connect(port)
        data, how = recv_until_closed(sock, self.deadline())
        self.assertEqual(how, "eof")
        self.assertTrue(data.startswith(GREETING), data)
        text = data[len(GREETING) :]
        self.assertTrue(text.endswith(b"\r\n"), text)
        self.assertEqual(text.count(b"\n"), 1, text)
        self.assertIn(device.encode(), text)
        self.assertIn(b"No such file", text)
        self.assertTrue(d.running())
        # and the next client gets the same, the daemon keeps serving
        data2, _ = recv_until_closed(self.connect(port), self.deadline())
        self.assertEqual(data2, data)
        d.wait_output("cannot open")
        self.assertEqual(d.stop(), 0)
