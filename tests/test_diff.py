"""`certscan diff`: events between two result files, from real records of loopback servers.

The records come from scans of trustme servers on loopback (a first certificate, its
renewal with the same key, a new key, another issuer, more names, another trust store,
refused and garbage peers), then are moved onto the endpoints a test needs. Every event
line a test sees is checked against scanner/inventory/diff.schema.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import io
import json
import os
import random
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

import scanner
import schema
from scanner import cli
from scanner.inventory import diff
from scanner.inventory.alerts import EXIT_ALERT
from scanner.inventory.results import Endpoint
from schema import checked
from servers import free_port, garbage, raw_server, server_context, tls_server

Record = dict[str, Any]
ROOT = Path(__file__).resolve().parent.parent


# Real records --------------------------------------------------------------------------


@dataclass(frozen=True)
class Real:
    """One record of each situation, scanned for real (with a verdict, except `other_store`
    which judged `first` against a store that does not hold its root)."""

    first: Record  # a.test from the intermediate `one`
    renewed: Record  # `first`'s key in a new certificate from `one`
    rekeyed: Record  # a new key for a.test from `one`
    other_issuer: Record  # a.test from the intermediate `two`
    more_names: Record  # a.test and b.test from `one`
    other_store: Record  # `first`'s server, judged against another CA
    refused: Record
    not_tls: Record
    invalid: Record  # an invalid target line


def renewal_context(leaf: trustme.LeafCert, issuer: trustme.CA, tmp: Path) -> ssl.SSLContext:
    """A server context for a renewal of `leaf`: same key and names, new serial, signed by
    `issuer` (what an ACME client that keeps its key installs)."""
    old = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    issuer_cert = x509.load_pem_x509_certificate(issuer.cert_pem.bytes())
    issuer_key = serialization.load_pem_private_key(issuer.private_key_pem.bytes(), None)
    assert isinstance(issuer_key, CertificateIssuerPrivateKeyTypes)
    builder = (x509.CertificateBuilder().subject_name(old.subject)
               .issuer_name(issuer_cert.subject).public_key(old.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(old.not_valid_before_utc)
               .not_valid_after(old.not_valid_after_utc))
    for extension in old.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    cert = builder.sign(issuer_key, hashes.SHA256())
    chain = tmp / "renewed.pem"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                      + b"".join(blob.bytes() for blob in leaf.cert_chain_pems[1:]))
    key_path = tmp / "renewed.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key_path)
    return ctx


async def _scan(lines: list[str], store: str) -> list[Record]:
    return [checked(r) async for r in scanner.scan(lines, timeout=3.0, ca_bundle=store)]


async def _real(ca: trustme.CA, ca_pem: str, tmp: Path) -> Real:
    one, two = ca.create_child_ca(), ca.create_child_ca()
    first = one.issue_cert("a.test")
    other_ca = tmp / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    servers = {
        "first": server_context(first),
        "renewed": renewal_context(first, one, tmp),
        "rekeyed": server_context(one.issue_cert("a.test")),
        "other_issuer": server_context(two.issue_cert("a.test")),
        "more_names": server_context(one.issue_cert("a.test", "b.test")),
    }
    async with contextlib.AsyncExitStack() as stack:
        running = {name: await stack.enter_async_context(tls_server(ctx))
                   for name, ctx in servers.items()}
        junk = await stack.enter_async_context(raw_server(garbage))
        refused = f"127.0.0.1:{free_port('127.0.0.1')}"
        names = [*running, "refused", "not_tls", "invalid"]
        lines = [f"{s.target} a.test" for s in running.values()]
        lines += [refused, junk.target, "no such target:99999"]
        found = await _scan(lines, ca_pem)
        [other] = await _scan([f"{running['first'].target} a.test"], str(other_ca))
    by_target = {r["target"]: r for r in found}
    records = {name: by_target[line] for name, line in zip(names, lines, strict=True)}
    return Real(other_store=other, **records)


@pytest.fixture(scope="module")
def real(ca: trustme.CA, ca_pem: str, tmp_path_factory: pytest.TempPathFactory) -> Real:
    records = asyncio.run(_real(ca, ca_pem, tmp_path_factory.mktemp("real")))
    assert records.first["status"] == "ok" and records.first["validation"]["trusted"]
    assert records.renewed["certificate"]["spki_sha256"] == \
        records.first["certificate"]["spki_sha256"]
    assert records.other_store["validation"]["trusted"] is False
    assert records.refused["error"]["type"] == "refused"
    assert records.not_tls["error"]["type"] == "not_tls"
    assert records.invalid["error"]["type"] == "invalid_target"
    return records


def at(record: Record, host: str = "192.0.2.1", port: int = 443, *,
       sni: str | None = "a.test", ip: str | None = None,
       scanned_at: str | None = None) -> Record:
    """The record moved onto another endpoint (and time), still a valid record."""
    moved = copy.deepcopy(record)
    moved["host"], moved["port"], moved["sni"] = host, port, sni
    moved["ip"] = ip or host
    moved["target"] = f"{host}:{port}" + (f" {sni}" if sni else "")
    if scanned_at is not None:
        moved["scanned_at"] = scanned_at
    return checked(moved)


# Running the command -------------------------------------------------------------------


def event_validator() -> jsonschema.protocols.Validator:
    return schema.validator("scanner.inventory", "diff.schema.json")


def parse_events(data: bytes) -> list[Record]:
    """The output's events, each checked: one JSON object a line, ASCII, valid."""
    events = []
    assert data.isascii()
    for line in data.splitlines():
        event = json.loads(line)
        event_validator().validate(event)
        events.append(event)
    return events


