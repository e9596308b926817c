"""Unattended nights: the promises a cron job needs, tried the way such a job meets them.

Process-level cases run the real `certscan` in a subprocess (closed standard descriptors,
an unread pipe, a FIFO, a full disk, an input that fails with EIO, signals); probe-level
cases scan real loopback servers. Every target in gives one record out, a stop always
works, a fatal error ends the scan at once with one line, and the output only ever holds
whole lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

import scanner
from schema import checked
from servers import (
    Running,
    free_port,
    next_address,
    raw_server,
    read_client_hello,
    server_context,
    silent,
    tls_server,
)

CERTSCAN = str(Path(sys.executable).parent / "certscan")

# Slow as a whole (`pytest -m "not slow"` leaves it out): most cases run certscan in a
# subprocess, and the slot-wait cases at the end wait out their deadlines.
pytestmark = pytest.mark.slow


def _records(data: bytes) -> list[dict[str, Any]]:
    assert not data or data.endswith(b"\n"), "the output ends in a torn line"
    return [checked(json.loads(line)) for line in data.decode().splitlines()]


async def _sh(script: str, *, seconds: float = 30) -> tuple[int, bytes, bytes]:
    """Run `script` under bash (for its redirections), with certscan as $CERTSCAN."""
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", script, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CERTSCAN": CERTSCAN}, start_new_session=True,
    )
    try:
        async with asyncio.timeout(seconds):
            out, err = await process.communicate()
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)  # bash and the certscan it started
        await process.communicate()
        raise AssertionError(f"hung: {script}") from None
    assert process.returncode is not None
    return process.returncode, out, err


@contextlib.asynccontextmanager
async def _good_server(ca: trustme.CA) -> AsyncIterator[Running]:
    async with tls_server(server_context(ca.issue_cert("night.test"))) as server:
        yield server


# -- a fatal error ends the whole scan promptly ---------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_target_list_failing_part_way_ends_the_scan(
    ca: trustme.CA, tmp_path: Path, workers: str
) -> None:
    """/proc/self/mem opens, and its first read fails with EIO: a list that breaks mid-way.
    With forked workers running, this used to leave the scan hanging for ever."""
    good = tmp_path / "good.txt"
    out = tmp_path / "out.jsonl"
    async with _good_server(ca) as server:
        good.write_text(f"{server.target}\n" * 20)
        code, _, stderr = await _sh(
            f"$CERTSCAN scan {good} /proc/self/mem -o {out} -w {workers} --timeout 5",
            seconds=20)
    assert code == 1, stderr
    lines = stderr.decode().splitlines()
    assert any("/proc/self/mem" in line and "error" in line for line in lines), stderr
    assert b"Traceback" not in stderr
    got = _records(out.read_bytes())  # whatever was written is whole
    assert all(r["status"] == "ok" for r in got)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_an_unusable_nameserver_is_a_usage_error(workers: str) -> None:
    code, _, stderr = await _sh(
        f"$CERTSCAN scan -t 127.0.0.1:1 --resolver aiodns --nameserver 999.1.1.1 -w {workers}")
    assert code == 2
    assert b"--nameserver" in stderr
    assert b"Traceback" not in stderr


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_stdin_named_but_closed_is_a_usage_error(tmp_path: Path, workers: str) -> None:
    code, _, stderr = await _sh(f"$CERTSCAN scan - -o {tmp_path / 'o'} -w {workers} 0<&-")
    assert code == 2
    assert b"standard input is closed" in stderr


# -- closed standard descriptors, as cron and daemons give -----------------------------------


@pytest.mark.parametrize("closing", [">&-", "2>&-", "0<&-", ">&- 2>&- 0<&-"])
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_closed_standard_descriptors_do_not_abort(
    ca: trustme.CA, tmp_path: Path, closing: str, workers: str
) -> None:
    out = tmp_path / "out.jsonl"
    async with _good_server(ca) as server:
        refused = f"{next_address()}:{free_port('127.0.0.1')}"
        code, _, stderr = await _sh(
            f"$CERTSCAN scan -t {server.target} -t {refused} -o {out} -w {workers} {closing}")
    assert code == 0, stderr
    assert b"Assertion" not in stderr
    assert Counter(r["status"] for r in _records(out.read_bytes())) == {"ok": 1, "error": 1}


async def test_records_to_a_closed_stdout_are_refused() -> None:
    code, _, stderr = await _sh("$CERTSCAN scan -t 127.0.0.1:1 >&-")
    assert code == 2
    assert b"standard output is closed" in stderr


# -- a consumer that stops reading ------------------------------------------------------------


async def _started(args: list[str], **kwargs: Any) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        CERTSCAN, *args, stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, **kwargs)


async def _stops_within(process: asyncio.subprocess.Process, seconds: float) -> int:
    """SIGTERM, then the exit status; fails if the process is still there after `seconds`."""
    process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(seconds):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError("SIGTERM did not stop the scan") from None
    assert process.returncode is not None
    return process.returncode


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_stdout_nobody_reads_does_not_block_a_stop(
    ca: trustme.CA, tmp_path: Path, workers: str
) -> None:
    read_end, write_end = os.pipe()  # a pipe we never read: 64 KiB and it is full
    targets = tmp_path / "targets.txt"
    async with _good_server(ca) as server:
        targets.write_text(f"{server.target}\n" * 400)  # ~1 MB of records
        try:
            process = await _started(["scan", str(targets), "-w", workers, "-c", "50"],
                                     stdout=write_end)
            os.close(write_end)
            await asyncio.sleep(1.5)  # long enough to fill the pipe and block a writer
            assert process.returncode is None
            code = await _stops_within(process, 6)  # 2 s grace, and a margin
        finally:
            os.close(read_end)
    assert code == 128 + signal.SIGTERM


async def test_a_fifo_with_no_reader_does_not_block_a_stop(tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    process = await _started(["scan", "-t", "127.0.0.1:1", "-o", str(fifo)],
                             stdout=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(1)
    assert process.returncode is None  # waiting for a reader, as a FIFO writer does
    assert await _stops_within(process, 6) == 128 + signal.SIGTERM


async def test_a_fifo_output_is_written_once_a_reader_comes(
    ca: trustme.CA, tmp_path: Path
) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    async with _good_server(ca) as server:
        process = await _started(["scan", "-t", server.target, "-o", str(fifo), "-q"],
                                 stdout=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(0.5)  # certscan waits in its open of the FIFO meanwhile
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # never blocks this test
        try:
            async with asyncio.timeout(10):
                await process.wait()
            data = os.read(reader, 1 << 20)  # one record: it fits the pipe
        finally:
            os.close(reader)
    assert process.returncode == 0
    assert [r["status"] for r in _records(data)] == ["ok"]


@pytest.mark.parametrize("quiet", ["", "-q"])
async def test_a_reader_that_has_had_enough_is_normal(
    ca: trustme.CA, tmp_path: Path, quiet: str
) -> None:
    targets = tmp_path / "targets.txt"
    async with _good_server(ca) as server:
        targets.write_text(f"{server.target}\n" * 300)
        _, stdout, stderr = await _sh(
            f"$CERTSCAN scan {targets} -c 20 {quiet} | head -1; "
            "echo ${PIPESTATUS[0]} >&2")
    assert len(_records(stdout)) == 1
    *messages, status = stderr.decode().splitlines()
    assert messages == []  # not a word: no "Broken pipe", no traceback, no summary
    assert int(status) == 128 + signal.SIGPIPE


# -- a full disk -------------------------------------------------------------------------------


async def test_a_full_device_is_a_fatal_error_naming_it(ca: trustme.CA) -> None:
    async with _good_server(ca) as server:
        code, _, stderr = await _sh(f"$CERTSCAN scan -t {server.target} -o /dev/full")
    assert code == 1
    assert b"/dev/full" in stderr
    assert b"No space left on device" in stderr
    assert b"Traceback" not in stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 64 KiB tmpfs: a disk that fills up part-way through a scan (needs root)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_disk_filling_up_leaves_whole_lines_only(
    ca: trustme.CA, tmp_path: Path, small_disk: Path, workers: str
) -> None:
    targets = tmp_path / "targets.txt"
    out = small_disk / "out.jsonl"
    async with _good_server(ca) as server:
        targets.write_text(f"{server.target}\n" * 200)  # ~500 KB of records for 64 KiB
        code, _, stderr = await _sh(f"$CERTSCAN scan {targets} -o {out} -w {workers} -c 20")
    assert code == 1
    assert str(out).encode() in stderr
    assert b"No space left on device" in stderr
    data = out.read_bytes()
    assert data.endswith(b"\n")
    assert 0 < len(_records(data)) < 200


# -- input and output paths ---------------------------------------------------------------------


async def test_a_byte_order_mark_does_not_cost_the_first_target(
    ca: trustme.CA, tmp_path: Path
) -> None:
    targets = tmp_path / "targets.txt"
    async with _good_server(ca) as server:
        targets.write_bytes(f"\ufeff{server.target}\n{server.target}\n".encode())
        code, stdout, stderr = await _sh(f"$CERTSCAN scan {targets} -q")
    assert code == 0, stderr
    assert [r["status"] for r in _records(stdout)] == ["ok", "ok"]


async def test_a_process_substitution_and_a_fifo_are_target_lists(
    ca: trustme.CA, tmp_path: Path
) -> None:
    fifo = tmp_path / "targets.fifo"
    os.mkfifo(fifo)
    async with _good_server(ca) as server:
        code, stdout, stderr = await _sh(
            f"(echo {server.target} > {fifo}) & "
            f"$CERTSCAN scan <(echo {server.target}) {fifo} -q; wait")
    assert code == 0, stderr
    assert [r["status"] for r in _records(stdout)] == ["ok", "ok"]


@pytest.mark.parametrize(("path", "message"), [
    ("{tmp}", "is a directory"),
    ("{tmp}/missing", "no such file"),
])
async def test_a_bad_target_list_path_says_what_it_is(
    tmp_path: Path, path: str, message: str
) -> None:
    code, _, stderr = await _sh(f"$CERTSCAN scan {path.format(tmp=tmp_path)}")
    assert code == 2
    assert message.encode() in stderr


@pytest.mark.parametrize(("path", "message"), [
    ("{tmp}/missing/out.jsonl", "no such file"),
    ("{tmp}", "is a directory"),
])
async def test_a_bad_output_is_a_usage_error_before_the_scan(
    tmp_path: Path, path: str, message: str
) -> None:
    code, _, stderr = await _sh(f"$CERTSCAN scan -t 127.0.0.1:1 -o {path.format(tmp=tmp_path)}")
    assert code == 2
    text = stderr.decode()
    assert "-o" in text
    assert message in text.lower()
    assert "records in" not in text  # no summary: nothing ran


# -- --rate is the whole scan's ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def _counting_server() -> AsyncIterator[tuple[Running, list[float]]]:
    """A TCP server that notes when each connection arrives, then says nothing."""
    times: list[float] = []

    async def note(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        times.append(time.monotonic())
        await silent(reader, writer)

    async with raw_server(note) as server:
        yield server, times


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_rate_is_the_total_whatever_the_workers(tmp_path: Path, workers: str) -> None:
    async with _counting_server() as (server, times):
        targets = " ".join(f"-t {server.target}" for _ in range(30))
        code, _, stderr = await _sh(
            f"$CERTSCAN scan {targets} --rate 20 -w {workers} -c 40 --timeout 0.2 -q "
            f"-o {tmp_path / 'o'}")
    assert code == 0, stderr
    assert len(times) == 30
    # 30 connections at 20/s in all: 29/20 s from the first to the last. Were the rate each
    # loop's, two loops would take half that; the margin is for a loop that starts late (a
    # busy machine delays a lane's first connections, never its last).
    assert max(times) - min(times) >= 29 / 20 * 0.75


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_stop_under_rate_opens_no_new_connection(tmp_path: Path, workers: str) -> None:
    async with _counting_server() as (server, times):
        process = await _started(
            ["scan", "--rate", "10", "-c", "100", "--timeout", "30", "-w", workers,
             "-o", str(tmp_path / "o"), *(f"-t{server.target}" for _ in range(100))],
            stdout=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(1.5)
        stopped = time.monotonic()
        code = await _stops_within(process, 6)
        late = [t for t in times if t > stopped + 0.1]
    assert code == 128 + signal.SIGTERM
    assert late == []
    assert 5 <= len(times) <= 25


# -- probes waiting for a handshake slot ---------------------------------------------------------


def _then_close(answer: bytes) -> Any:
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_client_hello(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()  # the answer, then a FIN at once

    return behaviour


async def test_a_server_that_answers_and_closes_while_we_wait_is_read_for_what_it_said(
) -> None:
    """With one handshake slot, nearly every probe waits for it; the servers' alert or HTTP
    page arrives, and the connection closes, meanwhile. The answer is what they said."""
    fatal_alert = bytes([21, 3, 3, 0, 2, 2, 40])  # handshake_failure
    http = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    async with contextlib.AsyncExitStack() as stack:
        alerts = [await stack.enter_async_context(raw_server(_then_close(fatal_alert)))
                  for _ in range(50)]
        pages = [await stack.enter_async_context(raw_server(_then_close(http)))
                 for _ in range(50)]
        records = [checked(r) async for r in scanner.scan(
            [s.target for s in alerts + pages], handshakes=1, concurrency=100, timeout=5)]
    by_target = {r["target"]: r["error"]["type"] for r in records}
    assert Counter(by_target[s.target] for s in alerts) == {"tls_alert": 50}
    assert Counter(by_target[s.target] for s in pages) == {"not_tls": 50}


def _stall_after(prefix: bytes) -> Any:
    """Answer with the start of a handshake record, then nothing: holds a slot to its end."""
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_client_hello(reader)
        writer.write(prefix)
        await writer.drain()
        await asyncio.sleep(3600)

    return behaviour


async def _endless_later(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_client_hello(reader)
    await asyncio.sleep(0.3)  # after the staller has taken the one slot
    block = b"\x16\x03\x03\x40\x00" + b"\x02" * 16384
    while True:
        writer.write(block)
        await writer.drain()


async def test_a_waiting_probe_does_not_buffer_endless_data() -> None:
    stall = _stall_after(b"\x16\x03\x03\x00\x40\x02")
    async with raw_server(stall) as staller, raw_server(_endless_later) as flood:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        records = [r async for r in scanner.scan(
            [staller.target, flood.target], handshakes=1, concurrency=2, timeout=1.5)]
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(records) == 2
    assert grown_mb < 64, f"grew {grown_mb:.0f} MB while waiting for a slot"


async def test_no_target_waits_for_a_slot_past_its_bound() -> None:
    """Five servers that each hold the one slot until the deadline: the last ones in the
    queue would wait 4 s for it. A target takes at most twice its timeout."""
    stall = _stall_after(b"\x16\x03\x03\x00\x40\x02")
    async with contextlib.AsyncExitStack() as stack:
        stallers = [await stack.enter_async_context(raw_server(stall)) for _ in range(5)]
        started = time.monotonic()
        records = [checked(r) async for r in scanner.scan(
            [s.target for s in stallers], handshakes=1, concurrency=5, timeout=1)]
        wall = time.monotonic() - started
    assert len(records) == 5
    assert [r["error"]["type"] for r in records] == ["timeout"] * 5, [r["error"] for r in records]
    assert max(r["timing_ms"]["total"] for r in records) <= 2 * 1000 + 300
    assert wall < 2 * 1 + 1
    assert any("no handshake slot" in r["error"]["message"] for r in records)


@pytest.mark.parametrize("source", ["stdin", "fifo"])
async def test_a_target_list_that_never_sends_does_not_block_a_stop(
    tmp_path: Path, source: str
) -> None:
    # A producer that opened the list and then stalls, sending nothing and never closing:
    # the read waits on certscan's reader thread; a stop must not wait for it.
    read_end, write_end = os.pipe()
    fifo = tmp_path / "targets.fifo"
    os.mkfifo(fifo)
    holder = None
    try:
        if source == "stdin":
            process = await asyncio.create_subprocess_exec(
                CERTSCAN, "scan", "-", "-q", stdin=read_end,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        else:
            process = await _started(["scan", str(fifo), "-q"],
                                     stdout=asyncio.subprocess.DEVNULL)
            holder = os.open(fifo, os.O_WRONLY)  # the writer that never writes
        await asyncio.sleep(1)
        assert process.returncode is None  # waiting for lines, as it should
        assert await _stops_within(process, 6) == 128 + signal.SIGTERM
    finally:
        for fd in (read_end, write_end, holder):
            if fd is not None:
                os.close(fd)
