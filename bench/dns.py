"""How fast can a scan resolve names when the name server is slow?

10,000 distinct names behind a DNS server that answers every query after 50 ms
(tests/dnsserver.py, on 127.53.0.1:53), 500 lookups in flight, through:

  uvloop getaddrinfo      loop.getaddrinfo on uvloop (libuv's pool of 4 threads)
  asyncio executor        loop.getaddrinfo on the stdlib loop (its default executor)
  thread-64, thread-256   certscan's ThreadResolver with that many threads
  aiodns                  certscan's AiodnsResolver (c-ares getaddrinfo: A and AAAA)
  aiodns A only           c-ares asking for A records alone, for comparison

then end to end: `certscan scan` of 2,000 such names at concurrency 500 with a 3 s deadline.
The names point at 127.99.x.y, where nothing listens, so a record with error "refused"
means the name resolved in time; "timeout" at "resolve" means the lookup queue ate the
deadline.

getaddrinfo asks the name server in /etc/resolv.conf. The machine's file is left alone:
the benchmark re-runs itself in a private mount namespace (root, `unshare --mount`) with a
resolv.conf of its own bind-mounted over it. All traffic stays on loopback.

    sudo .venv/bin/python bench/dns.py                 # everything, ~2 minutes
    python bench/dns.py --budget 10 --skip-scan        # quicker
Each variant runs in its own process and stops after --budget seconds; the slow ones report
the rate they kept up until then.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_IP = "127.53.0.1"
ZONE = "bench.test"
IN_NAMESPACE = "CERTSCAN_BENCH_NAMESPACE"
VARIANTS = ("uvloop", "asyncio", "thread-64", "thread-256", "aiodns", "aiodns-a")
LABELS = {
    "uvloop": "uvloop loop.getaddrinfo (default)",
    "asyncio": "asyncio default executor",
    "thread-64": "ThreadResolver, 64 threads",
    "thread-256": "ThreadResolver, 256 threads",
    "aiodns": "AiodnsResolver (c-ares getaddrinfo)",
    "aiodns-a": "c-ares A query only (reference)",
}


def names(count: int, offset: int = 0) -> list[str]:
    # tests/dnsserver.py's numbered rule: h<N>.bench.test -> 127.99.<N // 256>.<N % 256>
    return [f"h{n}.{ZONE}" for n in range(offset, offset + count)]


# --- one variant, in its own process --------------------------------------------------------


def _lookup_function(variant: str) -> tuple[Callable[[str], Awaitable[object]], Callable[[], None]]:
    loop = asyncio.get_running_loop()
    if variant in ("uvloop", "asyncio"):

        async def plain(host: str) -> object:
            return await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)

        return plain, lambda: None
    if variant.startswith("thread-"):
        from scanner.resolve import ThreadResolver

        threads = ThreadResolver(int(variant.split("-")[1]))
        return threads.resolve, threads.close
    if variant == "aiodns":
        from scanner.resolve import AiodnsResolver

        cares = AiodnsResolver()
        return cares.resolve, cares.close
    import aiodns

    raw = aiodns.DNSResolver(loop=loop)

    async def a_only(host: str) -> object:
        return await raw.query_dns(host, "A")

    return a_only, lambda: None


async def _measure(
    variant: str, hosts: list[str], inflight: int, budget: float
) -> dict[str, object]:
    lookup, close = _lookup_function(variant)
    queue = iter(hosts)
    done = failed = 0
    errors: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    last = started
    deadline = started + budget

    async def worker() -> None:
        nonlocal done, failed, last
        for host in queue:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    await lookup(host)
            except TimeoutError:
                return  # out of budget; this one is not counted
            except OSError as exc:
                failed += 1
                errors[type(exc).__name__ + ": " + str(exc)[:60]] += 1
            done += 1
            last = time.perf_counter()

    cpu_before = _cpu_seconds()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    close()
    elapsed = max(last - started, 1e-9)
    return {
        "cpu": round(_cpu_seconds() - cpu_before, 1),
        "variant": variant,
        "done": done,
        "failed": failed,
        "seconds": round(elapsed, 2),
        "rate": round(done / elapsed, 1),
        "complete": done == len(hosts),
        "errors": dict(errors.most_common(3)),
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_variant(args: argparse.Namespace) -> int:
    hosts = names(args.names)
    coro = _measure(args.variant, hosts, args.inflight, args.budget)
    if args.variant == "asyncio":
        result = asyncio.run(coro)
    else:
        import uvloop

        result = uvloop.run(coro)
    print(json.dumps(result), flush=True)
    # Lookups still queued in uvloop's or the default executor's threads would hold the
    # process at exit for minutes: leave now.
    os._exit(0)


# --- the whole benchmark, inside the namespace -----------------------------------------------


def _check_nothing_listens(addresses: list[str], port: int) -> None:
    for ip in addresses:
        with socket.socket() as sock:
            sock.settimeout(1)
            started = time.perf_counter()
            code = sock.connect_ex((ip, port))
            took = (time.perf_counter() - started) * 1000
        if code != 111:  # ECONNREFUSED
            raise SystemExit(f"{ip}:{port} does not refuse (connect gave {os.strerror(code)})")
        if took > 50:
            print(f"  note: {ip}:{port} took {took:.0f} ms to refuse", file=sys.stderr)


def _scan(resolver: str, threads: int, count: int, workdir: Path) -> dict[str, object]:
    targets = workdir / f"targets-{count}.txt"
    targets.write_text("".join(f"{host}\n" for host in names(count, offset=20_000)))
    out = workdir / f"scan-{resolver}-{threads}.jsonl"
    command = [
        sys.executable, "-m", "scanner", "scan", str(targets), "-o", str(out),
        "--concurrency", "500", "--timeout", "3", "--quiet",
        "--resolver", resolver, "--resolver-threads", str(threads),
    ]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if child.returncode != 0:
        raise SystemExit(f"certscan exited with {child.returncode}")
    kinds: collections.Counter[str] = collections.Counter()
    resolve_ms: list[float] = []
    with out.open() as lines:
        for line in lines:
            record = json.loads(line)
            error = record.get("error") or {}
            kinds[f"{error.get('type', 'ok')}@{error.get('stage', '-')}"] += 1
            ms = (record.get("timing_ms") or {}).get("resolve")
            if ms is not None:
                resolve_ms.append(ms)
    resolve_ms.sort()

    def pct(p: float) -> float | None:
        return round(resolve_ms[int(p * (len(resolve_ms) - 1))]) if resolve_ms else None

    return {
        "kinds": dict(kinds.most_common()),
        "wall": round(wall, 1),
        "rss_mb": round(usage.ru_maxrss / 1024),
        "resolve_ms_p50": pct(0.5),
        "resolve_ms_p99": pct(0.99),
    }


def run_all(args: argparse.Namespace) -> int:
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "dnsserver.py"), "--listen", f"{SERVER_IP}:53",
         "--zone", ZONE, "--latency", str(args.latency)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        ready = server.stdout.readline()
        if "listening" not in ready:
            raise SystemExit("the DNS server did not start")
        print(f"name server answering in {args.latency * 1000:.0f} ms; {os.cpu_count()} CPUs")
        if args.variants:
            print(f"{args.names:,} names, {args.inflight} in flight, "
                  f"budget {args.budget:.0f} s per variant\n")
            print(f"{'resolver':40} {'names/s':>9} {'resolved':>17} {'failed':>7} {'CPU s':>6}")
        for variant in args.variants:
            child = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--names", str(args.names),
                 "--inflight", str(args.inflight), "--budget", str(args.budget)],
                capture_output=True, text=True, check=False, cwd=ROOT,
            )
            if child.returncode != 0:
                print(f"{LABELS[variant]:40} failed: {child.stderr.strip()[-300:]}")
                continue
            r = json.loads(child.stdout)
            resolved = f"{r['done']:,} in {r['seconds']:.1f} s"
            print(f"{LABELS[variant]:40} {r['rate']:>9,.0f} {resolved:>17} {r['failed']:>7} "
                  f"{r['cpu']:>6}"
                  + ("" if r["complete"] else "  (budget ran out)"))
            if r["errors"]:
                print(f"{'':40} errors: {r['errors']}")
        if args.skip_scan:
            return 0

        print(f"\ncertscan scan of {args.scan_names:,} names -> 127.99.x.y:443 (nothing "
              "listening), --concurrency 500 --timeout 3")
        _check_nothing_listens([f"127.99.{n >> 8}.{n & 255}" for n in (20_000, 20_777, 21_999)],
                               443)
        with tempfile.TemporaryDirectory(prefix="certscan-dns-") as tmp:
            for resolver, threads in (("thread", 64), ("thread", 256), ("aiodns", 64)):
                label = f"--resolver {resolver}" + (
                    f" --resolver-threads {threads}" if resolver == "thread" else "")
                s = _scan(resolver, threads, args.scan_names, Path(tmp))
                refused = s["kinds"].get("refused@connect", 0)  # type: ignore[attr-defined]
                print(f"  {label:40} resolved in time {refused:>5,} / {args.scan_names:,}   "
                      f"wall {s['wall']} s   resolve p50 {s['resolve_ms_p50']} ms "
                      f"p99 {s['resolve_ms_p99']} ms   peak RSS {s['rss_mb']} MB")
                print(f"  {'':40} {s['kinds']}")
    finally:
        server.terminate()
        assert server.stdout is not None
        summary = server.stdout.read().strip()
        _, _, usage = os.wait4(server.pid, 0)
        server.returncode = 0  # reaped above
        cpu = usage.ru_utime + usage.ru_stime
        print(f"\nDNS server: {summary}, {cpu:.1f} s CPU")
    return 0


def enter_namespace(argv: list[str]) -> int:
    """Re-run this script in a private mount namespace whose /etc/resolv.conf names our
    server; the machine's own file is never touched."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        raise SystemExit("bench/dns.py needs root and `unshare` (a private mount namespace, "
                         "and a DNS server on port 53)")
    with tempfile.TemporaryDirectory(prefix="certscan-resolv-") as tmp:
        resolv_conf = Path(tmp) / "resolv.conf"
        # glibc's defaults (5 s, 2 attempts); no search list, so each name is one lookup.
        resolv_conf.write_text(f"nameserver {SERVER_IP}\n")
        script = f'mount --bind {resolv_conf} /etc/resolv.conf && exec "$0" "$@"'
        env = {**os.environ, IN_NAMESPACE: "1"}
        return subprocess.run(
            ["unshare", "--mount", "sh", "-c", script, sys.executable, __file__, *argv],
            env=env, check=False,
        ).returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--inflight", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per variant")
    parser.add_argument("--scan-names", type=int, default=2_000)
    parser.add_argument("--skip-scan", action="store_true")
    parser.add_argument("--variants", nargs="*", choices=VARIANTS, default=list(VARIANTS),
                        help="resolvers to measure (none: only the scans)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if os.environ.get(IN_NAMESPACE) != "1":
        return enter_namespace(argv)
    if args.variant:
        return run_variant(args)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
