"""Scale and resilience: hostile servers, signals, kill -9 and --resume, fd limits, retries."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import ssl
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trustme

import scanner
from schema import checked
from servers import (
    endless,
    free_port,
    next_address,
    raw_server,
    server_context,
    silent,
    tls_server,
    trickle,
)

CERTSCAN = str(Path(sys.executable).parent / "certscan")


async def scan_all(lines: list[str], **options: Any) -> list[dict[str, Any]]:
    return [checked(record) async for record in scanner.scan(lines, **options)]


@pytest.mark.parametrize(
    "behaviour",
    [silent, trickle(0.1), endless],
    ids=["silent", "one-byte-per-100ms", "endless-data"],
)
async def test_hostile_servers_cost_their_deadline_and_no_more(behaviour: Any) -> None:
    async with raw_server(behaviour) as server:
        started = time.monotonic()
        (record,) = await scan_all([server.target], timeout=0.6)
        elapsed = time.monotonic() - started
    assert record["status"] == "error"
    assert record["error"]["type"] in ("timeout", "not_tls", "tls_error")
    # Not a speed goal: a hang would show up as minutes, not as a fraction of a second.
    assert elapsed < 5


async def test_a_stall_mid_handshake_times_out(ca: trustme.CA) -> None:
    """A real TLS server behind a relay that forwards the server's first flight only in
    part, then goes quiet: the client is left mid-handshake."""
    async with tls_server(server_context(ca.issue_cert("stall.test"))) as real:

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(real.host, real.port)
            try:
                up_writer.write(await reader.read(65536))  # the ClientHello
                first = await up_reader.read(65536)
                writer.write(first[: len(first) // 2])  # half the ServerHello flight
                await writer.drain()
                await asyncio.sleep(3600)
            finally:
                up_writer.transport.abort()

        async with raw_server(relay) as front:
            (record,) = await scan_all([front.target], timeout=0.6)
    assert (record["error"]["type"], record["error"]["stage"]) == ("timeout", "handshake")


async def test_a_300kb_chain_gives_one_record(ca: trustme.CA, tmp_path: Path) -> None:
    leaf = ca.issue_cert("big.test", *[f"n{i:05d}.big.test" for i in range(18000)])
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    assert len(der) > 300_000
    async with tls_server(server_context(leaf)) as server:
        (record,) = await scan_all([server.target], timeout=3)
    # OpenSSL's client refuses certificate messages over 100 KiB; the record says so.
    if record["status"] == "error":
        assert record["error"]["type"] == "tls_error"
        assert "EXCESSIVE_MESSAGE_SIZE" in record["error"]["message"]
    else:
        assert len(record["certificate"]["san"]["dns"]) == 18001


async def test_retries_reach_a_server_that_comes_up_late(ca: trustme.CA) -> None:
    host = next_address()
    port = free_port(host)
    ctx = server_context(ca.issue_cert("late.test"))

    async def start_late() -> asyncio.Server:
        await asyncio.sleep(0.2)
        return await asyncio.start_server(lambda r, w: w.close(), host, port, ssl=ctx)

    starter = asyncio.create_task(start_late())
    (without,) = await scan_all([f"{host}:{port}"], timeout=2)
    (record,) = await scan_all([f"{host}:{port}"], timeout=2, retries=3)
    (await starter).close()
    assert without["error"]["type"] == "refused"
    assert record["status"] == "ok"


async def test_rate_spreads_new_connections(ca: trustme.CA) -> None:
    async with tls_server(server_context(ca.issue_cert("rate.test"))) as server:
        started = time.monotonic()
        records = await scan_all([server.target] * 8, rate=20, concurrency=8)
        elapsed = time.monotonic() - started
    assert all(r["status"] == "ok" for r in records)
    assert elapsed >= 7 / 20 * 0.9  # 8 connections at 20/s need at least 0.35 s


@pytest.mark.slow  # ~2 s
async def test_busy_scanner_does_not_time_out_servers_that_answer(ca: trustme.CA) -> None:
    """Far more targets in flight than the CPU can handshake at once: every one that
    answers in time must be ok, none timed out by our own queueing."""
    leaf = ca.issue_cert("busy.test")
    async with tls_server(server_context(leaf)) as a, tls_server(server_context(leaf)) as b:
        records = await scan_all([a.target, b.target] * 300, concurrency=600, timeout=5)
    assert Counter(r["status"] for r in records) == {"ok": 600}


def _records(path: Path) -> list[dict[str, Any]]:
    return [checked(json.loads(line)) for line in path.read_text().splitlines()]


async def _start(args: list[str], **kwargs: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        CERTSCAN, *args, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, **kwargs,
    )


def _lines_in(path: str) -> int:
    try:
        with open(path, "rb") as stream:
            return stream.read().count(b"\n")
    except FileNotFoundError:
        return 0


async def _wait_for_lines(path: Path, count: int) -> None:
    """Poll the output of another process (no event to wait on across processes)."""
    async with asyncio.timeout(20):
        while await asyncio.to_thread(_lines_in, str(path)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.mark.slow  # a subprocess per case
@pytest.mark.parametrize(("signum", "workers"), [
    (signal.SIGTERM, "1"), (signal.SIGINT, "1"), (signal.SIGTERM, "2"), (signal.SIGINT, "2"),
])
async def test_a_signal_stops_cleanly_and_resume_finishes(
    ca: trustme.CA, tmp_path: Path, signum: int, workers: str
) -> None:
    out = tmp_path / "out.jsonl"
    targets = tmp_path / "targets.txt"
    async with tls_server(server_context(ca.issue_cert("sig.test"))) as good, \
            raw_server(silent) as quiet:
        lines = [good.target] * 20 + [quiet.target] * 30 + ["bad..line"]
        targets.write_text("\n".join(lines) + "\n")
        process = await _start([
            "scan", str(targets), "-o", str(out), "--timeout", "60", "--concurrency", "10",
            "--workers", workers,
        ])
        await _wait_for_lines(out, 5)
        stopped_at = time.monotonic()
        process.send_signal(signum)
        async with asyncio.timeout(10):
            _, stderr = await process.communicate()
        stop_seconds = time.monotonic() - stopped_at
        assert process.returncode == 128 + signum
        assert stop_seconds < 5  # finish or drop in-flight within the 2 s grace
        assert b"stopping" in stderr
        assert out.read_bytes().endswith(b"\n")
        first = _records(out)  # every line whole and valid JSON
        assert 5 <= len(first) < len(lines)

        process = await _start([
            "scan", str(targets), "-o", str(out), "--timeout", "0.3", "--resume",
            "--concurrency", "50",
        ])
        async with asyncio.timeout(20):
            await process.communicate()
        assert process.returncode == 0
    final = _records(out)
    assert Counter(r["target"] for r in final) == Counter(lines)


@pytest.mark.slow  # subprocesses
async def test_resume_after_kill_9_repairs_a_torn_line(ca: trustme.CA, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    targets = tmp_path / "targets.txt"
    async with tls_server(server_context(ca.issue_cert("kill.test"))) as good, \
            raw_server(silent) as quiet:
        lines = [f"{good.target}"] * 30 + [quiet.target] * 20
        targets.write_text("\n".join(lines) + "\n")
        process = await _start([
            "scan", str(targets), "-o", str(out), "--timeout", "60", "-c", "25", "-w", "2",
        ])
        await _wait_for_lines(out, 10)
        process.kill()
        await process.communicate()
        with out.open("ab") as stream:  # what a crash inside write(2) can leave behind
            stream.write(b'{"schema_version":1,"target":"torn')
        process = await _start([
            "scan", str(targets), "-o", str(out), "--timeout", "0.3", "--resume", "-c", "50",
        ])
        async with asyncio.timeout(20):
            await process.communicate()
    final = _records(out)
    assert Counter(r["target"] for r in final) == Counter(lines)


@pytest.mark.slow  # a subprocess
async def test_concurrency_is_clamped_to_the_fd_limit(ca: trustme.CA, tmp_path: Path) -> None:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    async with tls_server(server_context(ca.issue_cert("fd.test"))) as server:
        process = await asyncio.create_subprocess_exec(
            CERTSCAN, "scan", "-t", server.target, "-c", "5000", "-o", str(tmp_path / "o"),
            stderr=asyncio.subprocess.PIPE, preexec_fn=low_limit,
        )
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
    assert process.returncode == 0
    assert "--concurrency lowered to 192" in stderr.decode()
    assert _records(tmp_path / "o")[0]["status"] == "ok"


def test_the_soft_fd_limit_is_raised_toward_the_hard_one() -> None:
    from scanner.runtime import raise_nofile_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        note = raise_nofile_limit(1000)
        assert note.clamped_to is None
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 1064
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_fds_do_not_leak_across_failures() -> None:
    before = len(os.listdir("/proc/self/fd"))
    async with raw_server(silent) as quiet:
        host = next_address()
        lines = [quiet.target, f"{host}:{free_port(host)}"] * 50
        await scan_all(lines, timeout=0.2, concurrency=100)
    await asyncio.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) <= before + 3


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as stream:
        return [int(child) for child in stream.read().split()]


@pytest.mark.slow  # a subprocess and its workers
async def test_a_dead_worker_costs_its_targets_an_internal_record(
    ca: trustme.CA, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    targets = tmp_path / "targets.txt"
    async with tls_server(server_context(ca.issue_cert("w.test"))) as good, \
            raw_server(silent) as quiet:
        lines = [good.target] * 10 + [quiet.target] * 20
        targets.write_text("\n".join(lines) + "\n")
        process = await _start([
            "scan", str(targets), "-o", str(out), "--timeout", "3", "--workers", "3",
        ])
        await _wait_for_lines(out, 10)  # the good ones are done; 20 silent in flight
        workers = _children(process.pid)  # the parent is the first of the 3 loops
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        async with asyncio.timeout(20):
            await process.communicate()
    assert process.returncode == 0
    final = _records(out)
    assert Counter(r["target"] for r in final) == Counter(lines)
    internal = [r for r in final if r["error"] and r["error"]["type"] == "internal"]
    assert internal, "the killed worker's targets must still get their records"
    assert all("worker process" in r["error"]["message"] for r in internal)
    assert all(r["target"] == quiet.target for r in internal)


@pytest.mark.slow  # a subprocess and its workers
async def test_a_dead_worker_gets_no_more_targets_and_the_scan_finishes(
    ca: trustme.CA, tmp_path: Path
) -> None:
    """Far more targets than are in flight: after a worker dies, the rest are dealt to the
    lanes still alive, and every target still gets exactly one record."""
    out = tmp_path / "out.jsonl"
    targets = tmp_path / "targets.txt"
    async with tls_server(server_context(ca.issue_cert("w2.test"))) as good:
        lines = [good.target] * 1500
        targets.write_text("\n".join(lines) + "\n")
        process = await _start([
            "scan", str(targets), "-o", str(out), "-c", "20", "--workers", "2",
        ])
        await _wait_for_lines(out, 100)
        (worker,) = _children(process.pid)
        os.kill(worker, signal.SIGKILL)
        async with asyncio.timeout(30):
            await process.communicate()
    assert process.returncode == 0
    final = _records(out)
    assert Counter(r["target"] for r in final) == Counter(lines)
    by_status = Counter((r["error"] or {}).get("type", "ok") for r in final)
    assert set(by_status) <= {"ok", "internal"}
    assert by_status["internal"] <= 20  # at most what was in flight in the dead lane
