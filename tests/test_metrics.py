"""`certscan metrics`: result files as Prometheus text exposition, checked value by value
against the certificates served, and by promtool (Prometheus's own parser and linter).

The records come from a real scan of loopback TLS servers (pki.py chains: trusted, wrong
name, expired intermediate, unknown root; a refused port; a bad target line), plus edited
copies, still valid against the schema, for what one scan does not give: an endpoint
scanned twice, hostile strings in host, sni and issuer, no verdict, lines that are not
records."""

from __future__ import annotations

import argparse
import asyncio
import copy
import errno
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import pki
import scanner
from scanner.inventory import metrics
from scanner.inventory.results import parse_time, read_results
from schema import checked
from servers import free_port, next_address, tls_server

Record = dict[str, Any]
PROMTOOL = shutil.which("promtool")
ENDPOINT_LABELS = {"host", "port", "sni", "ip"}
# Every label a sample may carry beyond the endpoint's: fixed vocabularies, and on
# certscan_cert_info the issuer CN and serial. Never a subject, SAN or fingerprint.
EXTRA_LABELS = {
    "certscan_probe_error_info": {"error", "stage"},
    "certscan_cert_untrusted_info": {"reason"},
    "certscan_cert_info": {"issuer_cn", "serial"},
}


# --- the fleet: one real scan, shared by the module -------------------------------------------


@dataclass(frozen=True)
class Fleet:
    records: dict[str, Record]  # by role: good, wrong_name, stale, stranger, refused, bad_line
    leaf: pki.Issued  # what `good` and `wrong_name` serve, with `inter`
    inter: pki.Issued
    stale_leaf: pki.Issued  # what `stale` serves, with `old_inter` (expired yesterday)
    old_inter: pki.Issued


def _context(chain: list[pki.Issued], tmp: Path) -> ssl.SSLContext:
    return pki.serving([c.der for c in chain], pki.key_pem(chain[0].key), tmp,
                       name=str(id(chain)))


async def _scan_fleet(tmp: Path) -> Fleet:
    now, day = pki.REAL_NOW, pki.DAY
    root = pki.issue("Metrics Root", key_kind="p256", ca=True)
    inter = pki.issue("Metrics Intermediate", root, key_kind="p256", ca=True)
    leaf = pki.issue("www.example.org", inter, key_kind="p256", dns=("www.example.org",),
                     not_after=now + 20 * day)
    old_inter = pki.issue("Metrics Old Intermediate", root, key_kind="p256", ca=True,
                          not_after=now - day)
    stale_leaf = pki.issue("stale.example.org", old_inter, key_kind="p256",
                           dns=("stale.example.org",))
    stranger = pki.issue("stranger.example.org",
                         pki.issue("Stranger Root", key_kind="p256", ca=True),
                         key_kind="p256", dns=("stranger.example.org",))
    roots = tmp / "roots.pem"
    roots.write_bytes(pki.pem(root.der))
    refused = next_address()
    async with tls_server(_context([leaf, inter], tmp)) as good, \
            tls_server(_context([stale_leaf, old_inter], tmp)) as stale, \
            tls_server(_context([stranger], tmp)) as strange:
        lines = {
            "good": f"{good.target} www.example.org",
            "wrong_name": f"{good.target} wrong.example.org",
            "stale": f"{stale.target} stale.example.org",
            "stranger": f"{strange.target} stranger.example.org",
            "refused": f"{refused}:{free_port(refused)}",
            "bad_line": "no..such..target",
        }
        found = [checked(r) async for r in scanner.scan(list(lines.values()), timeout=5,
                                                        ca_bundle=str(roots))]
    by_line = {r["target"]: r for r in found}
    return Fleet({role: by_line[line] for role, line in lines.items()},
                 leaf, inter, stale_leaf, old_inter)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return asyncio.run(_scan_fleet(tmp_path_factory.mktemp("fleet")))


# --- reading the exposition back, strictly ------------------------------------------------------

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)",?')
_ESCAPE = re.compile(r'\\([\\"n])')


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: str

    @property
    def endpoint(self) -> tuple[str, str, str]:
        return self.labels["host"], self.labels["port"], self.labels["sni"]


