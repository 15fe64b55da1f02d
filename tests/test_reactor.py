"""Tests for ser2tcp.reactor: the epoll reactor without per-event log context.

It changes one method of Twisted's ``EPollReactor``, the one every callback
goes through, so Twisted's own reactor conformance tests (descriptor sets,
TCP, Unix sockets, aborting connections, system events) are run against it,
plus checks of what the change itself could break."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from typing import Any

from twisted.internet import main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.test import test_core, test_fdset, test_tcp, test_unix
from twisted.internet.test.connectionmixins import ConnectableProtocol, runProtocolsWithReactor
from twisted.internet.test.reactormixins import ReactorBuilder
from twisted.python import log
from twisted.trial.unittest import SynchronousTestCase

from ser2tcp.reactor import LeanEPollReactor

from .helpers import clean_env, port_config, run, tcp_server, write_config

LEAN = "ser2tcp.reactor.LeanEPollReactor"


class _LeanDifferences:
    """Where LeanEPollReactor differs from the reactors Twisted's tests expect:
    these replace Twisted's tests of the same name (in the builders that have
    them) with what holds instead."""

    endpoints: Any

    def test_logPrefix(self) -> None:
        """Transports still name their protocol, but callbacks run without
        the old-style log context: the one thing this reactor leaves out."""

        class Prefixed(ConnectableProtocol):
            def __init__(self, prefix: str) -> None:
                self._prefix = prefix
                self.system: Any = None
                self.transport_prefix: Any = None

            def connectionMade(self) -> None:
                self.transport.write(b"a")  # type: ignore[union-attr]

            def logPrefix(self) -> str:
                return self._prefix

            def dataReceived(self, data: bytes) -> None:
                self.system = log.context.get(log.ILogContext)["system"]
                self.transport_prefix = self.transport.logPrefix()  # type: ignore[union-attr]
                self.transport.write(b"b")  # type: ignore[union-attr]
                if b"b" in data:
                    self.transport.loseConnection()  # type: ignore[union-attr]

        client, server = Prefixed("Custom Client"), Prefixed("Custom Server")
        runProtocolsWithReactor(self, server, client, self.endpoints)  # type: ignore[arg-type]
        self.assertEqual((client.system, server.system), ("-", "-"))  # type: ignore[attr-defined]
        self.assertIn("Custom Client", client.transport_prefix)  # type: ignore[attr-defined]
        self.assertIn("Custom Server", server.transport_prefix)  # type: ignore[attr-defined]

    def test_lostFileDescriptor(self) -> None:
        """Twisted skips its version for every epoll reactor (by class name):
        closing a descriptor silently removes it from the epoll set.  What
        holds: a reused descriptor number never reaches the old owner."""
        reactor = self.buildReactor()  # type: ignore[attr-defined]
        called: list[bytes] = []
        a, b = socket.socketpair()
        victim = _Reader(reactor, a, lambda self_: called.append(b"victim"))
        reactor.addReader(victim)
        number = a.fileno()
        a.close()
        c, d = socket.socketpair()
        self.addCleanup(lambda: [s.close() for s in (b, c, d)])  # type: ignore[attr-defined]
        self.assertIn(number, (c.fileno(), d.fileno()))
        (d if c.fileno() == number else c).send(b"x")
        reactor.doPoll(0.1)
        self.assertEqual(called, [])
        reactor._selectables.pop(number, None)
        reactor._reads.discard(number)


def _on_lean(builder: type[ReactorBuilder]) -> dict[str, type]:
    """Twisted's test cases of ``builder``, run on LeanEPollReactor only."""
    attributes: dict[str, Any] = {"_reactors": [LEAN], "__module__": __name__}
    for name, replacement in vars(_LeanDifferences).items():
        if name.startswith("test_") and hasattr(builder, name):
            attributes[name] = replacement
    lean = type(builder.__name__, (builder,), attributes)
    return lean.makeTestCaseClasses()  # type: ignore[return-value]


for _builder in (
    test_fdset.ReactorFDSetTestsBuilder,
    test_core.SystemEventTestsBuilder,
    test_tcp.TCP4ClientTestsBuilder,
    test_tcp.TCPConnectionTestsBuilder,
    test_tcp.TCPTransportTestsBuilder,
    test_tcp.AbortConnectionTests,
    test_unix.UNIXTestsBuilder,
):
    globals().update(_on_lean(_builder))
del _builder


class _Reader(FileDescriptor):
    """One end of a socketpair, with a doRead the test chooses."""

    def __init__(self, reactor: Any, sock: socket.socket, do_read: Any) -> None:
        super().__init__(reactor)
        self.sock = sock
        self._do_read = do_read
        self.lost: list[Any] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> Any:
        return self._do_read(self)

    def connectionLost(self, reason: Any) -> None:
        self.lost.append(reason)
        super().connectionLost(reason)


class LeanReactorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = LeanEPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.pairs: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in self.pairs])

    def reader(self, do_read: Any) -> _Reader:
        a, b = socket.socketpair()
        self.pairs += [a, b]
        r = _Reader(self.reactor, a, do_read)
        r.peer = b  # type: ignore[attr-defined]
        self.reactor.addReader(r)
        return r

    def test_is_twisteds_epoll_reactor(self) -> None:
        from twisted.internet.epollreactor import EPollReactor

        self.assertIsInstance(self.reactor, EPollReactor)

    def test_reads_are_dispatched(self) -> None:
        got: list[bytes] = []
        r = self.reader(lambda self_: got.append(self_.sock.recv(100)))
        r.peer.send(b"abc")  # type: ignore[attr-defined]
        self.reactor.doPoll(1.0)
        self.assertEqual(got, [b"abc"])

    def test_error_in_callback_is_logged_and_loses_only_that_connection(self) -> None:
        def boom(self_: _Reader) -> None:
            self_.sock.recv(100)
            raise ZeroDivisionError("bad protocol")

        got: list[bytes] = []
        bad = self.reader(boom)
        good = self.reader(lambda self_: got.append(self_.sock.recv(100)))
        bad.peer.send(b"x")  # type: ignore[attr-defined]
        good.peer.send(b"y")  # type: ignore[attr-defined]
        self.reactor.doPoll(1.0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(bad.lost), 1)
        self.assertEqual(good.lost, [])
        self.assertEqual(got, [b"y"])
        self.assertNotIn(bad, self.reactor.getReaders())

    def test_error_escaping_disconnection_is_logged_and_polling_goes_on(self) -> None:
        # connectionLost itself raising gets past _doReadOrWrite's handler.
        got: list[bytes] = []
        bad = self.reader(lambda self_: main.CONNECTION_DONE)

        def broken_lost(reason: Any) -> None:
            raise RuntimeError("broken connectionLost")

        bad.connectionLost = broken_lost  # type: ignore[method-assign]
        good = self.reader(lambda self_: got.append(self_.sock.recv(100)))
        bad.peer.send(b"x")  # type: ignore[attr-defined]
        good.peer.send(b"y")  # type: ignore[attr-defined]
        self.reactor.doPoll(1.0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(got, [b"y"])

    def test_descriptor_removed_by_an_earlier_callback_is_skipped(self) -> None:
        order: list[str] = []
        second: list[_Reader] = []

        def first_read(self_: _Reader) -> None:
            self_.sock.recv(100)
            order.append("first")
            for other in second:
                self.reactor.removeReader(other)

        def second_read(self_: _Reader) -> None:
            self_.sock.recv(100)
            order.append("second")

        a = self.reader(first_read)
        b = self.reader(second_read)
        second.append(b)
        # Whichever epoll reports first removes the other, which must then
        # not be called although it is in the same batch of events.
        a._do_read, b._do_read = first_read, first_read
        second[:] = [a, b]
        a.peer.send(b"1")  # type: ignore[attr-defined]
        b.peer.send(b"2")  # type: ignore[attr-defined]
        self.reactor.doPoll(1.0)
        self.assertEqual(order, ["first"])

    def test_interrupted_poll_returns(self) -> None:
        import errno

        class Interrupted:
            def poll(self, timeout: float, n: int) -> Any:
                raise OSError(errno.EINTR, os.strerror(errno.EINTR))

        real = self.reactor._poller
        self.reactor._poller = Interrupted()
        try:
            self.assertIsNone(self.reactor.doPoll(0))
        finally:
            self.reactor._poller = real

    def test_no_log_context_is_pushed(self) -> None:
        systems: list[Any] = []

        def read(self_: _Reader) -> None:
            self_.sock.recv(100)
            systems.append(log.context.get(log.ILogContext)["system"])

        r = self.reader(read)
        r.peer.send(b"x")  # type: ignore[attr-defined]
        self.reactor.doPoll(1.0)
        self.assertEqual(systems, ["-"])


class InstallTests(SynchronousTestCase):
    """Which reactor a process gets (each run in a fresh interpreter)."""

    def python(self, code: str) -> str:
        result = run([sys.executable, "-c", textwrap.dedent(code)], env=clean_env())
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout.strip()

    def test_installed_when_no_reactor_is(self) -> None:
        out = self.python(
            """
            from ser2tcp.reactor import install_if_possible
            print(install_if_possible())
            from twisted.internet import reactor
            print(type(reactor).__name__)
            """
        )
        self.assertEqual(out.split(), ["True", "LeanEPollReactor"])

    def test_an_installed_reactor_is_kept(self) -> None:
        out = self.python(
            """
            from twisted.internet import selectreactor
            selectreactor.install()
            from ser2tcp.reactor import install_if_possible
            print(install_if_possible())
            from twisted.internet import reactor
            print(type(reactor).__name__)
            """
        )
        self.assertEqual(out.split(), ["False", "SelectReactor"])

    def test_the_ser2tcp_command_runs_on_it(self) -> None:
        # A port already taken: main() installs the reactor, fails to
        # listen, spins the reactor once and returns 1.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            config = write_config({"ports": [port_config("loop://", tcp_server(port))]}, self.mktemp_dir())
            out = self.python(
                f"""
                import ser2tcp.cli
                code = ser2tcp.cli.main(["-c", {config!r}])
                from twisted.internet import reactor
                print(code, type(reactor).__name__)
                """
            )
        self.assertEqual(out.split()[-2:], ["1", "LeanEPollReactor"])

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path
