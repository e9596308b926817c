"""certscan's nightly inventory as an Airflow DAG: one target list scanned in N shards at
once (one mapped task per shard), the shards merged into the night's result file, compared
with the previous night's, and written as a report and metrics.

    settings -> plan -> scan_shard x N -> merge -> diff -> report -> alert

Written for Airflow 2.x (tested with 2.11) and for any Python that Airflow runs on (3.9+);
Airflow 3's airflow.sdk names are used where present, untested there. Copy this file into
the DAG folder. It only runs the certscan command (on the worker's
PATH, or the `certscan` setting), so Airflow's own environment does not need certscan
installed to parse it. Settings, each from the run's conf (a manual trigger), else the
Airflow Variable certscan_<name>, else the default below; they are read once per run (the
settings task), so a run keeps one shard count even if a Variable changes midway:

    targets       the target list, on storage every worker sees
    results_dir   DIR: per night DIR/NIGHT.jsonl (merged), DIR/NIGHT.changes.jsonl, the
                  shards in DIR/shards/NIGHT/shard-I.jsonl; DIR/report.html, report.csv
                  and certscan.prom are rewritten each night
    shards        N
    target_args   flags that shape the target list, given to scan and merge alike
                  (--ports 443,8443, --starttls smtp, --all-addresses, --sni NAME)
    scan_args     further flags for each shard's scan (-c 2000 --rate 500 --ca-bundle system)
    workers       -w of each shard's scan: the cores one shard may use
    fail_on       the night's alert conditions (certscan diff/report --fail-on)
    certscan      the command (words split as a shell would: "/opt/certscan/bin/certscan",
                  "python3 -m scanner")

NIGHT is the date of the run's data interval end (the day it runs, for the daily
schedule). Clearing a night's run resumes it: every shard is scanned with --resume, so a
retried or cleared shard continues its own file and scans only what it lacks; delete
DIR/shards/NIGHT to scan a night afresh.

Exit statuses of certscan and what the tasks make of them: 0 done; 1 a fatal error (I/O,
a bug) and 128+N (stopped by signal N): the task fails and is retried; 2 a usage error:
the task fails at once, without retries (AirflowFailException), since rerunning the same
command cannot help; 3 a --fail-on condition held: the alert task fails, once the report
and the metrics are written.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.exceptions import AirflowException, AirflowFailException

try:  # Airflow 3
    from airflow.sdk import dag, task
except ImportError:  # Airflow 2
    from airflow.decorators import dag, task

DEFAULTS: dict[str, Any] = {
    "targets": "/srv/certscan/targets.txt",
    "results_dir": "/srv/certscan/results",
    "shards": 32,
    "target_args": "",
    "scan_args": "",
    "workers": 2,
    "fail_on": "changed,expired,untrusted,expiring:14d",
    "certscan": "certscan",
}
# Shards of one run that may scan at once: each is a certscan of `workers` cores.
PARALLEL_SHARDS = 8
SHARD_RETRIES = 3
SHARD_TIMEOUT = timedelta(hours=6)
# After a SIGTERM certscan ends within ~3 s, every written record whole; then SIGKILL.
STOP_GRACE = 30.0

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_ALERT = 0, 1, 2, 3
NIGHT_FILE = re.compile(r"^\d{4}-\d{2}-\d{2}\.jsonl$")


def _variable(key: str) -> Any:
    try:  # Airflow 3
        from airflow.sdk import Variable
    except ImportError:  # Airflow 2
        from airflow.models import Variable

        return Variable.get(key, default_var=None)
    return Variable.get(key, default=None)


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that has Linux send the child SIGTERM when the task's process dies, so
    that a worker killed outright leaves no scan appending to a shard file that its retry
    appends to as well. prctl is looked up here, before the fork: the child only calls it."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None

    def arm() -> None:
        pr_set_pdeathsig = 1
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return arm


def run_certscan(argv: list[str]) -> int:
    """Run certscan, its output into the task's log, and return its exit status.

    It gets a session of its own, so that a stop reaches it once, from here: Airflow's
    SIGTERM to the task's process group would otherwise come on top of ours, and a second
    signal makes certscan leave at once instead of finishing what is in flight. When the
    task is stopped (marked failed, execution_timeout, a worker shutdown) certscan gets one
    SIGTERM and the time to write what it has."""
    print("+", shlex.join(argv), flush=True)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
        preexec_fn=_parent_death_signal(),  # noqa: PLW1509  (a prctl, nothing else)
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line.rstrip("\n"), flush=True)
        return proc.wait()
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise


def command(cfg: dict[str, Any], *args: str) -> list[str]:
    """certscan's argv: the `certscan` setting, then ARGS."""
    return [*shlex.split(cfg["certscan"]), *args]


def check(status: int, what: str, *, ok: tuple[int, ...] = (EXIT_OK,)) -> int:
    """A certscan exit status as the task's outcome: a usage error fails without retries,
    anything else unexpected fails with them."""
    if status in ok:
        return status
    if status == EXIT_USAGE:
        raise AirflowFailException(f"{what}: usage error (exit 2); not retried")
    if status > 128 or status < 0:  # certscan's own 128+N, or killed outright (-N)
        signum = status - 128 if status > 128 else -status
        raise AirflowException(f"{what}: stopped by signal {signum}; a retry resumes it")
    raise AirflowException(f"{what}: exit status {status}")


def night_paths(cfg: dict[str, Any]) -> dict[str, Path]:
    base = Path(cfg["results_dir"])
    return {
        "base": base,
        "shards": base / "shards" / cfg["night"],
        "merged": base / f"{cfg['night']}.jsonl",
        "changes": base / f"{cfg['night']}.changes.jsonl",
    }


