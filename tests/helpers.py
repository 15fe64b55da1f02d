"""Reusable pieces of the integration tests: ptys, ports, configs, daemons.

Everything here is plain blocking code with deadlines: tests run a real
``ser2tcp`` (or ``twist``/``twistd``) subprocess on a real pty and talk to it
over real loopback sockets from a ``SynchronousTestCase``.  Every wait is for
a condition, bounded both in time and in iterations.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import select
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty
from collections.abc import Iterator, Sequence
from typing import Any, Callable

from twisted.internet import defer, task
from twisted.trial.unittest import FailTest, SynchronousTestCase

from ser2tcp.config import SerialConfig, derived_name

#: The repository root (the parent of tests/).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Console scripts of the interpreter running the tests.
BIN = os.path.dirname(sys.executable)
SER2TCP = os.path.join(BIN, "ser2tcp")
TWIST = os.path.join(BIN, "twist")
TWISTD = os.path.join(BIN, "twistd")

#: The default deadline of every wait, in seconds.
TIMEOUT = 10.0
#: Upper bound of the iterations of any polling or I/O loop.
MAX_ITERATIONS = 5_000_000


def ticks(deadline: float, limit: int = MAX_ITERATIONS) -> Iterator[float]:
    """Yield the time left until ``deadline``, at most ``limit`` times."""
    for _ in range(limit):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        yield left


def wait_until(
    predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "", interval: float = 0.01
) -> Any:
    """Poll ``predicate`` until it returns a true value, which is returned."""
    end = time.monotonic() + timeout
    for _ in ticks(end, int(timeout / interval) + 2):
        value = predicate()
        if value:
            return value
        time.sleep(interval)  # polling interval, not synchronisation
    value = predicate()
    if value:
        return value
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate!r}")


# ports and configs


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def quiet_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that nothing listens on, taken below the
    kernel's ephemeral range.  :func:`free_port` hands out ephemeral ports,
    which the clients of tests running beside this one may take before the
    daemon binds them; a test that needs many ports to stay free takes
    these instead."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    candidates = random.sample(range(10000, max(low, 10000 + 4 * count)), 4 * count)
    ports: list[int] = []
    for port in candidates:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise AssertionError(f"only {len(ports)} of {count} ports below {low} are free")


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def write_config(data: Any, directory: str | None = None, name: str = "ser2tcp.json") -> str:
    """``data`` as JSON in a new file (in ``directory``, or a new temp dir the caller removes)."""
    if directory is None:
        directory = tempfile.mkdtemp(prefix="ser2tcp-test-")
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


def port_name(device: str) -> str:
    """What the daemon calls a port on ``device`` when the config names none."""
    return derived_name(SerialConfig(settings={"port": device}))


def tcp_server(port: int, address: str = "127.0.0.1", **extra: Any) -> dict[str, Any]:
    return {"protocol": "tcp", "address": address, "port": port, **extra}


def port_config(serial_port: str, *servers: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"serial": {"port": serial_port, **settings}, "servers": list(servers)}


# sockets


def connect(
    port: int,
    host: str = "127.0.0.1",
    rcvbuf: int | None = None,
    timeout: float = TIMEOUT,
    source: str | None = None,
):
    """A connected blocking client socket (``rcvbuf`` set before connecting;
    bound to the local address ``source`` if given, e.g. ``"127.0.0.2"``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if source is not None:
            sock.bind((source, 0))
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def recv_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    """Exactly ``n`` bytes from ``sock``, or AssertionError (EOF, timeout)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    for left in ticks(deadline):
        if got == n:
            break
        sock.settimeout(left)
        try:
            k = sock.recv_into(view[got:], n - got)
        except socket.timeout:
            break
        if k == 0:
            raise AssertionError(f"EOF after {got} of {n} bytes: {bytes(view[max(0, got - 32) : got])!r}")
        got += k
    if got != n:
        raise AssertionError(f"timed out with {got} of {n} bytes")
    return bytes(buf)


def recv_until_closed(sock: socket.socket, deadline: float, limit: int = 1 << 30) -> tuple[bytes, str]:
    """Everything ``sock`` receives until the peer closes it.

    Returns the data and how it ended: ``"eof"`` or ``"reset"``.
    """
    chunks = []
    total = 0
    for left in ticks(deadline):
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            break
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        if not data:
            return b"".join(chunks), "eof"
        chunks.append(data)
        total += len(data)
        if total > limit:
            raise AssertionError(f"more than {limit} bytes received and the connection is still open")
    raise AssertionError(f"the connection was not closed in time ({total} bytes received)")


def recv_each(socks: Sequence[Any], n: int, deadline: float) -> list[bytes]:
    """Exactly ``n`` bytes from each socket, TLS ones included, read concurrently."""
    bufs = [bytearray() for _ in socks]
    sel = selectors.DefaultSelector()
    try:
        for i, sock in enumerate(socks):
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, i)
        pending = len(socks)
        for left in ticks(deadline):
            if not pending:
                break
            for key, _ in sel.select(min(left, 0.5)):
                i = key.data
                for _ in range(64):  # a TLS socket may hold more than select shows
                    want = n - len(bufs[i])
                    if not want:
                        break
                    try:
                        data = socks[i].recv(min(1 << 20, want))
                    except (BlockingIOError, ssl.SSLWantReadError):
                        break
                    if not data:
                        raise AssertionError(f"client {i}: EOF after {len(bufs[i])} of {n} bytes")
                    bufs[i] += data
                if len(bufs[i]) == n:
                    sel.unregister(socks[i])
                    pending -= 1
    finally:
        sel.close()
        for sock in socks:
            sock.settimeout(TIMEOUT)
    short = [(i, len(b)) for i, b in enumerate(bufs) if len(b) != n]
    if short:
        raise AssertionError(f"timed out: (client, bytes) short of {n}: {short[:10]}")
    return [bytes(b) for b in bufs]


def send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    sent = 0
    for left in ticks(deadline):
        if sent == len(data):
            return
        sock.settimeout(left)
        try:
            sent += sock.send(view[sent : sent + (1 << 20)])
        except socket.timeout:
            break
    if sent != len(data):
        raise AssertionError(f"timed out having sent {sent} of {len(data)} bytes")


# ptys


def write_fd(fd: int, data: bytes, deadline: float, chunk: int = 65536) -> None:
    """Write all of ``data`` to a non-blocking descriptor before ``deadline``."""
    view = memoryview(data)
    done = 0
    for left in ticks(deadline):
        if done == len(data):
            return
        select.select([], [fd], [], left)
        try:
            done += os.write(fd, view[done : done + chunk])
        except BlockingIOError:
            continue
    if done != len(data):
        raise AssertionError(f"timed out having written {done} of {len(data)} bytes")


def read_master(fd: int, n: int, deadline: float, chunk: int = 65536) -> bytes:
    """Exactly ``n`` bytes from a (non-blocking) pty master, or AssertionError.

    While nobody has the slave open the master reads EIO: that is waited
    out too (the daemon opens the slave when its first client connects).
    """
    buf = bytearray()
    slave_closed = False
    for left in ticks(deadline):
        if len(buf) >= n:
            break
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        try:
            data = os.read(fd, min(chunk, n - len(buf)))
        except BlockingIOError:
            continue
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            slave_closed = True
            time.sleep(0.005)  # polling interval: the slave is not open (yet)
            continue
        slave_closed = False
        if not data:
            raise AssertionError(f"pty EOF after {len(buf)} of {n} bytes")
        buf += data
    if len(buf) != n:
        why = " (the slave is not open)" if slave_closed else ""
        raise AssertionError(f"timed out with {len(buf)} of {n} bytes from the pty{why}")
    return bytes(buf)


class Pty:
    """A pseudo-terminal standing in for a serial device.

    The test keeps the master; the daemon opens the slave by its path.  Our
    own slave descriptor is closed at once, so that only the daemon holds it.
    The line speed starts at 9600 baud so that a configured baudrate is seen
    to be applied.
    """

    def __init__(self, speed: int = termios.B9600) -> None:
        master, slave = os.openpty()
        try:
            tty.setraw(master)
            attrs = termios.tcgetattr(master)
            attrs[4] = attrs[5] = speed
            termios.tcsetattr(master, termios.TCSANOW, attrs)
            self.path = os.ttyname(slave)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.master: int | None = master

    def fd(self) -> int:
        assert self.master is not None, "pty closed"
        return self.master

    def write(self, data: bytes, deadline: float | None = None) -> None:
        write_fd(self.fd(), data, deadline or time.monotonic() + TIMEOUT)

    def read(self, n: int, deadline: float | None = None) -> bytes:
        return read_master(self.fd(), n, deadline or time.monotonic() + TIMEOUT)

    def slave_open(self) -> bool:
        """Whether anyone has the slave open (the master reads EIO if not).

        Only for moments when no device data is expected: a pending byte is
        an AssertionError, as it would be consumed.
        """
        readable, _, _ = select.select([self.fd()], [], [], 0)
        if not readable:
            return True
        try:
            data = os.read(self.fd(), 1)
        except BlockingIOError:
            return True
        except OSError as e:
            if e.errno == errno.EIO:
                return False
            raise
        raise AssertionError(f"unexpected data from the pty slave: {data!r}")

    def speeds(self) -> tuple[int, int]:
        attrs = termios.tcgetattr(self.fd())
        return attrs[4], attrs[5]

    def close(self) -> None:
        master, self.master = self.master, None
        if master is not None:
            os.close(master)


class Background:
    """Run ``fn(*args)`` in a daemon thread; :meth:`result` re-raises its error."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: Sequence[Any]) -> None:
        try:
            self._value = fn(*args)
        except BaseException as e:
            self._error = e

    def result(self, timeout: float = TIMEOUT) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("background task did not finish in time")
        if self._error is not None:
            raise self._error
        return self._value


# processes


def fd_table(pid: int) -> dict[int, str]:
    """Where each open descriptor of process ``pid`` points ({} once it is gone)."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except (FileNotFoundError, ProcessLookupError):
        return {}
    table = {}
    for name in names:
        try:
            table[int(name)] = os.readlink(os.path.join(base, name))
        except OSError:  # closed meanwhile
            continue
    return table


def fd_links(pid: int) -> list[str]:
    """Where the open descriptors of process ``pid`` point ([] once it is gone)."""
    return list(fd_table(pid).values())


def holds(pid: int, path: str) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    return os.path.realpath(path) in fd_links(pid)


def reads(pid: int, path: str) -> bool:
    """Whether process ``pid`` has ``path`` open *and* watched by its epoll set.

    Opening a serial port flushes its input (pyserial's ``open()`` and
    Twisted's ``SerialPort``), so bytes a test writes to the pty between
    ``open()`` and that flush are lost.  The reactor starts reading only after
    the flush: once the descriptor is in the epoll set, nothing written to the
    pty can be discarded any more.
    """
    target = os.path.realpath(path)
    table = fd_table(pid)
    fds = {fd for fd, link in table.items() if link == target}
    epolls = [fd for fd, link in table.items() if link == "anon_inode:[eventpoll]"]
    for epoll in epolls:
        try:
            with open(f"/proc/{pid}/fdinfo/{epoll}") as f:
                info = f.read()
        except OSError:
            continue
        if fds & {int(fd) for fd in re.findall(r"^tfd:\s+(\d+)", info, re.M)}:
            return True
    return False


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (IPv4 and IPv6).

    Read from /proc rather than by connecting, so that checking does not
    make a client (which would open the serial port).
    """
    inodes = set()
    for link in fd_links(pid):
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def listening_anywhere(port: int) -> bool:
    """Whether any socket of this network namespace listens on TCP ``port``."""
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{table}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _child_setup() -> None:
    # A runner started in the background may ignore SIGINT; the daemon must not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without what could point Python at another tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


class Daemon:
    """A daemon subprocess with its stdout and stderr captured to files."""

    def __init__(self, argv: Sequence[str], cwd: str | None = None, env: dict[str, str] | None = None):
        self.argv = list(argv)
        fd, self.stderr_path = tempfile.mkstemp(prefix="ser2tcp-stderr-", suffix=".txt")
        self._stderr = os.fdopen(fd, "wb")
        fd, self.stdout_path = tempfile.mkstemp(prefix="ser2tcp-stdout-", suffix=".txt")
        self._stdout = os.fdopen(fd, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            cwd=cwd,
            env=env,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        self.pid = self.proc.pid

    # output

    def stderr(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stdout(self) -> str:
        with open(self.stdout_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def output(self) -> str:
        return self.stderr() + self.stdout()

    def wait_output(self, text: str, count: int = 1, timeout: float = TIMEOUT) -> str:
        """Wait until ``text`` appears ``count`` times in stderr + stdout."""

        def seen() -> str | None:
            output = self.output()
            if output.count(text) >= count:
                return output
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"daemon exited ({code}) waiting for {text!r}:\n{output}")
            return None

        try:
            return str(wait_until(seen, timeout, f"{count} x {text!r} in the daemon's output"))
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- output:\n{self.output()}") from None

    # state

    def running(self) -> bool:
        return self.proc.poll() is None

    def holds(self, path: str) -> bool:
        return holds(self.pid, path)

    def wait_holds(self, path: str, held: bool = True, timeout: float = TIMEOUT) -> None:
        """Wait until the daemon reads ``path`` (``held``) or has closed it."""
        what = f"the daemon to {'open' if held else 'close'} {path}"
        if held:
            wait_until(lambda: reads(self.pid, path), timeout, what)
        else:
            wait_until(lambda: not self.holds(path), timeout, what)

    def wait_listening(self, ports: Sequence[int], timeout: float = TIMEOUT) -> None:
        """Wait until the daemon listens on every port of ``ports``."""
        wanted = set(ports)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode} before listening:\n{self.output()}"
                )
            return wanted <= listening_ports(self.pid)

        try:
            wait_until(ready, timeout, f"the daemon to listen on {sorted(wanted)}")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- output:\n{self.output()}") from None

    # ending

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send ``sig`` and return the exit code (AssertionError if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"daemon did not exit within {timeout:g} s of signal {sig}") from None

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"process did not exit within {timeout:g} s:\n{self.output()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Kill if still running and remove the captured output."""
        self.kill()
        for f in (self._stdout, self._stderr):
            f.close()
        for path in (self.stdout_path, self.stderr_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def run(argv: Sequence[str], timeout: float = 30.0, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing text output."""
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,
    )


class Case(SynchronousTestCase):
    """Test case with helpers whose resources are always released."""

    def tempdir(self) -> str:
        path = tempfile.mkdtemp(prefix="ser2tcp-test-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def config(self, data: Any) -> str:
        return write_config(data, self.tempdir())

    def pty(self, **kw: Any) -> Pty:
        pty = Pty(**kw)
        self.addCleanup(pty.close)
        return pty

    def daemon(self, argv: Sequence[str], **kw: Any) -> Daemon:
        daemon = Daemon(argv, **kw)
        self.addCleanup(daemon.close)
        return daemon

    def ser2tcp(self, config: Any, *flags: str, listen: Sequence[int] = ()) -> Daemon:
        """``ser2tcp -c <config> <flags>``; waits until it listens on ``listen``."""
        path = config if isinstance(config, str) else self.config(config)
        daemon = self.daemon([SER2TCP, "-c", path, *flags])
        if listen:
            daemon.wait_listening(listen)
        return daemon

    def connect(self, port: int, host: str = "127.0.0.1", **kw: Any) -> socket.socket:
        sock = connect(port, host, **kw)
        self.addCleanup(sock.close)
        return sock

    def deadline(self, seconds: float = TIMEOUT) -> float:
        return time.monotonic() + seconds


@defer.inlineCallbacks
def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` on the running reactor (for trial TestCases that
    return Deferreds); fail after ``timeout`` seconds."""
    from twisted.internet import reactor

    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.002) + 1):  # bounded even if the clock stalls
        if condition():
            return
        if time.monotonic() > deadline:
            break
        yield task.deferLater(reactor, 0.002, lambda: None)
    if not condition():
        raise FailTest(f"{what}: not true after {timeout} s")
