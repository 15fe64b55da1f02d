"""Reload without sockets: the hub applying a changed port, the service tree
moving to a new config on a MemoryReactor, and the pieces around it (the
listening socket's factory switch, systemd's RELOADING, journald lines)."""

from __future__ import annotations

import io
import json
import os
import signal
import tempfile
import time
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from ser2tcp.cli import _LineObserver, goes_to_journal
from ser2tcp.config import PortConfig, SerialConfig, ServerConfig, load_config
from ser2tcp.hub import PortHub, State
from ser2tcp.listeners import Switch
from ser2tcp.reload import ReloadError
from ser2tcp.sdnotify import Notifier
from ser2tcp.service import PortService, Ser2TcpService
from tests.test_console import FakeControl, RecordingTap
from tests.test_hub import FakeLink, FakeSession
from tests.test_sdnotify import notify_socket


class RecordingControl(FakeControl):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []

    def apply(self, key: str, value: Any) -> Any:
        self.calls.append((key, value))
        return value

    def set_line(self, name: str, on: bool) -> bool:
        self.calls.append((name, on))
        return on


def port(device: str = "/dev/ttyFAKE", lines: dict[str, bool] | None = None, **kw: Any) -> PortConfig:
    settings = {"port": device, **kw.pop("settings", {})}
    serial = SerialConfig(settings=settings, lines=lines or {})
    return PortConfig(serial=serial, servers=(), name="lab1", **kw)


class HubReconfigureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.link = FakeLink()
        self.hub = PortHub(self.link, MemoryReactorClock(), port(settings={"baudrate": 9600}))
        self.session = FakeSession("a")
        self.hub.attach(self.session)
        device = self.link.succeed()
        self.control = RecordingControl()
        device.control = self.control  # type: ignore[attr-defined]

    def test_settings_are_applied_to_the_open_device(self) -> None:
        new = port(settings={"baudrate": 115200, "rtscts": True}, lines={"dtr": False})
        self.assertEqual(self.hub.reconfigure(new), ["serial settings applied"])
        self.assertEqual(sorted(self.control.calls), [("baudrate", 115200), ("dtr", False), ("rtscts", True)])
        self.assertIs(self.link.config, new.serial)  # the next open uses them
        self.assertEqual(self.link.closes, [])
        self.assertEqual(self.session.ends(), [])

    def test_a_setting_left_out_goes_back_to_pyserials_default(self) -> None:
        self.hub.reconfigure(port())
        self.assertEqual(self.control.calls, [("baudrate", 9600)])

    def test_another_device_is_opened_with_the_clients_kept(self) -> None:
        self.assertEqual(self.hub.reconfigure(port("/dev/ttyOTHER")), ["device reopened"])
        self.assertEqual(self.link.closes, [False])  # flushed, then closed
        self.link.lose()
        self.assertEqual(len(self.link.opens), 2)
        self.link.succeed()
        self.assertIs(self.hub.state, State.OPEN)
        self.assertEqual(self.session.ends(), [])
        self.link.protocol.dataReceived(b"new")
        self.assertEqual(self.session.data, b"new")

    def test_exclusive_needs_a_reopen(self) -> None:
        self.assertEqual(
            self.hub.reconfigure(port(settings={"baudrate": 9600, "exclusive": True})), ["device reopened"]
        )

    def test_closed_port_only_stores_the_change(self) -> None:
        self.hub.detach(self.session)
        self.link.lose()
        self.assertEqual(self.hub.reconfigure(port("/dev/ttyOTHER")), ["device changed"])
        self.assertEqual(len(self.link.opens), 1)

    def test_always_open_then_on_demand(self) -> None:
        self.hub.detach(self.session)
        self.link.lose()
        self.hub.reconfigure(port(settings={"baudrate": 9600}, open="always"))
        self.assertEqual(len(self.link.opens), 2)
        self.link.succeed()
        self.hub.reconfigure(port(settings={"baudrate": 9600}, open="on_demand"))
        self.assertIs(self.hub.state, State.CLOSING)

    def test_scrollback_resized_keeps_the_newest_bytes(self) -> None:
        self.hub.reconfigure(port(settings={"baudrate": 9600}, scrollback=8))
        tap = RecordingTap()
        self.hub.taps.append(tap)
        self.link.protocol.dataReceived(b"0123456789")
        self.hub.reconfigure(port(settings={"baudrate": 9600}, scrollback=4))
        assert self.hub.scrollback is not None
        self.assertEqual(self.hub.scrollback.contents(), b"6789")
        self.assertEqual(self.hub.taps[-1], tap)  # other taps stay
        self.hub.reconfigure(port(settings={"baudrate": 9600}))
        self.assertIsNone(self.hub.scrollback)
        self.assertEqual(self.hub.taps, [tap])


