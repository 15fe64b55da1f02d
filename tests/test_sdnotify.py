"""systemd's notify protocol, against a fake ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ser2tcp.sdnotify import Notifier
from tests.helpers import (
    REPO,
    SER2TCP,
    Case,
    Daemon,
    clean_env,
    free_port,
    port_config,
    recv_exactly,
    run,
    tcp_server,
    ticks,
)


def notify_socket(case: SynchronousTestCase) -> tuple[socket.socket, str]:
    directory = tempfile.mkdtemp(prefix="s2t-notify-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    case.addCleanup(sock.close)
    case.addCleanup(os.unlink, path)
    return sock, path


class NotifierTests(SynchronousTestCase):
    def test_nothing_without_a_socket(self) -> None:
        clock = Clock()
        notifier = Notifier(clock, {"WATCHDOG_USEC": "1000000"})
        notifier.ready(lambda: "x")
        self.assertFalse(notifier.enabled)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_ready_watchdog_stopping(self) -> None:
        sock, path = notify_socket(self)
        sock.settimeout(5)
        clock = Clock()
        notifier = Notifier(clock, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        notifier.ready(lambda: "1 port(s), 1 open, 0 client(s)")
        self.assertEqual(sock.recv(4096), b"READY=1\nSTATUS=1 port(s), 1 open, 0 client(s)")
        clock.advance(1.0)  # half of WATCHDOG_USEC
        self.assertTrue(sock.recv(4096).startswith(b"WATCHDOG=1\n"))
        notifier.stopping()
        self.assertEqual(sock.recv(4096), b"STOPPING=1")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_watchdog_of_another_process_is_ignored(self) -> None:
        _, path = notify_socket(self)
        clock = Clock()
        notifier = Notifier(clock, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
        notifier.ready(lambda: "")
        self.assertEqual(clock.getDelayedCalls(), [])


class DaemonNotifyTests(Case):
    def test_ready_only_once_listening_then_pings_then_stopping(self) -> None:
        sock, path = notify_socket(self)
        pty = self.pty()
        port = free_port()
        config = self.config({"ports": [port_config(pty.path, tcp_server(port))]})
        env = clean_env(NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
        daemon = Daemon([SER2TCP, "-c", config], env=env)
        self.addCleanup(daemon.close)
        sock.settimeout(10)
        first = sock.recv(4096)
        self.assertTrue(first.startswith(b"READY=1\nSTATUS=1 port(s)"), first)
        # READY came after the listener was bound: a client connects at once.
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        pings = 0
        for _ in ticks(self.deadline(), 100):
            if sock.recv(4096).startswith(b"WATCHDOG=1"):
                pings += 1
            if pings == 3:
                break
        self.assertEqual(pings, 3)
        daemon.proc.send_signal(signal.SIGTERM)
        for _ in ticks(self.deadline(), 100):
            if sock.recv(4096) == b"STOPPING=1":
                break
        else:
            self.fail("no STOPPING=1")
        self.assertEqual(daemon.wait(), 0)


class UnitFileTests(Case):
    """The shipped units pass ``systemd-analyze verify`` without a remark."""

    def test_units_verify(self) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed (.ci/run installs it)")
        directory = self.tempdir()
        # The template is verified as an instance of it.
        for name, verified in (
            ("ser2tcp.service", "ser2tcp.service"),
            ("ser2tcp@.service", "ser2tcp@rack1.service"),
        ):
            unit = os.path.join(REPO, "systemd", name)
            with open(unit, encoding="utf-8") as f:
                text = f.read().replace("/usr/local/bin/ser2tcp", SER2TCP)  # an executable that exists here
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                f.write(text)
            result = run([analyze, "verify", os.path.join(directory, verified)])
            self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""), name)
            for setting in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "LimitNOFILE=65536"):
                self.assertIn(setting, text)
        self.assertIn("-c /etc/ser2tcp/%i.json", text)


class SocketActivationTests(Case):
    """A listening socket passed by systemd (``systemd-socket-activate``
    stands in for a .socket unit), with and without ``--fdname``."""

    def serve(self, *fdname: str) -> None:
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            raise SkipTest("systemd-socket-activate is not installed (.ci/run installs systemd)")
        pty = self.pty()
        port = free_port()
        server = {"protocol": "tcp", "endpoint": "systemd:domain=INET:index=0"}
        config = self.config({"ports": [port_config(pty.path, server)]})
        daemon = self.daemon([activate, "-l", f"127.0.0.1:{port}", *fdname, SER2TCP, "-c", config, "-v"])
        daemon.wait_output("Listening on 127.0.0.1")
        sock = self.connect(port)  # the first client starts ser2tcp
        daemon.wait_output("Client connected")
        daemon.wait_holds(pty.path)
        pty.write(b"from the device")
        self.assertEqual(recv_exactly(sock, 15, self.deadline()), b"from the device")

    def test_with_fdname(self) -> None:
        self.serve("--fdname=ser2tcp")

    def test_without_fdname(self) -> None:
        self.serve()

    def test_no_socket_passed_is_one_line(self) -> None:
        server = {"protocol": "tcp", "endpoint": "systemd:domain=INET:index=0"}
        result = run([SER2TCP, "-c", self.config({"ports": [port_config("/dev/x", server)]})])
        self.assertEqual(result.returncode, 1)
        (line,) = result.stderr.splitlines()
        self.assertIn("ports[0].servers[0].endpoint: systemd:domain=INET:index=0: systemd passed no", line)
