"""Does memory stay flat in the length of the target list?

Scans 127.64.0.0/18 (16,384 targets) and then 127.64.0.0/14 (262,144 targets, 16 times as
many) with the same concurrency, and compares the scanner's peak memory: the peak of the
Pss summed over certscan's whole process tree (its forked workers share pages with it;
measure.py explains why Pss), and ru_maxrss of its largest single process (os.wait4).
Nothing listens on 127.64.x.x, so every target is a quick "refused" and the run measures
the scanner's own bookkeeping: input streaming, queues, records.
Goal (memory flat in the list's length: docs/architecture.md, "The engine"): the larger
scan's peak within 1.25x of the smaller one's.

    python bench/scale.py                      # both blocks, ~2-3 minutes
    python bench/scale.py --blocks /18 /16     # other sizes
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import TreeRssSampler  # noqa: E402 - a sibling script, not a package

BASE = "127.64.0.0"
PORT = 443


def check_refused(block: ipaddress.IPv4Network, samples: int = 8) -> float:
    """Connect to a few addresses of the block: each must refuse, and quickly. Returns the
    slowest refusal in ms. A listener on 0.0.0.0:443 or on one of these addresses would
    make the benchmark measure something else."""
    step = max(block.num_addresses // samples, 1)
    slowest = 0.0
    for index in range(0, block.num_addresses, step):
        address = str(block[index])
        with socket.socket() as sock:
            sock.settimeout(2)
            started = time.perf_counter()
            code = sock.connect_ex((address, PORT))
            slowest = max(slowest, (time.perf_counter() - started) * 1000)
        if code != errno.ECONNREFUSED:
            raise SystemExit(f"{address}:{PORT} does not refuse ({os.strerror(code)}); "
                             "something listens there, pick another block")
    return slowest


def scan(block: ipaddress.IPv4Network, args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable, "-m", "scanner", "scan", "-t", str(block), "-o", "/dev/null",
        "--quiet", "--timeout", str(args.timeout), "--concurrency", str(args.concurrency),
    ]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT)
    sampler = TreeRssSampler([child.pid])
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    sampler.stop()
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if child.returncode != 0:
        raise SystemExit(f"certscan exited with {child.returncode} scanning {block}")
    return {
        "targets": block.num_addresses,
        "rss_mb": usage.ru_maxrss / 1024,  # Linux reports kilobytes
        "pss_mb": sampler.peak_pss / 2**20,
        "wall": wall,
        "rate": block.num_addresses / wall,
        "cpu": usage.ru_utime + usage.ru_stime,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", nargs=2, default=["/18", "/14"], metavar="/N",
                        help=f"prefix lengths under {BASE} (default /18 /14)")
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=None,
                        help="certscan --workers (default: certscan's own, one per core)")
    args = parser.parse_args(argv)
    blocks = [ipaddress.IPv4Network(BASE + suffix) for suffix in args.blocks]

    slowest = check_refused(blocks[-1])
    print(f"127.64.x.x:{PORT} refuses (slowest of the samples: {slowest:.2f} ms); "
          f"--concurrency {args.concurrency} --timeout {args.timeout}\n")
    print(f"{'block':18} {'targets':>9} {'tree Pss':>10} {'max RSS':>10} {'wall':>8} "
          f"{'targets/s':>10} {'CPU s':>7}")
    results = []
    for block in blocks:
        r = scan(block, args)
        results.append(r)
        print(f"{block!s:18} {r['targets']:>9,.0f} {r['pss_mb']:>7.1f} MB {r['rss_mb']:>7.1f} MB "
              f"{r['wall']:>6.1f} s {r['rate']:>10,.0f} {r['cpu']:>7.1f}", flush=True)
    for key, label in (("pss_mb", "tree Pss"), ("rss_mb", "largest process RSS")):
        ratio = results[1][key] / results[0][key]
        verdict = "ok" if ratio <= 1.25 else "over the 1.25 goal"
        print(f"peak {label} ratio {blocks[1]} / {blocks[0]}: {ratio:.2f} ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
