"""The command line: `certscan scan ...` (arguments -> ScanConfig, then run) and the
inventory tools on result files (`diff`, `report`, `metrics`, `merge`: each in
scanner/inventory/, which adds its own subcommand). No scan logic lives here.

A scan imports only what a scan runs: the inventory tools are imported when the command
line names one (or asks for the list), and --fail-on's module when it is given. Every run
pays for what is imported at start-up (tests/test_startup.py holds the line)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import stat
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from . import __version__
from .config import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT,
    ConfigError,
    ScanConfig,
    parse_alpn,
    parse_ports,
)
from .engine import GRACE
from .hooks import UnsupportedPlatform
from .keys import parse_shard, select
from .lanes import Router, Worker, fork_workers, open_lanes, share_of
from .progress import Progress
from .resolve import every_address, make_resolver
from .runtime import os_reason, raise_nofile_limit, reserve_standard_fds, run_with_loop, say
from .sink import Output, OutputError, repair_and_index, skip_done
from .targets import InputError, TargetError, parse_server_name, read_targets
from .values import Shard
from .verify import TrustStore

if TYPE_CHECKING:
    from .inventory.alerts import FailOn

EXIT_OK, EXIT_FATAL, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # the reader went away: what `cat` would exit with


class UsageError(Exception):
    """A flag or argument that cannot work; the message names it."""


def _ports(text: str) -> tuple[int, ...]:
    try:
        return parse_ports(text)  # shared with ScanConfig, which takes the same string
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("ports: ")) from None


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
    return parse_alpn(text)


def build_parser(*, tools: bool = True) -> argparse.ArgumentParser:
    """The whole command line; without `tools`, `scan` alone (main() leaves the inventory
    tools out of a command line that starts with `scan`: it can never reach them)."""
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
    scan.add_argument("-p", "--ports", type=_ports, metavar="PORTS",
                      help="ports for targets that name none: 443,8443 or 8000-8010 "
                           "(default 443; with --starttls, that protocol's port)")
    scan.add_argument("--starttls", metavar="PROTO",
                      help="upgrade lines without a scheme with STARTTLS: smtp, imap, pop3, "
                           "ftp, ldap, postgres, mysql or xmpp (a line's own scheme, "
                           "smtp://host, wins)")
    scan.add_argument("--shard", metavar="I/N",
                      help="scan only shard I of N (0 <= I < N) of the expanded targets, by "
                           "a stable hash of each target: N processes with I = 0..N-1 cover "
                           "the list exactly once (`certscan merge` checks)")
    scan.add_argument("--shards", type=int, metavar="N",
                      help="as --shard I/N, I taken from $JOB_COMPLETION_INDEX (a Kubernetes "
                           "Indexed Job sets it)")
    scan.add_argument("--summary", choices=("text", "json"), default="text",
                      help="the summary on stderr at the end: a sentence (default), or one "
                           "JSON object for a scheduler's logs (even with -q)")
    scan.add_argument("--all-addresses", action="store_true",
                      help="one record per address a host name resolves to (A and AAAA), "
                           "instead of the first address that connects")
    scan.add_argument("--sni", metavar="NAME",
                      help="server name for targets that name none (default: the host name; "
                           "none for IP addresses)")
    scan.add_argument("-c", "--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                      metavar="N", help=f"targets in flight (default {DEFAULT_CONCURRENCY})")
    scan.add_argument("--timeout", type=_positive(float), default=DEFAULT_TIMEOUT,
                      metavar="SECONDS",
                      help=f"deadline of each attempt: resolve, connect and handshake (default "
                           f"{DEFAULT_TIMEOUT:g}); waiting for a CPU slot is bounded apart")
    scan.add_argument("--ca-bundle", metavar="PATH|DIR|system|certifi",
                      help="judge each chain against this trust store (default: no verdict)")
    scan.add_argument("--engine", choices=("auto", "openssl", "rustls"), default="auto",
                      help="TLS library for handshakes: auto (rustls where rtls is installed, "
                           "OpenSSL again for servers rustls cannot speak to; the default), "
                           "openssl or rustls (forced, no fallback)")
    scan.add_argument("--verify-policy", choices=("default", "strict"), default="default",
                      help="verdict parameters, pinned: default = Python 3.11/3.12's default "
                           "context; strict = 3.13's (adds X509_STRICT, PARTIAL_CHAIN)")
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
    scan.add_argument("--fail-on", metavar="CONDITIONS",
                      help="exit 3 when any of these holds for a record, naming the counts: "
                           "expired, untrusted, expiring:14d, error (comma-separated)")
    if tools:
        _add_tools(commands)
    return parser


def _add_tools(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The inventory tools, on result files: each module adds its own subcommand."""
    # Lazy: these modules (and sqlite3, csv, html, ... behind them) are not a scan's.
    from .inventory import diff, merge, metrics, report

    for tool in (diff, report, metrics, merge):
        tool.add_parser(commands)
        commands.choices[tool.__name__.rsplit(".", 1)[1]].set_defaults(run=tool.run)


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
            verify_policy=args.verify_policy,
            starttls=args.starttls,
            all_addresses=args.all_addresses,
            shard=_shard(args),
            engine=args.engine,
        )
    except ConfigError as exc:
        flag = "--" + str(exc).split(":", 1)[0].replace("_", "-")
        raise UsageError(f"{flag}: {str(exc).split(':', 1)[1].strip()}") from None


