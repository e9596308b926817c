"""What a scan imports before its first connection: every run pays for it (a nightly scan
of 2000 hosts takes ~1.5 s, of which start-up was ~0.13 s). The inventory tools and what
only some scans need (XMPP's XML, --fail-on's alerts, idna for host names, cryptography
for odd certificates) are imported where they are used; forked workers inherit what their
parent imported instead of importing it again.

Each case runs a fresh interpreter (sys.modules of this one holds what every test
imported), on an empty target list: start-up alone."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from scanner.cli import build_parser
from scanner.inventory import metrics

# Modules, and packages by prefix, that a scan never needs at start-up.
NOT_FOR_A_SCAN = (
    "scanner.inventory",  # diff, report, metrics, merge, and --fail-on's alerts
    "xml",  # XMPP's STARTTLS only
    "urllib.request",  # behind xml.sax.saxutils
    "http",
    "email",
    "sqlite3",  # diff
    "csv",  # report
    "html",  # report
    "cryptography",  # certs.py's slow path, for odd certificates
    "certifi",  # --ca-bundle certifi
    "idna",  # lines that name a host (this scan has none)
)

# A scan of nothing: `certscan scan /dev/null -w 2`, then what the parent imported, and
# what its forked worker imported that the parent had not when it forked.
_SCRIPT = """
import json, os, sys
import scanner.lanes

run, parent = scanner.lanes.run_with_loop, os.getpid()

def run_noting_imports(name, main):
    if os.getpid() == parent:
        return run(name, main)
    before = set(sys.modules)  # the parent's, at the fork
    try:
        return run(name, main)
    finally:
        with open(sys.argv[2], "w") as out:
            json.dump(sorted(set(sys.modules) - before), out)

scanner.lanes.run_with_loop = run_noting_imports
from scanner.cli import main
code = main(["scan", "/dev/null", "-o", sys.argv[1], "-q", "-w", "2"])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


async def _scan_of_nothing(tmp_path: Path) -> tuple[int, list[str], list[str]]:
    worker_file = tmp_path / "worker.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SCRIPT, str(tmp_path / "out.jsonl"), str(worker_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert (process.returncode, err) == (0, b"")
    parent = json.loads(out)
    return parent["code"], parent["modules"], json.loads(worker_file.read_text())


def _unwanted(modules: list[str]) -> list[str]:
    return [name for name in modules
            if any(name == prefix or name.startswith(prefix + ".") for prefix in NOT_FOR_A_SCAN)]


async def test_a_scan_imports_only_what_a_scan_runs(tmp_path: Path) -> None:
    code, parent, worker = await _scan_of_nothing(tmp_path)
    assert code == 0
    assert _unwanted(parent) == []
    # The worker inherits its parent's imports, the event loop's (uvloop) and rtls's
    # included: a module a worker imports as it starts is imported again by every worker.
    assert worker == []


def test_the_scan_command_line_is_the_same_without_the_tools() -> None:
    argv = ["scan", "-t", "example.org", "-p", "443,8443", "--fail-on", "expired",
            "--alpn", "h2", "-w", "3", "--shard", "1/4"]
    whole, scan_only = build_parser(), build_parser(tools=False)
    assert vars(scan_only.parse_args(argv)) == vars(whole.parse_args(argv))
    assert whole.parse_args(["metrics", "results.jsonl"]).run is metrics.run