def parser() -> argparse.ArgumentParser:
    """A command line with `diff` alone, as cli.py wires it (tested below)."""
    command = argparse.ArgumentParser(prog="certscan")
    diff.add_parser(command.add_subparsers(dest="command", required=True))
    return command


@dataclass
class Outcome:
    code: int
    events: list[Record]
    stderr: str
    raw: bytes

    def kinds(self) -> list[tuple[str, bool]]:
        return [(e["event"], e["material"]) for e in self.events]


def write(path: Path, lines: Iterable[Record | str]) -> Path:
    with path.open("w", encoding="utf-8") as file:
        for line in lines:
            file.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def run_diff(tmp: Path, old: Iterable[Record | str], new: Iterable[Record | str],
             *flags: str) -> Outcome:
    old_path, new_path = write(tmp / "old.jsonl", old), write(tmp / "new.jsonl", new)
    out = tmp / "events.jsonl"
    out.unlink(missing_ok=True)
    return run_paths(str(old_path), str(new_path), "-o", str(out), *flags)


def run_paths(*argv: str) -> Outcome:
    args = parser().parse_args(["diff", *argv])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = diff.run(args)
    out = Path(args.output)
    raw = out.read_bytes() if args.output != "-" and out.is_file() else b""
    return Outcome(code, parse_events(raw), stderr.getvalue(), raw)


# Every kind ----------------------------------------------------------------------------


def test_identical_files_give_no_events_and_exit_0(real: Real, tmp_path: Path) -> None:
    records = [at(real.first, "192.0.2.1"), at(real.refused, "192.0.2.2"),
               at(real.other_store, "192.0.2.3")]
    outcome = run_diff(tmp_path, records, records, "--fail-on", "changed")
    assert (outcome.code, outcome.raw, outcome.stderr) == (0, b"", "")


def test_a_routine_renewal_same_key_is_one_line_not_material(real: Real,
                                                            tmp_path: Path) -> None:
    outcome = run_diff(tmp_path, [at(real.first)], [at(real.renewed)], "--fail-on", "changed")
    assert outcome.code == 0
    [event] = outcome.events
    assert (event["event"], event["material"]) == ("renewed", False)
    assert event["detail"] == {"same_issuer": True, "same_names": True}
    assert event["endpoint"] == {"host": "192.0.2.1", "port": 443, "sni": "a.test", "ip": None}
    old, new = real.first["certificate"], real.renewed["certificate"]
    assert event["old"]["sha256"] == old["sha256"] != event["new"]["sha256"] == new["sha256"]
    assert event["old"]["spki_sha256"] == event["new"]["spki_sha256"] == old["spki_sha256"]
    assert event["new"]["serial"] == new["serial"] != old["serial"]
    assert event["new"]["issuer"] == new["issuer"]["rfc4514"]
    assert event["new"]["san_dns"] == ["a.test"]
    assert event["new"]["chain"] == [entry["sha256"] for entry in real.renewed["chain"][1:]]
    assert (event["new"]["status"], event["new"]["trusted"]) == ("ok", True)


