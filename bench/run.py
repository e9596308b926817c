"""certscan vs baselines on one local TLS fleet: `python bench/run.py [--hosts 2000] [--reps 3]`.

See bench/README.md for what each number means. Regime A: every host answers, concurrency
100. Regime B: 100 ms round trip, 5% silent hosts, 5% refused, concurrency 2000, timeout 3 s.
Regime L: a legacy fleet (TLS 1.0 only, CBC only, static RSA only, RSA-1024 leaf, SHA-1
leaf), concurrency 100: every certificate must be captured, the first three kinds through
certscan's OpenSSL fallback, the last two by rustls. Tools run alternately, `--reps` times
each, each rep starting one tool further on (A B C, B C A, ...); the tables show medians.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from fleet import (
    LEGACY_KINDS,
    OUT,
    Fleet,
    Nginx,
    backend_address,
    build_fleet,
    build_legacy_fleet,
    end_process,
    server_priority,
)
from measure import Measurement, Runner, busy_seconds, cpu_seconds

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
NETNS = "certbench"
NETEM = ("netem", "delay", "50ms")  # on the namespace's lo: both directions, so 100 ms RTT
STATE = OUT / "running.json"  # pids of our servers, so a crashed run's leftovers are reaped

BUSY_WARNING_PCT = 15  # "other CPU%" above which the report says the machine was not quiet

# Regime B's host mix, by host index: every 20th is silent, every 20th (offset) refused.
SILENT_SLOT, REFUSED_SLOT, SLOTS = 7, 13, 20


@dataclass(frozen=True, slots=True)
class Regime:
    name: str
    concurrency: int
    timeout: float
    delay_mode: str  # "none", "netem" or "proxy"


@dataclass(frozen=True, slots=True)
class Setting:
    regime: Regime
    fleet: Fleet
    targets_file: Path
    categories: dict[str, str]  # target -> reachable | silent | refused
    kinds: dict[str, str]  # regime L: target -> the name of its kind of legacy server
    scratch: Path
    port: int
    certscan_args: tuple[str, ...]
    stime_seconds: int
    stime_procs: int


@dataclass
class RunResult:
    tool: str
    rep: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    maxrss_mb: float
    tree_rss_mb: float
    tree_pss_mb: float
    ok: int
    total: int
    server_cpu_s: float
    other_cpu_pct: float  # share of the machine busy with other work during the run
    exit_codes: list[int]
    statuses: dict[str, int] = field(default_factory=dict)
    reachable: int = 0
    reachable_ok: int = 0
    reachable_timeouts: int = 0
    validated: int | None = None  # certscan: ok records whose chain it judged trusted
    # Regime L, per kind of server: hosts, ok, and for certscan's and goscan's records the
    # trusted ok ones, for certscan's also the ok ones by engine ("rustls", "openssl").
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    note: str = ""

    @property
    def handshakes_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_ms_per_handshake(self) -> float:
        return 1000 * self.cpu_s / self.ok if self.ok else float("nan")

    @property
    def server_cpu_ms_per_handshake(self) -> float:
        return 1000 * self.server_cpu_s / self.ok if self.ok else float("nan")


# --- tools ---------------------------------------------------------------------------------

Statuses = list[tuple[str, str]]  # (target, "ok" or an error class)


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    commands: Callable[[Setting, Path, int], list[list[str]]]  # (setting, out file, rep)
    statuses: Callable[[Setting, Path, Measurement], Statuses]
    regimes: str = "AB"
    binary: Path | None = None  # a program bench/setup.sh builds; the tool is skipped without it


def certscan_command() -> list[str]:
    script = Path(sys.executable).parent / "certscan"
    if script.exists():
        return [str(script)]
    found = shutil.which("certscan")
    return [found] if found else [sys.executable, "-m", "scanner"]


def certscan_commands(setting: Setting, out: Path, rep: int) -> list[list[str]]:
    return [[
        *certscan_command(), "scan", str(setting.targets_file), "-o", str(out),
        "--ca-bundle", str(setting.fleet.ca_pem),
        "--concurrency", str(setting.regime.concurrency),
        "--timeout", f"{setting.regime.timeout:g}", "--quiet", *setting.certscan_args,
    ]]


def certscan_openssl_commands(setting: Setting, out: Path, rep: int) -> list[list[str]]:
    """certscan with OpenSSL alone (no rustls first, no fallback)."""
    return [[*command, "--engine", "openssl"] for command in
            certscan_commands(setting, out, rep)]


VALIDATED: dict[Path, int] = {}
# Per output file, the ok records' facts by target: engine (certscan's records say which
# TLS library gave them; None for goscan's) and whether the chain was judged trusted.
OK_RECORDS: dict[Path, dict[str, tuple[str | None, bool]]] = {}


def record_statuses(out: Path, trusted: Callable[[dict[str, Any]], bool]) -> Statuses:
    """Statuses from a JSON-lines output whose records have target, status ("ok") and
    error.type, as certscan's and goscan's do; counts the ok records `trusted` accepts."""
    statuses: Statuses = []
    validated = 0
    facts: dict[str, tuple[str | None, bool]] = {}
    if out.exists():
        for line in out.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line if the run was killed
            if record.get("status") == "ok":
                statuses.append((record["target"], "ok"))
                is_trusted = trusted(record)
                validated += is_trusted
                facts[record["target"]] = (record.get("engine"), is_trusted)
            else:
                statuses.append((record.get("target", "?"), (record.get("error") or {}).get(
                    "type", "other")))
    VALIDATED[out] = validated
    OK_RECORDS[out] = facts
    return statuses


def certscan_statuses(setting: Setting, out: Path, measurement: Measurement) -> Statuses:
    return record_statuses(out, lambda record: bool((record.get("validation") or {}).get(
        "trusted")))


GOSCAN = BENCH / "goscan" / "goscan"  # built from bench/goscan/main.go by bench/setup.sh


def goscan_commands(setting: Setting, out: Path, rep: int) -> list[list[str]]:
    return [[
        str(GOSCAN), "-ca", str(setting.fleet.ca_pem),
        "-concurrency", str(setting.regime.concurrency),
        "-timeout", f"{setting.regime.timeout:g}", "-out", str(out), str(setting.targets_file),
    ]]


def goscan_statuses(setting: Setting, out: Path, measurement: Measurement) -> Statuses:
    return record_statuses(out, lambda record: bool(record.get("trusted")))


def baseline_commands(*options: str) -> Callable[[Setting, Path, int], list[list[str]]]:
    def commands(setting: Setting, out: Path, rep: int) -> list[list[str]]:
        return [[
            sys.executable, str(BENCH / "baselines.py"), *options, str(setting.targets_file),
            "--concurrency", str(setting.regime.concurrency),
            "--timeout", f"{setting.regime.timeout:g}", "--out", str(out),
        ]]

    return commands


def baseline_statuses(setting: Setting, out: Path, measurement: Measurement) -> Statuses:
    if not out.exists():
        return []
    return [
        (target, status)
        for target, _, status in (line.partition("\t") for line in out.read_text().splitlines())
    ]


def stime_commands(setting: Setting, out: Path, rep: int) -> list[list[str]]:
    """One `openssl s_time` per core, each on its own host (s_time takes one host)."""
    hosts = setting.fleet.hosts
    return [
        ["openssl", "s_time", "-connect",
         f"{hosts[(rep * setting.stime_procs + i) % len(hosts)]}:{setting.port}",
         "-new", "-time", str(setting.stime_seconds)]
        for i in range(setting.stime_procs)
    ]


STIME_LINE = re.compile(r"(\d+) connections in [\d.]+s;")


def stime_statuses(setting: Setting, out: Path, measurement: Measurement) -> Statuses:
    statuses: Statuses = []
    for process in measurement.processes:
        match = STIME_LINE.search(process.stdout)
        target = process.command[3]
        statuses.extend([(target, "ok")] * (int(match.group(1)) if match else 0))
    return statuses


TOOLS = [
    Tool("certscan", certscan_commands, certscan_statuses, regimes="ABL"),
    # The legacy fleet only: what the fallback costs against OpenSSL for every host.
    Tool("certscan-openssl", certscan_openssl_commands, certscan_statuses, regimes="L"),
    Tool("stdlib-threads", baseline_commands("threads"), baseline_statuses, regimes="ABL"),
    Tool("asyncio+wait_closed", baseline_commands("asyncio", "--loop", "asyncio", "--close",
                                                  "wait"), baseline_statuses, regimes="ABL"),
    Tool("asyncio+abort", baseline_commands("asyncio", "--loop", "asyncio", "--close", "abort"),
         baseline_statuses, regimes="ABL"),
    Tool("uvloop+wait_closed", baseline_commands("asyncio", "--loop", "uvloop", "--close",
                                                 "wait"), baseline_statuses, regimes="ABL"),
    Tool("uvloop+abort", baseline_commands("asyncio", "--loop", "uvloop", "--close", "abort"),
         baseline_statuses, regimes="ABL"),
    # Go's own TLS stack, standing for Go scanners (tlsx, zgrab2); verifies with crypto/x509.
    Tool("go-stdlib", goscan_commands, goscan_statuses, regimes="ABL", binary=GOSCAN),
    # s_time cannot take a target list, a timeout or concurrency: regime A only (in regime
    # L, one host per process would measure one kind of server, not the fleet).
    Tool("openssl-s_time", stime_commands, stime_statuses, regimes="A"),
]
REFERENCE, THREADS, GO = "openssl-s_time", "stdlib-threads", "go-stdlib"
CERTSCAN_OPENSSL = "certscan-openssl"
# The tools certscan's ratios are printed against (where they ran).
OTHERS = (REFERENCE, THREADS, GO, CERTSCAN_OPENSSL)
KIND_LABELS = {kind.name: kind.label for kind in LEGACY_KINDS}
RUSTLS_KINDS = frozenset(kind.name for kind in LEGACY_KINDS if kind.rustls)


def run_once(tool: Tool, setting: Setting, rep: int, runner: Runner,
             server_pids: Callable[[], list[int]]) -> RunResult:
    out = setting.scratch / f"{tool.name}.out"
    out.unlink(missing_ok=True)
    servers = server_pids()
    server_cpu_before, busy_before = cpu_seconds(servers), busy_seconds()
    measurement = runner.measure(tool.commands(setting, out, rep))
    server_cpu = cpu_seconds(servers) - server_cpu_before
    # CPU the machine spent on anything but this tool and our servers: other people's work
    # (and this harness's own sampling), which makes a run noisy.
    other_cpu = busy_seconds() - busy_before - server_cpu - measurement.cpu_s
    other_pct = 100 * max(other_cpu, 0.0) / (measurement.wall_s * (os.cpu_count() or 1))
    statuses = tool.statuses(setting, out, measurement)
    counts = Counter(status for _, status in statuses)
    reachable = [s for t, s in statuses if setting.categories.get(t, "reachable") == "reachable"]
    result = RunResult(
        tool=tool.name, rep=rep, wall_s=measurement.wall_s, cpu_s=measurement.cpu_s,
        peak_rss_mb=measurement.peak_rss_mb, maxrss_mb=measurement.maxrss_mb,
        tree_rss_mb=measurement.tree_rss_mb, tree_pss_mb=measurement.tree_pss_mb,
        ok=counts["ok"],
        total=len(statuses) if tool.name == REFERENCE else len(setting.categories),
        server_cpu_s=server_cpu, other_cpu_pct=other_pct,
        exit_codes=[p.exit_code for p in measurement.processes],
        statuses=dict(counts),
        reachable=sum(1 for c in setting.categories.values() if c == "reachable"),
        reachable_ok=reachable.count("ok"), reachable_timeouts=reachable.count("timeout"),
        validated=VALIDATED.pop(out, None),
        by_kind=by_kind(setting, statuses, OK_RECORDS.pop(out, {})),
    )
    failed = [p for p in measurement.processes if p.exit_code]
    if failed:
        last_lines = failed[0].stderr.strip().splitlines()
        result.note = f"exit {failed[0].exit_code}: " + (last_lines[-1][:200] if last_lines
                                                         else "no stderr")
    return result


def by_kind(setting: Setting, statuses: Statuses,
            ok_records: dict[str, tuple[str | None, bool]]) -> dict[str, dict[str, int]]:
    """Regime L: hosts and ok targets per kind of server; for tools that write records,
    their ok records by engine and the trusted ones."""
    if not setting.kinds:
        return {}
    counts: dict[str, dict[str, int]] = {
        kind.name: {"hosts": 0, "ok": 0} for kind in LEGACY_KINDS}
    for kind in setting.kinds.values():
        counts[kind]["hosts"] += 1
    ok = {target for target, status in statuses if status == "ok" and target in setting.kinds}
    for target in ok:
        counts[setting.kinds[target]]["ok"] += 1
    if ok_records:
        engines = any(engine for engine, _ in ok_records.values())  # certscan's, not goscan's
        for kind_counts in counts.values():
            kind_counts.update({"rustls": 0, "openssl": 0, "trusted": 0} if engines else {
                "trusted": 0})
        for target, (engine, trusted) in ok_records.items():
            if target not in setting.kinds:
                continue
            kind_counts = counts[setting.kinds[target]]
            if engine in ("rustls", "openssl"):
                kind_counts[engine] += 1
            kind_counts["trusted"] += trusted
    return {name: kind_counts for name, kind_counts in counts.items() if kind_counts["hosts"]}


# --- report --------------------------------------------------------------------------------

NUMERIC = ("handshakes_per_s", "cpu_ms_per_handshake", "peak_rss_mb", "wall_s", "ok",
           "server_cpu_ms_per_handshake", "reachable_ok", "reachable_timeouts", "maxrss_mb",
           "tree_rss_mb", "tree_pss_mb", "other_cpu_pct")


def summarise(results: list[RunResult]) -> dict[str, dict[str, Any]]:
    by_tool: dict[str, list[RunResult]] = {}
    for result in results:
        by_tool.setdefault(result.tool, []).append(result)
    summary: dict[str, dict[str, Any]] = {}
    for tool, runs in by_tool.items():
        # A run that crashed says nothing about speed: out of the medians, but it still
        # counts against "every reachable target ok", and the report names it.
        clean = [run for run in runs if not any(run.exit_codes)]
        row: dict[str, Any] = {
            key: statistics.median(getattr(run, key) for run in clean) if clean else math.nan
            for key in NUMERIC
        }
        row["total"] = round(statistics.median(run.total for run in runs))  # s_time varies
        row["reachable"] = runs[0].reachable
        row["worst_reachable_ok"] = min(run.reachable_ok for run in runs)
        row["reps"] = len(runs)
        row["failed_runs"] = [f"rep {run.rep + 1}: {run.note}" for run in runs
                              if any(run.exit_codes)]
        if runs[0].by_kind:
            # Regime L: the per-kind counts of the rep with the fewest ok (the first such).
            worst = min(runs, key=lambda run: run.ok)
            row["by_kind_worst_rep"] = worst.rep + 1
            row["by_kind"] = worst.by_kind
        summary[tool] = row
    return summary


def ratio(summary: dict[str, dict[str, Any]], key: str, tool: str, other: str) -> float | None:
    if tool not in summary or other not in summary:
        return None
    mine, theirs = summary[tool][key], summary[other][key]
    if not theirs or math.isnan(mine) or math.isnan(theirs):
        return None
    return float(mine / theirs)


def per_rep(results: list[RunResult], key: str, tool: str, other: str) -> list[float]:
    """`tool`'s `key` over `other`'s, rep by rep (reps where both ran clean): how much of
    the ratio of medians is one tool's good or bad luck in a single rep."""
    def clean(name: str) -> dict[int, float]:
        return {run.rep: getattr(run, key) for run in results
                if run.tool == name and not any(run.exit_codes)}
    mine, theirs = clean(tool), clean(other)
    return [mine[rep] / theirs[rep] for rep in sorted(mine.keys() & theirs.keys())
            if theirs[rep]]


