"""--fail-on: its conditions parsed, counted over records and gists, and the scan's exit
status 3 through the real command line against loopback servers; the end-of-scan summary's
verdict and expiry counts."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

from scanner.inventory.alerts import EXIT_ALERT, Alarm, FailOn, parse_span
from scanner.wire import Gist
from servers import free_port, next_address, server_context, tls_server

CERTSCAN = str(Path(sys.executable).parent / "certscan")
NOW = datetime(2026, 12, 6, tzinfo=UTC)


@pytest.mark.parametrize(("text", "span"), [
    ("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("2w", timedelta(weeks=2)),
    ("7", timedelta(days=7)),
])
def test_spans(text: str, span: timedelta) -> None:
    assert parse_span(text) == span


@pytest.mark.parametrize(("text", "message"), [
    ("", "no condition"), ("sometimes", "unknown condition 'sometimes'"),
    ("expiring", "needs a window"), ("expiring:soon", "not a span"),
    ("error:1", "takes no argument"), ("changed", "unknown condition 'changed'"),
])
def test_bad_conditions_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FailOn.parse(text, allowed=("expired", "untrusted", "expiring", "error"))


def _record(status: str = "ok", trusted: bool | None = None,
            not_afters: tuple[datetime, ...] = ()) -> dict[str, object]:
    return {
        "status": status,
        "validation": None if trusted is None else {"trusted": trusted},
        "chain": [{"not_after": moment.strftime("%Y-%m-%dT%H:%M:%SZ")} for moment in not_afters],
    }


def test_every_condition_is_counted_and_names_the_certificate() -> None:
    alarm = Alarm(FailOn.parse("expired,untrusted,expiring:14d,error"), now=NOW)
    alarm.see(_record(not_afters=(NOW + timedelta(days=400), NOW - timedelta(days=1))))
    alarm.see(_record(not_afters=(NOW + timedelta(days=3),)))
    alarm.see(_record(not_afters=(NOW + timedelta(days=30),)))  # outside the window
    alarm.see(_record(trusted=False, not_afters=(NOW + timedelta(days=90),)))
    alarm.see(_record(status="error"))
    assert alarm.tripped
    assert alarm.lines() == [
        "expired: 1 (chain[1] 1)", "untrusted: 1", "expiring within 14d: 1 (leaf 1)",
        "error: 1",
    ]


def test_only_the_chosen_conditions_count() -> None:
    alarm = Alarm(FailOn.parse("untrusted"), now=NOW)
    alarm.see(_record(status="error"))
    alarm.see(_record(trusted=True, not_afters=(NOW - timedelta(days=1),)))
    assert not alarm.tripped and alarm.lines() == []


def test_a_gist_counts_as_its_record_does() -> None:
    expired = int((NOW - timedelta(days=2)).timestamp())
    alarm = Alarm(FailOn.parse("expired,error"), now=NOW)
    alarm.see_gist(Gist("ok", None, True, None, expired, 0))
    alarm.see_gist(Gist("error", "timeout"))
    assert alarm.lines() == ["expired: 1 (leaf 1)", "error: 1"]


def test_a_gist_crosses_the_wire_whole() -> None:
    for gist in (Gist("ok", None, False, "expired", 1798761600, 2),
                 Gist("error", "tls_alert"), Gist("ok", None, True, None, None, None)):
        assert Gist.from_head(gist.head()) == gist


async def _run(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        CERTSCAN, *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


@pytest.mark.slow
async def test_scan_exits_3_naming_what_it_found(
    ca: trustme.CA, ca_pem: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    soon = ca.issue_cert("soon.test", not_after=now + timedelta(days=5))
    gone = ca.issue_cert("gone.test", not_before=now - timedelta(days=30),
                         not_after=now - timedelta(days=1))
    async with tls_server(server_context(soon)) as a, tls_server(server_context(gone)) as b:
        refused = next_address()
        targets = ["-t", f"{a.target} soon.test", "-t", f"{b.target} gone.test",
                   "-t", f"{refused}:{free_port(refused)}"]
        base = ["scan", *targets, "-o", str(tmp_path / "out.jsonl"), "--ca-bundle", ca_pem,
                "--timeout", "3"]
        quiet_code, _ = await _run(*base, "-q")
        code, err = await _run(*base, "-q", "--fail-on", "expired,expiring:14d,error")
        untrusted_code, untrusted = await _run(*base, "-q", "--fail-on", "untrusted")
        calm_code, _ = await _run(*base, "-q", "--fail-on", "expiring:1d")
        summary_code, summary = await _run(*base)
    assert quiet_code == 0
    assert code == EXIT_ALERT
    assert "--fail-on: expired: 1 (leaf 1)" in err
    assert "--fail-on: expiring within 14d: 1 (leaf 1)" in err
    assert "--fail-on: error: 1" in err
    assert untrusted_code == EXIT_ALERT and "untrusted: 1" in untrusted
    assert calm_code == 0
    assert summary_code == 0
    assert "verdicts: trusted 1, untrusted 1 (expired 1)" in summary
    assert "certificates expired 1, expiring within 30 days 1" in summary


@pytest.mark.slow
async def test_a_bad_fail_on_is_a_usage_error() -> None:
    code, err = await _run("scan", "-t", "127.0.0.1:1", "--fail-on", "changed")
    assert code == 2
    assert "--fail-on: unknown condition 'changed'" in err