def test_a_new_key_from_the_same_issuer_is_rekeyed_and_routine(real: Real,
                                                              tmp_path: Path) -> None:
    outcome = run_diff(tmp_path, [at(real.first)], [at(real.rekeyed)], "--fail-on", "changed")
    assert outcome.code == 0
    assert outcome.kinds() == [("rekeyed", False)]
    assert outcome.events[0]["detail"] == {"same_issuer": True, "same_names": True}
    assert outcome.events[0]["old"]["spki_sha256"] != outcome.events[0]["new"]["spki_sha256"]


def test_another_issuer_is_material_and_its_chain_change_routine(real: Real,
                                                                 tmp_path: Path) -> None:
    outcome = run_diff(tmp_path, [at(real.first)], [at(real.other_issuer)],
                       "--fail-on", "changed")
    assert outcome.kinds() == [("rekeyed", False), ("issuer_changed", True),
                               ("chain_changed", False)]
    rekeyed, issuer, chain = outcome.events
    assert rekeyed["detail"] == {"same_issuer": False, "same_names": True}
    assert issuer["old"]["issuer"] != issuer["new"]["issuer"]
    assert chain["detail"] == {
        "added": [real.other_issuer["chain"][1]["sha256"]],
        "removed": [real.first["chain"][1]["sha256"]],
        "leaf_changed": True,
    }
    assert outcome.code == EXIT_ALERT
    assert outcome.stderr == "certscan: fail-on: changed: 1 (issuer_changed 1)\n"


def test_names_changed_says_what_was_added_and_removed(real: Real, tmp_path: Path) -> None:
    outcome = run_diff(tmp_path, [at(real.first)], [at(real.more_names)])
    assert outcome.kinds() == [("rekeyed", False), ("names_changed", True)]
    assert outcome.events[1]["detail"] == {"added": ["b.test"], "removed": []}
    backwards = run_diff(tmp_path, [at(real.more_names)], [at(real.first)])
    assert backwards.events[1]["detail"] == {"added": [], "removed": ["b.test"]}
    assert backwards.events[0]["detail"]["same_names"] is False


def test_other_intermediates_with_the_same_leaf_are_material(real: Real,
                                                             tmp_path: Path) -> None:
    incomplete = at(real.first)
    incomplete["chain"] = incomplete["chain"][:1]  # the server stopped sending its intermediate
    outcome = run_diff(tmp_path, [at(real.first)], [incomplete])
    assert outcome.kinds() == [("chain_changed", True)]
    assert outcome.events[0]["detail"] == {
        "added": [], "removed": [real.first["chain"][1]["sha256"]], "leaf_changed": False}


def test_trust_lost_is_material_and_regained_is_not(real: Real, tmp_path: Path) -> None:
    lost = run_diff(tmp_path, [at(real.first)], [at(real.other_store)], "--fail-on", "changed")
    reason = real.other_store["validation"]["reason"]
    assert reason is not None
    assert lost.kinds() == [("became_untrusted", True)]
    assert lost.events[0]["detail"] == {"reason": reason}
    assert (lost.events[0]["new"]["trusted"], lost.events[0]["new"]["reason"]) == (False, reason)
    assert lost.code == EXIT_ALERT
    regained = run_diff(tmp_path, [at(real.other_store)], [at(real.first)],
                        "--fail-on", "changed")
    assert regained.kinds() == [("became_trusted", False)]
    assert regained.events[0]["detail"] == {"reason": reason}  # what was wrong before
    assert regained.code == 0


def test_no_trust_event_without_a_verdict_on_both_sides(real: Real, tmp_path: Path) -> None:
    unjudged = at(real.other_store)
    unjudged["validation"] = None  # scanned without --ca-bundle
    assert run_diff(tmp_path, [at(real.first)], [unjudged]).events == []


