"""The one wire format between certscan's processes: a frame per line, both ways.

    <tag> TAB <head> TAB <body> LF

`tag` is the job's tag (decimal); `head` says what the body is: `target` for a job the
parent sends a worker, else the record's gist for a record a worker sends back
(`status:error_type:trusted:reason:expires:expires_at`, `-` for none, e.g.
`ok:-:1:-:1798761600:0`), so that the parent counts it without parsing it; `body`
is JSON (a target's fields as an array, or the record as written to the output), which
never holds a raw TAB or LF. Pure: bytes in, values out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson

from .record import encode
from .targets import Target
from .values import Record, Shard

_TARGET = b"target"


@dataclass(frozen=True, slots=True)
class Gist:
    """What the parent needs to know of a record without parsing it: for the progress line
    and summary, and for `--fail-on`."""

    status: str
    error_type: str | None = None
    trusted: bool | None = None  # the verdict, when there is one
    reason: str | None = None  # the verdict's reason when not trusted
    expires: int | None = None  # the earliest not_after of the chain sent (Unix time)
    expires_at: int | None = None  # which certificate that is: 0 the leaf, 1 the next, ...

    @classmethod
    def of(cls, record: Record) -> Gist:
        failure, verdict = record.failure, record.validation
        expires = expires_at = None
        for position, entry in enumerate(record.chain):
            when = _unix(entry.get("not_after"))
            if when is not None and (expires is None or when < expires):
                expires, expires_at = when, position
        return cls(record.status, None if failure is None else failure.type,
                   None if verdict is None else verdict.trusted,
                   None if verdict is None else verdict.reason, expires, expires_at)

    def head(self) -> bytes:
        fields = (self.status, self.error_type,
                  None if self.trusted is None else int(self.trusted), self.reason,
                  self.expires, self.expires_at)
        return ":".join("-" if value is None else str(value) for value in fields).encode()

    @classmethod
    def from_head(cls, head: bytes) -> Gist:
        status, error_type, trusted, reason, expires, expires_at = (
            None if field == "-" else field for field in head.decode().split(":"))
        return cls(status or "error", error_type, None if trusted is None else trusted == "1",
                   reason, None if expires is None else int(expires),
                   None if expires_at is None else int(expires_at))


def _unix(text: object) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Line:
    """One encoded record, with its gist."""

    data: bytes  # the JSON line, newline included
    gist: Gist

    @classmethod
    def of(cls, record: Record) -> Line:
        return cls(encode(record), Gist.of(record))


def target_frame(tag: int, target: Target) -> bytes:
    fields = [target.text, target.host, target.port, target.sni, target.ip, target.source,
              target.line, target.starttls,
              None if target.shard is None else [target.shard.index, target.shard.count]]
    return b"%d\t%s\t%s\n" % (tag, _TARGET, orjson.dumps(fields))


def read_target(frame: bytes) -> tuple[int, Target]:
    tag, head, body = frame.rstrip(b"\n").split(b"\t", 2)
    if head != _TARGET:
        raise ValueError(f"not a target frame: {head!r}")
    text, host, port, sni, ip, source, line, starttls, shard = orjson.loads(body)
    return int(tag), Target(text, host, port, sni, ip, source, line, starttls,
                            None if shard is None else Shard(*shard))


def record_frame(tag: int, line: Line) -> bytes:
    return b"%d\t%s\t%s" % (tag, line.gist.head(), line.data)  # line.data ends in LF


def read_record(frame: bytes) -> tuple[int, Line]:
    tag, head, body = frame.split(b"\t", 2)
    return int(tag), Line(body if body.endswith(b"\n") else body + b"\n",
                          Gist.from_head(head))