def _shard(args: argparse.Namespace) -> Shard | None:
    """--shard I/N as given, or --shards N with I from $JOB_COMPLETION_INDEX."""
    if args.shards is None:
        flag, text = "--shard", args.shard
        if text is None:
            return None
    elif args.shard is not None:
        raise UsageError("--shards: give --shard I/N or --shards N, not both")
    else:
        index = os.environ.get("JOB_COMPLETION_INDEX")
        if index is None:
            raise UsageError("--shards: $JOB_COMPLETION_INDEX is not set (give --shard I/N)")
        flag, text = f"--shards: $JOB_COMPLETION_INDEX is {index!r}", f"{index}/{args.shards}"
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _inputs(args: argparse.Namespace, closed: frozenset[int]) -> list[str]:
    """The target lists to read, each checked now: a missing file, a directory or a closed
    stdin is a usage error before anything starts. (A file that fails part-way through is
    an InputError during the scan.) FIFOs and /dev/fd/N (process substitution) are files
    like any other."""
    if args.workers < 1:
        raise UsageError(f"--workers: must be at least 1, got {args.workers}")
    files: list[str] = list(args.files)
    if not files and not args.target:
        if 0 in closed or sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no targets: give FILEs, - for stdin, or -t TARGET")
        files = ["-"]
    for path in files:
        if path == "-":
            if 0 in closed:
                raise UsageError("target list -: standard input is closed")
            continue
        try:
            info = os.stat(path)
        except OSError as exc:
            raise UsageError(f"target list {path!r}: {os_reason(exc)}") from None
        if stat.S_ISDIR(info.st_mode):
            raise UsageError(f"target list {path!r}: is a directory")
        if not os.access(path, os.R_OK):
            raise UsageError(f"target list {path!r}: permission denied")
    if files.count("-") > 1:
        raise UsageError("stdin (-) can be read only once")
    if args.resume and args.output == "-":
        raise UsageError("--resume needs -o FILE: it reads what that file already holds")
    return files


