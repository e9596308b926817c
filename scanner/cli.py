"""`certscan scan ...`: arguments -> ScanConfig, then run. No scan logic lives here."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .config import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT, ConfigError, ScanConfig
from .progress import Progress
from .runtime import raise_nofile_limit, run_with_loop
from .sink import Output, repair_and_index, skip_done
from .targets import TargetError, parse_server_name, read_targets
from .verify import TrustStore
from .workers import LocalRun, Worker, WorkerRun, fork_workers, share_of

EXIT_OK, EXIT_FATAL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A flag or argument that cannot work; the message names it."""


def _ports(text: str) -> tuple[int, ...]:
    ports: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if "-" in part:
            low, _, high = part.partition("-")
            if not (low.isdigit() and high.isdigit()) or int(low) > int(high):
                raise argparse.ArgumentTypeError(f"invalid port range {part!r}")
            ports.extend(range(int(low), int(high) + 1))
        elif part.isdigit():
            ports.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"invalid port {part!r}")
    if not ports or any(not 1 <= p <= 65535 for p in ports):
        raise argparse.ArgumentTypeError(f"ports must be 1-65535, got {text!r}")
    return tuple(dict.fromkeys(ports))


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
        return value

    return parse


def _alpn(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certscan", description="Bulk TLS certificate scanner: one JSON line per target."
    )
    parser.add_argument("--version", action="version", version=f"certscan {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    scan = commands.add_parser(
        "scan",
        help="scan targets and write one JSON record per target",
        description="Scan targets from FILEs (- for stdin) and -t, one JSON line per target.",
    )
    scan.add_argument("files", nargs="*", metavar="FILE", help="target lists; - is stdin")
    scan.add_argument("-t", "--target", action="append", default=[], metavar="TARGET",
                      help="a target on the command line (repeatable)")
    scan.add_argument("-o", "--output", default="-", metavar="OUT",
                      help="where records go (default: - for stdout)")
    scan.add_argument("-p", "--ports", type=_ports, default=(443,), metavar="PORTS",
                      help="ports for targets that name none: 443,8443 or 8000-8010 "
                           "(default 443)")
    scan.add_argument("--sni", metavar="NAME",
                      help="server name for targets that name none (default: the host name; "
                           "none for IP addresses)")
    scan.add_argument("-c", "--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                      metavar="N", help=f"targets in flight (default {DEFAULT_CONCURRENCY})")
    scan.add_argument("--timeout", type=_positive(float), default=DEFAULT_TIMEOUT,
                      metavar="SECONDS",
                      help=f"deadline per target, all stages (default {DEFAULT_TIMEOUT:g})")
    scan.add_argument("--ca-bundle", metavar="PATH|DIR|system|certifi",
                      help="judge each chain against this trust store (default: no verdict)")
    scan.add_argument("--alpn", type=_alpn, default=("h2", "http/1.1"), metavar="LIST",
                      help="ALPN protocols to offer (default h2,http/1.1; '' for none)")
    scan.add_argument("--retries", type=int, default=0, metavar="N",
                      help="retries after a connect-stage failure, with backoff (default 0)")
    scan.add_argument("--rate", type=_positive(float), metavar="N",
                      help="at most N new connections per second (default: unlimited)")
    scan.add_argument("--resolver", choices=("thread", "aiodns"), default="thread",
                      help="thread: getaddrinfo on a wide pool (default); aiodns: c-ares")
    scan.add_argument("--resolver-threads", type=int, default=256, metavar="N",
                      help="threads for the thread resolver (default 256)")
    scan.add_argument("--nameserver", action="append", default=[], metavar="IP[:PORT]",
                      help="DNS server for --resolver aiodns (repeatable; default: the "
                           "system's)")
    scan.add_argument("--handshakes", type=int, metavar="N",
                      help="answered TLS handshakes worked through at once (default: "
                           "adapted to the measured CPU cost per handshake)")
    scan.add_argument("-w", "--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                      help="event loops, each its own process (this one and N-1 forked "
                           "workers), targets shared out among them (default: the number "
                           f"of cores, {os.cpu_count() or 1})")
    scan.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                      help="event loop (default auto: uvloop where installed)")
    scan.add_argument("--resume", action="store_true",
                      help="append to OUT, skipping targets it already has a record for")
    scan.add_argument("-q", "--quiet", action="store_true",
                      help="no progress or summary on stderr")
    return parser


def _config(args: argparse.Namespace) -> ScanConfig:
    sni = None
    if args.sni is not None:
        try:
            sni = parse_server_name(args.sni)
        except TargetError as exc:
            raise UsageError(f"--sni: {exc}") from None
    try:
        return ScanConfig(
            ports=args.ports,
            sni=sni,
            concurrency=args.concurrency,
            timeout=args.timeout,
            ca_bundle=args.ca_bundle,
            alpn=args.alpn,
            retries=args.retries,
            rate=args.rate,
            resolver=args.resolver,
            resolver_threads=args.resolver_threads,
            nameservers=tuple(args.nameserver),
            handshakes=args.handshakes,
            loop=args.loop,
        )
    except ConfigError as exc:
        flag = "--" + str(exc).split(":", 1)[0].replace("_", "-")
        raise UsageError(f"{flag}: {str(exc).split(':', 1)[1].strip()}") from None


def _inputs(args: argparse.Namespace) -> list[str]:
    if args.workers < 1:
        raise UsageError(f"--workers: must be at least 1, got {args.workers}")
    files: list[str] = list(args.files)
    if not files and not args.target:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no targets: give FILEs, - for stdin, or -t TARGET")
        files = ["-"]
    for path in files:
        if path != "-" and not os.path.isfile(path):
            raise UsageError(f"target list {path!r}: no such file")
    if files.count("-") > 1:
        raise UsageError("stdin (-) can be read only once")
    if args.resume and args.output == "-":
        raise UsageError("--resume needs -o FILE: it reads what that file already holds")
    return files


async def _scan(args: argparse.Namespace, config: ScanConfig, files: list[str],
                store: TrustStore | None, workers: list[Worker]) -> int:
    done = repair_and_index(args.output) if args.resume else None
    items = read_targets(files, args.target, ports=config.ports, sni=config.sni)
    if done:
        items = skip_done(items, done)
    run: LocalRun | WorkerRun = (
        WorkerRun(items, share_of(config, len(workers) + 1), workers, store) if workers
        else LocalRun(items, config, store)
    )
    progress = Progress(enabled=not args.quiet, stream=sys.stderr)
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received:  # a second signal: leave now; every line already written is whole
            os._exit(128 + signum)
        received.append(signum)
        progress.note(f"signal {signal.Signals(signum).name}: stopping, finishing in-flight")
        run.stop()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        with Output(args.output, append=args.resume) as out:
            async for batch in run.batches():
                out.write(b"".join(line.data for line in batch))
                for line in batch:
                    progress.count(line.status, line.error_type)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        progress.finish()
    return 128 + received[0] if received else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = _config(args)
        files = _inputs(args)
        store = TrustStore.load(config.ca_bundle) if config.ca_bundle else None
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"certscan: error: {exc}\n")
    except ValueError as exc:  # a trust store that cannot be loaded
        parser.exit(EXIT_USAGE, f"certscan: error: --ca-bundle: {exc}\n")
    limit_note = raise_nofile_limit(config.concurrency)
    if limit_note.clamped_to is not None:
        print(f"certscan: {limit_note.message}", file=sys.stderr)
        config = config.with_concurrency(limit_note.clamped_to)
    # Workers are forked now, before this process has an event loop or a thread; this
    # process's own loop is the first of the N.
    workers = fork_workers(args.workers - 1, share_of(config, args.workers), store)
    try:
        return run_with_loop(config.loop, _scan(args, config, files, store, workers))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"certscan: error: {exc}", file=sys.stderr)
        return EXIT_FATAL