def parse(data: bytes) -> dict[str, list[Sample]]:
    """Each metric's samples. Asserts what the textfile collector needs: every family a
    HELP and a `gauge` TYPE before its samples, its samples together, each label set once,
    no timestamps."""
    families: dict[str, list[Sample]] = {}
    current = None
    assert data.endswith(b"\n")
    for line in data.decode("utf-8").split("\n")[:-1]:  # not splitlines: a value may hold \r
        if line.startswith("# HELP "):
            current = line.split(" ")[2]
            assert current not in families, f"{current} appears twice"
            families[current] = []
            continue
        if line.startswith("# TYPE "):
            assert line == f"# TYPE {current} gauge"
            continue
        name, labels, value = _sample(line)
        assert name == current, f"{name} outside its family"
        families[name].append(Sample(labels, value))
    for name, samples in families.items():
        sets = [tuple(sorted(s.labels.items())) for s in samples]
        assert len(set(sets)) == len(sets), f"{name}: a label set twice"
    return families


def _sample(line: str) -> tuple[str, dict[str, str], str]:
    match = _NAME.match(line)
    assert match, line
    name, pos, labels = match.group(), match.end(), {}
    if line[pos] == "{":
        pos += 1
        while line[pos] != "}":
            label = _LABEL.match(line, pos)
            assert label, line
            assert label[1] not in labels
            labels[label[1]] = _ESCAPE.sub(lambda m: "\n" if m[1] == "n" else m[1], label[2])
            pos = label.end()
        pos += 1
    rest = line[pos:]
    assert rest.startswith(" ") and len(rest.split(" ")) == 2, f"not `value` alone: {line!r}"
    float(rest[1:])
    return name, labels, rest[1:]


def by_endpoint(families: dict[str, list[Sample]], name: str) -> dict[tuple[str, str, str],
                                                                        Sample]:
    return {s.endpoint: s for s in families[name]}


def where(record: Record) -> tuple[str, str, str]:
    return record["host"], str(record["port"]), record["sni"] or ""


def records_summary(families: dict[str, list[Sample]]) -> dict[tuple[str, str], int]:
    return {(s.labels["status"], s.labels["error"]): int(s.value)
            for s in families["certscan_records"]}


def exposition(*lines: Record | str) -> bytes:
    """The metrics of a result file of these lines: records (checked against the schema
    first) and raw text."""
    for line in lines:
        if isinstance(line, dict):
            checked(line)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_results(Path(tmp, "results.jsonl"), *lines)
        return metrics.exposition(item for _, item in read_results(path))


def write_results(path: Path, *lines: Record | str) -> Path:
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n"
                            for x in lines))
    return path


def seconds(moment: Any) -> float:
    return float(moment.timestamp())


def edited(record: Record, **changes: Any) -> Record:
    copied = copy.deepcopy(record)
    copied.update(changes)
    return copied


def failed(record: Record, kind: str, stage: str) -> Record:
    """The record as a later scan that failed at `stage` would have it."""
    return edited(record, status="error", tls=None, certificate=None, chain=[],
                  validation=None, error={"type": kind, "stage": stage, "message": "edited"},
                  scanned_at="2099-01-01T00:00:00.250Z")


# --- values --------------------------------------------------------------------------------------