@pytest.mark.parametrize("case", [
    ("first", "refused", "started", True),
    ("refused", "first", "stopped", False),
    ("refused", "not_tls", "changed", False),
])
def test_error_changed(real: Real, tmp_path: Path, case: tuple[str, str, str, bool]) -> None:
    old, new, change, material = case
    before, after = getattr(real, old), getattr(real, new)
    outcome = run_diff(tmp_path, [at(before)], [at(after)])
    assert outcome.kinds() == [("error_changed", material)]
    type_of = {"first": None, "refused": "refused", "not_tls": "not_tls"}
    assert outcome.events[0]["detail"] == {"change": change, "from": type_of[old],
                                           "to": type_of[new]}
    assert outcome.events[0]["new"]["error_type"] == type_of[new]


def test_the_same_error_again_is_no_event(real: Real, tmp_path: Path) -> None:
    again = at(real.refused)
    again["error"]["message"] = "another message"
    assert run_diff(tmp_path, [at(real.refused)], [again]).events == []


def test_expiry_passed_between_the_two_scans(real: Real, tmp_path: Path) -> None:
    # trustme certificates end 3000-01-01; scans on either side of that moment.
    old = at(real.first, scanned_at="2999-12-31T00:00:00.000Z")
    new = at(real.first, scanned_at="3000-01-02T00:00:00.000Z")
    outcome = run_diff(tmp_path, [old], [new])
    assert outcome.kinds() == [("expiry_passed", True)]
    assert outcome.events[0]["detail"] == {"certificate": "leaf",
                                           "not_after": "3000-01-01T00:00:00Z"}
    # Both scans before it, both after it, or the files swapped: nothing passed.
    later = at(real.first, scanned_at="3000-01-03T00:00:00.000Z")
    assert run_diff(tmp_path, [new], [later]).events == []
    assert run_diff(tmp_path, [new], [old]).events == []


def test_expiry_passed_names_the_chain_certificate_that_expired_first(
        real: Real, tmp_path: Path) -> None:
    new = at(real.first, scanned_at="2030-06-01T00:00:00.000Z")
    new["chain"][1]["not_after"] = "2030-01-01T00:00:00Z"
    old = copy.deepcopy(new)
    old["scanned_at"] = "2029-06-01T00:00:00.000Z"
    outcome = run_diff(tmp_path, [old], [new])
    assert outcome.kinds() == [("expiry_passed", True)]
    assert outcome.events[0]["detail"]["certificate"] == "chain[1]"
    assert outcome.events[0]["new"]["earliest_expiry"] == {
        "not_after": "2030-01-01T00:00:00Z", "certificate": "chain[1]",
        "sha256": real.first["chain"][1]["sha256"]}


def test_new_and_gone_are_not_material(real: Real, tmp_path: Path) -> None:
    outcome = run_diff(tmp_path, [at(real.first, "192.0.2.1")], [at(real.first, "192.0.2.2")],
                       "--fail-on", "changed")
    assert outcome.kinds() == [("gone", False), ("new", False)]
    assert outcome.events[0]["old"] is not None and outcome.events[0]["new"] is None
    assert outcome.events[1]["old"] is None and outcome.events[1]["new"]["line"] == 1
    assert outcome.code == 0


# Edge cases ----------------------------------------------------------------------------


def test_an_empty_file_makes_everything_new_or_gone(real: Real, tmp_path: Path) -> None:
    records = [at(real.first, "192.0.2.1"), at(real.refused, "192.0.2.2")]
    assert [e["event"] for e in run_diff(tmp_path, [], records).events] == ["new", "new"]
    assert [e["event"] for e in run_diff(tmp_path, records, []).events] == ["gone", "gone"]


