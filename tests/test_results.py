"""Reading result files: every line a record or a BadRecord naming why, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

from scanner.inventory.results import BadRecord, read_results

RECORD = {"target": "t", "status": "ok", "error": None, "certificate": None, "chain": []}


def test_odd_lines_are_bad_records_and_certscans_own_escapes_read(tmp_path: Path) -> None:
    hostile = dict(RECORD, target="\ud800 lone surrogate, as certscan escapes it")
    lines = [
        json.dumps(RECORD),
        json.dumps(hostile),  # \ud800: orjson refuses it, json reads it
        "[" * 100_000,  # nesting no parser should follow
        "[1, 2]",
        json.dumps({"target": "t"}),
        '{"torn": ',
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    got = list(read_results(path))
    assert [number for number, _ in got] == [1, 2, 3, 4, 5, 6]
    assert got[0][1] == RECORD and got[1][1] == hostile
    bad = [item for _, item in got[2:]]
    assert all(isinstance(item, BadRecord) for item in bad)
    reasons = [str(item) for item in bad]
    assert "recursion" in reasons[0]
    assert "not a JSON object" in reasons[1]
    assert "no status, error, certificate, chain" in reasons[2]
    assert reasons[3].startswith(f"{path}:6: not JSON")