def test_a_real_scan_gives_each_endpoint_its_values(fleet: Fleet) -> None:
    r = fleet.records
    families = parse(exposition(*r.values()))
    success = by_endpoint(families, "certscan_probe_success")
    trusted = by_endpoint(families, "certscan_cert_trusted")
    not_after = by_endpoint(families, "certscan_cert_not_after_timestamp_seconds")
    not_before = by_endpoint(families, "certscan_cert_not_before_timestamp_seconds")
    earliest = by_endpoint(families, "certscan_chain_earliest_not_after_timestamp_seconds")
    scanned = by_endpoint(families, "certscan_scan_timestamp_seconds")
    untrusted = by_endpoint(families, "certscan_cert_untrusted_info")
    info = by_endpoint(families, "certscan_cert_info")
    errors = by_endpoint(families, "certscan_probe_error_info")

    # One endpoint per record, the bad line none.
    assert set(success) == {where(r[k]) for k in r if k != "bad_line"}
    good = where(r["good"])
    assert success[good].labels == {"host": r["good"]["host"], "port": str(r["good"]["port"]),
                                    "sni": "www.example.org", "ip": r["good"]["ip"]}
    assert success[good].value == "1" and trusted[good].value == "1"
    assert good not in untrusted and good not in errors
    leaf = fleet.leaf.cert
    assert float(not_after[good].value) == seconds(leaf.not_valid_after_utc)
    assert float(not_before[good].value) == seconds(leaf.not_valid_before_utc)
    assert not_after[good].value.isdigit()  # whole seconds print as integers
    assert earliest[good].value == not_after[good].value  # the leaf expires first
    assert float(scanned[good].value) == seconds(parse_time(r["good"]["scanned_at"]))
    assert info[good].labels["issuer_cn"] == "Metrics Intermediate"
    assert info[good].labels["serial"] == r["good"]["certificate"]["serial"]
    assert int(info[good].labels["serial"], 16) == leaf.serial_number
    assert info[good].value == "1"

    # Verdicts that refuse: the reason beside the 0.
    for role, reason in (("wrong_name", "hostname_mismatch"), ("stale", "expired"),
                         ("stranger", r["stranger"]["validation"]["reason"])):
        assert trusted[where(r[role])].value == "0", role
        assert untrusted[where(r[role])].labels["reason"] == reason
    assert r["stranger"]["validation"]["reason"] in ("incomplete_chain", "untrusted_root")

    # An expired intermediate under a valid leaf: the chain's earliest is the intermediate.
    stale = where(r["stale"])
    assert float(not_after[stale].value) == seconds(fleet.stale_leaf.cert.not_valid_after_utc)
    assert float(earliest[stale].value) == seconds(fleet.old_inter.cert.not_valid_after_utc)
    assert float(earliest[stale].value) < float(not_after[stale].value)

    # A failure: 0, why, when; no certificate metrics and no verdict.
    refused = where(r["refused"])
    assert success[refused].value == "0"
    assert errors[refused].labels["error"] == "refused"
    assert errors[refused].labels["stage"] == "connect"
    assert success[refused].labels["sni"] == ""  # an IP target sends no SNI
    assert refused in scanned
    for absent in (trusted, not_after, not_before, earliest, info, untrusted):
        assert refused not in absent

    summary = records_summary(families)
    assert summary[("ok", "")] == 4
    assert summary[("error", "refused")] == 1 and summary[("error", "invalid_target")] == 1
    assert summary[("error", "timeout")] == 0  # every error type, zero included
    assert sum(summary.values()) == len(r)
    assert families["certscan_result_lines_invalid"][0].value == "0"


def test_every_metric_has_help_and_only_bounded_labels(fleet: Fleet) -> None:
    families = parse(exposition(*fleet.records.values()))
    assert list(families) == ["certscan_records", "certscan_result_lines_invalid",
                              *(f.name for f in metrics.FAMILIES)]
    for name, samples in families.items():
        for sample in samples:
            if name == "certscan_records":
                assert set(sample.labels) == {"status", "error"}
            elif name == "certscan_result_lines_invalid":
                assert sample.labels == {}
            else:
                assert set(sample.labels) == ENDPOINT_LABELS | EXTRA_LABELS.get(name, set())


def test_without_a_verdict_there_is_no_trusted_series(fleet: Fleet) -> None:
    record = edited(fleet.records["good"], validation=None)
    families = parse(exposition(record))
    assert families["certscan_cert_trusted"] == []
    assert families["certscan_cert_untrusted_info"] == []
    assert families["certscan_probe_success"][0].value == "1"


def test_an_endpoint_scanned_twice_is_its_last_record(fleet: Fleet) -> None:
    good = fleet.records["good"]
    later = edited(good, ip="127.0.0.1", scanned_at="2099-01-01T00:00:00.000Z")
    families = parse(exposition(good, later))
    (sample,) = families["certscan_probe_success"]
    assert sample.labels["ip"] == "127.0.0.1"  # the address is the last record's
    (scanned,) = families["certscan_scan_timestamp_seconds"]
    assert scanned.value == "4070908800"

    # A failure after a success: the endpoint is down now, and counted once, as failed.
    families = parse(exposition(good, failed(good, "timeout", "handshake")))
    (sample,) = families["certscan_probe_success"]
    assert sample.value == "0"
    assert families["certscan_cert_not_after_timestamp_seconds"] == []
    assert families["certscan_cert_info"] == []
    summary = records_summary(families)
    assert summary[("ok", "")] == 0 and summary[("error", "timeout")] == 1
    assert families["certscan_scan_timestamp_seconds"][0].value == "4070908800.25"

    # And back: the success wins again.
    families = parse(exposition(failed(good, "timeout", "handshake"), good))
    assert families["certscan_probe_success"][0].value == "1"
    assert families["certscan_probe_error_info"] == []
    assert records_summary(families)[("ok", "")] == 1

    # Another server name on the same address and port is another endpoint.
    other = edited(good, sni="other.example.org", target=good["target"] + "x")
    assert len(parse(exposition(good, other))["certscan_probe_success"]) == 2


