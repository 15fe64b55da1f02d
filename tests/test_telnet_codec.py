"""TelnetDecoder and escape: TELNET byte handling without sockets.

The decoder must take every command out of a client's stream, keep data
byte-exact (no CR/LF/NUL rewriting), understand commands split anywhere
across chunks, never raise and never buffer without bound.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ser2tcp.telnet_codec import MAX_SUBNEGOTIATION, TelnetDecoder, escape

IAC, DONT, DO, WONT, WILL, SB, SE = 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0xFA, 0xF0
NOP, DM, BRK, IP, AO, AYT, EC, EL, GA = 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9


def b(*values: int) -> bytes:
    return bytes(values)


def decode(*chunks: bytes) -> list:
    """All events of feeding ``chunks`` one after the other to one decoder."""
    decoder = TelnetDecoder()
    events: list = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def data_of(events: list) -> bytes:
    return b"".join(e for e in events if isinstance(e, bytes))


def commands_of(events: list) -> list:
    return [e for e in events if not isinstance(e, bytes)]


def normalise(events: list) -> list:
    """Events with adjacent data joined and empty data dropped."""
    out: list = []
    for e in events:
        if isinstance(e, bytes):
            if not e:
                continue
            if out and isinstance(out[-1], bytes):
                out[-1] += e
                continue
        out.append(e)
    return out


class Escape(SynchronousTestCase):
    def test_doubles_iac(self) -> None:
        self.assertEqual(escape(b"\xff"), b"\xff\xff")
        self.assertEqual(escape(b"a\xffb\xff\xff"), b"a\xff\xffb\xff\xff\xff\xff")

    def test_everything_else_unchanged(self) -> None:
        others = bytes(range(255))
        self.assertEqual(escape(others), others)
        self.assertEqual(escape(b""), b"")
        self.assertEqual(escape(b"\r\n\r\x00\n"), b"\r\n\r\x00\n")

    def test_all_bytes(self) -> None:
        data = bytes(range(256)) * 3
        self.assertEqual(escape(data), (bytes(range(255)) + b"\xff\xff") * 3)


class Decoder(SynchronousTestCase):
    def test_plain_data(self) -> None:
        self.assertEqual(decode(b"hello"), [b"hello"])
        self.assertEqual(decode(b""), [])

    def test_iac_iac_is_one_ff(self) -> None:
        self.assertEqual(decode(b"a\xff\xffb"), [b"a\xffb"])
        self.assertEqual(decode(b"\xff\xff\xff\xff"), [b"\xff\xff"])

    def test_iac_iac_split(self) -> None:
        self.assertEqual(data_of(decode(b"a\xff", b"\xffb")), b"a\xffb")
        self.assertEqual(commands_of(decode(b"a\xff", b"\xffb")), [])

    def test_verbs_with_surrounding_data(self) -> None:
        for verb in (WILL, WONT, DO, DONT):
            self.assertEqual(
                decode(b"hello" + b(IAC, verb, 1) + b"world"),
                [b"hello", ("verb", verb, 1), b"world"],
            )

    def test_verb_split_byte_by_byte(self) -> None:
        stream = b"hello" + b(IAC, WILL, 1) + b"world"
        events = decode(*[stream[i : i + 1] for i in range(len(stream))])
        self.assertEqual(normalise(events), [b"hello", ("verb", WILL, 1), b"world"])

    def test_verb_option_may_be_any_byte(self) -> None:
        self.assertEqual(decode(b(IAC, DO, IAC) + b"x"), [("verb", DO, IAC), b"x"])
        self.assertEqual(decode(b(IAC, DONT, SE)), [("verb", DONT, SE)])

    def test_subnegotiation(self) -> None:
        stream = b"ab" + b(IAC, SB, 24, 0) + b"xterm" + b(IAC, SE) + b"cd"
        self.assertEqual(decode(stream), [b"ab", ("sb", b"\x18\x00xterm"), b"cd"])

    def test_subnegotiation_split_byte_by_byte(self) -> None:
        stream = b"ab" + b(IAC, SB, 31, 0, 80, 0, 24) + b(IAC, SE) + b"cd"
        events = decode(*[stream[i : i + 1] for i in range(len(stream))])
        self.assertEqual(normalise(events), [b"ab", ("sb", b(31, 0, 80, 0, 24)), b"cd"])

    def test_iac_iac_inside_subnegotiation(self) -> None:
        stream = b(IAC, SB, 31, 0, IAC, IAC, 0, 24, IAC, SE) + b"z"
        self.assertEqual(decode(stream), [("sb", b(31, 0, IAC, 0, 24)), b"z"])
        split = decode(b(IAC, SB, 31, 0, IAC), b(IAC, 0, 24, IAC), b(SE) + b"z")
        self.assertEqual(normalise(split), [("sb", b(31, 0, IAC, 0, 24)), b"z"])

    def test_data_bytes_inside_subnegotiation_do_not_leak(self) -> None:
        events = decode(b(IAC, SB) + b"secret\r\n\x00" + b(IAC, SE))
        self.assertEqual(data_of(events), b"")
        self.assertEqual(events, [("sb", b"secret\r\n\x00")])

    def test_bare_commands(self) -> None:
        for cmd in (SE, NOP, DM, BRK, IP, AO, AYT, EC, EL, GA, 0x00, 0x01, 0x7F, 0xEF):
            events = decode(b"a" + b(IAC, cmd) + b"b")
            self.assertEqual(events, [b"a", ("command", cmd), b"b"], hex(cmd))

    def test_bare_commands_split(self) -> None:
        for cmd in (SE, NOP, BRK, AYT, GA, 0x42):
            events = decode(b"a\xff", b(cmd), b"b")
            self.assertEqual(normalise(events), [b"a", ("command", cmd), b"b"], hex(cmd))

    def test_crlf_nul_unchanged(self) -> None:
        for data in (b"a\r\nb", b"a\r\x00b", b"a\rb", b"\r", b"\x00", b"\n", b"\x00\x00\r\r\n\n"):
            self.assertEqual(decode(data), [data])
            self.assertEqual(data_of(decode(b(IAC, NOP) + data)), data)
            # byte by byte, and next to IAC IAC
            self.assertEqual(data_of(decode(*[bytes((x,)) for x in data])), data)
            self.assertEqual(data_of(decode(data + b"\xff\xff" + data)), data + b"\xff" + data)

    def test_sb_ended_by_another_command(self) -> None:
        # IAC <not SE> inside SB: the SB ends, the command is taken; no data leaks.
        events = decode(b(IAC, SB, 24) + b"ab" + b(IAC, WILL, 3) + b"x")
        self.assertEqual(events, [("sb", b"\x18ab"), ("verb", WILL, 3), b"x"])

    def test_long_unterminated_subnegotiation_is_bounded(self) -> None:
        decoder = TelnetDecoder()
        events = decoder.feed(b"before" + b(IAC, SB, 24))
        chunk = bytes(range(0, 255)) * 257  # no IAC, about 64 KB
        total = 0
        for _ in range(17):  # more than 1 MB
            events += decoder.feed(chunk)
            total += len(chunk)
            self.assertLessEqual(len(decoder._sb), MAX_SUBNEGOTIATION)
        self.assertGreaterEqual(total, 1 << 20)
        self.assertEqual(events, [b"before"])
        events = decoder.feed(b(IAC, SE) + b"after\xff\xff")
        self.assertEqual(len(events), 2)
        kind, payload = events[0]
        self.assertEqual(kind, "sb")
        self.assertLessEqual(len(payload), MAX_SUBNEGOTIATION)
        self.assertEqual(payload[:3], b"\x18" + chunk[:2])
        self.assertEqual(events[1], b"after\xff")
        # The decoder is back to normal afterwards.
        self.assertEqual(decoder.feed(b"more" + b(IAC, DO, 1)), [b"more", ("verb", DO, 1)])

    def test_long_subnegotiation_with_iac_iac(self) -> None:
        decoder = TelnetDecoder()
        decoder.feed(b(IAC, SB))
        for _ in range(200):  # 200 KB, all of it IAC IAC
            decoder.feed(b"\xff\xff" * 512)
            self.assertLessEqual(len(decoder._sb), MAX_SUBNEGOTIATION)
        events = decoder.feed(b(IAC, SE) + b"ok")
        self.assertEqual(events[-1], b"ok")
        self.assertLessEqual(len(events[0][1]), MAX_SUBNEGOTIATION)

    def test_state_kept_between_chunks(self) -> None:
        decoder = TelnetDecoder()
        self.assertEqual(decoder.feed(b"x\xff"), [b"x"])
        self.assertEqual(decoder.feed(b"\xfb"), [])
        self.assertEqual(decoder.feed(b"\x01y"), [("verb", WILL, 1), b"y"])


# Property tests

_SPECIAL = [IAC] * 6 + [SB, SE, WILL, WONT, DO, DONT, NOP, BRK, AYT, GA, 0x00, 0x0D, 0x0A]
_byte = st.one_of(st.sampled_from(_SPECIAL), st.integers(0, 255))
_stream = st.lists(_byte, max_size=200).map(bytes)
_PROPERTY = settings(
    max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def _stream_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    stream = draw(_stream)
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=12))
    return stream, sorted(cuts)


def _pieces(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(stream)]
    return [stream[a:z] for a, z in zip(bounds, bounds[1:])]


def _reference(stream: bytes) -> list:
    """A byte-at-a-time model of the decoder, written from the TELNET rules."""
    events: list = []
    out = bytearray()
    state, verb, sb = "data", 0, bytearray()

    def flush() -> None:
        if out:
            events.append(bytes(out))
            out.clear()

    i = 0
    while i < len(stream):
        x = stream[i]
        i += 1
        if state == "data":
            if x == IAC:
                state = "iac"
            else:
                out.append(x)
        elif state == "iac":
            if x == IAC:
                out.append(IAC)
                state = "data"
            elif x in (WILL, WONT, DO, DONT):
                verb, state = x, "verb"
            elif x == SB:
                sb, state = bytearray(), "sb"
            else:
                flush()
                events.append(("command", x))
                state = "data"
        elif state == "verb":
            flush()
            events.append(("verb", verb, x))
            state = "data"
        elif state == "sb":
            if x == IAC:
                state = "sb-iac"
            elif len(sb) < MAX_SUBNEGOTIATION:
                sb.append(x)
        else:  # sb-iac
            if x == IAC:
                if len(sb) < MAX_SUBNEGOTIATION:
                    sb.append(IAC)
                state = "sb"
            else:
                flush()
                events.append(("sb", bytes(sb)))
                if x == SE:
                    state = "data"
                else:  # a command ends the subnegotiation
                    state = "iac"
                    i -= 1
    flush()
    return events


class Properties(SynchronousTestCase):
    @_PROPERTY
    @given(_stream_and_cuts())
    def test_split_anywhere_same_result(self, case: tuple[bytes, list[int]]) -> None:
        stream, cuts = case
        whole = decode(stream)
        split = decode(*_pieces(stream, cuts))
        self.assertEqual(data_of(split), data_of(whole))
        self.assertEqual(commands_of(split), commands_of(whole))
        self.assertEqual(normalise(split), normalise(whole))

    @_PROPERTY
    @given(st.binary(max_size=300), st.lists(st.integers(0, 700), max_size=8))
    def test_escape_then_decode_is_identity(self, data: bytes, cuts: list[int]) -> None:
        escaped = escape(data)
        self.assertEqual(decode(escaped), [data] if data else [])
        cuts = sorted(min(c, len(escaped)) for c in cuts)
        self.assertEqual(data_of(decode(*_pieces(escaped, cuts))), data)

    @_PROPERTY
    @given(st.lists(st.one_of(_stream, st.binary(max_size=1000)), max_size=8))
    def test_never_raises_and_stays_bounded(self, chunks: list[bytes]) -> None:
        decoder = TelnetDecoder()
        for chunk in chunks:
            events = decoder.feed(chunk)
            self.assertIsInstance(events, list)
            for e in events:
                self.assertTrue(isinstance(e, (bytes, tuple)))
                if isinstance(e, tuple) and e[0] == "sb":
                    self.assertLessEqual(len(e[1]), MAX_SUBNEGOTIATION)
            self.assertLessEqual(len(decoder._sb), MAX_SUBNEGOTIATION)

    @_PROPERTY
    @given(_stream)
    def test_matches_reference_model(self, stream: bytes) -> None:
        self.assertEqual(normalise(decode(stream)), normalise(_reference(stream)))