def goals(regime: Regime, summary: dict[str, dict[str, Any]],
          results: list[RunResult]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def check(text: str, value: float | None, limit: float, higher_is_better: bool) -> None:
        passed = None if value is None else (
            value >= limit if higher_is_better else value <= limit)
        checks.append({"goal": text, "value": value, "limit": limit, "pass": passed})

    cs = summary.get("certscan")
    if regime.name == "A":
        check("certscan handshakes/s >= 0.85x openssl reference",
              ratio(summary, "handshakes_per_s", "certscan", REFERENCE), 0.85, True)
        check("certscan handshakes/s >= 1.25x stdlib threads",
              ratio(summary, "handshakes_per_s", "certscan", THREADS), 1.25, True)
        check("certscan CPU/handshake <= 1.4x openssl reference",
              ratio(summary, "cpu_ms_per_handshake", "certscan", REFERENCE), 1.4, False)
        check("certscan handshakes/s >= 1.0x go-stdlib",
              ratio(summary, "handshakes_per_s", "certscan", GO), 1.0, True)
        check("certscan CPU/handshake <= 1.25x go-stdlib",
              ratio(summary, "cpu_ms_per_handshake", "certscan", GO), 1.25, False)
    elif regime.name == "L":
        checks.extend(legacy_goals(results))
    elif cs is not None:
        check("certscan: every reachable target ok (worst rep, missing targets)",
              float(cs["reachable"] - cs["worst_reachable_ok"]), 0, False)
        check("certscan wall <= 1.2x timeout", cs["wall_s"] / regime.timeout, 1.2, False)
        check(f"certscan peak RSS <= 150 MB at concurrency {regime.concurrency}",
              cs["peak_rss_mb"], 150, False)
    return checks


def legacy_goals(results: list[RunResult]) -> list[dict[str, Any]]:
    """Regime L, judged on every rep (each line shows the worst one): certscan captures
    every certificate, the kinds rustls cannot speak to through the OpenSSL fallback and
    only those, the others by rustls; certscan --engine openssl captures every one too."""
    checks: list[dict[str, Any]] = []

    def kinds_named(rustls: bool) -> str:
        return ", ".join(kind.label.split()[0] for kind in LEGACY_KINDS if kind.rustls is rustls)

    def add(goal: str, misses: list[tuple[int, str]]) -> None:
        # misses: per rep (how far from the goal, what to show); the worst rep is shown.
        missed, shown = max(misses, key=lambda miss: miss[0])
        checks.append({"goal": goal, "value": float(missed), "limit": 0, "shown": shown,
                       "pass": missed == 0})

    for tool, who in (("certscan", ""), (CERTSCAN_OPENSSL, ", certscan --engine openssl")):
        runs = [run for run in results if run.tool == tool]
        if not runs:
            continue
        add(f"legacy fleet{who}: every certificate captured",
            [(run.total - run.ok, f"{run.ok}/{run.total}") for run in runs])
        if tool != "certscan":
            continue
        fallback: list[tuple[int, str]] = []
        by_rustls: list[tuple[int, str]] = []
        for run in runs:
            counts = run.by_kind.values()
            expected = sum(c["hosts"] for name, c in run.by_kind.items()
                           if name not in RUSTLS_KINDS)
            through = sum(c.get("openssl", 0) for c in counts)
            astray = sum(c.get("openssl", 0) for name, c in run.by_kind.items()
                         if name in RUSTLS_KINDS)
            fallback.append((abs(through - expected) + astray,
                             f"{through} records, {expected} hosts"
                             + (f"; {astray} of them of kinds {kinds_named(True)}"
                                if astray else "")))
            rustls_hosts = sum(c["hosts"] for name, c in run.by_kind.items()
                               if name in RUSTLS_KINDS)
            served = sum(c.get("rustls", 0) for name, c in run.by_kind.items()
                         if name in RUSTLS_KINDS)
            by_rustls.append((rustls_hosts - served, f"{served}/{rustls_hosts}"))
        add("legacy fleet: records with engine openssl (the fallback) = hosts of kinds "
            + kinds_named(False), fallback)
        add(f"legacy fleet: kinds {kinds_named(True)} served by rustls", by_rustls)
    return checks


# Short column heads for regime L's table by kind.
SHORT_NAMES = {CERTSCAN_OPENSSL: "cs-openssl", THREADS: "threads",
               "asyncio+wait_closed": "aio+wait", "asyncio+abort": "aio+abort",
               "uvloop+wait_closed": "uv+wait", "uvloop+abort": "uv+abort", GO: "go"}


def print_kinds(summary: dict[str, dict[str, Any]]) -> None:
    """Regime L: a line per kind of server; certscan's ok records by engine and trusted,
    every other tool's ok targets (each tool's rep with the fewest ok)."""
    cs = summary.get("certscan", {}).get("by_kind")
    others = [tool for tool, row in summary.items() if tool != "certscan" and row.get("by_kind")]
    first = summary[next(iter(summary))]["by_kind"]
    names = [kind.name for kind in LEGACY_KINDS if kind.name in first]
    width = max(len(KIND_LABELS[name]) for name in names)
    heads = [SHORT_NAMES.get(tool, tool) for tool in others]
    print("\nBy kind of server: ok targets in each tool's rep with the fewest ok; certscan's "
          "ok records by engine, and how many it judged trusted")
    header = f"{'kind':<{width}} {'hosts':>5}"
    if cs:
        header += f" {'certscan':>8} {'rustls':>6} {'openssl':>7} {'trusted':>7}"
    header += "".join(f" {head:>{max(len(head), 5)}}" for head in heads)
    print(header)
    print("-" * len(header))

    def line(label: str, counts: Callable[[str], dict[str, int]]) -> None:
        text = f"{label:<{width}} {counts('')['hosts']:>5}"
        if cs:
            mine = counts("certscan")
            text += (f" {mine['ok']:>8} {mine.get('rustls', 0):>6} {mine.get('openssl', 0):>7}"
                     f" {mine.get('trusted', 0):>7}")
        text += "".join(f" {counts(tool)['ok']:>{max(len(head), 5)}}"
                        for tool, head in zip(others, heads, strict=True))
        print(text)

    def of(tool: str) -> dict[str, dict[str, int]]:
        return summary[tool]["by_kind"] if tool else first

    for name in names:
        line(KIND_LABELS[name], lambda tool, name=name: of(tool).get(name, {"ok": 0, "hosts": 0}))
    line("all", lambda tool: dict(sum((Counter(c) for c in of(tool).values()), Counter())))
    print("cs-openssl: certscan --engine openssl; aio, uv: asyncio, uvloop; +wait: +wait_closed")


def print_report(regime: Regime, summary: dict[str, dict[str, Any]],
                 checks: list[dict[str, Any]], results: list[RunResult]) -> None:
    title = {"A": "Regime A: direct, every host answers",
             "B": f"Regime B: 100 ms RTT ({regime.delay_mode}), 5% silent, 5% refused",
             "L": f"Regime L: legacy fleet, direct, {len(LEGACY_KINDS)} kinds of server"}
    print(f"\n{title[regime.name]}; concurrency {regime.concurrency}, timeout "
          f"{regime.timeout:g} s; medians")
    header = (f"{'tool':<20} {'handshakes/s':>12} {'CPU ms/hs':>9} {'peak RSS MB':>11} "
              f"{'ok/total':>11} {'wall s':>7} {'server ms/hs':>12} {'other CPU%':>10}")
    if regime.name == "B":
        header += f" {'ok/reachable':>12} {'reach.t/o':>9} {'wall/t.o.':>9}"
    print(header)
    print("-" * len(header))
    for tool, row in summary.items():
        line = (f"{tool:<20} {row['handshakes_per_s']:>12.0f} {row['cpu_ms_per_handshake']:>9.2f}"
                f" {row['peak_rss_mb']:>11.1f} {row['ok']:>5.0f}/{row['total']:<5}"
                f" {row['wall_s']:>7.2f} {row['server_cpu_ms_per_handshake']:>12.2f}"
                f" {row['other_cpu_pct']:>10.0f}")
        if regime.name == "B":
            line += (f" {row['reachable_ok']:>6.0f}/{row['reachable']:<5}"
                     f" {row['reachable_timeouts']:>9.0f} {row['wall_s'] / regime.timeout:>9.2f}")
        print(line)
    print()
    for label, key in (("handshakes/s", "handshakes_per_s"), ("CPU/hs", "cpu_ms_per_handshake")):
        for other in OTHERS:
            value = ratio(summary, key, "certscan", other)
            if value is None:
                continue
            reps = per_rep(results, key, "certscan", other)
            spread = (f"   (rep by rep: median {statistics.median(reps):.2f}x, "
                      f"{min(reps):.2f}-{max(reps):.2f}x)" if len(reps) > 1 else "")
            print(f"certscan / {other:<16} {label:<13} {value:6.2f}x{spread}")
    if regime.name == "L" and summary:
        print_kinds(summary)
    for tool, row in summary.items():
        for failure in row["failed_runs"]:
            print(f"{tool}: {failure} (left out of the medians)")
    noise = statistics.median(row["other_cpu_pct"] for row in summary.values())
    if noise > BUSY_WARNING_PCT:
        print(f"WARNING: other processes kept {noise:.0f}% of the machine busy during these "
              "runs (median): throughput and timeouts are not trustworthy; rerun when quiet.")
    for item in checks:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[item["pass"]]
        if "shown" in item:  # a count, not a ratio: the numbers say it all
            print(f"[{verdict}] {item['goal']} ({item['shown']})")
            continue
        shown = "n/a" if item["value"] is None else f"{item['value']:.2f}"
        print(f"[{verdict}] {item['goal']}: {shown} (limit {item['limit']:g})")


# --- environment and clean-up ---------------------------------------------------------------


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536
    with contextlib.suppress(ValueError, OSError):  # root may raise the hard limit too
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        return
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def reap_stale() -> None:
    """End servers a killed earlier run left behind, by the pids it recorded."""
    if not STATE.exists():
        return
    for pid in json.loads(STATE.read_text()).get("pids", []):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"certbench-nginx-" in cmdline or b"netsim.py" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    STATE.unlink()


def record_pids(pids: list[int]) -> None:
    STATE.write_text(json.dumps({"pids": pids}))


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def environment(regime: Regime) -> dict[str, Any]:
    def output(command: Sequence[str]) -> str:
        try:
            return subprocess.run(list(command), capture_output=True, text=True,
                                  cwd=REPO, check=False).stdout.strip()
        except OSError:
            return ""

    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "openssl": output(["openssl", "version"]),
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True,
                                check=False).stderr.strip(),
        "certscan_commit": output(["git", "rev-parse", "--short", "HEAD"]),
        "certscan_dirty": bool(output(["git", "status", "--porcelain", "scanner"])),
        "goscan_go": output(["go", "version", str(GOSCAN)]) if GOSCAN.exists() else "",
        "delay_mode": regime.delay_mode,
    }


