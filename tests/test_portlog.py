"""Tests for ser2tcp.portlog: byte-exact and timestamped port logs, rotation,
reopening after logrotate, and a failing disk."""

from __future__ import annotations

import errno
import os
import threading
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ser2tcp.config import LogConfig
from ser2tcp.interface import IDeviceTap
from ser2tcp.portlog import FLUSH_DELAY, FLUSH_SIZE, PortLog, timestamp
from tests.test_serial_control import LogCapture

T0 = 1796425502.123  # 2026-12-04T23:05:02.123Z


class PortLogCase(SynchronousTestCase):
    def make(self, **kw: Any) -> PortLog:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "port.log")
        self.clock = Clock()
        self.time = T0
        self.log = PortLog(
            LogConfig(path=self.path, **kw), self.clock, "lab1", now=lambda: self.time, threaded=False
        )
        self.log.open()
        self.addCleanup(self.log.close)
        return self.log

    def contents(self, path: str | None = None) -> bytes:
        with open(path or self.path, "rb") as f:
            return f.read()


class ByteExactTests(PortLogCase):
    def test_every_byte_value_exactly(self) -> None:
        log = self.make(timestamps=False)
        self.assertTrue(verifyObject(IDeviceTap, log))
        data = bytes(range(256)) * 64
        for i in range(0, len(data), 1000):
            log.device_data(data[i : i + 1000])
        log.event("client 10.0.0.5:1 TELNET connected")  # no markers in a byte-exact log
        log.flush()
        self.assertEqual(self.contents(), data)

    def test_written_by_one_timer_armed_by_data(self) -> None:
        log = self.make(timestamps=False)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        log.device_data(b"abc")
        log.device_data(b"def")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(self.contents(), b"")
        self.clock.advance(FLUSH_DELAY)
        self.assertEqual(self.contents(), b"abcdef")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_large_burst_is_written_at_once(self) -> None:
        log = self.make(timestamps=False)
        log.device_data(b"x" * FLUSH_SIZE)
        self.assertEqual(len(self.contents()), FLUSH_SIZE)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_writes_what_is_pending(self) -> None:
        log = self.make(timestamps=False)
        log.device_data(b"last words")
        log.close()
        self.assertEqual(self.contents(), b"last words")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TimestampTests(PortLogCase):
    def test_format(self) -> None:
        self.assertEqual(timestamp(T0), b"2026-12-04T23:05:02.123Z ")
        self.assertEqual(timestamp(T0 + 0.0004), b"2026-12-04T23:05:02.123Z ")

    def test_lines_get_the_time_their_first_byte_arrived(self) -> None:
        log = self.make()
        log.device_data(b"U-Boot 2024.01\r\nDRAM: ")
        self.time += 1.5
        log.device_data(b"512 MiB\r\n")  # continues a line: no new stamp
        self.time += 1.0
        log.device_data(b"")
        log.device_data(b"one\ntwo\n\nthree")
        log.flush()
        t0, t1, t2 = timestamp(T0), timestamp(T0 + 1.5), timestamp(T0 + 2.5)
        self.assertEqual(
            self.contents(),
            t0
            + b"U-Boot 2024.01\r\n"
            + t0
            + b"DRAM: 512 MiB\r\n"
            + t2
            + b"one\n"
            + t2
            + b"two\n"
            + t2
            + b"\n"
            + t2
            + b"three",
        )
        del t1

    def test_events_are_lines_of_their_own(self) -> None:
        log = self.make()
        log.event("device opened: /dev/ttyUSB0")
        log.device_data(b"login")
        log.event("client 10.0.0.5:41234 TELNET connected")
        self.time += 1
        log.device_data(b": root\n")
        log.event("settings changed by x\r\n\x1b[2J: 115200 8N1")
        log.flush()
        t0, t1 = timestamp(T0), timestamp(T0 + 1)
        self.assertEqual(
            self.contents(),
            t0
            + b"[ser2tcp] device opened: /dev/ttyUSB0\n"
            + t0
            + b"login\n"
            + t0
            + b"[ser2tcp] client 10.0.0.5:41234 TELNET connected\n"
            + t1
            + b": root\n"
            + t1
            + b"[ser2tcp] settings changed by x\\x0d\\x0a\\x1b[2J: 115200 8N1\n",
        )