def test_hostile_strings_are_escaped(fleet: Fleet) -> None:
    hostile = 'q"b\\s\nn\rr\tt\x00z\u202eé'
    record = edited(fleet.records["good"], host="h" + hostile, sni="s" + hostile,
                    error=None)
    record["certificate"]["issuer"] = {"rfc4514": "CN=x", "cn": "c" + hostile}
    record["certificate"]["serial"] = "-0badc0de"
    long_cn = edited(fleet.records["good"], sni="long.example.org")
    long_cn["certificate"]["issuer"] = {"rfc4514": None, "cn": '"\\\n' * 1000}
    surrogate = edited(fleet.records["good"], sni="lone\ud800surrogate")
    data = exposition(record, long_cn, surrogate)
    families = parse(data)
    info = by_endpoint(families, "certscan_cert_info")
    sample = info[("h" + hostile, str(record["port"]), "s" + hostile)]
    assert sample.labels["issuer_cn"] == "c" + hostile
    assert sample.labels["serial"] == "-0badc0de"
    # Only the three the format names are escaped; the rest go as they are, in UTF-8.
    assert b'sni="sq\\"b\\\\s\\nn\rr\tt\x00z\xe2\x80\xae\xc3\xa9"' in data
    # A server-controlled label is cut (before escaping) to LABEL_MAX characters.
    cut = info[where(long_cn)].labels["issuer_cn"]
    assert len(cut) == metrics.LABEL_MAX and cut.endswith("...")
    assert cut.startswith('"\\\n"\\\n')
    # Not UTF-8 (a lone surrogate, as a hand edit gives): U+FFFD, never a crash.
    assert any(s.labels["sni"].startswith("lone\ufffd")
               for s in families["certscan_probe_success"])


def test_lines_that_are_not_records_are_counted(fleet: Fleet) -> None:
    good = json.dumps(fleet.records["good"])
    odd = {"target": "t", "host": "odd.example", "port": 443, "sni": 7, "ip": None,
           "status": "ok", "error": "x", "certificate": "x", "chain": 5, "validation": [],
           "scanned_at": 7}
    data = exposition(fleet.records["refused"], "not json", "[1, 2]", '{"target": "x"}',
                      json.dumps(odd), good[:100])
    families = parse(data)
    assert families["certscan_result_lines_invalid"][0].value == "4"
    success = by_endpoint(families, "certscan_probe_success")
    assert success[("odd.example", "443", "")].value == "1"  # odd types: what can be read
    assert ("odd.example", "443", "") not in by_endpoint(families, "certscan_cert_info")


def test_an_empty_file_still_says_every_count() -> None:
    families = parse(metrics.exposition([]))
    assert sum(records_summary(families).values()) == 0
    assert len(families["certscan_records"]) == 1 + 12  # ok, and each error type
    assert families["certscan_probe_success"] == []


@pytest.mark.parametrize(("moment", "expected"), [
    ("2026-11-27T22:16:06.402Z", b"1795817766.402"),
    ("2026-11-27T22:16:06.000Z", b"1795817766"),
    ("1969-12-31T23:59:59Z", b"-1"),
    ("9999-12-31T23:59:59Z", b"253402300799"),
])
def test_timestamps_are_exact(moment: str, expected: bytes) -> None:
    assert metrics.timestamp(parse_time(moment)) == expected


# --- the command -----------------------------------------------------------------------------


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="certscan")
    metrics.add_parser(parser.add_subparsers(dest="command", required=True))
    return metrics.run(parser.parse_args(["metrics", *argv]))


