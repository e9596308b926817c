"""The command line end to end, through a real subprocess, against real servers.

Each case starts certscan (with its forked workers), so all but the first are marked slow;
the first stays in the fast subset (`pytest -m "not slow"`) and takes every module of a
command-line scan end to end: cli, lanes, wire, sink, progress, runtime."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme

from scanner.config import ConfigError, ScanConfig
from schema import checked
from servers import free_port, next_address, server_context, tls_server

CERTSCAN = str(Path(sys.executable).parent / "certscan")


async def run(*args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate(stdin or b"")
    assert process.returncode is not None
    return process.returncode, out, err


def records(data: bytes) -> list[dict[str, Any]]:
    return [checked(json.loads(line)) for line in data.decode().splitlines()]


async def test_file_in_file_out(ca: trustme.CA, tmp_path: Path) -> None:
    async with tls_server(server_context(ca.issue_cert("cli.test"))) as server:
        refused_host = next_address()
        targets = tmp_path / "targets.txt"
        targets.write_text(
            "# a comment\n"
            f"{server.target} cli.test\n"
            f"{refused_host}:{free_port(refused_host)}\n"
            "this is:not:valid\n"
        )
        out = tmp_path / "out.jsonl"
        code, stdout, stderr = await run(
            CERTSCAN, "scan", str(targets), "-o", str(out), "--timeout", "2"
        )
    assert code == 0, stderr
    assert stdout == b""  # records go only to the output
    got = records(out.read_bytes())
    assert len(got) == 3
    by_status = {(r["status"], (r["error"] or {}).get("type")) for r in got}
    assert by_status == {("ok", None), ("error", "refused"), ("error", "invalid_target")}
    bad = next(r for r in got if r["target"] == "this is:not:valid")
    assert f"{targets}:4:" in bad["error"]["message"]
    assert "3 records" in stderr.decode()  # the summary


@pytest.mark.slow
async def test_stdin_to_stdout_with_python_dash_m(ca: trustme.CA) -> None:
    async with tls_server(server_context(ca.issue_cert("stdin.test"))) as server:
        code, stdout, stderr = await run(
            sys.executable, "-m", "scanner", "scan", "-", "--quiet", "--timeout", "2",
            stdin=f"{server.target}\n{server.target} stdin.test\n".encode(),
        )
    assert code == 0, stderr
    assert stderr == b""  # --quiet
    got = records(stdout)
    assert [r["status"] for r in got] == ["ok", "ok"]
    assert sorted(str(r["sni"]) for r in got) == ["None", "stdin.test"]


@pytest.mark.slow
async def test_targets_on_the_command_line_and_ports(ca: trustme.CA) -> None:
    async with tls_server(server_context(ca.issue_cert("argv.test"))) as server:
        code, stdout, _ = await run(
            CERTSCAN, "scan", "-q", "-t", server.host, "--ports", f"{server.port}",
            "--sni", "argv.test",
        )
    assert code == 0
    (record,) = records(stdout)
    assert (record["status"], record["sni"], record["port"]) == ("ok", "argv.test", server.port)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scan", "-t", "x", "--concurrency", "0"], "--concurrency"),
        (["scan", "-t", "x", "--timeout", "-1"], "--timeout"),
        (["scan", "-t", "x", "--ports", "0"], "--ports"),
        (["scan", "/no/such/file"], "no such file"),
        (["scan", "-t", "x", "--ca-bundle", "/no/such/ca.pem"], "--ca-bundle"),
        (["scan", "-t", "x", "--sni", "bad name!"], "--sni"),
        (["scan", "-t", "x", "--resume"], "--resume needs -o"),
        (["frobnicate"], "invalid choice"),
    ],
)
async def test_usage_errors_exit_2_naming_the_flag(args: list[str], message: str) -> None:
    code, stdout, stderr = await run(CERTSCAN, *args)
    assert code == 2
    assert stdout == b""
    assert message in stderr.decode()


@pytest.mark.slow
async def test_progress_is_drawn_on_a_terminal(ca: trustme.CA, tmp_path: Path) -> None:
    """stderr a terminal: a live progress line, then the summary; records only in OUT."""
    controller, terminal = pty.openpty()
    try:
        async with tls_server(server_context(ca.issue_cert("tty.test"))) as server:
            process = await asyncio.create_subprocess_exec(
                CERTSCAN, "scan", "-o", str(tmp_path / "out.jsonl"), "--timeout", "2",
                *[arg for _ in range(300) for arg in ("-t", server.target)],
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=terminal,
            )
            async with asyncio.timeout(30):
                await process.wait()
        os.close(terminal)
        terminal = -1
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal side is closed
            while chunk := os.read(controller, 65536):
                shown += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert process.returncode == 0
    text = shown.decode()
    assert "\x1b[2K" in text  # the live line is redrawn in place
    assert "300 records in" in text and "ok 300" in text
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 300


@pytest.mark.slow
async def test_verify_policy_flag(tmp_path: Path) -> None:
    # The store holds only the intermediate: an anchor under "strict" (PARTIAL_CHAIN), not
    # under "default" (the root is missing).
    child = trustme.CA().create_child_ca()
    roots = tmp_path / "intermediate.pem"
    child.cert_pem.write_to_path(str(roots))
    async with tls_server(server_context(child.issue_cert("policy.test"))) as server:
        got: dict[str, dict[str, Any]] = {}
        for policy in ("default", "strict"):
            code, stdout, stderr = await run(
                CERTSCAN, "scan", "-q", "-t", f"{server.target} policy.test",
                "--ca-bundle", str(roots), "--verify-policy", policy,
            )
            assert code == 0, stderr
            (got[policy],) = records(stdout)
    assert got["default"]["validation"]["policy"] == "default"
    assert got["default"]["validation"]["reason"] == "untrusted_root"
    assert got["strict"]["validation"]["policy"] == "strict"
    assert got["strict"]["validation"]["trusted"] is True


@pytest.mark.slow
async def test_an_unknown_verify_policy_is_a_usage_error() -> None:
    code, stdout, stderr = await run(CERTSCAN, "scan", "-t", "x", "--verify-policy", "lenient")
    assert code == 2 and stdout == b""
    assert "--verify-policy" in stderr.decode()
    with pytest.raises(ConfigError, match=r"^verify_policy: "):
        ScanConfig(verify_policy="lenient")  # type: ignore[arg-type]
