"""Targets and the Markdown report (bench/RESULTS.md) built from a run's JSON.

Only ratios of the same run are compared: the machine is shared and noisy,
so absolute numbers from different runs say little.  A ratio is always
ser2tcp's value divided by the peer's.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from figures import SLOW_BUFFER_LIMIT, SLOW_SEND_TIMEOUT

SUBJECT = "ser2tcp"
KiB = 1024


@dataclass(frozen=True)
class Target:
    """``ser2tcp.figure.metric OP factor x peer.figure.metric`` (a ratio of
    the same run), or ``OP factor`` against a fixed number (in the metric's
    own unit) when peer is None.  ``unit``/``scale`` only shape the display."""

    figure: str
    metric: str
    op: str  # ">=" or "<="
    factor: float
    peer: str | None
    text: str
    unit: str = ""
    scale: float = 1.0


_CUT = SLOW_SEND_TIMEOUT + 1
_GROWTH_KIB = (SLOW_BUFFER_LIMIT + 1024 * KiB) / KiB

_ORIG = "ser2tcp-2.3.0"
_TUNED = "ser2net-tuned"
_CONSOLE = "ser2tcp-console"
_HTTP = "ser2tcp-http"

TARGETS = [
    Target("throughput_down", "mib_s", ">=", 0.95, "socat", "device -> 1 client >= 0.95 x socat", "MiB/s"),
    Target("throughput_up", "mib_s", ">=", 0.95, "socat", "client -> device >= 0.95 x socat", "MiB/s"),
    # The console features (port log with timestamps, scrollback) cost at
    # most 10%: console >= 0.9 x plain, i.e. plain <= 1/0.9 x console.
    Target(
        "throughput_down",
        "mib_s",
        "<=",
        1 / 0.9,
        _CONSOLE,
        "device -> 1 client, plain <= 1.11 x with port log + scrollback (these cost <= 10%)",
        "MiB/s",
    ),
    # HTTP configured and /metrics scraped once a second cost at most 3%.
    Target(
        "throughput_down",
        "mib_s",
        "<=",
        1 / 0.97,
        _HTTP,
        "device -> 1 client, plain <= 1.03 x with /metrics scraped each second",
        "MiB/s",
    ),
    Target("latency", "p50_us", ">=", 1 / 1.03, _HTTP, "round trip p50, plain >= 0.97 x with HTTP", "µs"),
    Target("latency", "p50_us", "<=", 1.15, "socat", "round trip p50 <= 1.15 x socat", "µs"),
    Target("latency", "p50_us", "<=", 1.3, _TUNED, "round trip p50 <= 1.3 x tuned ser2net", "µs"),
    Target("latency", "p99_us", "<=", 1.5, "socat", "round trip p99 <= 1.5 x socat", "µs"),
    Target("fanout_100", "mib_s", ">=", 1.25, _ORIG, "fan-out 100 clients >= 1.25 x 2.3.0", "MiB/s"),
    Target("fanout_500", "mib_s", ">=", 1.25, _ORIG, "fan-out 500 clients >= 1.25 x 2.3.0", "MiB/s"),
    Target("fanout_100", "mib_s", ">=", 3.0, _TUNED, "fan-out 100 clients >= 3 x tuned ser2net", "MiB/s"),
    Target("fanout_500", "mib_s", ">=", 3.0, _TUNED, "fan-out 500 clients >= 3 x tuned ser2net", "MiB/s"),
    Target("throughput_down", "cpu_s_per_mib", "<=", 2.0, "socat", "CPU/MiB, 1 client <= 2 x socat", "s/MiB"),
    Target("fanout_100", "cpu_s_per_mib", "<=", 0.5, _ORIG, "CPU/MiB, 100 clients <= 0.5 x 2.3.0", "s/MiB"),
    Target("slow_client", "fast_got_every_byte", ">=", 1, None, "slow client: fast client gets every byte"),
    Target("slow_client", "fast_mb_s", ">=", 0.95, None, "slow client: fast client >= 0.95 MB/s", "MB/s"),
    Target("slow_client", "fast_worst_lag_ms", "<=", 50, None, "slow client: fast client lag <= 50 ms", "ms"),
    Target(
        "slow_client",
        "slow_cut_after_full_s",
        "<=",
        _CUT,
        None,
        f"slow client cut off <= send_timeout + 1 s ({_CUT:g} s) after its buffers fill",
        "s",
    ),
    Target(
        "slow_client",
        "rss_growth_kib",
        "<=",
        _GROWTH_KIB,
        None,
        "slow client: memory growth <= buffer_limit + 1 MiB",
        "MiB",
        KiB,
    ),
    Target("churn", "per_s", ">=", 5000, None, "churn >= 5,000 connect/close per second", "/s"),
    Target("churn", "fd_leak", "<=", 0, None, "churn: no fd leak (fds after - before)"),
    Target("memory", "per_client_kib", "<=", 16, None, "<= 16 KiB per idle connected client", "KiB"),
]

_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


def _metric(results: dict[str, Any], figure: str, profile: str, metric: str) -> tuple[Any, str | None]:
    """(value, None) or (None, why it is missing)."""
    entry = results.get("figures", {}).get(figure, {}).get(profile)
    if entry is None:
        return None, f"{profile}: {figure} not measured"
    if entry.get("status") != "ok":
        return None, f"{profile}: {entry.get('status')}"
    value = entry.get(metric)
    if value is None:
        return None, f"{profile}: no {metric}"
    return value, None


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured ratio (or value) and whether it is met
    (None when it cannot be told: a profile skipped, timed out or failed)."""
    out = []
    for t in TARGETS:
        row: dict[str, Any] = {
            "target": t.text,
            "figure": t.figure,
            "metric": t.metric,
            "peer": t.peer,
            "unit": t.unit,
            "scale": t.scale,
        }
        mine, why = _metric(results, t.figure, SUBJECT, t.metric)
        if why is None and t.peer is not None:
            theirs, why = _metric(results, t.figure, t.peer, t.metric)
            if why is None:
                if theirs == 0:
                    why = f"{t.peer}: zero"
                else:
                    row["ratio"] = mine / theirs
        if why is not None:
            row.update({"met": None, "why": why})
        else:
            measured = row["ratio"] if t.peer is not None else float(mine)
            row["value"] = mine
            row["met"] = bool(_OPS[t.op](measured, t.factor))
        out.append(row)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt(value: Any) -> str:
    """Numbers with about three significant digits; booleans as yes/no."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        a = abs(value)
        if a >= 1000:
            return f"{value:,.0f}"
        if a >= 100:
            return f"{value:.0f}"
        if a >= 10:
            return f"{value:.1f}"
        if a >= 1:
            return f"{value:.2f}"
        if a >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2g}"
    return str(value)


#: the partial-progress key a timed-out figure carries for a metric
_PARTIAL = {"mib_s": "partial_mib_s", "per_s": "partial_per_s"}


@dataclass(frozen=True)
class Row:
    label: str
    figure: str
    metric: str
    scale: float = 1.0  # divide by this (KiB -> MiB)
    ratio: bool = True


def _cell(results: dict[str, Any], row: Row, profile: str) -> str:
    entry = results.get("figures", {}).get(row.figure, {}).get(profile)
    if entry is None:
        return ""
    status = entry.get("status")
    if status == "skipped":
        return "skipped"
    if status == "timeout":
        # What the figure had reached when its time ran out, where known.
        partial = entry.get(_PARTIAL.get(row.metric, ""))
        if partial is not None:
            return f"timeout ({fmt(partial)} so far)"
        if row.metric in entry:
            return fmt(entry[row.metric])
        return "timeout"
    if status != "ok":
        return "**FAILED**" if status == "failed" else status
    value = entry.get(row.metric)
    if value is None:
        return "-"
    text = fmt(value / row.scale if _is_number(value) and row.scale != 1 else value)
    if profile != SUBJECT and row.ratio and _is_number(value):
        mine, why = _metric(results, row.figure, SUBJECT, row.metric)
        if why is None and value:
            text += f" (×{mine / value:.2f})"
    return text


def _table(results: dict[str, Any], rows: list[Row]) -> list[str]:
    profiles = results["profiles"]
    lines = ["| | " + " | ".join(profiles) + " |", "|---" * (len(profiles) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row.label} | " + " | ".join(_cell(results, row, p) for p in profiles) + " |")
    return lines


def _problems(results: dict[str, Any], figure_keys: list[str]) -> list[str]:
    lines = []
    for key in figure_keys:
        for profile, entry in results.get("figures", {}).get(key, {}).items():
            if entry.get("status") in ("failed", "error", "timeout"):
                lines.append(f"- {profile}, {key}: {entry['status']}: {entry.get('error', '')}")
    return lines


SECTIONS: list[tuple[str, str, list[Row]]] = [
    (
        "1. Throughput (MiB/s, one client)",
        "32 MiB of random data (1 MiB with --quick) through the proxy, every byte compared.",
        [
            Row("device → 1 client", "throughput_down", "mib_s"),
            Row("client → device", "throughput_up", "mib_s"),
        ],
    ),
    (
        "2. Fan-out (aggregate MiB/s delivered)",
        "Every client receives the same 4 MiB (256 KiB with --quick); aggregate = clients × size / time "
        "from the first byte written to the last client complete.",
        [Row(f"{n} client(s)", f"fanout_{n}", "mib_s") for n in (1, 10, 100, 500)],
    ),
    (
        "3. Round trip (µs; lower is better)",
        "One byte client → device, echoed by the device side, back to the client; one at a time.",
        [
            Row("p50", "latency", "p50_us"),
            Row("p99", "latency", "p99_us"),
            Row("mean", "latency", "mean_us"),
        ],
    ),
    (
        "4. Slow-client isolation",
        "One client never reads (SO_RCVBUF 4096) while the device streams 1 MB/s to it and to a fast client; "
        f"ser2tcp profiles run with send_timeout {SLOW_SEND_TIMEOUT:g} and buffer_limit {SLOW_BUFFER_LIMIT}, "
        "ser2net has no such options.",
        [
            Row("fast client got every byte", "slow_client", "fast_got_every_byte", ratio=False),
            Row("fast client MB/s", "slow_client", "fast_mb_s"),
            Row("fast client worst lag (ms)", "slow_client", "fast_worst_lag_ms"),
            Row("fast client p99 lag (ms)", "slow_client", "fast_p99_lag_ms"),
            Row("device blocked (proxy stopped reading it)", "slow_client", "device_blocked", ratio=False),
            Row("slow client's buffers full at (s)", "slow_client", "slow_buffers_full_after_s", ratio=False),
            Row("slow client cut off after (s)", "slow_client", "slow_cut_after_s", ratio=False),
            Row("… after its buffers filled (s)", "slow_client", "slow_cut_after_full_s", ratio=False),
            Row("proxy RSS growth (MiB)", "slow_client", "rss_growth_kib", scale=KiB),
        ],
    ),
    (
        "5. Connection churn",
        "Plain connect/close cycles one after another, timed until the proxy has closed them all "
        "(its fd count is back to idle).",
        [
            Row("connect/close per second", "churn", "per_s"),
            Row("proxy fds before", "churn", "fds_before", ratio=False),
            Row("proxy fds after", "churn", "fds_after", ratio=False),
        ],
    ),
    (
        "6. CPU and memory",
        "CPU = utime + stime of the proxy process from /proc/PID/stat around the transfer, per MiB "
        "delivered to clients (10 ms resolution); memory from /proc/PID/status.",
        [
            Row("CPU s/MiB, device → 1 client", "throughput_down", "cpu_s_per_mib"),
            Row("CPU s/MiB, client → device", "throughput_up", "cpu_s_per_mib"),
            Row("CPU s/MiB, fan-out 100 clients", "fanout_100", "cpu_s_per_mib"),
            Row("CPU s/MiB, fan-out 500 clients", "fanout_500", "cpu_s_per_mib"),
            Row("idle RSS (MiB)", "memory", "idle_rss_kib", scale=KiB),
            Row("RSS with 100 idle clients (MiB)", "memory", "clients_rss_kib", scale=KiB),
            Row("per idle client (KiB)", "memory", "per_client_kib"),
        ],
    ),
]


def _peak_hwm(results: dict[str, Any], profile: str) -> str:
    peaks = [
        (entry.get("proxy_hwm_kib") or 0, key)
        for key, per in results.get("figures", {}).items()
        if (entry := per.get(profile))
    ]
    if not peaks or max(peaks)[0] == 0:
        return "-"
    kib, key = max(peaks)
    return f"{kib / KiB:.1f} ({key})"


def markdown(results: dict[str, Any], json_path: Path | None = None) -> str:
    """The whole RESULTS.md."""
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `bench/run.py{' --quick' if results.get('quick') else ''}`; do not edit by hand.",
        "The machine is shared and noisy: compare the ratios (ser2tcp / peer, same run), "
        "not absolute numbers across runs.",
        "",
        f"- date: {results['date']}",
        f"- machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}",
    ]
    if json_path is not None:
        lines.append(f"- raw data: `{json_path.name}` (in bench/results/, not committed)")
    lines += ["", "| profile | version | what |", "|---|---|---|"]
    for p in results["profiles"]:
        lines.append(f"| {p} | {results['versions'].get(p, '')} | {results['descriptions'].get(p, '')} |")
    lines += [
        "",
        "In the tables, a peer's cell shows its value and, in brackets, ser2tcp's value divided by it "
        "(×r).  Higher is better for rates, lower for times, CPU and memory.",
        "",
        "## Targets",
        "",
        "| target | ser2tcp | ratio | met |",
        "|---|---|---|---|",
    ]
    for t in results.get("targets", []):
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        if t["met"] is None:
            met += f" ({t['why']})"
        ratio = fmt(t.get("ratio")) if t.get("peer") else ""
        value = t.get("value")
        shown = fmt(value / t["scale"] if _is_number(value) else value)
        if value is not None and t["unit"]:
            shown += f" {t['unit']}"
        lines.append(f"| {t['target']} | {shown} | {ratio} | {met} |")
    for title, text, rows in SECTIONS:
        lines += ["", f"## {title}", "", text, ""]
        lines += _table(results, rows)
        if title.startswith("1."):
            b = results.get("baselines", {}).get("pty_throughput", {})
            if b.get("status") == "ok":
                rate = fmt(b["mib_s"])
                lines += ["", f"Without a proxy, the pty alone (master -> slave, same code): {rate} MiB/s."]
        if title.startswith("3."):
            base = results.get("baselines", {})
            parts = []
            for name, label in (("pty", "pty alone"), ("tcp", "TCP loopback alone")):
                b = base.get(name, {})
                if b.get("status") == "ok":
                    parts.append(f"{label}: p50 {fmt(b['p50_us'])} µs, p99 {fmt(b['p99_us'])} µs")
            if parts:
                lines += ["", "Without a proxy (same harness): " + "; ".join(parts) + "."]
        if title.startswith("6."):
            lines.append(
                "| peak VmHWM over all figures (MiB) | "
                + " | ".join(_peak_hwm(results, p) for p in results["profiles"])
                + " |"
            )
        keys = sorted({r.figure for r in rows})
        problems = _problems(results, keys)
        if problems:
            lines += ["", *problems]
    lines.append("")
    return "\n".join(lines)


def replace_section(path: Path, section: str, begin: str, end: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``)
    in place of that section of ``path``, or append it: benchmarks run apart
    share one RESULTS.md, and each rewrites only its own part."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
