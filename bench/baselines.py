"""Baselines: the simplest programs that fetch a certificate from every target.

    python bench/baselines.py threads TARGETS --concurrency 100 --timeout 5 [--out FILE]
    python bench/baselines.py asyncio TARGETS --loop uvloop --close abort ...

Each reads `host:port` lines, connects to each target once, and does nothing else: no
verification, no parsing, no records. `--out` gets one `target<TAB>status` line per target
(status is `ok` or an error class: timeout, refused, reset, tls, other), and a JSON summary
goes to stdout.

- threads: ThreadPoolExecutor(concurrency) around `ssl.get_server_certificate(addr,
  timeout=...)`, what the stdlib offers for one host. Its timeout is per socket operation.
- asyncio: `asyncio.open_connection(host, port, ssl=ctx)` with a non-verifying context,
  `concurrency` workers over a shared queue, `getpeercert(True)`, then either
  `close()` + `await wait_closed()` (`--close wait`) or `transport.abort()` (`--close abort`),
  all under one `asyncio.timeout` per target; `--loop asyncio|uvloop`.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def read_targets(path: str) -> list[tuple[str, int]]:
    targets: list[tuple[str, int]] = []
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            host, _, port = line.rpartition(":")
            targets.append((host, int(port)))
    return targets


def classify(exc: BaseException) -> str:
    """A coarse error class, enough to tell timeouts from refusals in regime B."""
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
        return "timeout"
    return "other"


def fetch_blocking(target: tuple[str, int], timeout: float) -> str:
    try:
        ssl.get_server_certificate(target, timeout=timeout)
    except Exception as exc:
        return classify(exc)
    return "ok"


def run_threads(targets: list[tuple[str, int]], concurrency: int, timeout: float) -> list[str]:
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda target: fetch_blocking(target, timeout), targets))


def client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the baselines only fetch; they judge nothing
    context.verify_mode = ssl.CERT_NONE
    return context


async def fetch_async(
    target: tuple[str, int], context: ssl.SSLContext, deadline_s: float, abort: bool
) -> str:
    host, port = target
    try:
        async with asyncio.timeout(deadline_s):
            _, writer = await asyncio.open_connection(host, port, ssl=context)
            try:
                sslobj = writer.get_extra_info("ssl_object")
                if sslobj is None or sslobj.getpeercert(True) is None:
                    return "tls"
            finally:
                if abort:
                    writer.transport.abort()
                else:
                    writer.close()
                    await writer.wait_closed()
    except Exception as exc:
        return classify(exc)
    return "ok"


async def run_async(
    targets: list[tuple[str, int]], concurrency: int, deadline_s: float, abort: bool
) -> list[str]:
    context = client_context()
    results = ["other"] * len(targets)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(targets)):
        queue.put_nowait(index)

    async def worker() -> None:
        while not queue.empty():
            index = queue.get_nowait()
            results[index] = await fetch_async(targets[index], context, deadline_s, abort)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(targets)))))
    return results


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def write_results(path: str | None, lines: Iterable[str]) -> None:
    if path:
        Path(path).write_text("".join(f"{line}\n" for line in lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["threads", "asyncio"])
    parser.add_argument("targets", help="file of host:port lines")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--close", choices=["wait", "abort"], default="wait")
    parser.add_argument("--out", help="per-target results file")
    args = parser.parse_args(argv)

    targets = read_targets(args.targets)
    started = time.perf_counter()
    if args.kind == "threads":
        results = run_threads(targets, args.concurrency, args.timeout)
    else:
        with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
            results = runner.run(
                run_async(targets, args.concurrency, args.timeout, args.close == "abort")
            )
    elapsed = time.perf_counter() - started
    write_results(
        args.out, (f"{host}:{port}\t{status}" for (host, port), status in zip(targets, results,
                                                                             strict=True))
    )
    summary = {"targets": len(targets), "elapsed_s": elapsed, "status": Counter(results)}
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