def previous_night(base: Path, night: str) -> Path | None:
    """The newest merged result file before NIGHT's (none on the first night)."""
    earlier = sorted(p for p in base.glob("*.jsonl") if NIGHT_FILE.match(p.name) and p.stem < night)
    return earlier[-1] if earlier else None


@dag(
    dag_id="certscan_nightly",
    description="certscan: a sharded scan of the target list, merged, diffed and reported",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # a night compares itself with the one before: one at a time
    default_args={"retries": 0, "owner": "certscan"},
    tags=["certscan", "tls"],
)
def certscan_nightly() -> None:
    @task(multiple_outputs=False)
    def settings(dag_run: Any = None, data_interval_end: Any = None) -> dict[str, Any]:
        conf = (dag_run.conf if dag_run is not None else None) or {}
        cfg: dict[str, Any] = {}
        for name, default in DEFAULTS.items():
            if name in conf:
                cfg[name] = conf[name]
                continue
            value = _variable(f"certscan_{name}")
            cfg[name] = default if value is None else value
        cfg["shards"] = int(cfg["shards"])
        cfg["workers"] = int(cfg["workers"])
        if cfg["shards"] < 1 or cfg["workers"] < 1:
            raise AirflowFailException(f"shards and workers must be >= 1: {cfg}")
        end = data_interval_end or pendulum.now("UTC")
        cfg["night"] = end.strftime("%Y-%m-%d")
        print("settings:", cfg)
        return cfg

    @task
    def plan(cfg: dict[str, Any]) -> list[int]:
        night_paths(cfg)["shards"].mkdir(parents=True, exist_ok=True)
        return list(range(cfg["shards"]))

    @task(
        retries=SHARD_RETRIES,
        retry_delay=timedelta(minutes=5),
        execution_timeout=SHARD_TIMEOUT,
        max_active_tis_per_dagrun=PARALLEL_SHARDS,
        map_index_template="shard {{ task.op_kwargs['index'] }}",
    )
    def scan_shard(cfg: dict[str, Any], index: int) -> str:
        out = night_paths(cfg)["shards"] / f"shard-{index}.jsonl"
        argv = command(
            cfg, "scan", "--shard", f"{index}/{cfg['shards']}", "--resume", "-o", str(out),
            "-q", "-w", str(cfg["workers"]), *shlex.split(cfg["target_args"]),
            *shlex.split(cfg["scan_args"]), cfg["targets"],
        )  # fmt: skip
        # 3 (a --fail-on among scan_args held): the shard still ran to its end.
        check(run_certscan(argv), f"shard {index}/{cfg['shards']}", ok=(EXIT_OK, EXIT_ALERT))
        return str(out)

    @task(retries=1, retry_delay=timedelta(minutes=2))
    def merge(cfg: dict[str, Any], shard_files: list[str]) -> str:
        paths = night_paths(cfg)
        merged, missing = paths["merged"], paths["shards"] / "missing.jsonl"
        partial = merged.with_name(merged.name + ".tmp")
        argv = command(
            cfg, "merge", "--targets", cfg["targets"], *shlex.split(cfg["target_args"]),
            *sorted(shard_files, key=_shard_number), "-o", str(partial),
            "--missing", str(missing),
        )  # fmt: skip
        status = run_certscan(argv)
        if status == EXIT_ALERT:  # a target missing, or in two shards: retrying cannot help
            raise AirflowFailException(
                f"merge: the shards do not cover the target list exactly once ({missing})"
            )
        check(status, "merge")
        os.replace(partial, merged)  # the night's file appears whole, or not at all
        return str(merged)

    @task(retries=1, retry_delay=timedelta(minutes=2))
    def diff(cfg: dict[str, Any], merged: str) -> int:
        paths = night_paths(cfg)
        fail_on = ["--fail-on", cfg["fail_on"]] if cfg["fail_on"] else []
        previous = previous_night(paths["base"], cfg["night"])
        if previous is not None:
            argv = command(cfg, "diff", str(previous), merged, "-o", str(paths["changes"]))
            return check(run_certscan([*argv, *fail_on]), "diff", ok=(EXIT_OK, EXIT_ALERT))
        # The first night: nothing to compare with; the other conditions still hold.
        first = ",".join(c for c in cfg["fail_on"].split(",") if c and c != "changed")
        if not first:
            return EXIT_OK
        argv = command(cfg, "report", merged, "-q", "--fail-on", first)
        return check(run_certscan(argv), "report --fail-on", ok=(EXIT_OK, EXIT_ALERT))

    @task(retries=1, retry_delay=timedelta(minutes=2))
    def report(cfg: dict[str, Any], merged: str, alert: int) -> int:
        base = night_paths(cfg)["base"]
        html, csv, prom = base / "report.html", base / "report.csv", base / "certscan.prom"
        argv = command(cfg, "report", merged, "-q", "--html", str(html), "--csv", str(csv))
        check(run_certscan(argv), "report")
        check(run_certscan(command(cfg, "metrics", merged, "-o", str(prom))), "metrics")
        return alert

    @task
    def alert(cfg: dict[str, Any], status: int) -> None:
        if status == EXIT_ALERT:
            raise AirflowFailException(
                f"certscan: a --fail-on condition held ({cfg['fail_on']}); the counts are in "
                f"the diff task's log, the events in {night_paths(cfg)['changes']}"
            )

    cfg = settings()
    shard_files = scan_shard.partial(cfg=cfg).expand(index=plan(cfg))
    merged = merge(cfg, shard_files)
    alert(cfg, report(cfg, merged, diff(cfg, merged)))


def _shard_number(path: str) -> int:
    match = re.search(r"shard-(\d+)\.jsonl$", path)
    return int(match.group(1)) if match else -1


certscan_nightly()