class SwitchTests(SynchronousTestCase):
    def test_new_connections_go_to_the_new_factory(self) -> None:
        events: list[str] = []

        class Recording(Factory):
            def __init__(self, name: str) -> None:
                self.name = name

            def startFactory(self) -> None:
                events.append(f"start {self.name}")

            def stopFactory(self) -> None:
                events.append(f"stop {self.name}")

        old, new = Recording("old"), Recording("new")
        old.protocol = new.protocol = Protocol
        switch = Switch(old)
        switch.doStart()
        self.assertIs(switch.buildProtocol(None).factory, old)  # type: ignore[arg-type,union-attr]
        switch.switch(new, listening=True)
        self.assertIs(switch.buildProtocol(None).factory, new)  # type: ignore[arg-type,union-attr]
        switch.doStop()
        self.assertEqual(events, ["start old", "start new", "stop old", "stop new"])


class PlaceTests(SynchronousTestCase):
    def test_every_address_is_one_place(self) -> None:
        places = {ServerConfig("tcp", address=a, port=7000).place for a in ("", "*", "0.0.0.0", None)}
        self.assertEqual(places, {"tcp::7000"})

    def test_protocol_is_not_part_of_the_place(self) -> None:
        tcp = ServerConfig("tcp", address="127.0.0.1", port=7000, where="ports[0].servers[0]")
        telnet = ServerConfig("telnet", address="127.0.0.1", port=7000, where="ports[1].servers[3]")
        self.assertEqual(tcp.place, telnet.place)
        self.assertNotEqual(tcp, telnet)
        self.assertEqual(tcp, ServerConfig("tcp", address="127.0.0.1", port=7000, where="elsewhere"))


def tcp(port: int, **kw: Any) -> dict[str, Any]:
    return {"protocol": "tcp", "address": "127.0.0.1", "port": port, **kw}


class Reactor(MemoryReactorClock):
    """Keeps what signal handlers hand to the reactor thread."""

    def __init__(self) -> None:
        super().__init__()
        self.from_thread: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.from_thread.append((f, args))