def test_an_endpoint_twice_in_a_file_keeps_the_last_line_and_says_so(
        real: Real, tmp_path: Path) -> None:
    new = [at(real.refused), at(real.rekeyed, "192.0.2.9"), at(real.renewed)]
    outcome = run_diff(tmp_path, [at(real.first)], new)
    assert outcome.kinds() == [("duplicate", False), ("renewed", False), ("new", False)]
    duplicate, renewed, _ = outcome.events
    assert duplicate["detail"] == {"file": str(tmp_path / "new.jsonl"), "side": "new",
                                   "kept": 3, "count": 2, "lines": [1, 3]}
    assert duplicate["new"]["line"] == renewed["new"]["line"] == 3  # the last line won


def test_a_duplicate_lists_twenty_lines_at_most(real: Real, tmp_path: Path) -> None:
    outcome = run_diff(tmp_path, [at(real.first)] * 30, [at(real.first)])
    [duplicate] = outcome.events
    assert duplicate["detail"]["side"] == "old"
    assert duplicate["detail"]["count"] == 30 and duplicate["detail"]["kept"] == 30
    assert duplicate["detail"]["lines"] == list(range(1, 21))


def test_lines_that_are_not_records_are_bad_line_events_never_a_crash(
        real: Real, tmp_path: Path) -> None:
    port_too_big = at(real.first, "192.0.2.7")
    port_too_big["port"] = 10**30
    surrogate = json.dumps(at(real.first, "192.0.2.8")).replace('"host": "192.0.2.8"',
                                                                '"host": "\\udc80"')
    new = ["{torn", "[1, 2]", '{"some": "other tool"}', json.dumps(port_too_big), surrogate,
           "", at(real.first)]
    outcome = run_diff(tmp_path, ["not json at all", at(real.first)], new,
                       "--fail-on", "error")
    bad = [(e["detail"]["side"], e["detail"]["line"]) for e in outcome.events]
    assert bad == [("old", 1), ("new", 1), ("new", 2), ("new", 3), ("new", 4), ("new", 5)]
    assert all(e["event"] == "bad_line" and e["endpoint"] is None for e in outcome.events)
    reasons = [e["detail"]["reason"] for e in outcome.events]
    assert reasons[0].startswith("not JSON")
    assert reasons[2:] == ["not a JSON object",
                           "not a certscan record: no target, status, error, certificate, chain",
                           "not a certscan record: port 1000000000000000000000000000000 out "
                           "of range",
                           "not a certscan record: host is not valid Unicode"]
    assert outcome.events[1]["detail"]["file"] == str(tmp_path / "new.jsonl")
    # --fail-on error: a line of NEW that is not a record counts as an error (5 here).
    assert outcome.code == EXIT_ALERT
    assert outcome.stderr == "certscan: fail-on: error: 5\n"


def test_records_of_invalid_target_lines_are_skipped_and_counted_on_stderr(
        real: Real, tmp_path: Path) -> None:
    records = [real.invalid, at(real.first)]
    outcome = run_diff(tmp_path, records, [real.invalid, real.invalid, at(real.first)])
    assert outcome.events == []
    assert outcome.code == 0
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    assert outcome.stderr == (
        f"certscan: diff: {old}: 1 record(s) of invalid target lines skipped "
        "(they name no endpoint)\n"
        f"certscan: diff: {new}: 2 record(s) of invalid target lines skipped "
        "(they name no endpoint)\n")


def test_by_address_keys_endpoints_by_ip_too(real: Real, tmp_path: Path) -> None:
    # One name scanned at two addresses; the second address's certificate changed.
    old = [at(real.first, "a.test", ip="192.0.2.1"), at(real.first, "a.test", ip="192.0.2.2")]
    new = [at(real.first, "a.test", ip="192.0.2.1"), at(real.rekeyed, "a.test", ip="192.0.2.2")]
    by_name = run_diff(tmp_path, old, new)
    assert [e["event"] for e in by_name.events] == ["duplicate", "duplicate", "rekeyed"]
    assert by_name.events[0]["endpoint"]["ip"] is None
    by_address = run_diff(tmp_path, old, new, "--by-address")
    assert by_address.kinds() == [("rekeyed", False)]
    assert by_address.events[0]["endpoint"] == {"host": "a.test", "port": 443,
                                                "sni": "a.test", "ip": "192.0.2.2"}


