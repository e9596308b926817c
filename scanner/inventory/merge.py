"""`certscan merge`: shard outputs -> one result file, checked against the target list.

Shards (`certscan scan --shard I/N`) write one file each; their union is the night's
result. Merging is concatenation, and this tool does it while checking the one promise
that matters: the files together hold exactly one record per target of the list (as the
scan's flags expand it), nothing missing, nothing twice, nothing from elsewhere. Each
record is matched to its target by keys.record_key, the key --resume and --shard use.

    certscan merge shard-*.jsonl --targets targets.txt [scan target flags] -o night.jsonl

Exit status: 0 the files cover the list exactly once; 3 they do not (stderr says what is
missing, twice or foreign, naming shards; --missing FILE lists every missing target); 1 a
read or write failing part-way; 2 a usage error. The merged file is written either way
(atomically: FILE.tmp, then renamed), so what the shards did is never lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO

from ..config import ConfigError, ScanConfig
from ..keys import item_key, record_key
from ..runtime import os_reason, say
from ..targets import BadLine, InputError, Target, read_targets
from .alerts import EXIT_ALERT
from .results import BadRecord, read_results

EXIT_OK, EXIT_FATAL, EXIT_USAGE = 0, 1, 2
_SHOWN = 10  # examples named on stderr per finding


@dataclass
class Coverage:
    """What the shard files hold, against what the list expands to."""

    expected: Counter[int] = field(default_factory=Counter)  # key -> targets in the list
    seen: Counter[int] = field(default_factory=Counter)  # key -> records
    # --all-addresses: key -> address -> records (a name has one record per address)
    by_address: defaultdict[int, Counter[str | None]] = field(
        default_factory=lambda: defaultdict(Counter))
    shown: dict[int, str] = field(default_factory=dict)  # key -> how a record names it
    shards: Counter[int] = field(default_factory=Counter)  # shard count -> records naming it
    records: int = 0
    not_records: int = 0

    def missing(self, all_addresses: bool) -> Counter[int]:
        if not all_addresses:
            return self.expected - self.seen
        fewest = {key: min(self.by_address.get(key, Counter()).values(), default=0)
                  for key in self.expected}
        return Counter({key: wanted - fewest[key] for key, wanted in self.expected.items()
                        if fewest[key] < wanted})

    def twice(self, all_addresses: bool) -> Counter[int]:
        if not all_addresses:
            return Counter({key: n - self.expected[key] for key, n in self.seen.items()
                            if key in self.expected and n > self.expected[key]})
        most = {key: max(addresses.values(), default=0)
                for key, addresses in self.by_address.items() if key in self.expected}
        return Counter({key: n - self.expected[key] for key, n in most.items()
                        if n > self.expected[key]})

    def foreign(self) -> Counter[int]:
        return Counter({key: n for key, n in self.seen.items() if key not in self.expected})


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `merge` subcommand; cli.py runs `run(args)` for it."""
    parser = commands.add_parser(
        "merge",
        help="concatenate shard outputs, checking they cover the target list exactly once",
        description="Concatenate the result files of `certscan scan --shard I/N` runs and "
                    "check that together they hold exactly one record per target of the "
                    "list, expanded as the scan expanded it (give the scan's target flags).",
    )
    parser.add_argument("results", nargs="+", metavar="SHARD.jsonl",
                        help="the shards' result files")
    parser.add_argument("--targets", action="append", default=[], metavar="LIST",
                        help="the target list the shards scanned (repeatable; - is stdin)")
    parser.add_argument("-t", "--target", action="append", default=[], metavar="TARGET",
                        help="a target given on the scan's command line (repeatable)")
    parser.add_argument("-p", "--ports", metavar="PORTS", help="the scan's --ports")
    parser.add_argument("--sni", metavar="NAME", help="the scan's --sni")
    parser.add_argument("--starttls", metavar="PROTO", help="the scan's --starttls")
    parser.add_argument("--all-addresses", action="store_true",
                        help="the scan ran with --all-addresses (a name: one record per "
                             "address)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the merged records to FILE (atomically; default: only "
                             "check)")
    parser.add_argument("--missing", metavar="FILE",
                        help="write every missing target to FILE, one JSON object a line")


