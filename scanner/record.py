"""Scan records: pure functions from a target and what its probe saw to one JSON object.

The record is the output contract (DESIGN.md, "Output record"; the JSON Schema ships as
`record.schema.json`). Every key is present on every record; a key that does not apply is
null (or [] for `chain`). Keys are only ever added, never renamed; `schema_version` says so.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime
from typing import Any

import orjson

from . import certs
from .errors import ErrorType, ProbeError, Stage, internal
from .probe import ProbeOutcome
from .targets import BadLine, Target
from .verify import Policy, TrustStore, verify_chain

SCHEMA_VERSION = 1

Record = dict[str, Any]


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _base(target: str, host: str | None, port: int | None, now: datetime) -> Record:
    return {
        "schema_version": SCHEMA_VERSION,
        "scanned_at": timestamp(now),
        "target": target,
        "host": host,
        "port": port,
        "ip": None,
        "sni": None,
        "status": "error",
        "error": None,
        "tls": None,
        "timing_ms": None,
        "certificate": None,
        "chain": [],
        "validation": None,
    }


def sent_sni(name: str | None) -> str | None:
    """The SNI a client handed ``name`` as server_hostname puts on the wire, or None.

    _ssl sends no SNI for a name OpenSSL parses as an IP address (a2i_IPADDRESS; RFC 6066
    forbids literals there): IPv4 and IPv6 literals, though not an IPv6 one with a zone,
    which OpenSSL does not parse and so sends as it is.
    """
    if name is None:
        return None
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name
    return name if getattr(address, "scope_id", None) else None


def bad_line_record(bad: BadLine, *, now: datetime) -> Record:
    record = _base(bad.text, None, None, now)
    record["error"] = ProbeError(ErrorType.INVALID_TARGET, Stage.TARGET, bad.message).as_dict()
    return record


def error_record(target: Target, error: ProbeError, *, now: datetime) -> Record:
    """A record for a target whose probe never produced an outcome (a crash, a stopped scan)."""
    record = _base(target.text, target.host, target.port, now)
    record["ip"] = target.ip
    record["sni"] = sent_sni(target.sni)
    record["error"] = error.as_dict()
    return record


def probe_record(
    target: Target, outcome: ProbeOutcome, *, now: datetime, store: TrustStore | None,
    policy: Policy = "default",
) -> Record:
    """The record of one probe: certificate facts and, with a trust store, the verdict
    (under verification ``policy``)."""
    record = _base(target.text, target.host, target.port, now)
    record["ip"] = outcome.ip
    # What went out, not what was asked for: an IP literal as the server name sends none.
    # The name the verdict checked is validation.server_name.
    record["sni"] = sent_sni(target.sni)
    record["timing_ms"] = outcome.timings.as_dict()
    handshake = outcome.handshake
    if handshake is not None:
        record["tls"] = {
            "version": handshake.version,
            "cipher": handshake.cipher,
            "alpn": handshake.alpn,
        }
        if handshake.chain:
            try:
                facts = certs.certificate_facts(handshake.chain[0], now=now)
                record["certificate"] = facts
                # The leaf's entry comes from its facts: no second parse.
                record["chain"] = [certs.leaf_entry(facts)] + [
                    certs.chain_entry(der) for der in handshake.chain[1:]
                ]
                if store is not None:
                    verdict = verify_chain(handshake.native or handshake.chain, store,
                                           server_name=target.server_name, policy=policy)
                    record["validation"] = verdict.as_dict()
            except Exception as exc:  # a bug in our parsing, not the server's fault
                record["error"] = internal(exc, Stage.CERTIFICATE).as_dict()
                return record
    if outcome.error is not None:
        record["error"] = outcome.error.as_dict()
    else:
        record["status"] = "ok"
    return record


def encode(record: Record) -> bytes:
    """One JSON line, as bytes, exactly as `json` with ensure_ascii writes it: ensure_ascii
    keeps hostile certificate strings (lone surrogates, control characters) from ever
    producing a line that is not valid UTF-8 JSON.

    orjson writes the same bytes ~10x faster (~2 us against ~20 us a record here, most of
    the per-record Python cost left after the handshake) for a record whose text is ASCII
    without DEL, which is nearly every record: same key order, separators, escapes and
    float reprs. Anything else goes to the stdlib encoder: non-ASCII text (orjson writes
    UTF-8), DEL (orjson leaves it bare, `json` writes \\u007f), a lone surrogate or an
    integer past 64 bits (orjson refuses them). Two differences no record can meet: orjson
    writes NaN as null (records hold none) and some non-zero floats under 1e-4 in other
    digits (records' only floats are timings rounded to the microsecond: 0 or >= 0.001).
    """
    try:
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        pass
    else:
        if line.isascii() and b"\x7f" not in line:
            return line
    return (_ENCODER.encode(record) + "\n").encode("ascii")


_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))  # built once, not per record
