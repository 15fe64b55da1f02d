"""Unix socket servers ("protocol": "socket"): the socket file's mode, data
both ways, stale sockets, paths in use, and cleaning up on exit.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import Any

from tests.helpers import (
    SER2TCP,
    Case,
    Daemon,
    free_port,
    port_config,
    port_name,
    recv_exactly,
    recv_until_closed,
    run,
    tcp_server,
    wait_until,
)
from tests.proto_helpers import Program, missing


def socket_server(path: str, **extra: Any) -> dict[str, Any]:
    return {"protocol": "socket", "address": path, **extra}


class UnixSocketServer(Case):
    def setUp(self) -> None:
        self.dir = self.tempdir()
        self.path = os.path.join(self.dir, "ser2tcp.sock")
        self.pty_ = self.pty()

    def start(self, *servers: dict[str, Any], wait_for: tuple[str, ...] | None = None) -> Daemon:
        if not servers:
            servers = (socket_server(self.path),)
        d = self.ser2tcp({"ports": [port_config(self.pty_.path, *servers)]}, "-v")
        for path in wait_for if wait_for is not None else (self.path,):
            d.wait_output(f"Listening: SOCKET {path}\n")
        return d

    def unix(self, path: str | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.settimeout(10)
        sock.connect(path or self.path)
        return sock

    def fails_to_start(self) -> str:
        """Start on ``self.path``; expect exit 1 and one line naming it."""
        config = self.config({"ports": [port_config(self.pty_.path, socket_server(self.path))]})
        result = run([SER2TCP, "-c", config], timeout=20)
        self.assertEqual(result.returncode, 1, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(self.path, lines[0])
        self.assertIn("ports[0].servers[0]", lines[0])
        return lines[0]

    def both_ways(self, d: Daemon, sock: socket.socket) -> None:
        d.wait_holds(self.pty_.path)
        down = bytes(range(256)) * 8 + os.urandom(1000)
        self.pty_.write(down)
        self.assertEqual(recv_exactly(sock, len(down), self.deadline()), down)
        up = os.urandom(3000) + bytes(range(256))
        sock.sendall(up)
        self.assertEqual(self.pty_.read(len(up)), up)

    def test_mode_and_data(self) -> None:
        other = os.path.join(self.dir, "private.sock")
        d = self.start(
            socket_server(self.path, mode="0660"),
            socket_server(other, mode="0600"),
            wait_for=(self.path, other),
        )
        st = os.stat(self.path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
        self.assertEqual(stat.S_IMODE(os.stat(other).st_mode), 0o600)
        sock = self.unix()
        self.both_ways(d, sock)
        out = d.wait_output(f"Client connected: {self.path} SOCKET to {port_name(self.pty_.path)}")
        self.assertNotIn("Client connected: ?", out)

    def test_default_mode_is_a_socket(self) -> None:
        self.start()
        self.assertTrue(stat.S_ISSOCK(os.stat(self.path).st_mode))

    def test_default_mode_follows_the_umask(self) -> None:
        # Without "mode" the socket is a new file like any other: a umask of
        # 077 (or systemd's UMask=) keeps other users away from the device.
        config = self.config({"ports": [port_config(self.pty_.path, socket_server(self.path))]})
        for umask, expected in (("077", 0o600), ("027", 0o640), ("002", 0o664)):
            d = self.daemon(["sh", "-c", f'umask {umask} && exec "$0" -c "$1" -v', SER2TCP, config])
            d.wait_output(f"Listening: SOCKET {self.path}\n")
            self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), expected, umask)
            self.assertEqual(d.stop(timeout=15), 0)
            wait_until(lambda: not os.path.exists(self.path), what="the socket file removed")

    def test_socat(self) -> None:
        reason = missing("socat")
        if reason:
            raise self.skipTest(reason)
        d = self.start()
        client = Program(["socat", "-", f"UNIX-CONNECT:{self.path}"])
        self.addCleanup(client.close)
        d.wait_holds(self.pty_.path)
        up = bytes(range(256)) + b"\r\n\x00end"
        client.write(up)
        self.assertEqual(self.pty_.read(len(up)), up)
        down = bytes(reversed(range(256))) + b"<eom>"
        self.pty_.write(down)
        self.assertEqual(client.read_until(b"<eom>"), down)

    def test_path_with_colon_and_equals(self) -> None:
        path = os.path.join(self.dir, "a:b=c\\d.sock")
        d = self.start(socket_server(path, mode="0600"), wait_for=(path,))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.both_ways(d, self.unix(path))

    def test_stale_socket_replaced(self) -> None:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(self.path)
        stale.close()  # the file stays: nobody listens on it
        self.assertTrue(stat.S_ISSOCK(os.lstat(self.path).st_mode))
        with self.assertRaises(ConnectionRefusedError):
            self.unix()
        d = self.start()
        self.both_ways(d, self.unix())

    def test_live_socket_not_taken(self) -> None:
        owner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(owner.close)
        owner.bind(self.path)
        owner.listen(8)
        line = self.fails_to_start()
        self.assertIn("in use", line)
        # The socket is still there and still ours.
        self.assertTrue(stat.S_ISSOCK(os.lstat(self.path).st_mode))
        client = self.unix()
        owner.settimeout(10)
        # The daemon's probe may be queued before our client: it is closed.
        for _ in range(4):
            conn, _ = owner.accept()
            self.addCleanup(conn.close)
            try:
                conn.sendall(b"owner")
                conn.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                continue
            if recv_until_closed(client, self.deadline(2))[0] == b"owner":
                break
        else:
            self.fail("the owner's socket does not reach its clients any more")

    def test_regular_file_not_removed(self) -> None:
        with open(self.path, "wb") as f:
            f.write(b"precious")
        line = self.fails_to_start()
        self.assertIn("not a socket", line)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"precious")

    def test_directory_not_removed(self) -> None:
        os.mkdir(self.path)
        inside = os.path.join(self.path, "keep")
        with open(inside, "w") as f:
            f.write("x")
        line = self.fails_to_start()
        self.assertIn("directory", line)
        self.assertTrue(os.path.isfile(inside))

    def test_missing_directory(self) -> None:
        self.path = os.path.join(self.dir, "no", "such", "dir.sock")
        line = self.fails_to_start()
        self.assertIn("No such file or directory", line)

    def test_symlink_not_followed(self) -> None:
        target = os.path.join(self.dir, "target")
        with open(target, "w") as f:
            f.write("x")
        os.symlink(target, self.path)
        self.fails_to_start()
        self.assertTrue(os.path.islink(self.path))
        self.assertTrue(os.path.isfile(target))

    def test_removed_after_sigterm(self) -> None:
        d = self.start()
        sock = self.unix()
        d.wait_holds(self.pty_.path)
        self.assertTrue(os.path.exists(self.path))
        self.assertEqual(d.stop(), 0)
        self.assertFalse(os.path.lexists(self.path))
        sock.settimeout(5)
        self.assertEqual(sock.recv(10), b"")

    def test_not_left_behind_when_another_listener_fails(self) -> None:
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        config = self.config(
            {"ports": [port_config(self.pty_.path, socket_server(self.path), tcp_server(port))]}
        )
        result = run([SER2TCP, "-c", config], timeout=20)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("ports[0].servers[1]", result.stderr)
        self.assertFalse(os.path.lexists(self.path), "the socket file of a failed start was left behind")

    def test_endpoint_string_socket_peer(self) -> None:
        d = self.start({"protocol": "socket", "endpoint": f"unix:{self.path}"}, wait_for=())
        wait_until(lambda: os.path.exists(self.path), what="the socket file")
        sock = self.unix()
        self.both_ways(d, sock)
        d.wait_output(f"Client connected: {self.path} SOCKET to {port_name(self.pty_.path)}")

    def test_tcp_and_socket_share_the_device(self) -> None:
        port = free_port()
        d = self.start(socket_server(self.path), tcp_server(port))
        d.wait_listening([port])
        unix = self.unix()
        tcp = self.connect(port)
        d.wait_output("Client connected", count=2)
        d.wait_holds(self.pty_.path)
        self.pty_.write(b"\xff\x00both")
        self.assertEqual(recv_exactly(unix, 6, self.deadline()), b"\xff\x00both")
        self.assertEqual(recv_exactly(tcp, 6, self.deadline()), b"\xff\x00both")