def run(args: argparse.Namespace) -> int:
    try:
        config = ScanConfig(ports=args.ports, sni=args.sni, starttls=args.starttls,
                            all_addresses=args.all_addresses)
    except ConfigError as exc:
        say(f"error: --{str(exc).replace('_', '-')}")
        return EXIT_USAGE
    if not args.targets and not args.target:
        say("error: merge needs the target list: --targets LIST or -t TARGET")
        return EXIT_USAGE
    for path in [*args.targets, *args.results]:
        if path != "-" and not os.path.isfile(path):
            say(f"error: {path}: not a readable file")
            return EXIT_USAGE
    coverage = Coverage()
    try:
        for key in asyncio.run(_keys(args, config)):
            coverage.expected[key] += 1
        with _atomic(args.output) as out:
            for path in args.results:
                _take(path, coverage, out, args.all_addresses)
        all_addresses: bool = args.all_addresses
        missing = coverage.missing(all_addresses)
        if args.missing is not None:
            with _atomic(args.missing) as out:
                assert out is not None
                for line in asyncio.run(_described(args, config, missing)):
                    out.write(line)
    except (OSError, InputError) as exc:
        reason = os_reason(exc) if isinstance(exc, OSError) else str(exc)
        say(f"error: {reason}")
        return EXIT_FATAL
    return _report(coverage, missing, coverage.twice(all_addresses), coverage.foreign())


async def _targets(args: argparse.Namespace,
                   config: ScanConfig) -> AsyncIterator[Target | BadLine]:
    async for item in read_targets(args.targets, args.target, ports=config.ports,
                                   sni=config.sni, starttls=config.starttls):
        yield item


async def _keys(args: argparse.Namespace, config: ScanConfig) -> list[int]:
    return [item_key(item) async for item in _targets(args, config)]


async def _described(args: argparse.Namespace, config: ScanConfig,
                     missing: Counter[int]) -> list[bytes]:
    """Each missing target as a JSON line: the list's line, where it is, what it expands to."""
    left = Counter(missing)
    lines = []
    async for item in _targets(args, config):
        key = item_key(item)
        if left[key] <= 0:
            continue
        left[key] -= 1
        entry: dict[str, object] = {"target": item.text, "source": item.source,
                                    "line": item.line}
        if isinstance(item, Target):
            entry |= {"host": item.host, "port": item.port, "sni": item.sni,
                      "starttls": item.starttls}
        lines.append((json.dumps(entry, ensure_ascii=True) + "\n").encode())
    return lines


def _take(path: str, coverage: Coverage, out: IO[bytes] | None, all_addresses: bool) -> None:
    """Count one shard file's records (copying each line to `out`)."""
    for _, item in read_results(path):
        if isinstance(item, BadRecord):
            coverage.not_records += 1
            say(f"{item.source}:{item.line}: not a record ({item.reason}); left out")
            continue
        key = record_key(str(item.get("target")), item.get("host"), item.get("port"),
                         item.get("sni"))
        coverage.records += 1
        coverage.seen[key] += 1
        if all_addresses:
            coverage.by_address[key][item.get("ip")] += 1
        coverage.shown.setdefault(key, _name(item))
        shard = item.get("shard")
        if isinstance(shard, dict) and isinstance(shard.get("count"), int):
            coverage.shards[shard["count"]] += 1
        if out is not None:
            out.write((json.dumps(item, ensure_ascii=True, separators=(",", ":")) + "\n")
                      .encode())


def _name(record: Mapping[str, object]) -> str:
    sni = record.get("sni")
    return f"{record.get('target')!s} ({record.get('host')}:{record.get('port')}" + (
        f" {sni})" if sni else ")")


def _report(coverage: Coverage, missing: Counter[int], twice: Counter[int],
            foreign: Counter[int]) -> int:
    say(f"merge: {coverage.records} records; the list expands to "
        f"{sum(coverage.expected.values())} targets")
    count = coverage.shards.most_common(1)[0][0] if coverage.shards else None
    if missing:
        where = ""
        if count:
            by_shard = Counter(key % count for key in missing.elements())
            where = " (by shard: " + ", ".join(
                f"{index}/{count} {n}" for index, n in sorted(by_shard.items())) + ")"
        say(f"merge: missing {sum(missing.values())} targets{where}; --missing FILE lists "
            "them all")
    if twice:
        say(f"merge: {sum(twice.values())} records more than once: "
            + _examples(twice, coverage))
    if foreign:
        say(f"merge: {sum(foreign.values())} records for targets not in the list: "
            + _examples(foreign, coverage))
    if missing or twice or foreign:
        return EXIT_ALERT
    say("merge: every target exactly once")
    return EXIT_OK


def _examples(keys: Counter[int], coverage: Coverage) -> str:
    names = [coverage.shown[key] for key in list(keys)[:_SHOWN]]
    return "; ".join(names) + (" ..." if len(keys) > _SHOWN else "")


@contextlib.contextmanager
def _atomic(path: str | None) -> Iterator[IO[bytes] | None]:
    """FILE.tmp, renamed over FILE once whole (None: nothing to write)."""
    if path is None:
        yield None
        return
    partial = f"{path}.tmp"
    with open(partial, "wb") as stream:
        try:
            yield stream
        except BaseException:
            stream.close()
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
    os.replace(partial, path)
