"""Shards: `--shard I/N` splits the expanded targets exactly, `certscan merge` checks it.

The split is tested pure (the union of N shards is the list's expansion, no overlap, in
any order of the list), and for real: N `certscan` processes over one list with CIDR
lines, --ports and duplicates, one of them SIGKILLed and resumed, one run as a Kubernetes
Indexed Job pod would be (`--shards N` with JOB_COMPLETION_INDEX).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from scanner.keys import item_key, parse_shard, record_key, select, shard_of
from scanner.targets import BadLine, Target, parse_lines
from scanner.values import Shard
from servers import next_address, raw_server, server_context, silent, tls_server

PORTS = (443, 8443)


def _list(live: str, dead: str) -> list[str]:
    return [
        f"{live} live.shard.test",
        f"{dead.rsplit('.', 1)[0]}.0/29",  # 8 addresses x 2 ports
        f"{dead}:9",
        f"{dead}:9",  # a duplicate line: two records, both in one shard
        f"{dead} a.shard.test b.shard.test",  # two names x 2 ports
        "not a target line ::: ",
        "smtp://127.0.0.1:9 mail.shard.test",
    ]


def expanded(lines: list[str]) -> list[Target | BadLine]:
    return list(parse_lines(lines, ports=PORTS))


async def _items(items: list[Target | BadLine]) -> AsyncIterator[Target | BadLine]:
    for item in items:
        yield item


async def shard_items(items: list[Target | BadLine], shard: Shard) -> list[Target | BadLine]:
    return [item async for item in select(_items(items), shard)]


@pytest.mark.parametrize("count", [1, 2, 3, 7])
async def test_the_shards_partition_the_expanded_list(count: int) -> None:
    items = expanded(_list("127.0.0.10", "127.0.0.20"))
    parts = [await shard_items(items, Shard(i, count)) for i in range(count)]
    keys = Counter(item_key(item) for part in parts for item in part)
    assert keys == Counter(item_key(item) for item in items)  # all, each once
    assert all(item.shard == Shard(i, count) for i, part in enumerate(parts) for item in part)
    if count > 1:  # one big line spreads: the /29's targets are in more than one shard
        block = [{i for i, part in enumerate(parts) for item in part
                  if item.text.endswith("/29")}]
        assert len(block[0]) > 1


async def test_a_shard_does_not_depend_on_the_order_of_the_list() -> None:
    lines = _list("127.0.0.10", "127.0.0.20")
    shuffled = lines[:]
    random.Random(7).shuffle(shuffled)
    for index in range(3):
        one = await shard_items(expanded(lines), Shard(index, 3))
        other = await shard_items(expanded(shuffled), Shard(index, 3))
        assert Counter(map(item_key, one)) == Counter(map(item_key, other))


def test_the_hash_is_pinned() -> None:
    """The split must not change with the Python version or the machine (a shard resumed
    elsewhere must be the same shard): BLAKE2b of the target's fields, pinned here. The
    trixie CI job (Python 3.13, OpenSSL 3.5) runs this too."""
    target = Target("192.0.2.7:443 a.example", "192.0.2.7", 443, "a.example", "192.0.2.7")
    assert item_key(target) == 0x2E5F11BE1651AD15
    assert record_key("192.0.2.7:443 a.example", "192.0.2.7", 443, "a.example") == (
        item_key(target))
    assert [shard_of(target, n) for n in (2, 3, 8, 32)] == [1, 0, 5, 21]


@pytest.mark.parametrize(("text", "why"), [
    ("3", "INDEX/COUNT"), ("1/", "INDEX/COUNT"), ("-1/4", "INDEX/COUNT"),
    ("4/4", "index must be 0 to 3"), ("0/0", "count must be at least 1"), ("a/b", "INDEX"),
])
def test_bad_shards_say_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_shard(text)


# --- real processes -------------------------------------------------------------------------


def certscan(*args: str) -> list[str]:
    return [sys.executable, "-m", "scanner", *args]


async def run(args: list[str], *, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *certscan(*args), stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})})
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, err.decode()


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
async def test_n_processes_cover_the_list_exactly_once_and_merge_says_so(
        ca: trustme.CA, tmp_path: Path) -> None:
    async with tls_server(server_context(ca.issue_cert("live.shard.test"))) as live:
        dead = next_address()
        lines = _list(f"{live.host}:{live.port}", dead)
        listing = tmp_path / "targets.txt"
        listing.write_text("\n".join(lines) + "\n")
        flags = ["-p", ",".join(map(str, PORTS)), "--timeout", "2", "-q"]
        outs = [tmp_path / f"shard-{i}.jsonl" for i in range(3)]
        codes = await asyncio.gather(*(
            run(["scan", str(listing), "--shard", f"{i}/3", "-o", str(out), *flags])
            for i, out in enumerate(outs)))
        assert [code for code, _ in codes] == [0, 0, 0], codes
    got = Counter(record_key(r["target"], r["host"], r["port"], r["sni"])
                  for out in outs for r in records(out))
    assert got == Counter(item_key(item) for item in expanded(lines))
    for i, out in enumerate(outs):
        assert {json.dumps(r["shard"]) for r in records(out)} <= {
            json.dumps({"index": i, "count": 3})}
    live_records = [r for out in outs for r in records(out) if r["sni"] == "live.shard.test"]
    assert [r["status"] for r in live_records] == ["ok"]

    merged = tmp_path / "merged.jsonl"
    code, err = await run(["merge", *map(str, outs), "--targets", str(listing),
                           "-p", "443,8443", "-o", str(merged)])
    assert code == 0, err
    assert "every target exactly once" in err
    assert sorted(merged.read_text().splitlines()) == sorted(
        line for out in outs for line in out.read_text().splitlines())

    # Without one shard's file: missing, and named by shard; a file twice: twice.
    missing = tmp_path / "missing.jsonl"
    code, err = await run(["merge", str(outs[0]), str(outs[1]), str(outs[1]),
                           "--targets", str(listing), "-p", "443,8443",
                           "--missing", str(missing)])
    assert code == 3
    expected_missing = len(records(outs[2]))
    assert f"missing {expected_missing} targets (by shard: 2/3 {expected_missing})" in err
    assert f"{len(records(outs[1]))} records more than once" in err
    assert len(missing.read_text().splitlines()) == expected_missing


@pytest.mark.slow
async def test_a_killed_shard_resumed_finishes_its_part_exactly(tmp_path: Path) -> None:
    """Shard 1 of 2 (a Kubernetes pod: --shards 2 and JOB_COMPLETION_INDEX=1) is killed
    mid-way, as a node going away kills a pod, then run again with --resume."""
    async with raw_server(silent) as quiet:
        host = quiet.host
        lines = [f"{host}:{quiet.port} n{i}.shard.test" for i in range(24)]
        listing = tmp_path / "targets.txt"
        listing.write_text("\n".join(lines) + "\n")
        out = tmp_path / "shard-1.jsonl"
        pod = {"JOB_COMPLETION_INDEX": "1"}
        args = ["scan", str(listing), "--shards", "2", "-o", str(out), "-q", "-w", "1",
                "-c", "2", "--timeout", "0.5", "--resume"]
        process = await asyncio.create_subprocess_exec(
            *certscan(*args), env={**os.environ, **pod})
        for _ in range(200):  # until some records are written
            await asyncio.sleep(0.05)
            if out.exists() and len(out.read_text().splitlines()) >= 2:
                break
        process.send_signal(signal.SIGKILL)
        await process.wait()
        before = len(out.read_text().splitlines())
        code, err = await run(args, env=pod)
        assert code == 0, err
    mine = [item for item in expanded(lines) if shard_of(item, 2) == 1]
    assert 0 < before < len(mine)
    got = records(out)
    assert Counter(record_key(r["target"], r["host"], r["port"], r["sni"]) for r in got) == (
        Counter(item_key(item) for item in mine))
    assert all(r["shard"] == {"index": 1, "count": 2} for r in got)
    assert {r["error"]["type"] for r in got} == {"timeout"}


@pytest.mark.slow
@pytest.mark.parametrize(("args", "env", "words"), [
    (["--shards", "4"], {}, "JOB_COMPLETION_INDEX is not set"),
    (["--shards", "4"], {"JOB_COMPLETION_INDEX": "4"}, "index must be 0 to 3"),
    (["--shards", "4"], {"JOB_COMPLETION_INDEX": "x"}, "JOB_COMPLETION_INDEX is 'x'"),
    (["--shard", "1/2", "--shards", "2"], {}, "not both"),
    (["--shard", "2"], {}, "INDEX/COUNT"),
])
async def test_a_bad_shard_is_a_usage_error_a_scheduler_does_not_retry(
        args: list[str], env: dict[str, str], words: str) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "JOB_COMPLETION_INDEX"}
    process = await asyncio.create_subprocess_exec(
        *certscan("scan", "-t", "127.0.0.1:9", *args), stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL, env={**environment, **env})
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert words in err.decode()


@pytest.mark.slow
async def test_the_summary_can_be_one_json_line_for_a_scheduler(tmp_path: Path) -> None:
    code, err = await run(["scan", "-t", f"{next_address()}:9", "--shard", "0/1", "-q",
                           "--summary", "json", "-o", str(tmp_path / "out.jsonl")])
    assert code == 0
    (line,) = err.splitlines()
    summary = json.loads(line)  # the line itself: no "certscan: " before it
    assert summary["event"] == "summary" and summary["exit"] == 0
    assert summary["records"] == 1 and summary["errors_by_type"] == {"refused": 1}
    assert summary["shard"] == {"index": 0, "count": 1} and summary["stopped_by"] is None


def test_merge_under_all_addresses_wants_each_name_once_per_address(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--all-addresses: a name has one record per address; a name with none is missing,
    an address twice is twice."""
    from scanner.cli import main

    listing = tmp_path / "targets.txt"
    listing.write_text("www.shard.test\nother.shard.test\n")

    def record(host: str, ip: str) -> str:
        return json.dumps({"target": host, "host": host, "port": 443, "ip": ip, "sni": host,
                           "status": "ok", "error": None, "certificate": None, "chain": []})

    good = tmp_path / "good.jsonl"
    good.write_text("\n".join([record("www.shard.test", "192.0.2.1"),
                               record("www.shard.test", "2001:db8::1"),
                               record("other.shard.test", "192.0.2.2")]) + "\n")
    assert main(["merge", str(good), "--targets", str(listing), "--all-addresses"]) == 0
    assert "every target exactly once" in capsys.readouterr().err

    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([record("www.shard.test", "192.0.2.1"),
                              record("www.shard.test", "192.0.2.1")]) + "\n")
    assert main(["merge", str(bad), "--targets", str(listing), "--all-addresses"]) == 3
    err = capsys.readouterr().err
    assert "missing 1 targets" in err and "1 records more than once" in err


def test_merge_names_records_from_elsewhere_and_lines_that_are_not_records(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scanner.cli import main

    listing = tmp_path / "targets.txt"
    listing.write_text("192.0.2.1:443\n")
    shard = tmp_path / "shard.jsonl"
    rows = [{"target": t, "host": h, "port": 443, "ip": h, "sni": None, "status": "ok",
             "error": None, "certificate": None, "chain": []}
            for t, h in (("192.0.2.1:443", "192.0.2.1"), ("192.0.2.9:443", "192.0.2.9"))]
    shard.write_text("\n".join(map(json.dumps, rows)) + "\nnot json\n")
    merged = tmp_path / "merged.jsonl"
    assert main(["merge", str(shard), "--targets", str(listing), "-o", str(merged)]) == 3
    err = capsys.readouterr().err
    assert "1 records for targets not in the list: 192.0.2.9:443" in err
    assert "not a record" in err
    assert [json.loads(line)["target"] for line in merged.read_text().splitlines()] == [
        "192.0.2.1:443", "192.0.2.9:443"]  # kept: what the shards did is never lost
