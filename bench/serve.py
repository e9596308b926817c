"""Keep the regime-A fleet up for profiling: `python bench/serve.py [--hosts 2000] [--legacy]`.

nginx serves every host of bench/run.py's fleet on 127.88.x.y:443 (same certificates, same
config: TLS 1.3, full handshakes only) until Ctrl-C or SIGTERM; the targets are written to
bench/out/serve/targets.txt and the CA to bench/out/fleet/ca.pem. With --legacy, regime L's
fleet instead: 127.90.x.y:443, five kinds of legacy server (host i is of kind i % 5, see
fleet.LEGACY_KINDS), the CA in bench/out/fleet-legacy/ca.pem. Run `bench/setup.sh` first
(nginx). Nothing else may listen on those addresses: not while bench/run is running.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import OUT, Nginx, build_fleet, build_legacy_fleet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--nginx-workers", default="auto")
    parser.add_argument("--legacy", action="store_true", help="regime L's legacy fleet")
    args = parser.parse_args()
    fleet = build_legacy_fleet(args.hosts) if args.legacy else build_fleet(args.hosts)
    nginx = Nginx(fleet, list(enumerate(fleet.hosts)), 443, workers=args.nginx_workers)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    nginx.start((fleet.hosts[0], 443))
    try:
        targets = OUT / "serve" / "targets.txt"
        targets.parent.mkdir(parents=True, exist_ok=True)
        targets.write_text("".join(f"{host}:443\n" for host in fleet.hosts))
        print(f"{args.hosts} hosts up; targets in {targets}, CA in {fleet.ca_pem}", flush=True)
        stop.wait()
    finally:
        nginx.stop()


if __name__ == "__main__":
    main()