class ThreadWriterTests(PortLogCase):
    def test_written_in_order_by_one_thread_for_every_log(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        clock = Clock()
        threads_before = threading.active_count()
        logs = [
            PortLog(LogConfig(path=os.path.join(self.dir, f"p{i}.log"), timestamps=False), clock, f"p{i}")
            for i in range(3)
        ]
        for log in logs:
            log.open()
        chunks = [os.urandom(FLUSH_SIZE) for _ in range(20)]
        for chunk in chunks:
            for log in logs:
                log.device_data(chunk)  # each fills a write
        for log in logs:
            log.close()  # waits for the thread to write what is queued
        for i in range(3):
            self.assertEqual(self.contents(os.path.join(self.dir, f"p{i}.log")), b"".join(chunks))
        # Three logs, at most one thread more (none if an earlier test started it).
        self.assertLessEqual(threading.active_count() - threads_before, 1)

    def test_one_timer_hands_every_log_its_data(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        clock = Clock()
        logs = [
            PortLog(
                LogConfig(path=os.path.join(self.dir, f"p{i}.log"), timestamps=False),
                clock,
                f"p{i}",
                threaded=False,
            )
            for i in range(4)
        ]
        for i, log in enumerate(logs):
            log.open()
            clock.advance(0.1)
            log.device_data(b"%d" % i)
        self.assertEqual(len(clock.getDelayedCalls()), 1)  # not one a log
        clock.advance(FLUSH_DELAY)
        for i in range(4):
            self.assertEqual(self.contents(os.path.join(self.dir, f"p{i}.log")), b"%d" % i)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_too_much_waiting_for_the_disk_is_refused(self) -> None:
        from ser2tcp.portlog import DiskThread, InlineWriter

        disk = DiskThread(limit=10)
        written: list[bytes] = []

        class Slow(InlineWriter):
            def __init__(self) -> None:
                self.release = threading.Event()

            def write(self, data: bytes) -> bool:
                self.release.wait(5)
                written.append(data)
                return True

        slow = Slow()
        self.assertTrue(disk.put(slow, b"12345678"))
        self.assertFalse(disk.put(slow, b"345"))  # 11 bytes would wait
        self.assertTrue(disk.put(slow, b"90"))
        slow.release.set()
        done = threading.Event()

        class Closing(InlineWriter):
            def __init__(self) -> None:
                pass

            def close(self) -> None:
                pass

        disk.put(Closing(), done)
        self.assertTrue(done.wait(5))
        self.assertEqual(written, [b"12345678", b"90"])


class RotationTests(PortLogCase):
    def test_rotates_at_max_bytes_and_keeps_backups(self) -> None:
        log = self.make(timestamps=False, max_bytes=1000, backups=2)
        # LogFile rotates before a write once the file has reached max_bytes:
        # two 600-byte chunks a file here.
        chunks = [bytes([65 + i]) * 600 for i in range(8)]
        for chunk in chunks:
            log.device_data(chunk)
            log.flush()
        names = sorted(os.listdir(self.dir))
        self.assertEqual(names, ["port.log", "port.log.1", "port.log.2"])
        kept = self.contents(self.path + ".2") + self.contents(self.path + ".1") + self.contents()
        self.assertEqual(kept, b"".join(chunks[2:]))  # the oldest dropped, none reordered

    def test_reopen_after_logrotate_moved_the_file(self) -> None:
        log = self.make(timestamps=False)
        log.device_data(b"before")
        log.flush()
        os.rename(self.path, self.path + ".old")
        log.device_data(b"moved-")  # still written to the moved file until reopened
        log.reopen()
        log.device_data(b"after")
        log.flush()
        self.assertEqual(self.contents(self.path + ".old"), b"beforemoved-")
        self.assertEqual(self.contents(), b"after")


class FailingDiskTests(PortLogCase):
    def test_full_disk_suspends_with_one_warning(self) -> None:
        log = self.make(timestamps=False)
        logs = LogCapture(self)
        file = log._writer.file  # type: ignore[union-attr]
        real_write = file.write

        def full(data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        file.write = full
        for _ in range(5):
            log.device_data(b"12345")
            log.flush()  # never raises into the data path
        warnings = logs.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("Port log of lab1 suspended: cannot write", warnings[0])
        self.assertIn("No space left on device", warnings[0])
        self.assertEqual(self.clock.getDelayedCalls(), [])  # suspended: no timer either
        file.write = real_write
        log.reopen()
        self.assertIn("resumed", logs.text(LogLevel.info))
        self.assertIn("25 byte(s) lost", logs.text(LogLevel.info))
        log.device_data(b"back")
        log.flush()
        self.assertEqual(self.contents(), b"back")

    def test_a_disk_slower_than_the_device_loses_log_data_not_device_data(self) -> None:
        log = self.make(timestamps=False)
        logs = LogCapture(self)

        class Stalled:
            def write(self, data: bytes) -> bool:
                return False  # the writer's queue is full

            def close(self) -> None:
                pass

        log._writer = Stalled()  # type: ignore[assignment]
        for _ in range(3):
            log.device_data(b"x" * FLUSH_SIZE)
        self.assertEqual(log.lost, 3 * FLUSH_SIZE)
        warnings = logs.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("the disk is slower than the device", warnings[0])

    def test_missing_directory_cannot_be_opened(self) -> None:
        log = PortLog(LogConfig(path="/nonexistent-dir/port.log"), Clock(), "lab1")
        with self.assertRaises(OSError):
            log.open()
