"""The descriptor budget (a fake ``resource`` module) and ``--check`` with
several configs."""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
from typing import Any

from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from ser2tcp import limits
from ser2tcp.check import check_configs
from ser2tcp.config import parse_config
from tests.helpers import SER2TCP, TWIST, run
from tests.test_serial_control import LogCapture


class FakeResource:
    RLIMIT_NOFILE = resource.RLIMIT_NOFILE
    RLIM_INFINITY = resource.RLIM_INFINITY

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse
        self.calls: list[tuple[int, int]] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, value: tuple[int, int]) -> None:
        self.calls.append(value)
        if self.refuse:
            raise ValueError("not allowed")
        self.limits = value


class RaiseTests(SynchronousTestCase):
    def setUp(self) -> None:
        from ser2tcp import _log

        self.logs = LogCapture(self)
        _log.set_verbosity(2)  # DEBUG: the raise is logged at that level

    def test_raised_to_the_hard_limit(self) -> None:
        fake = FakeResource(1024, 524288)
        self.assertEqual(limits.raise_nofile(fake), 524288)
        self.assertEqual(fake.calls, [(524288, 524288)])
        self.assertIn("Descriptor limit raised from 1024 to 524288", self.logs.text(LogLevel.debug))

    def test_already_at_the_hard_limit(self) -> None:
        fake = FakeResource(65536, 65536)
        self.assertEqual(limits.raise_nofile(fake), 65536)
        self.assertEqual(fake.calls, [])

    def test_refused_is_a_warning_not_an_error(self) -> None:
        fake = FakeResource(1024, 4096, refuse=True)
        self.assertEqual(limits.raise_nofile(fake), 1024)
        warnings = self.logs.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("Cannot raise the descriptor limit from 1024 to 4096: not allowed", warnings[0])

    def test_unlimited_hard_limit(self) -> None:
        fake = FakeResource(1024, resource.RLIM_INFINITY)
        self.assertEqual(limits.raise_nofile(fake), limits.UNLIMITED)


def config_of(ports: int, **port: Any) -> Any:
    return parse_config(
        {
            "ports": [
                {
                    "serial": {"port": f"/dev/ttyUSB{i}"},
                    "servers": [{"protocol": "tcp", "address": "0.0.0.0", "port": 7000 + i}],
                    **port,
                }
                for i in range(ports)
            ]
        }
    )


class BudgetTests(SynchronousTestCase):
    def test_what_fits(self) -> None:
        config = config_of(64)
        # 16 own + 64 listeners + 64 devices x 5 = 400 before any client.
        self.assertEqual(limits.clients_that_fit(config, 1024), 624)
        self.assertEqual(limits.wanted_clients(config), 640)
        self.assertEqual(limits.wanted_clients(config_of(2, max_connections=3)), 6)

    def test_one_warning_when_even_the_hard_limit_is_short(self) -> None:
        logs = LogCapture(self)
        limits.check_budget(config_of(64), FakeResource(1024, 1024))
        warnings = logs.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 1)
        self.assertIn("The descriptor limit (1024) leaves room for 624 client(s)", warnings[0])
        self.assertIn("fewer than the 640 this config allows", warnings[0])

    def test_no_warning_when_raising_makes_room(self) -> None:
        logs = LogCapture(self)
        fake = FakeResource(1024, 20000)
        limits.check_budget(config_of(64), fake)
        self.assertEqual(logs.lines(LogLevel.warn), [])
        self.assertEqual(fake.limits, (20000, 20000))


class MultiCheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ser2tcp-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name: str, *ports: dict[str, Any]) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"ports": list(ports)}, f)
        return path

    def port(self, device: str, tcp: int, **kw: Any) -> dict[str, Any]:
        server = {"protocol": "tcp", "address": "0.0.0.0", "port": tcp}
        return {"serial": {"port": device}, "servers": [server], **kw}

    def test_separate_configs_are_ok(self) -> None:
        a = self.write("a.json", self.port("/dev/ttyUSB0", 7000, name="a0"))
        b = self.write("b.json", self.port("/dev/ttyUSB1", 7001, name="b0"))
        self.assertEqual(check_configs([a, b]), ([f"{a}: OK", f"{b}: OK"], []))

    def test_each_shared_claim_is_one_line(self) -> None:
        a = self.write("a.json", self.port("/dev/ttyUSB0", 7000, name="lab"))
        b = self.write(
            "b.json",
            self.port("/dev/ttyUSB1", 7001, name="other"),
            self.port("/dev/ttyUSB0", 7002, name="lab"),
            {
                "serial": {"port": "/dev/ttyUSB2"},
                "servers": [{"protocol": "tcp", "address": "127.0.0.1", "port": 7000}],
            },
        )
        ok, problems = check_configs([a, b])
        self.assertEqual(ok, [f"{a}: OK", f"{b}: OK"])
        self.assertEqual(
            problems,
            [
                f"{b}: ports[1].serial.port: the device /dev/ttyUSB0 is also claimed by {a} "
                "ports[0].serial.port",
                f"{b}: ports[1].name: the port name 'lab' is also claimed by {a} ports[0].name",
                f"{b}: ports[2].servers[0]: TCP port 7000 on 127.0.0.1 is also claimed by {a} "
                "ports[0].servers[0]",
            ],
        )

    def test_a_bad_config_is_reported_and_the_others_checked(self) -> None:
        a = self.write("a.json", self.port("/dev/ttyUSB0", 7000))
        bad = os.path.join(self.dir, "bad.json")
        with open(bad, "w") as f:
            f.write("{")
        ok, problems = check_configs([a, bad])
        self.assertEqual(ok, [f"{a}: OK"])
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith(f"{bad}: "), problems)

    def test_command_line(self) -> None:
        a = self.write("a.json", self.port("/dev/ttyUSB0", 7000))
        b = self.write("b.json", self.port("/dev/ttyUSB0", 7001))
        for argv in ([SER2TCP, "--check"], [TWIST, "ser2tcp", "--check"]):
            result = run([*argv, "-c", a, "-c", b])
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertEqual(result.stdout, f"{a}: OK\n{b}: OK\n")
            self.assertEqual(result.stderr.count("is also claimed by"), 2, result.stderr)  # device, name
        result = run([SER2TCP, "-c", a, "-c", b])
        self.assertEqual(result.returncode, 2)
        self.assertIn("one config per daemon", result.stderr)