# --- regimes -------------------------------------------------------------------------------


class Servers:
    """nginx (and for regime B the netsim process); `close()` is idempotent."""

    def __init__(self) -> None:
        self.nginx: Nginx | None = None
        self.netsim: subprocess.Popen[str] | None = None

    def pids(self) -> list[int]:
        pids = self.nginx.worker_pids() if self.nginx else []
        if self.netsim is not None:
            pids.append(self.netsim.pid)
        return pids

    def close(self) -> None:
        if self.netsim is not None:
            end_process(self.netsim)
            self.netsim = None
        if self.nginx is not None:
            self.nginx.stop()
            self.nginx = None
        STATE.unlink(missing_ok=True)


@contextlib.contextmanager
def servers_for(regime: Regime, fleet: Fleet, categories: list[str], *, port: int,
                workers: str, scratch: Path) -> Iterator[Servers]:
    servers = Servers()
    try:
        reachable = [i for i, c in enumerate(categories) if c == "reachable"]
        if regime.delay_mode == "proxy":
            serve = [(i, backend_address(i)) for i in reachable]
        else:
            serve = [(i, fleet.hosts[i]) for i in reachable]
        servers.nginx = Nginx(fleet, serve, port, workers=workers)
        started = time.monotonic()
        servers.nginx.start((serve[0][1], port))
        record_pids(servers.pids())
        print(f"nginx: {len(serve)} hosts up in {time.monotonic() - started:.1f}s", flush=True)
        if regime.name == "B":
            silent = scratch / "silent.txt"
            silent.write_text("".join(f"{fleet.hosts[i]}\n" for i, c in enumerate(categories)
                                      if c == "silent"))
            command = [sys.executable, str(BENCH / "netsim.py"), "--port", str(port),
                       "--silent", str(silent)]
            if regime.delay_mode == "proxy":
                proxy = scratch / "proxy.txt"
                proxy.write_text("".join(f"{fleet.hosts[i]} {backend_address(i)}\n"
                                         for i in reachable))
                command += ["--proxy", str(proxy), "--delay", "0.05"]
            servers.netsim = subprocess.Popen(server_priority(command),
                                              stdout=subprocess.PIPE, text=True)
            record_pids(servers.pids())
            assert servers.netsim.stdout is not None
            if servers.netsim.stdout.readline().strip() != "ready":
                raise RuntimeError("netsim.py did not start")
        yield servers
    finally:
        servers.close()


