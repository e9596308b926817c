"""The frames between certscan's processes (wire.py): pure, so tested without a process.

The command line's end-to-end tests cross real pipes only where the machine has more than
one core (the default --workers); these cases hold everywhere."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from scanner.record import bad_line_record, error_record
from scanner.targets import BadLine, parse_line
from scanner.values import ErrorType, Failure, Stage
from scanner.wire import Line, read_record, read_target, record_frame, target_frame


def test_a_target_crosses_as_it_was() -> None:
    # A tab between address and server name, and a name that is not ASCII: neither may
    # reach the frame raw (a TAB separates its fields, an LF ends it).
    for text in ("192.0.2.7:8443\tbücher.example", "[2001:db8::1]:443", "192.0.2.0/31"):
        for target in parse_line(text, ports=(443, 8443), source="list.txt", line=7):
            frame = target_frame(41, target)
            assert frame.endswith(b"\n") and frame.count(b"\n") == 1
            assert frame.count(b"\t") == 2
            assert read_target(frame) == (41, target)


def test_a_record_crosses_with_what_the_parent_counts() -> None:
    now = datetime(2026, 1, 31, tzinfo=UTC)
    (target,) = parse_line("192.0.2.7:443 example.org", ports=(443,))
    failure = Failure(ErrorType.TIMEOUT, Stage.HANDSHAKE, "no answer\twithin\nthe deadline")
    for record in (error_record(target, failure, now=now),
                   bad_line_record(BadLine("a b c", "list.txt", 3, "3 fields"), now=now)):
        line = Line.of(record)
        frame = record_frame(9, line)
        assert frame.count(b"\n") == 1 and frame.count(b"\t") == 2
        tag, back = read_record(frame)
        assert (tag, back) == (9, line)
        assert record.failure is not None
        assert (back.gist.status, back.gist.error_type) == ("error", record.failure.type)
        assert json.loads(back.data) == record.as_dict()
