"""record.encode_json: orjson's speed, the stdlib encoder's bytes (ensure_ascii, compact)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from scanner.record import encode_json as encode
from scanner.values import ErrorType

STDLIB = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def stdlib_line(record: Any) -> bytes:
    return (STDLIB.encode(record) + "\n").encode("ascii")


def a_record(**changes: Any) -> dict[str, Any]:
    """The shape of a real ok record (see record.capture_record), every value type in it."""
    record: dict[str, Any] = {
        "schema_version": 1, "scanned_at": "2026-12-06T02:11:59.302Z",
        "target": "host.example:443", "host": "host.example", "port": 443,
        "ip": "127.0.0.1", "sni": "host.example", "status": "ok", "error": None,
        "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "alpn": None},
        "timing_ms": {"resolve": None, "connect": 0.001, "handshake": 11.768, "total": 0.0},
        "certificate": {
            "pem": "-----BEGIN CERTIFICATE-----\nMIIBvDCC\n-----END CERTIFICATE-----\n",
            "serial": "6b5222a803d95b06", "days_left": -3, "self_signed": False,
            "is_ca": True, "san": {"dns": ["a.example", "*.b.example"], "ip": []},
            "key": {"type": "ec", "bits": 256, "curve": "secp256r1"},
        },
        "chain": [{"pem": "x"}, {"pem": "y"}],
        "validation": {"trusted": True, "reason": None, "message": "ok"},
    }
    record.update(changes)
    return record


@pytest.mark.parametrize("record", [
    a_record(),
    a_record(error={"type": ErrorType.TIMEOUT, "stage": "connect", "message": "timed out"}),
    a_record(host="bücher.example"),  # non-ASCII: orjson would write UTF-8
    a_record(host="\ud800"),  # lone surrogate: orjson refuses it
    a_record(host="del\x7fhere"),  # DEL: json escapes it, orjson does not
    a_record(host="ctl\x00\x01\x1f\"\\/\b\f\n\r\t"),  # control characters and escapes
    a_record(port=2**70),  # past 64 bits: orjson refuses it
    a_record(port=-(2**63)),
    a_record(chain=[], certificate=None, validation=None),
], ids=["ok", "str-enum", "non-ascii", "surrogate", "del", "controls", "bigint", "minint",
        "nulls"])
def test_encode_writes_exactly_the_stdlib_bytes(record: dict[str, Any]) -> None:
    line = encode(record)
    assert line == stdlib_line(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    json.loads(line)


def test_timings_as_records_hold_them_print_as_the_stdlib_does() -> None:
    # The only floats in a record are timings: milliseconds rounded to 3 places.
    rng = random.Random(5)
    values = [0.0, 0.001, 0.01, 1.0, 5.0, 1e15, 1e16, 1e17, 123456789.123]
    values += [round(rng.uniform(0, 10 ** rng.randint(0, 9)), 3) for _ in range(20000)]
    for value in values:
        record = a_record(timing_ms={"total": value})
        assert encode(record) == stdlib_line(record), value


def test_an_ascii_record_never_reaches_the_stdlib_encoder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import scanner.record

    expected = stdlib_line(a_record())

    class Refuses:
        def encode(self, record: Any) -> str:
            raise AssertionError("the slow path ran")

    monkeypatch.setattr(scanner.record, "_ENCODER", Refuses())
    assert encode(a_record()) == expected
    with pytest.raises(AssertionError, match="slow path"):
        encode(a_record(host="bücher.example"))