def run_regime(regime: Regime, args: argparse.Namespace) -> dict[str, Any]:
    fleet = build_legacy_fleet(args.hosts) if regime.name == "L" else build_fleet(args.hosts)
    scratch = OUT / f"scratch-{regime.name}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    if regime.name in ("A", "L"):
        categories = ["reachable"] * args.hosts
    else:
        categories = ["silent" if i % SLOTS == SILENT_SLOT else
                      "refused" if i % SLOTS == REFUSED_SLOT else "reachable"
                      for i in range(args.hosts)]
    targets = [f"{host}:{args.port}" for host in fleet.hosts]
    targets_file = scratch / "targets.txt"
    targets_file.write_text("".join(f"{t}\n" for t in targets))
    setting = Setting(
        regime=regime, fleet=fleet, targets_file=targets_file,
        categories=dict(zip(targets, categories, strict=True)),
        kinds=({target: kind.name for target, kind in zip(targets, fleet.kinds, strict=True)}
               if fleet.kinds else {}),
        scratch=scratch,
        port=args.port, certscan_args=tuple(shlex.split(args.certscan_args)),
        stime_seconds=args.stime_seconds, stime_procs=args.stime_procs,
    )
    tools = [t for t in TOOLS if regime.name in t.regimes
             and (not args.tools or t.name in args.tools.split(","))]
    for tool in tools:
        if tool.binary is not None and not os.access(tool.binary, os.X_OK):
            print(f"skipping {tool.name}: {tool.binary.relative_to(REPO)} is not built "
                  "(bench/setup.sh builds it when `go` is installed)", flush=True)
    tools = [t for t in tools if t.binary is None or os.access(t.binary, os.X_OK)]
    runner = Runner(scratch)
    results: list[RunResult] = []
    try:
        with servers_for(regime, fleet, categories, port=args.port,
                         workers=args.nginx_workers, scratch=scratch) as servers:
            for rep in range(args.reps):
                # Each rep starts one tool further on (A B C, B C A, C A B, ...): no tool
                # always runs first, or always right after the same one.
                shift = rep % len(tools)
                for tool in tools[shift:] + tools[:shift]:
                    result = run_once(tool, setting, rep, runner, servers.pids)
                    results.append(result)
                    print(f"  rep {rep + 1}/{args.reps} {tool.name:<20} ok {result.ok}/"
                          f"{result.total} in {result.wall_s:.2f}s"
                          + (f"  [{result.note}]" if result.note else ""), flush=True)
    finally:
        runner.kill_live()
    summary = summarise(results)
    checks = goals(regime, summary, results)
    print_report(regime, summary, checks, results)
    report = {
        "regime": asdict(regime), "hosts": args.hosts, "reps": args.reps,
        "environment": environment(regime), "summary": summary, "goals": checks,
        "kinds": [{"name": kind.name, "label": kind.label, "rustls": kind.rustls,
                   "nginx": list(kind.nginx), "hosts": list(fleet.kinds).count(kind)}
                  for kind in LEGACY_KINDS] if fleet.kinds else [],
        "ratios": {
            f"certscan/{other}": {
                "handshakes_per_s": ratio(summary, "handshakes_per_s", "certscan", other),
                "cpu_ms_per_handshake": ratio(summary, "cpu_ms_per_handshake", "certscan",
                                              other),
                "handshakes_per_s_per_rep": per_rep(results, "handshakes_per_s", "certscan",
                                                    other),
                "cpu_ms_per_handshake_per_rep": per_rep(results, "cpu_ms_per_handshake",
                                                        "certscan", other),
            } for other in OTHERS
        },
        "runs": [asdict(r) | {"handshakes_per_s": r.handshakes_per_s,
                              "cpu_ms_per_handshake": r.cpu_ms_per_handshake} for r in results],
    }
    path = OUT / f"results-{regime.name}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"results: {path.relative_to(REPO)}")
    return report