def test_output_is_sorted_and_the_same_whatever_the_input_order(real: Real,
                                                                tmp_path: Path) -> None:
    kinds = [real.first, real.renewed, real.rekeyed, real.other_issuer, real.more_names,
             real.other_store, real.refused, real.not_tls]
    rnd = random.Random(7)
    old, new = [], []
    for n in range(60):
        host, sni = f"host{n % 7}.test", (None if n % 3 == 0 else f"s{n % 5}.test")
        port = 443 + n
        if n % 10 != 1:
            old.append(at(rnd.choice(kinds), host, port, sni=sni))
        if n % 10 != 2:
            new.append(at(rnd.choice(kinds), host, port, sni=sni))
    first = run_diff(tmp_path, old, new)
    rnd.shuffle(old)
    rnd.shuffle(new)
    second = run_diff(tmp_path, old, new)
    assert len(first.events) > 40

    def without_lines(outcome: Outcome) -> list[Record]:
        for event in outcome.events:
            for side in ("old", "new"):
                if event[side] is not None:
                    event[side]["line"] = 0
        return outcome.events

    assert without_lines(first) == without_lines(second)
    keys = [(e["endpoint"]["host"], e["endpoint"]["port"], e["endpoint"]["sni"] or "",
             diff.KINDS.index(e["event"])) for e in first.events]
    assert keys == sorted(keys)


def test_none_sni_sorts_first(real: Real, tmp_path: Path) -> None:
    records = [at(real.first, "192.0.2.1", sni="b.test"), at(real.first, "192.0.2.1", sni=None)]
    outcome = run_diff(tmp_path, [], records)
    assert [e["endpoint"]["sni"] for e in outcome.events] == [None, "b.test"]


# --fail-on and exit statuses -----------------------------------------------------------


def test_fail_on_judges_the_new_state_too(real: Real, tmp_path: Path) -> None:
    expired = at(real.first)
    expired["chain"][0]["not_after"] = expired["certificate"]["not_after"] = \
        "2001-01-01T00:00:00Z"
    same = [expired]
    outcome = run_diff(tmp_path, same, same, "--fail-on", "changed")
    assert (outcome.code, outcome.events) == (0, [])
    outcome = run_diff(tmp_path, same, same, "--fail-on", "expired")
    assert outcome.code == EXIT_ALERT
    assert outcome.stderr == "certscan: fail-on: expired: 1 (leaf 1)\n"
    untrusted = run_diff(tmp_path, [at(real.other_store)], [at(real.other_store)],
                         "--fail-on", "untrusted,error")
    assert (untrusted.code, untrusted.stderr) == (EXIT_ALERT,
                                                  "certscan: fail-on: untrusted: 1\n")
    expiring = run_diff(tmp_path, [at(real.first)], [at(real.first)],
                        "--fail-on", "expiring:400000d")  # trustme's end: year 3000
    assert (expiring.code, expiring.stderr) == (
        EXIT_ALERT, "certscan: fail-on: expiring within 400000d: 1 (leaf 1)\n")
    # The OLD file's state does not count.
    fixed = run_diff(tmp_path, [at(real.refused, "192.0.2.1"), at(expired, "192.0.2.2"),
                                at(real.other_store, "192.0.2.3")],
                     [at(real.first, "192.0.2.1"), at(real.first, "192.0.2.2"),
                      at(real.first, "192.0.2.3")],
                     "--fail-on", "error,expired,untrusted")
    assert fixed.code == 0
    assert [e["event"] for e in fixed.events] == ["error_changed", "became_trusted"]


def test_fail_on_changed_counts_each_material_event(real: Real, tmp_path: Path) -> None:
    old = [at(real.first, "192.0.2.1"), at(real.first, "192.0.2.2"),
           at(real.first, "192.0.2.3")]
    new = [at(real.other_store, "192.0.2.1"), at(real.more_names, "192.0.2.2"),
           at(real.refused, "192.0.2.3")]
    outcome = run_diff(tmp_path, old, new, "--fail-on", "changed,error")
    assert outcome.code == EXIT_ALERT
    assert outcome.stderr.splitlines() == [
        "certscan: fail-on: error: 1",
        "certscan: fail-on: changed: 3 "
        "(became_untrusted 1, error_changed 1, names_changed 1)",
    ]


