"""The README's nightly recipe, run for real: deploy/nightly.sh twice against loopback
servers, a certificate replaced by another CA's in between. The second night finds the
change, exits 3 naming it, and leaves the changes, the report and the metrics behind."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from servers import server_context, tls_server

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "nightly.sh"
CERTSCAN = str(Path(sys.executable).parent / "certscan")


def _night(targets: Path, out: Path, night: str, ca_pem: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NIGHT": night, "CERTSCAN": CERTSCAN}
    return subprocess.run(
        ["sh", str(SCRIPT), str(targets), str(out), "--ca-bundle", ca_pem, "--timeout", "3"],
        env=env, capture_output=True, text=True, timeout=120, check=False)


async def test_two_nights_find_the_change(ca: trustme.CA, ca_pem: str, tmp_path: Path) -> None:
    out = tmp_path / "inventory"
    targets = tmp_path / "targets.txt"
    other_ca = trustme.CA()  # night two: the same name, another CA's certificate
    switch: dict[str, ssl.SSLContext] = {}  # chosen by SNI; empty on night one
    async with tls_server(server_context(ca.issue_cert("stable.test"))) as a, \
            tls_server(server_context(ca.issue_cert("moving.test")), by_name=switch) as b:
        targets.write_text(f"{a.target} stable.test\n{b.target} moving.test\n")
        night1 = await asyncio.to_thread(_night, targets, out, "2026-12-05", ca_pem)
        assert night1.returncode == 0, night1.stderr
        switch["moving.test"] = server_context(other_ca.issue_cert("moving.test"))
        night2 = await asyncio.to_thread(_night, targets, out, "2026-12-06", ca_pem)

    assert night2.returncode == 3, night2.stderr
    assert "changed" in night2.stderr and "untrusted: 1" in night2.stderr
    changes = [json.loads(line) for line in
               (out / "2026-12-06.changes.jsonl").read_text().splitlines()]
    kinds = {(event["event"], event["material"]) for event in changes}
    assert ("issuer_changed", True) in kinds or ("rekeyed", True) in kinds, kinds
    assert ("became_untrusted", True) in kinds, kinds
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert (out / "report.csv").read_text().count("\n") >= 3
    metrics = (out / "certscan.prom").read_text()
    assert "certscan_cert_trusted" in metrics
    if shutil.which("promtool"):
        check = await asyncio.to_thread(
            subprocess.run, ["promtool", "check", "metrics"], input=metrics, text=True,
            capture_output=True, timeout=60, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
