"""The one wire format between certscan's processes: a frame per line, both ways.

    <tag> TAB <head> TAB <body> LF

`tag` is the job's tag (decimal); `head` says what the body is: `target` for a job the
parent sends a worker, else the record's status and error type (`ok`, `error:timeout`)
for a record a worker sends back, so that the parent counts it without parsing it; `body`
is JSON (a target's fields as an array, or the record as written to the output), which
never holds a raw TAB or LF. Pure: bytes in, values out.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from .record import encode
from .targets import Target
from .values import Record

_TARGET = b"target"


@dataclass(frozen=True, slots=True)
class Line:
    """One encoded record, with what the progress display needs to know of it."""

    data: bytes  # the JSON line, newline included
    status: str
    error_type: str | None

    @classmethod
    def of(cls, record: Record) -> Line:
        failure = record.failure
        return cls(encode(record), record.status, None if failure is None else failure.type)


def target_frame(tag: int, target: Target) -> bytes:
    fields = [target.text, target.host, target.port, target.sni, target.ip, target.source,
              target.line]
    return b"%d\t%s\t%s\n" % (tag, _TARGET, orjson.dumps(fields))


def read_target(frame: bytes) -> tuple[int, Target]:
    tag, head, body = frame.rstrip(b"\n").split(b"\t", 2)
    if head != _TARGET:
        raise ValueError(f"not a target frame: {head!r}")
    text, host, port, sni, ip, source, line = orjson.loads(body)
    return int(tag), Target(text, host, port, sni, ip, source, line)


def record_frame(tag: int, line: Line) -> bytes:
    head = line.status if line.error_type is None else f"{line.status}:{line.error_type}"
    return b"%d\t%s\t%s" % (tag, head.encode(), line.data)  # line.data ends in LF


def read_record(frame: bytes) -> tuple[int, Line]:
    tag, head, body = frame.split(b"\t", 2)
    status, _, error_type = head.decode().partition(":")
    return int(tag), Line(body if body.endswith(b"\n") else body + b"\n", status,
                          error_type or None)