def test_a_bad_fail_on_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(["diff", "a", "b", "--fail-on", "sometimes"])
    assert exit_.value.code == 2
    assert "--fail-on: unknown condition 'sometimes'" in capsys.readouterr().err


def test_an_unreadable_file_is_fatal_and_named(real: Real, tmp_path: Path) -> None:
    present = write(tmp_path / "present.jsonl", [at(real.first)])
    missing = tmp_path / "missing.jsonl"
    outcome = run_paths(str(present), str(missing), "-o", str(tmp_path / "out.jsonl"))
    assert outcome.code == 1
    assert outcome.stderr == f"certscan: error: cannot read {missing}: no such file or directory\n"
    directory = run_paths(str(tmp_path), str(present), "-o", str(tmp_path / "out.jsonl"))
    assert directory.code == 1
    assert directory.stderr == f"certscan: error: cannot read {tmp_path}: is a directory\n"


def test_usage_errors(real: Real, tmp_path: Path) -> None:
    present = str(write(tmp_path / "present.jsonl", [at(real.first)]))
    nowhere = run_paths(present, present, "-o", str(tmp_path / "no" / "such" / "out.jsonl"))
    assert nowhere.code == 2
    assert nowhere.stderr.startswith("certscan: error: -o ")
    assert nowhere.stderr.endswith(": no such file or directory\n")
    twice = run_paths("-", "-", "-o", str(tmp_path / "out.jsonl"))
    assert (twice.code, twice.stderr) == (2, "certscan: error: stdin (-) can be read only once\n")
    onto_dir = run_paths(present, present, "-o", str(tmp_path))
    assert (onto_dir.code, onto_dir.stderr) == (2, f"certscan: error: -o {tmp_path}: "
                                                   "is a directory\n")