class ServiceReloadTests(SynchronousTestCase):
    """The tree of services moving to a new config; MemoryReactor listens."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.unlink(os.path.join(self.dir, f)) for f in os.listdir(self.dir)])
        self.path = os.path.join(self.dir, "cfg.json")
        self.reactor = Reactor()

    def write(self, *ports: dict[str, Any]) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump({"ports": list(ports)}, f)

    def start(self, *ports: dict[str, Any]) -> Ser2TcpService:
        self.write(*ports)
        service = Ser2TcpService(load_config(self.path), self.reactor)
        previous = signal.getsignal(signal.SIGHUP)
        service.startService()
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        return service

    def by_name(self, service: Ser2TcpService) -> dict[str, PortService]:
        return {p.config.name: p for p in service.ports()}

    def listening(self) -> list[int]:
        return sorted(port for port, *_ in self.reactor.tcpServers)

    def test_unchanged_ports_and_servers_are_the_same_objects(self) -> None:
        a = {"name": "a", "serial": {"port": "/dev/ttyA"}, "servers": [tcp(7001)]}
        b = {"name": "b", "serial": {"port": "/dev/ttyB"}, "servers": [tcp(7002), tcp(7003)]}
        service = self.start(a, b)
        before = self.by_name(service)
        kept_listener = before["b"].listeners()[0]
        changed_port = before["b"].listeners()[1].port
        b2 = {"name": "b", "serial": {"port": "/dev/ttyB"}, "servers": [tcp(7003, access="ro"), tcp(7002)]}
        c = {"name": "c", "serial": {"port": "/dev/ttyC"}, "servers": [tcp(7004)]}
        self.write(c, b2, a)
        summary = service.reload()
        self.assertEqual(summary, "added c; changed b (1 server changed); 1 port unchanged")
        after = self.by_name(service)
        self.assertIs(after["a"], before["a"])
        self.assertIs(after["b"], before["b"])
        self.assertEqual([p.config.name for p in service.ports()], ["c", "b", "a"])
        self.assertIn(kept_listener, after["b"].listeners())
        moved = next(s for s in after["b"].listeners() if s.server.port == 7003)
        self.assertEqual(moved.server.access, "ro")
        self.assertIs(moved.port, changed_port)  # the socket stayed open
        self.assertEqual([a.server.port for a in after["b"].admissions], [7003, 7002])
        self.assertEqual(self.listening(), [7001, 7002, 7003, 7004])  # only 7004 was bound

    def test_servers_listed_in_another_order_change_nothing(self) -> None:
        a = {"name": "a", "serial": {"port": "/dev/ttyA"}, "servers": [tcp(7001), tcp(7002)]}
        service = self.start(a)
        before = service.ports()[0]
        admissions = list(before.admissions)
        self.write({**a, "servers": [tcp(7002), tcp(7001)]})
        self.assertEqual(service.reload(), "nothing changed")
        self.assertIs(service.ports()[0], before)
        self.assertEqual(before.admissions, admissions[::-1])

    def test_invalid_config_changes_nothing(self) -> None:
        a = {"name": "a", "serial": {"port": "/dev/ttyA"}, "servers": [tcp(7001)]}
        service = self.start(a)
        before = self.by_name(service)
        config = service.config
        self.write({"name": "a", "serial": {"port": "/dev/ttyA", "baudrate": "x"}, "servers": [tcp(7001)]})
        with self.assertRaises(ReloadError) as caught:
            service.reload()
        self.assertIn("cfg.json: ports[0].serial.baudrate", str(caught.exception))
        self.assertEqual(self.by_name(service), before)
        self.assertIs(service.config, config)

    def test_no_reload_once_stopping(self) -> None:
        service = self.start({"name": "a", "serial": {"port": "/dev/ttyA"}, "servers": [tcp(7001)]})
        service.stopService()
        with self.assertRaises(ReloadError) as caught:
            service.reload()
        self.assertIn("not running", str(caught.exception))

    def test_sighup_reloads_from_the_reactor(self) -> None:
        service = self.start({"name": "a", "serial": {"port": "/dev/ttyA"}, "servers": [tcp(7001)]})
        self.write(
            {"name": "a", "serial": {"port": "/dev/ttyA"}, "servers": [tcp(7001)]},
            {"name": "b", "serial": {"port": "/dev/ttyB"}, "servers": [tcp(7002)]},
        )
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(list(self.by_name(service)), ["a"])  # not in the signal handler
        self.assertEqual(len(self.reactor.from_thread), 1)
        f, args = self.reactor.from_thread[0]
        f(*args)
        self.assertEqual(list(self.by_name(service)), ["a", "b"])


class NotifyReloadTests(SynchronousTestCase):
    def test_reloading_then_ready(self) -> None:
        sock, path = notify_socket(self)
        sock.settimeout(5)
        notifier = Notifier(MemoryReactorClock(), {"NOTIFY_SOCKET": path})
        before = time.monotonic_ns() // 1000
        notifier.reloading()
        fields = dict(line.split("=", 1) for line in sock.recv(4096).decode().split("\n"))
        self.assertEqual(fields["RELOADING"], "1")
        self.assertTrue(before <= int(fields["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000)
        notifier.ready(lambda: "1 port(s)")
        self.assertEqual(sock.recv(4096), b"READY=1\nSTATUS=1 port(s)")


class JournalTests(SynchronousTestCase):
    def test_lines_carry_their_priority_and_no_timestamp(self) -> None:
        out = io.StringIO()
        observer = _LineObserver(out, journal=True)
        for level in (LogLevel.error, LogLevel.warn, LogLevel.info, LogLevel.debug):
            observer({"log_format": "a {x}", "x": "b", "log_level": level})
        self.assertEqual(out.getvalue(), "<3>a b\n<4>a b\n<6>a b\n<7>a b\n")

    def test_the_original_lines_elsewhere(self) -> None:
        out = io.StringIO()
        _LineObserver(out)({"log_format": "hello", "log_level": LogLevel.warn})
        self.assertEqual(out.getvalue(), "W: hello\n")

    def test_journal_stream_must_be_this_stream(self) -> None:
        with tempfile.TemporaryFile("w") as f, tempfile.TemporaryFile("w") as other:
            st = os.fstat(f.fileno())
            mine = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
            self.assertTrue(goes_to_journal(f, mine))  # type: ignore[arg-type]
            self.assertFalse(goes_to_journal(other, mine))  # type: ignore[arg-type]
            self.assertFalse(goes_to_journal(f, {}))  # type: ignore[arg-type]
            self.assertFalse(goes_to_journal(f, {"JOURNAL_STREAM": "x"}))  # type: ignore[arg-type]
            self.assertFalse(goes_to_journal(io.StringIO(), mine))
