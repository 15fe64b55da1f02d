#!/usr/bin/env python3
"""Benchmark ser2tcp against its peers, in one command.

    python bench/run.py [--quick] [--profiles ser2tcp,socat,...] [--out bench/results]

Each figure runs against a fresh pseudo-terminal and a fresh proxy process,
figure by figure across the profiles (so the ratios of one figure are taken
close together in time on a noisy machine).  Raw results go to
``<out>/<timestamp>.json`` and, unless ``--no-markdown``, bench/RESULTS.md is
regenerated from them.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import figures  # noqa: E402
import report  # noqa: E402
from figures import FULL, QUICK, SLOW_BUFFER_LIMIT, SLOW_SEND_TIMEOUT, Env, MiB, Sizes  # noqa: E402
from harness import (  # noqa: E402
    FigureTimeout,
    Pty,
    VerifyError,
    free_port,
    hwm_kib,
    machine_info,
    raise_nofile,
)
from proxies import PROFILES, Profile, ProxyProcess, ServerOptions  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Figure:
    """One measurement: which profiles it applies to, its time budget and
    the ser2tcp server options it needs."""

    key: str
    title: str
    measure: Callable[[Env, Profile], dict[str, object]]
    timeout: Callable[[Sizes], float]
    multi_client: bool = False
    options: ServerOptions = ServerOptions()
    #: measured this many times (full runs), the median round is reported:
    #: cheap figures whose single samples are at the mercy of the noise
    rounds: int = 1
    #: the metric that picks the median round
    primary: str = ""


def figure_list(sizes: Sizes) -> list[Figure]:
    """The figures of a run, in the order they are measured."""
    figs = [
        Figure(
            "throughput_down",
            "device -> 1 client",
            lambda env, p: figures.device_to_clients(env, 1, env.sizes.throughput_bytes),
            lambda s: 30 + 2 * s.throughput_bytes / MiB,
            rounds=3,
            primary="mib_s",
        ),
        Figure(
            "throughput_up",
            "client -> device",
            lambda env, p: figures.client_to_device(env, env.sizes.throughput_bytes),
            lambda s: 30 + 2 * s.throughput_bytes / MiB,
            rounds=3,
            primary="mib_s",
        ),
    ]
    for n in sizes.fanout_clients:
        figs.append(
            Figure(
                f"fanout_{n}",
                f"fan-out to {n} client(s)",
                lambda env, p, n=n: figures.device_to_clients(env, n, env.sizes.fanout_bytes),
                lambda s, n=n: 30 + n * s.fanout_bytes / MiB / 8,
                multi_client=n > 1,
            )
        )
    figs += [
        Figure(
            "latency",
            "round trip",
            lambda env, p: figures.round_trip(env, env.sizes.round_trips),
            lambda s: 30 + s.round_trips * 0.02,
            rounds=3,
            primary="p50_us",
        ),
        Figure(
            "slow_client",
            "slow-client isolation",
            lambda env, p: figures.slow_client(
                env, env.sizes.slow_seconds, SLOW_SEND_TIMEOUT if p.slow_client_options else None
            ),
            lambda s: s.slow_seconds + 30,
            multi_client=True,
            options=ServerOptions(send_timeout=SLOW_SEND_TIMEOUT, buffer_limit=SLOW_BUFFER_LIMIT),
        ),
        Figure(
            "churn",
            "connection churn",
            lambda env, p: figures.churn(env, env.sizes.churn_cycles, anchor=p.multi_client),
            lambda s: 20 + s.churn_cycles * 0.01,
            multi_client=True,
        ),
        Figure(
            "memory",
            "memory",
            lambda env, p: figures.memory(env, env.sizes.idle_clients if p.multi_client else 0),
            lambda s: 60,
        ),
    ]
    return figs


class HwmWatch:
    """Samples the proxy's VmHWM in the background: the last reading before
    it exits is its peak (socat exits as soon as its client leaves)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.05)

    def sample(self) -> None:
        v = hwm_kib(self.pid)
        if v is not None and (self.peak is None or v > self.peak):
            self.peak = v

    def __enter__(self) -> HwmWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self._stop.set()
        self._thread.join(1)


def run_figure(
    fig: Figure, profile: Profile, sizes: Sizes, tmp: Path, seed: int, scale: float
) -> dict[str, object]:
    """Run one figure against a fresh pty and proxy; never raises."""
    if profile.executable() is None:
        return {"status": "skipped", "reason": "not installed"}
    if fig.multi_client and not profile.multi_client:
        return {"status": "skipped", "reason": "serves one client only"}
    timeout = fig.timeout(sizes) * scale
    started = time.monotonic()
    result: dict[str, object]
    pty = Pty()
    proxy: ProxyProcess | None = None
    try:
        proxy = ProxyProcess(profile, pty.path, free_port(), tmp, fig.options)
        with proxy, HwmWatch(proxy.pid) as watch:
            env = Env(pty, proxy, sizes, time.monotonic() + timeout, random.Random(seed))
            try:
                result = {"status": "ok", **fig.measure(env, profile)}
            finally:
                watch.sample()
            result["proxy_hwm_kib"] = watch.peak
    except FigureTimeout as e:
        result = {"status": "timeout", "error": str(e), "timeout_s": timeout, **e.partial}
    except VerifyError as e:
        result = {"status": "failed", "error": str(e)}
    except Exception as e:
        log = proxy.log_tail() if proxy is not None else ""
        result = {"status": "error", "error": f"{type(e).__name__}: {e}", "log": log}
    finally:
        pty.close()
    result["wall_s"] = round(time.monotonic() - started, 3)
    return result