def test_dash_o_replaces_the_file_whole(fleet: Fleet, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    results = write_results(tmp_path / "r.jsonl", *fleet.records.values())
    out = tmp_path / "certscan.prom"
    out.write_text("old\n")
    assert cli(str(results), "-o", str(out)) == 0
    expected = metrics.exposition(item for _, item in read_results(results))
    assert out.read_bytes() == expected
    assert sorted(os.listdir(tmp_path)) == ["certscan.prom", "r.jsonl"]  # no .tmp left
    assert capsys.readouterr() == ("", "")


def test_stdout_by_default_and_bad_lines_named(fleet: Fleet, tmp_path: Path,
                                               capsysbinary: pytest.CaptureFixture[bytes]
                                               ) -> None:
    results = write_results(tmp_path / "r.jsonl", fleet.records["good"], "torn {")
    assert cli(str(results)) == 0
    out, err = capsysbinary.readouterr()
    assert parse(out)["certscan_result_lines_invalid"][0].value == "1"
    assert err.count(b"\n") == 1
    assert f"{results}:2: not JSON".encode() in err


@pytest.mark.parametrize("case", ["missing", "directory", "out-dir-missing", "out-is-dir",
                                  "out-is-results"])
def test_usage_errors_touch_nothing(case: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    results = write_results(tmp_path / "r.jsonl")
    out = tmp_path / "certscan.prom"
    out.write_text("old\n")
    argv = {
        "missing": [str(tmp_path / "nope.jsonl"), "-o", str(out)],
        "directory": [str(tmp_path), "-o", str(out)],
        "out-dir-missing": [str(results), "-o", str(tmp_path / "no" / "x.prom")],
        "out-is-dir": [str(results), "-o", str(tmp_path)],
        "out-is-results": [str(out), "-o", str(out)],
    }[case]
    assert cli(*argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("certscan: error: ")
    assert out.read_text() == "old\n"  # the results, in the last case
    assert not list(tmp_path.glob("**/*.tmp"))


def test_a_read_failing_part_way_is_fatal_and_keeps_the_old_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certscan.prom"
    out.write_text("old\n")
    assert cli("/proc/self/mem", "-o", str(out)) == 1  # opens, then its reads fail (EIO)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/proc/self/mem" in err and "read failed" in err
    assert out.read_text() == "old\n"
    assert not (tmp_path / "certscan.prom.tmp").exists()


def test_a_write_failing_is_fatal_and_keeps_the_old_file(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    results = write_results(tmp_path / "r.jsonl", fleet.records["good"])
    out = tmp_path / "certscan.prom"
    out.write_text("old\n")

    def full(self: object, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(metrics._Output, "write", full)
    assert cli(str(results), "-o", str(out)) == 1
    err = capsys.readouterr().err
    assert err == f"certscan: error: {out}: write failed: no space left on device\n"
    assert out.read_text() == "old\n"
    assert not (tmp_path / "certscan.prom.tmp").exists()


_MAIN = ("import argparse, sys\n"
         "from scanner.inventory import metrics\n"
         "p = argparse.ArgumentParser()\n"
         "metrics.add_parser(p.add_subparsers(dest='command'))\n"
         "sys.exit(metrics.run(p.parse_args(sys.argv[1:])))\n")


@pytest.mark.slow
def test_stdin_in_and_a_reader_that_goes_away(fleet: Fleet) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in fleet.records.values()).encode()
    done = subprocess.run([sys.executable, "-c", _MAIN, "metrics", "-"], input=lines,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stderr == b""
    assert len(parse(done.stdout)["certscan_probe_success"]) == 5
    # The reader is gone before anything is written: 141, quietly, as `certscan scan`.
    with subprocess.Popen([sys.executable, "-c", _MAIN, "metrics", "-"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as child:
        assert child.stdout is not None and child.stdin is not None
        child.stdout.close()
        _, err = child.communicate(lines, timeout=60)
    assert child.returncode == 141 and err == b""


def test_memory_is_one_row_per_endpoint(fleet: Fleet) -> None:
    snapshot = metrics.Snapshot()
    for i in range(2000):
        snapshot.see(fleet.records["good"])
        snapshot.see(edited(fleet.records["refused"], port=1 + i % 100))
    assert len(snapshot) == 1 + 100
    assert sum(snapshot.records.values()) == 101


# --- promtool: Prometheus's own parser and lint ----------------------------------------------


def outputs(fleet: Fleet) -> dict[str, bytes]:
    good = fleet.records["good"]
    hostile = edited(good, host='h"\\\n\r\t\x00\u202e', sni='s"\\\n\r\t\x00\u202e')
    hostile["certificate"]["issuer"] = {"rfc4514": None, "cn": 'c"\\\n' * 100}
    return {
        "fleet": exposition(*fleet.records.values()),
        "hostile": exposition(hostile),
        "no-verdict": exposition(edited(good, validation=None)),
        "bad-lines": exposition("not json", "[]", '{"target": "x"}'),
        "twice": exposition(good, failed(good, "timeout", "handshake")),
        "empty": metrics.exposition([]),
    }


@pytest.mark.parametrize("case", ["fleet", "hostile", "no-verdict", "bad-lines", "twice",
                                  "empty"])
def test_promtool_accepts_the_output_without_a_lint_warning(fleet: Fleet, case: str) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=outputs(fleet)[case],
                          capture_output=True, timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