def netem_available() -> bool:
    """Create the namespace with a 50 ms netem delay on its loopback; False if we cannot."""
    def ip(*command: str) -> bool:
        return subprocess.run(["ip", *command], capture_output=True, check=False).returncode == 0

    ip("netns", "del", NETNS)  # a leftover from a killed run
    if not (ip("netns", "add", NETNS)
            and ip("netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
            and ip("netns", "exec", NETNS, "tc", "qdisc", "add", "dev", "lo", "root", *NETEM)):
        ip("netns", "del", NETNS)
        return False
    return True


def run_regime_b(args: argparse.Namespace) -> None:
    timeout, concurrency = args.timeout_b, args.concurrency_b
    if args.inside_netns:
        run_regime(Regime("B", concurrency, timeout, "netem"), args)
        return
    if args.delay in ("auto", "netem") and shutil.which("ip") and netem_available():
        print(f"regime B: network namespace {NETNS!r} with netem 50 ms each way on its lo",
              flush=True)
        inner = [sys.executable, str(Path(__file__).resolve()), "--regime", "B",
                 "--inside-netns", *passthrough(args)]
        process = subprocess.Popen(["ip", "netns", "exec", NETNS, *inner])
        try:
            process.wait()
        except KeyboardInterrupt:
            # The inner run stops its own servers; give it the time to, then go on.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
        finally:
            subprocess.run(["ip", "netns", "del", NETNS], check=False)
        if process.returncode:
            raise SystemExit(f"regime B inside {NETNS!r} failed ({process.returncode})")
        return
    if args.delay == "netem":
        raise SystemExit("netem is not available here (ip netns / tc qdisc netem failed)")
    print("regime B: netem unavailable here; using bench/netsim.py as a delay proxy "
          "(50 ms each way, uvloop) on the host loopback", flush=True)
    run_regime(Regime("B", concurrency, timeout, "proxy"), args)


def passthrough(args: argparse.Namespace) -> list[str]:
    return [
        "--hosts", str(args.hosts), "--reps", str(args.reps), "--port", str(args.port),
        "--concurrency-b", str(args.concurrency_b), "--timeout-b", str(args.timeout_b),
        "--nginx-workers", args.nginx_workers, f"--certscan-args={args.certscan_args}",
        f"--tools={args.tools}",
    ]


def regimes(text: str) -> str:
    """--regime: the regimes to run, in the order A, B, L."""
    wanted = {"all": "ABL", "both": "AB"}.get(text.lower(), text.upper().replace(",", ""))
    if not wanted or set(wanted) - set("ABL"):
        raise argparse.ArgumentTypeError(f"{text!r}: A, B, L, several of them, both or all")
    return "".join(name for name in "ABL" if name in wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--regime", type=regimes, default="ABL", metavar="REGIMES",
                        help="A, B, L or several (AL, A,L); both = AB; all = ABL (default)")
    parser.add_argument("--tools", default="", help="comma-separated subset of: "
                        + ",".join(t.name for t in TOOLS))
    parser.add_argument("--certscan-args", default="",
                        help='extra certscan flags, e.g. --certscan-args="--workers 2"')
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--concurrency-a", type=int, default=100)
    parser.add_argument("--timeout-a", type=float, default=5.0)
    parser.add_argument("--concurrency-b", type=int, default=2000)
    parser.add_argument("--timeout-b", type=float, default=3.0)
    parser.add_argument("--concurrency-l", type=int, default=100)
    parser.add_argument("--timeout-l", type=float, default=5.0)
    parser.add_argument("--stime-seconds", type=int, default=5)
    parser.add_argument("--stime-procs", type=int, default=os.cpu_count() or 1,
                        help="openssl s_time processes (default: one per core)")
    parser.add_argument("--nginx-workers", default="auto")
    parser.add_argument("--delay", choices=["auto", "netem", "proxy"], default="auto",
                        help="regime B delay: netem in a netns, or the netsim.py proxy")
    parser.add_argument("--inside-netns", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hosts < SLOTS:
        parser.error(f"--hosts must be at least {SLOTS}")

    signal.signal(signal.SIGTERM, _terminate)
    raise_nofile()
    OUT.mkdir(exist_ok=True)
    if not args.inside_netns:
        reap_stale()
    try:
        if "A" in args.regime:
            run_regime(Regime("A", args.concurrency_a, args.timeout_a, "none"), args)
        if "B" in args.regime:
            run_regime_b(args)
        if "L" in args.regime:
            run_regime(Regime("L", args.concurrency_l, args.timeout_l, "none"), args)
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