#: which failure to report when rounds disagree: a wrong byte first
_SEVERITY = {"failed": 0, "error": 1, "timeout": 2}


def combine_rounds(rounds: list[dict[str, object]], primary: str) -> dict[str, object]:
    """One result from several rounds of a figure: the worst failure if any
    round failed (a failure is never hidden by a better round), else the
    round with the median ``primary`` metric, plus every round's value."""
    if len(rounds) == 1:
        return rounds[0]
    bad = [r for r in rounds if r["status"] != "ok"]
    if bad:
        worst = min(bad, key=lambda r: _SEVERITY.get(str(r["status"]), 9))
        return {**worst, "rounds": [r["status"] for r in rounds]}
    ordered = sorted(rounds, key=lambda r: r[primary])  # type: ignore[arg-type,return-value]
    return {**ordered[len(ordered) // 2], "rounds": [r[primary] for r in rounds]}


def summary(value: dict[str, object]) -> str:
    """One line per figure on the console while the run goes."""
    if value["status"] != "ok":
        return f"{value['status']}: {value.get('error') or value.get('reason', '')}"
    for key in ("mib_s", "p50_us", "fast_mb_s", "per_s", "idle_rss_kib"):
        if key in value:
            return f"{key}={report.fmt(value[key])}"
    return "ok"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark ser2tcp against socat, ser2net and 2.3.0.")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run, ~30 s per profile)")
    parser.add_argument(
        "--profiles",
        default=",".join(PROFILES),
        help=f"comma-separated, from {','.join(PROFILES)} (default: all)",
    )
    parser.add_argument(
        "--figures", default="", help="comma-separated figure keys or prefixes (default: all), for debugging"
    )
    parser.add_argument("--out", default=str(BENCH_DIR / "results"), help="directory for the raw JSON")
    parser.add_argument("--markdown", default=str(BENCH_DIR / "RESULTS.md"), help="the report to regenerate")
    parser.add_argument("--no-markdown", action="store_true", help="write the JSON only")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the random payloads")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every figure's timeout")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        parser.error(f"unknown profile(s): {', '.join(unknown)}")
    args.profile_names = names
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    raise_nofile(8192)
    profiles = [PROFILES[n] for n in args.profile_names]
    wanted = [f.strip() for f in args.figures.split(",") if f.strip()]
    figs = [f for f in figure_list(sizes) if not wanted or any(f.key.startswith(w) for w in wanted)]
    now = datetime.datetime.now(datetime.timezone.utc)
    results: dict[str, object] = {
        "date": now.isoformat(timespec="seconds"),
        "quick": args.quick,
        "sizes": sizes.__dict__,
        "machine": machine_info(),
        "profiles": [p.name for p in profiles],
        "descriptions": {p.name: p.description for p in profiles},
        "versions": {p.name: p.version() for p in profiles},
        "figures": {},
    }
    print(f"machine: {results['machine']}", flush=True)
    for name, version in results["versions"].items():  # type: ignore[union-attr]
        print(f"  {name}: {version}", flush=True)
    baselines: dict[str, dict[str, object]] = {}
    results["baselines"] = baselines
    for name, fn in (
        ("pty", lambda: figures.round_trip_pty(sizes.round_trips)),
        ("tcp", lambda: figures.round_trip_tcp(sizes.round_trips)),
        ("pty_throughput", lambda: figures.pty_throughput(sizes.throughput_bytes)),
    ):
        try:
            baselines[name] = {"status": "ok", **fn()}
        except Exception as e:
            baselines[name] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        print(f"baseline {name}: {summary(baselines[name])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ser2tcp-bench-") as tmp:
        for fig in figs:
            per_profile: dict[str, object] = {}
            results["figures"][fig.key] = per_profile  # type: ignore[index]
            rounds = 1 if args.quick else fig.rounds
            collected: dict[str, list[dict[str, object]]] = {p.name: [] for p in profiles}
            # Round-major: each round visits every profile, so that a burst
            # of noise hits one round of all of them rather than one profile.
            for n in range(rounds):
                for profile in profiles:
                    value = run_figure(fig, profile, sizes, Path(tmp), args.seed + n, args.timeout_scale)
                    collected[profile.name].append(value)
                    label = fig.key if rounds == 1 else f"{fig.key}#{n + 1}"
                    print(f"{label:18} {profile.name:14} {summary(value)}", flush=True)
            for name, values in collected.items():
                per_profile[name] = combine_rounds(values, fig.primary)
    results["targets"] = report.evaluate(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"raw results: {path}")
    if not args.no_markdown:
        target = Path(args.markdown)
        # Sections other benchmarks wrote (after the first "<!-- " marker) stay.
        kept = target.read_text().split("\n<!-- ", 1) if target.exists() else []
        tail = "\n<!-- " + kept[1] if len(kept) == 2 else ""
        target.write_text(report.markdown(results, path) + tail)
        print(f"report: {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
