"""Reading result files: one record per line, as `certscan scan` writes them. Pure parsing
plus one streaming reader; nothing here scans.

A result file is read as a stream (a million lines are never held at once). A line that
is not a record (torn, edited by hand, another tool's output) is reported as a `BadRecord`
naming the file and line, never a crash and never silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Record = Mapping[str, Any]  # one record's JSON object (record.schema.json)


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """What a record is about, across runs: the host, port and server name scanned, and the
    address when the scan covered every address of a name (else None)."""

    host: str
    port: int
    sni: str | None
    ip: str | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{host}:{self.port}"
        if self.sni is not None and self.sni != self.host:
            text += f" {self.sni}"
        if self.ip is not None and self.ip != self.host:
            text += f" @{self.ip}"
        return text

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "sni": self.sni, "ip": self.ip}


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A line of a result file that is not a record."""

    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


def endpoint(record: Record, *, by_address: bool = False) -> Endpoint | None:
    """The record's endpoint; None for a record of a line that was not a target (an
    `invalid_target` has no host). `by_address`: the address is part of the endpoint."""
    host, port = record.get("host"), record.get("port")
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    sni = record.get("sni")
    ip = record.get("ip") if by_address else None
    return Endpoint(host, port, sni if isinstance(sni, str) else None,
                    ip if isinstance(ip, str) else None)


def read_results(path: str | Path) -> Iterator[tuple[int, Record | BadRecord]]:
    """Each line's number with its record, or a BadRecord saying why it is not one. Blank
    lines are skipped. `-` is standard input. OSError when the file cannot be read."""
    source = str(path)
    stream = open(0, "rb", closefd=False) if source == "-" else open(path, "rb")  # noqa: SIM115
    with stream:
        for number, raw in enumerate(stream, 1):
            if not raw.strip():
                continue
            yield number, _parse(raw, source, number)


def _parse(raw: bytes, source: str, number: int) -> Record | BadRecord:
    try:
        record = _loads(raw)
    except (ValueError, RecursionError) as exc:
        torn = "" if raw.endswith(b"\n") else " (the line is torn: no newline at its end)"
        return BadRecord(source, number, f"not JSON: {exc}{torn}")
    if not isinstance(record, dict):
        return BadRecord(source, number, "not a JSON object")
    missing = [key for key in ("target", "status", "error", "certificate", "chain")
               if key not in record]
    if missing:
        return BadRecord(source, number, f"not a certscan record: no {', '.join(missing)}")
    return record


def _loads(raw: bytes) -> object:
    """json's parse. (Not orjson's, though twice as fast: it refuses a lone surrogate that
    certscan's own records may hold, escaped from a hostile certificate, and reads an
    integer past 64 bits as a float.) ValueError when it is not JSON; RecursionError for
    absurd nesting."""
    return json.loads(raw)


def parse_time(text: object) -> datetime | None:
    """A record's ISO 8601 UTC time ("2026-01-01T00:00:00Z"), or None."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Expiry:
    """The certificate of a chain that expires first, as the server sent the chain."""

    not_after: datetime
    position: int  # 0: the leaf; 1: the first certificate after it, ...
    subject: str | None
    sha256: str | None

    @property
    def which(self) -> str:
        return "leaf" if self.position == 0 else f"chain[{self.position}]"


def earliest_expiry(record: Record) -> Expiry | None:
    """Of every certificate the server sent (leaf first), the one that expires first."""
    found: Expiry | None = None
    chain = record.get("chain") or []
    for position, entry in enumerate(chain if isinstance(chain, list) else []):
        if not isinstance(entry, Mapping):
            continue
        when = parse_time(entry.get("not_after"))
        if when is None or (found is not None and when >= found.not_after):
            continue
        subject = entry.get("subject")
        rfc4514 = subject.get("rfc4514") if isinstance(subject, Mapping) else None
        sha = entry.get("sha256")
        found = Expiry(when, position, rfc4514 if isinstance(rfc4514, str) else None,
                       sha if isinstance(sha, str) else None)
    return found
