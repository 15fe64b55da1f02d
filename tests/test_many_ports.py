"""Many ports under the usual soft descriptor limit: the daemon raises it
to the hard one, so 128 ports with 8 clients each (over 1,800 descriptors)
all work when it is started with ``ulimit -Sn 1024``."""

from __future__ import annotations

import resource
import select
import sys
from typing import Any

from twisted.trial.unittest import SkipTest

from tests.helpers import SER2TCP, Case, quiet_ports, tcp_server, ticks

PORTS = 128
CLIENTS = 8
#: The soft limit a login shell or a systemd unit starts with.
SOFT = 1024


def with_soft_limit(argv: list[str], soft: int) -> list[str]:
    """``argv`` run with a soft RLIMIT_NOFILE of ``soft`` (hard unchanged)."""
    code = (
        "import os, resource, sys; hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, hard)); os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code, *argv]


class ManyPortsTests(Case):
    def setUp(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = PORTS * (5 + 1 + CLIENTS) + 200
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SkipTest(f"the hard descriptor limit {hard} is below the {need} this test needs")
        if soft != resource.RLIM_INFINITY and soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))  # for our own sockets and ptys
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))

    def test_every_client_of_every_port_gets_device_data(self) -> None:
        ptys = [self.pty() for _ in range(PORTS)]
        ports = quiet_ports(PORTS)
        config: dict[str, Any] = {
            "ports": [
                {
                    "name": f"p{i:03d}",
                    "serial": {"port": pty.path},
                    "open": "always",
                    "servers": [tcp_server(port)],
                }
                for i, (pty, port) in enumerate(zip(ptys, ports))
            ]
        }
        path = self.config(config)
        daemon = self.daemon(with_soft_limit([SER2TCP, "-c", path], SOFT))
        daemon.wait_listening(ports, timeout=30)
        clients = [[self.connect(port) for _ in range(CLIENTS)] for port in ports]
        for group in clients:
            for sock in group:
                sock.setblocking(False)
        owner = {sock: i for i, group in enumerate(clients) for sock in group}
        got: dict[Any, bytes] = {sock: b"" for sock in owner}

        poller = select.poll()  # select() stops at descriptor 1023
        by_fd = {}
        for sock in owner:
            poller.register(sock, select.POLLIN)
            by_fd[sock.fileno()] = sock

        def read_ready(timeout: float) -> None:
            for fd, _ in poller.poll(timeout * 1000):
                sock = by_fd[fd]
                data = sock.recv(65536)
                if not data:
                    raise AssertionError(
                        f"port {owner[sock]}: a client was closed: {daemon.output()[-2000:]}"
                    )
                got[sock] += data

        # Every client has joined once a byte written after its connect reached it.
        deadline = self.deadline(60)
        for _ in ticks(deadline, 200):
            waiting = {owner[s] for s, data in got.items() if not data}
            if not waiting:
                break
            for i in waiting:
                ptys[i].write(b"\0")
            read_ready(0.2)
        else:
            self.fail(f"clients of {len(waiting)} port(s) never got data: {daemon.output()[-2000:]}")
        messages = [f"device of port {i:03d}\n".encode() * 20 for i in range(PORTS)]
        for pty, message in zip(ptys, messages):
            pty.write(message)
        for _ in ticks(deadline, 2000):
            missing = [s for s, data in got.items() if not data.lstrip(b"\0").startswith(messages[owner[s]])]
            if not missing:
                break
            read_ready(0.2)
        else:
            self.fail(f"{len(missing)} of {PORTS * CLIENTS} clients lack their port's data")
        for sock, data in got.items():
            self.assertEqual(data.lstrip(b"\0"), messages[owner[sock]])
        self.assertNotIn("Out of file descriptors", daemon.output())
        self.assertTrue(daemon.running())