def _output(args: argparse.Namespace,
            closed: frozenset[int]) -> tuple[Output, Counter[int] | None]:
    """The output, opened now so that a bad -o is a usage error before the scan starts;
    with --resume, what it already holds."""
    if args.output == "-" and 1 in closed:
        raise UsageError("-o -: standard output is closed; give -o FILE")
    try:
        # Before the output is opened for appending: a torn last line is cut first.
        done = (repair_and_index(args.output, by_address=args.all_addresses)
                if args.resume else None)
        return Output(args.output, append=args.resume), done
    except OutputError as exc:
        raise UsageError(f"-o: {exc}") from None
    except OSError as exc:
        raise UsageError(f"-o {args.output}: {os_reason(exc)}") from None


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything settled before the event loop starts."""

    config: ScanConfig
    files: list[str]
    done: Counter[int] | None  # with --resume: the records the output already holds
    store: TrustStore | None
    workers: list[Worker]
    out: Output
    fail_on: FailOn | None


async def _scan(args: argparse.Namespace, plan: _Plan) -> int:
    config, workers, out = plan.config, plan.workers, plan.out
    items = read_targets(plan.files, args.target, ports=config.ports, sni=config.sni,
                         starttls=config.starttls)
    if config.shard is not None:
        items = select(items, config.shard)
    resolver = None
    if config.all_addresses:
        resolver = make_resolver(config.resolver, config.resolver_threads, config.nameservers)
        items = every_address(items, resolver, seconds=config.timeout)
    if plan.done:
        items = skip_done(items, plan.done, by_address=config.all_addresses)
    share = share_of(config, len(workers) + 1)
    run = Router(items, await open_lanes(share, plan.store, workers), cap=share.concurrency * 2)
    progress = Progress(enabled=not args.quiet, stream=sys.stderr)
    alarm = None
    if plan.fail_on is not None:
        # Lazy, as in _fail_on: a scan needs the inventory's alerts only for --fail-on.
        from .inventory.alerts import EXIT_ALERT, Alarm

        alarm = Alarm(plan.fail_on, now=datetime.now(UTC))
    received: list[int] = []
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stop_by = 0.0  # after a stop: when the grace period ends, on the loop's clock

    def on_signal(signum: int) -> None:
        nonlocal stop_by
        if received:  # a second signal: leave now; every line already written is whole
            os._exit(128 + signum)
        received.append(signum)
        progress.note(f"signal {signal.Signals(signum).name}: stopping, finishing in-flight")
        run.stop()
        # Whatever the consumer or a target list does, the stop takes effect: past the
        # grace period (and a moment to write what it let finish), the scan ends here.
        stop_by = loop.time() + GRACE + 1.0
        loop.call_at(stop_by, task.cancel)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    code = EXIT_OK
    try:
        async with contextlib.aclosing(run.batches()) as batches:
            async for batch in batches:
                await out.write(b"".join(line.data for line in batch))
                for line in batch:
                    progress.count(line.gist)
                    if alarm is not None:
                        alarm.see_gist(line.gist)
        await out.drain()
    except asyncio.CancelledError:
        if not received:
            raise
        task.uncancel()  # our own stop timer: the grace period is over
    except OutputError as exc:
        run.stop()
        if exc.broken_pipe:  # the reader has had enough: normal, and quiet
            progress.disable()
            code = EXIT_BROKEN_PIPE
        else:
            progress.note(f"error: {exc}")
            progress.disable()  # no summary: records the output never took are no news
            code = EXIT_FATAL
    except InputError as exc:
        progress.note(f"error: {exc}")
        code = EXIT_FATAL
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        out.close()
        if resolver is not None:
            resolver.close()
    if args.summary == "text":
        progress.finish()
    if received and code == EXIT_OK:
        code = 128 + received[0]
    if code == EXIT_OK and alarm is not None and alarm.tripped:
        for finding in alarm.lines():  # even with --quiet: it is why the status is 3
            say(f"--fail-on: {finding}")
        code = EXIT_ALERT
    if args.summary == "json":  # even with --quiet: a scheduler's log wants it
        shard = None if config.shard is None else config.shard.as_dict()
        say(json.dumps(progress.summary_fields() | {
            "shard": shard, "stopped_by": signal.Signals(received[0]).name if received else None,
            "exit": code}, separators=(",", ":")), bare=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    closed = reserve_standard_fds()
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(tools=arguments[:1] != ["scan"])
    args = parser.parse_args(arguments)
    if args.command != "scan":
        try:
            code: int = args.run(args)
        except KeyboardInterrupt:
            return 130
        except Exception as exc:  # a bug: one line, as for a scan
            say(f"error: {type(exc).__name__}: {exc}")
            if os.environ.get("CERTSCAN_DEBUG"):
                traceback.print_exc()
            return EXIT_FATAL
        return code
    try:
        config = _config(args)
        files = _inputs(args, closed)
        try:
            store = TrustStore.load(config.ca_bundle) if config.ca_bundle else None
        except (ValueError, UnsupportedPlatform) as exc:  # a store that cannot be loaded
            raise UsageError(f"--ca-bundle: {exc}") from None
        fail_on = _fail_on(args.fail_on, allowed=("expired", "untrusted", "expiring", "error"))
        out, done = _output(args, closed)
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"certscan: error: {exc}\n")
    limit_note = raise_nofile_limit(config.concurrency)
    if limit_note.clamped_to is not None:
        say(limit_note.message)
        config = config.with_concurrency(limit_note.clamped_to)
    # Workers are forked now, before this process has an event loop or a thread; this
    # process's own loop is the first of the N.
    workers = fork_workers(args.workers - 1, share_of(config, args.workers), store,
                           close_in_child=out.fileno())
    try:
        plan = _Plan(config, files, done, store, workers, out, fail_on)
        return run_with_loop(config.loop, _scan(args, plan))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug, or the platform failing us: one line, not a trace
        say(f"error: {type(exc).__name__}: {exc}")
        if os.environ.get("CERTSCAN_DEBUG"):
            traceback.print_exc()
        return EXIT_FATAL


def _fail_on(text: str | None, *, allowed: tuple[str, ...]) -> FailOn | None:
    if text is None:
        return None
    # Lazy: the inventory's alerts module is a scan's only with --fail-on.
    from .inventory.alerts import FailOn

    try:
        return FailOn.parse(text, allowed=allowed)
    except ValueError as exc:
        raise UsageError(f"--fail-on: {exc}") from None


