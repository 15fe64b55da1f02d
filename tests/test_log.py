"""Tests for ser2tcp._log: the warnings about connections that could not be accepted."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from ser2tcp._log import AcceptTrouble
from tests.test_serial_control import LogCapture

CLOSED = {"log_format": "EMFILE recovery: Closed socket from {address}", "address": "x"}
FAILED = {"log_format": "Could not accept new connection ({acceptError})", "acceptError": "ENFILE"}


class AcceptTroubleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.watch = AcceptTrouble(self.clock)
        self.logs = LogCapture(self)

    def warnings(self) -> list[str]:
        return self.logs.lines(LogLevel.warn)

    def feed(self, event: dict[str, Any], n: int) -> None:
        for _ in range(n):
            self.watch(dict(event))

    def test_a_burst_is_counted_whole(self) -> None:
        # The first refusal is reported at once, the rest of the burst when
        # the quiet second is over: 36 in all, as many as were refused.
        self.feed(CLOSED, 36)
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn(" 1 new connection(s) refused", self.warnings()[0])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(1.0)
        self.assertEqual(len(self.warnings()), 2)
        self.assertIn(" 35 new connection(s) refused", self.warnings()[1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_at_most_one_line_a_second(self) -> None:
        for _ in range(10):  # a steady trickle over 5 s
            self.feed(CLOSED, 3)
            self.clock.advance(0.5)
        self.clock.advance(1.0)
        refused = [int(line.split(": ")[1].split()[0]) for line in self.warnings()]
        self.assertEqual(sum(refused), 30)
        self.assertLessEqual(len(refused), 6)

    def test_failed_accepts_are_told_apart(self) -> None:
        self.feed(FAILED, 2)
        self.clock.advance(1.0)
        self.assertEqual(len(self.warnings()), 2)
        self.assertTrue(all("accepting a new connection failed" in line for line in self.warnings()))
        self.assertIn("failed 1 time(s)", self.warnings()[1])

    def test_other_events_are_ignored(self) -> None:
        self.feed({"log_format": "EMFILE encountered; releasing reserved file descriptor."}, 3)
        self.feed({"log_format": "anything"}, 3)
        self.assertEqual(self.warnings(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