def test_stdout_is_the_default_output(real: Real, tmp_path: Path,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    old = write(tmp_path / "old.jsonl", [at(real.first)])
    new = write(tmp_path / "new.jsonl", [at(real.renewed)])
    assert diff.run(parser().parse_args(["diff", str(old), str(new)])) == 0
    out = capfd.readouterr().out
    assert [e["event"] for e in parse_events(out.encode())] == ["renewed"]


def test_certscan_diff_on_the_command_line(real: Real, tmp_path: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    old = write(tmp_path / "old.jsonl", [at(real.first)])
    new = write(tmp_path / "new.jsonl", [at(real.other_store)])
    assert cli.main(["diff", str(old), str(new), "--fail-on", "changed"]) == EXIT_ALERT
    out, err = capfd.readouterr()
    assert [e["event"] for e in parse_events(out.encode())] == ["became_untrusted"]
    assert err == "certscan: fail-on: changed: 1 (became_untrusted 1)\n"


def _child(code: str, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


RUN_DIFF = """
    import sys
    from scanner.cli import main
    sys.exit(main(["diff", *sys.argv[1:]]))
"""


@pytest.mark.slow
def test_a_reader_that_goes_away_is_a_quiet_141(real: Real, tmp_path: Path) -> None:
    many = [at(real.first, f"10.0.{n // 256}.{n % 256}") for n in range(1500)]  # ~1.5 MB out
    old, new = write(tmp_path / "old.jsonl", []), write(tmp_path / "new.jsonl", many)
    child = _child(RUN_DIFF, str(old), str(new))
    assert child.stdout is not None and child.stderr is not None
    assert json.loads(child.stdout.readline())["event"] == "new"
    child.stdout.close()  # as `| head -1` does
    assert child.wait(timeout=60) == diff.EXIT_BROKEN_PIPE
    with child.stderr:
        assert child.stderr.read() == b""


def test_stdin_can_be_either_file(real: Real, tmp_path: Path) -> None:
    old = write(tmp_path / "old.jsonl", [at(real.first)])
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(RUN_DIFF), str(old), "-"],
                           cwd=ROOT, input=json.dumps(at(real.renewed)).encode() + b"\n",
                           capture_output=True, timeout=60, check=False)
    assert child.returncode == 0, child.stderr
    assert [e["event"] for e in parse_events(child.stdout)] == ["renewed"]


# The pure parts ------------------------------------------------------------------------


def test_a_side_keeps_the_facts_and_compare_is_pure(real: Real) -> None:
    side = diff.Side.of(real.first, 5)
    assert side.line == 5 and side.sha256 == real.first["certificate"]["sha256"]
    assert side.as_dict()["earliest_expiry"] == {
        "not_after": "3000-01-01T00:00:00Z", "certificate": "leaf",
        "sha256": real.first["certificate"]["sha256"]}
    where = Endpoint("192.0.2.1", 443, "a.test")
    assert diff.compare(where, side, side) == []
    assert [e.kind for e in diff.compare(where, side, diff.Side.of(real.renewed, 1))] == \
        ["renewed"]
    assert diff.Side.of(real.refused, 1).has_certificate is False
    unreadable = copy.deepcopy(real.first)
    unreadable["certificate"]["san"] = None  # a SAN that could not be read: no names event
    assert [e.kind for e in diff.compare(where, diff.Side.of(unreadable, 1),
                                         diff.Side.of(real.more_names, 1))] == ["rekeyed"]


def test_material_is_what_the_docstring_says() -> None:
    assert set(diff.KINDS) >= diff.MATERIAL
    schema = json.loads(resources.files("scanner.inventory")
                        .joinpath("diff.schema.json").read_text("utf-8"))
    assert schema["properties"]["event"]["enum"] == list(diff.KINDS)
    for kind in diff.KINDS:
        assert f"\n{kind} " in diff.__doc__ or kind in ("bad_line", "duplicate")


# Scale ---------------------------------------------------------------------------------


MEASURE = """
    import resource, sys, time
    from scanner.cli import main

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    before = peak_mib()
    started = time.perf_counter()
    code = main(["diff", *sys.argv[1:]])
    print(code, before, peak_mib(), time.perf_counter() - started, file=sys.stderr)
"""


@pytest.mark.slow
def test_memory_stays_bounded_over_120k_endpoints(real: Real, tmp_path: Path) -> None:
    # 120,000 endpoints a side, in different orders: one in ten a certificate (the real
    # record, its PEMs left out to keep the test short), the others refused; 1% renewed.
    # Held in memory as Side values, one per endpoint and file, they would take ~200 MB
    # (measured: ~1970 bytes for a certificate's, ~730 for an error's); the index keeps the
    # peak within a few tens of MB of the interpreter's own (measured: ~10 MB). The diff
    # takes ~5 s here, half of it json.loads.
    ok = at(real.first, "HOST", 1, scanned_at="2026-01-01T00:00:00.000Z")
    ok["certificate"]["pem"] = ""
    for entry in ok["chain"]:
        entry["pem"] = ""
    refused = at(real.refused, "HOST", 1, sni=None, scanned_at="2026-01-01T00:00:00.000Z")
    texts = [json.dumps(checked(r)).replace('"port": 1,', '"port": 443,') for r in (ok, refused)]
    leaf = ok["certificate"]["sha256"]
    count = 120_000
    order = list(range(count))
    rnd = random.Random(3)

    def lines(new: bool) -> Iterable[str]:
        rnd.shuffle(order)
        for n in order:
            line = texts[n % 10 != 0].replace("HOST", f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}")
            if new:
                line = line.replace("2026-01-01T", "2026-01-02T")
                if n % 100 == 0:
                    line = line.replace(leaf, f"{n:064x}")
            yield line

    old, new = write(tmp_path / "old.jsonl", lines(False)), write(tmp_path / "new.jsonl",
                                                                  lines(True))
    out = tmp_path / "events.jsonl"
    child = _child(MEASURE, str(old), str(new), "-o", str(out))
    _, err = child.communicate(timeout=120)
    code, before, peak, _seconds = err.decode().split()
    assert int(code) == 0
    with out.open("rb") as events:
        renewed = [json.loads(line)["event"] for line in events]
    assert renewed == ["renewed"] * (count // 100)
    growth = float(peak) - float(before)
    assert growth < 60, f"peak RSS grew {growth:.0f} MiB over 2 x {count} records"
    os.unlink(old)
    os.unlink(new)
