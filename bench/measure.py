"""Run a tool as child processes and measure it: wall time, CPU, peak memory.

CPU is exact: `os.wait4` on each child we start gives user+sys of that process *and* of every
descendant it reaped itself, so a multi-process tool's tree is counted whole.

Peak memory has two readings, both kept in the results:
- `maxrss_mb`: the tool's ru_maxrss as GNU time (`/usr/bin/time -f %M`, our launcher) reports
  it from its own wait4, summed over the commands we started (several only for the openssl
  reference, one s_time per core). Exact for one process; for a process that forks workers
  and reaps them, the kernel folds in only the *largest* descendant, so a multi-process tool
  is under-reported by this reading. Why the launcher: Linux carries the parent's peak RSS
  into ru_maxrss across fork/vfork + exec, so a child exec'd straight from this (large)
  Python process reports at least this process's RSS - `true` shows 200 MB under a 200 MB
  parent. GNU time is a small process, so the tool it starts inherits ~1 MB at most.
- `tree_rss_mb`: every 50 ms we sum VmRSS over the started processes and all their
  descendants (found by walking /proc, refreshed every 0.5 s) and keep the highest sum.
  Sampled, so a short spike can be missed, but it sees a whole process tree. It counts a
  page shared by several processes (a forked worker's copy-on-write modules) once per
  process, so it over-reports a tree of forked workers.
- `tree_pss_mb`: the same sampling, summing Pss (proportional set size, from
  /proc/PID/smaps_rollup): a shared page is split among the processes sharing it, so the
  sum is what the tree really costs the machine.
The table reports the larger of `maxrss_mb` and `tree_pss_mb`.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _parent_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def descendants(*roots: int) -> list[int]:
    """All processes below `roots` (not the roots themselves)."""
    children = _parent_map()
    found: list[int] = []
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages divided among their sharers."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def cpu_seconds(pids: Sequence[int]) -> float:
    """user+sys so far of live processes (for servers we do not wait for: nginx, proxy)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLOCK_TICKS


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


class TreeRssSampler(threading.Thread):
    """Peak of the summed VmRSS of everything below `roots` (the launchers themselves excluded)."""

    def __init__(self, roots: Sequence[int], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.roots = list(roots)
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self.started = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        pids: list[int] = []
        next_scan = 0.0
        while not self._stop_event.is_set():
            now = time.monotonic()
            if now >= next_scan:
                pids = descendants(*self.roots)
                # Often at first, then every 0.5 s: a /proc walk costs CPU the tools share.
                next_scan = now + (0.05 if now - self.started < 1 else 0.5)
            self.peak = max(self.peak, sum(rss_bytes(pid) for pid in pids))
            self.peak_pss = max(self.peak_pss, sum(pss_bytes(pid) for pid in pids))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _time_maxrss_kb(path: Path) -> int:
    """The last number GNU time wrote (it may add a line about a signal before it)."""
    try:
        lines = path.read_text().split()
        return int(lines[-1]) if lines else 0
    except (OSError, ValueError):
        return 0


@dataclass
class ProcessResult:
    command: list[str]
    exit_code: int
    cpu_s: float
    maxrss_mb: float
    stdout: str
    stderr: str


@dataclass
class Measurement:
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    tree_rss_mb: float
    tree_pss_mb: float
    processes: list[ProcessResult] = field(default_factory=list)

    @property
    def peak_rss_mb(self) -> float:
        return max(self.maxrss_mb, self.tree_pss_mb)


GNU_TIME = "/usr/bin/time"


class Runner:
    """Starts tools in their own process groups so Ctrl-C can end them all by group id."""

    def __init__(self, scratch: Path) -> None:
        if not os.access(GNU_TIME, os.X_OK):
            raise FileNotFoundError(f"{GNU_TIME} missing: run bench/setup.sh (apt package time)")
        self.scratch = scratch
        self.live: list[int] = []

    def kill_live(self) -> None:
        for pid in self.live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.live.clear()

    def measure(self, commands: Sequence[Sequence[str]], limit_s: float = 600.0) -> Measurement:
        """Start every command at once, wait for all; wall is first start to last exit."""
        logs: list[tuple[Path, Path, Path]] = []
        processes: list[subprocess.Popen[bytes]] = []
        started = time.perf_counter()
        for number, command in enumerate(commands):
            out_path = self.scratch / f"proc-{number}.out"
            err_path = self.scratch / f"proc-{number}.err"
            rss_path = self.scratch / f"proc-{number}.maxrss"
            rss_path.unlink(missing_ok=True)
            logs.append((out_path, err_path, rss_path))
            with out_path.open("wb") as out, err_path.open("wb") as err:
                process = subprocess.Popen(
                    [GNU_TIME, "-q", "-o", str(rss_path), "-f", "%M", *command],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                )
            processes.append(process)
            self.live.append(process.pid)
        sampler = TreeRssSampler([p.pid for p in processes])
        sampler.start()
        watchdog = threading.Timer(limit_s, self.kill_live)
        watchdog.daemon = True
        watchdog.start()
        results: list[ProcessResult] = []
        try:
            usages: dict[int, tuple[int, resource.struct_rusage]] = {}
            for process in processes:
                _, status, usage = os.wait4(process.pid, 0)
                process.returncode = os.waitstatus_to_exitcode(status)
                self.live.remove(process.pid)
                usages[process.pid] = (process.returncode, usage)
            wall = time.perf_counter() - started
        finally:
            watchdog.cancel()
            sampler.stop()
        for command, process, (out_path, err_path, rss_path) in zip(
            commands, processes, logs, strict=True
        ):
            code, usage = usages[process.pid]
            results.append(
                ProcessResult(
                    command=list(command),
                    exit_code=code,
                    cpu_s=usage.ru_utime + usage.ru_stime,  # the tool's tree, plus time's ~0
                    maxrss_mb=_time_maxrss_kb(rss_path) / 1024,
                    stdout=out_path.read_text(errors="replace"),
                    stderr=err_path.read_text(errors="replace")[-4000:],
                )
            )
        return Measurement(
            wall_s=wall,
            cpu_s=sum(r.cpu_s for r in results),
            maxrss_mb=sum(r.maxrss_mb for r in results),
            tree_rss_mb=sampler.peak / 2**20,
            tree_pss_mb=sampler.peak_pss / 2**20,
            processes=results,
        )
