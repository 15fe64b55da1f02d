"""Smoke test of the benchmark suite (bench/run.py).

It runs the benchmark in its smallest form against ser2tcp only, as a user
would, and checks that every figure completed and that every byte every
figure sent arrived intact.  It never asserts a timing: the machine is
shared and noisy, and speed is what the full run reports, not what a test
should judge.  It writes its JSON to a temporary directory and no
bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "bench" / "run.py"
SER2TCP = Path(sys.executable).parent / "ser2tcp"

#: Bytes each quick figure must have verified (see bench/figures.py QUICK).
QUICK_VERIFIED = {
    "throughput_down": 1024 * 1024,
    "throughput_up": 1024 * 1024,
    "fanout_1": 256 * 1024,
    "fanout_10": 10 * 256 * 1024,
    "slow_client": 2_000_000,
}


class BenchSmokeTests(SynchronousTestCase):
    def test_quick_run_against_ser2tcp(self) -> None:
        """``run.py --quick --profiles ser2tcp`` completes; every figure is
        "ok" (a byte mismatch would make it "failed"), with every byte
        verified."""
        if not os.access(SER2TCP, os.X_OK):
            raise SkipTest(f"no ser2tcp console script at {SER2TCP}")
        out = Path(self.mktemp())
        report = REPO / "bench" / "RESULTS.md"
        report_before = report.stat().st_mtime_ns if report.exists() else None
        argv = [sys.executable, str(RUN), "--quick", "--profiles", "ser2tcp", "--no-markdown"]
        proc = subprocess.run(
            [*argv, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        files = list(out.glob("*.json"))
        self.assertEqual(len(files), 1, proc.stdout)
        results = json.loads(files[0].read_text())

        self.assertEqual(results["profiles"], ["ser2tcp"])
        for name, baseline in results["baselines"].items():
            self.assertEqual(baseline["status"], "ok", f"baseline {name}: {baseline}")
        figures = results["figures"]
        self.assertEqual(
            set(figures),
            {"throughput_down", "throughput_up", "fanout_1", "fanout_10"}
            | {"latency", "slow_client", "churn", "memory"},
        )
        for key, per_profile in figures.items():
            entry = per_profile["ser2tcp"]
            self.assertEqual(entry["status"], "ok", f"{key}: {entry}")
        for key, expected in QUICK_VERIFIED.items():
            self.assertEqual(figures[key]["ser2tcp"]["verified_bytes"], expected, key)
        self.assertTrue(figures["slow_client"]["ser2tcp"]["fast_got_every_byte"])
        self.assertEqual(figures["latency"]["ser2tcp"]["round_trips"], 200)
        self.assertEqual(figures["churn"]["ser2tcp"]["cycles"], 200)
        report_after = report.stat().st_mtime_ns if report.exists() else None
        self.assertEqual(report_before, report_after, "bench/RESULTS.md must not be written")


class ProtocolBenchSmokeTests(SynchronousTestCase):
    def test_protocols_quick_run(self) -> None:
        """``bench/protocols.py`` in its smallest form completes with every
        byte of every variant verified (a mismatch exits non-zero) and
        reports every figure; no timing is judged."""
        if not os.access(SER2TCP, os.X_OK):
            raise SkipTest(f"no ser2tcp console script at {SER2TCP}")
        for program in ("socat", "openssl"):
            if shutil.which(program) is None:
                raise SkipTest(f"{program} is not installed (.ci/run installs it)")
        out = Path(self.mktemp())
        out.mkdir()
        argv = [sys.executable, str(REPO / "bench" / "protocols.py"), "--mib", "1", "--rounds", "1"]
        argv += ["--trips", "20", "--fanout", "4", "--fanout-mib", "1", "--churn", "0.2"]
        proc = subprocess.run(
            [*argv, "--json", str(out / "p.json")], capture_output=True, text=True, timeout=300, check=False
        )
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        median = json.loads((out / "p.json").read_text())["median"]
        for name in ("ser2tcp tcp", "ser2tcp telnet", "ser2tcp tls", "socat tls"):
            self.assertGreater(median[name]["down_random_mib_s"], 0, name)
            self.assertGreater(median[name]["up_mib_s"], 0, name)
            self.assertGreater(median[name]["rtt_p50_us"], 0, name)
        self.assertGreater(median["ser2tcp fan-out"]["fanout_tls_mib_s"], 0)
        self.assertGreater(median["handshakes"]["ser2tcp"], 0)
        self.assertIn("TLS handshakes", proc.stdout)


class ManyPortsBenchSmokeTests(SynchronousTestCase):
    def test_many_quick_run(self) -> None:
        """``bench/many.py`` in a tiny form: ser2tcp with and without the
        console features completes, every client gets every byte, the idle
        window and the start are measured; no timing is judged."""
        if not os.access(SER2TCP, os.X_OK):
            raise SkipTest(f"no ser2tcp console script at {SER2TCP}")
        out = Path(self.mktemp())
        out.mkdir()
        argv = [sys.executable, str(REPO / "bench" / "many.py"), "--scenarios", "4x3"]
        argv += ["--profiles", "ser2tcp,ser2tcp-console", "--idle", "0.5", "--settle", "0.5"]
        argv += ["--seconds", "1", "--startup", "16", "--json", str(out / "m.json")]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        data = json.loads((out / "m.json").read_text())
        self.assertEqual([r["profile"] for r in data["runs"]], ["ser2tcp", "ser2tcp-console"])
        for run in data["runs"]:
            self.assertEqual(run["status"], "ok", run)
            self.assertTrue(run["every_byte"], run)
            self.assertEqual(run["carried"], 1.0, run)
            self.assertIn("idle_wakeups_s", run)
        self.assertEqual(data["runs"][1]["scrapes_failed"], 0)
        self.assertEqual(data["startup"]["status"], "ok")
        self.assertIn("Many ports", proc.stdout)
