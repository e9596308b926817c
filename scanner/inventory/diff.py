"""`certscan diff OLD NEW`: what changed between two result files, one JSON line per event.

An endpoint is a record's host, port and server name (SNI), and with `--by-address` also
the address connected to (results.Endpoint). Every event line has the same keys:

    {"event": KIND, "material": bool, "endpoint": {host, port, sni, ip} | null,
     "old": SIDE | null, "new": SIDE | null, "detail": {...}}

`old` and `new` are the endpoint's facts in each file (null where it is absent): the line
it was read from, scanned_at, ip, status, error_type, the leaf's sha256, spki_sha256,
serial, issuer (RFC 4514), not_after and san_dns (sorted, unique; null when the SAN could
not be read), chain (the sha256 of each certificate sent after the leaf, in order),
trusted and reason (null without a verdict), and earliest_expiry (the certificate of the
chain that expires first: {not_after, certificate: "leaf" | "chain[N]", sha256}). The
schema is diff.schema.json, next to this file.

Events, per endpoint present in both files (`new` / `gone` otherwise):

kind              when                                                   material
new               only in NEW                                            no
gone              only in OLD                                            no
error_changed     started failing (ok -> error)                          yes
                  stopped failing, or fails with another error.type      no
renewed           another leaf, same key (spki_sha256)                   no
rekeyed           another leaf, another key (or a key that cannot be     no
                  read on either side)
issuer_changed    another leaf, from another issuer (RFC 4514 name)      yes
names_changed     another leaf, another set of SAN DNS names             yes
                  (detail: added, removed)
chain_changed     the certificates sent after the leaf changed           yes with the same
                  (detail: added, removed, leaf_changed)                 leaf, no with a new
became_untrusted  the verdict went from trusted to not (detail: reason)  yes
became_trusted    the verdict went from not trusted to trusted           no
                  (detail: the reason it had)
expiry_passed     the chain's earliest not_after lies after OLD's        yes
                  scanned_at and at or before NEW's: it was valid at the
                  old scan and is past at the new one (NEW's chain)

The rule: a change is material when it changes what clients see or can do: who vouches
for the server (issuer), which names it answers for, whether it is trusted, whether its
chain has run out, whether it answers at all, and an unchanged certificate served with
other intermediates (someone changed the server's configuration). A renewal is routine,
whether or not it brings a new key: ACME clients make a new key at each renewal by
default, so `rekeyed` alone is noted (its own kind) but not material. A renewal that also
changes the issuer or the names gives those events too, and they are material; the
detail of `renewed` and `rekeyed` (same_issuer, same_names) says so on the line itself.
Recovery (error stopped, became trusted) is good news, and an endpoint already failing
that fails differently is not news; `new` and `gone` say the target list changed, which
is not the servers' doing (a server that stops answering is an error record, not a
missing one). MATERIAL names the kinds that can be material; `--fail-on changed` counts
each event whose `material` is true.

Certificate events (renewed to names_changed) need a certificate on both sides, trust
events a verdict on both sides (scans with --ca-bundle), expiry_passed a chain in NEW.

Edge cases, decided:

- An endpoint twice (or more) in one file: the last line wins, and a `duplicate` event
  (not material) names the file, its side, the line kept, the count and the first 20
  lines. A scan writes one record per target, so this means targets listed twice, files
  joined together, or, without --by-address, one name scanned at several addresses.
- A line that is not a record: a `bad_line` event (not material; endpoint, old and new
  null) naming the file, its side, the line and why. It is never fatal.
- A record of an invalid target line names no endpoint: it is skipped, and one line on
  stderr per file says how many were.
- An empty file: every endpoint of the other file is `new` (or `gone`).
- Identical files: no events, exit 0.

Order: bad lines first (OLD's, then NEW's, by line), then endpoints sorted by host, port,
sni (none first) and ip (none first), strings by their bytes; within an endpoint,
`duplicate` (OLD's, then NEW's) and then the kinds in KINDS order. The same two files
give the same bytes, whatever order their lines are in.

Scale: no record is held. Each record is reduced to the facts above as it is read, and
stored in an SQLite database in a temporary file, which SQLite places ($SQLITE_TMPDIR,
else $TMPDIR, else /var/tmp) and unlinks at once: ~0.6 KB a record with a certificate,
~0.2 KB an error's, and as much again while it sorts. One sorted pass over it then compares
one endpoint at a time. Memory is SQLite's page cache (16 MiB) and one endpoint's rows:
a pair of million-line files peaks at ~80 MB RSS. Events are written once both files are
read (the output is opened, and truncated, first: a bad -o fails before the work).

--fail-on: every record of NEW is seen by alerts.Alarm (so expired, untrusted, expiring
and error judge the new state, invalid targets and duplicates included; a line of NEW
that is not a record counts as an error), and each material event counts for `changed`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

from ..record import encode_json
from ..runtime import os_reason, say
from .alerts import CONDITIONS, EXIT_ALERT, Alarm, FailOn
from .results import (
    BadRecord,
    Endpoint,
    Record,
    earliest_expiry,
    endpoint,
    parse_time,
    read_results,
)

EXIT_OK, EXIT_FATAL, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # as scanner/cli.py: the reader went away, quietly

KINDS = ("bad_line", "duplicate", "new", "gone", "error_changed", "renewed", "rekeyed",
         "issuer_changed", "names_changed", "chain_changed", "became_untrusted",
         "became_trusted", "expiry_passed")
# The kinds that can be material; error_changed only when an error started, chain_changed
# only when the leaf stayed the same. The event's `material` field is the answer.
MATERIAL = frozenset({"error_changed", "issuer_changed", "names_changed", "chain_changed",
                      "became_untrusted", "expiry_passed"})
DUPLICATE_LINES = 20  # line numbers a `duplicate` event lists, at most
OLD, NEW = 0, 1
SIDES = ("old", "new")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_FACTS = json.JSONEncoder(separators=(",", ":"))  # ensure_ascii: lone surrogates too


class ResultFileError(Exception):
    """A result file that cannot be read (missing, unreadable, an I/O error part-way)."""

    def __init__(self, path: str, exc: OSError) -> None:
        text = exc.strerror or str(exc)
        super().__init__(f"{path}: {text[:1].lower() + text[1:]}")
        self.path = path


@dataclass(frozen=True, slots=True)
class Side:
    """An endpoint's facts in one file: what its events compare and show. A field is None
    when the record does not have it (no certificate, no verdict, a field that could not
    be read)."""

    line: int
    scanned_at: str | None
    ip: str | None
    status: str | None
    error_type: str | None
    sha256: str | None
    spki_sha256: str | None
    serial: str | None
    issuer: str | None
    not_after: str | None
    san_dns: tuple[str, ...] | None
    chain: tuple[str, ...]
    trusted: bool | None
    reason: str | None
    expiry: tuple[str, str, str | None] | None  # earliest: (not_after, which, sha256)
    # For comparing, not shown: scanned_at and the earliest not_after as POSIX seconds.
    at: float | None = field(default=None, compare=False)
    expires: float | None = field(default=None, compare=False)

    @classmethod
    def of(cls, record: Record, line: int) -> Side:
        return cls.from_row(line, *stored(record))

    @classmethod
    def from_row(cls, line: int, scanned_at: str | None, at: float | None,
                 expires: float | None, facts: bytes) -> Side:
        try:
            decoded = orjson.loads(facts)
        except orjson.JSONDecodeError:  # what only the stdlib encoder wrote (see `stored`)
            decoded = json.loads(facts)
        (ip, status, error_type, sha256, spki, serial, issuer, not_after, dns, chain,
         trusted, reason, expiry) = decoded
        return cls(line, scanned_at, ip, status, error_type, sha256, spki, serial, issuer,
                   not_after, tuple(dns) if dns is not None else None, tuple(chain),
                   trusted, reason, tuple(expiry) if expiry is not None else None,
                   at, expires)

    @property
    def has_certificate(self) -> bool:
        return self.sha256 is not None

    def as_dict(self) -> dict[str, object]:
        expiry = None
        if self.expiry is not None:
            expiry = {"not_after": self.expiry[0], "certificate": self.expiry[1],
                      "sha256": self.expiry[2]}
        return {"line": self.line, "scanned_at": self.scanned_at, "ip": self.ip,
                "status": self.status, "error_type": self.error_type,
                "sha256": self.sha256, "spki_sha256": self.spki_sha256,
                "serial": self.serial, "issuer": self.issuer, "not_after": self.not_after,
                "san_dns": list(self.san_dns) if self.san_dns is not None else None,
                "chain": list(self.chain), "trusted": self.trusted, "reason": self.reason,
                "earliest_expiry": expiry}


def stored(record: Record) -> tuple[str | None, float | None, float | None, bytes]:
    """What the index keeps of a record: scanned_at, it and the earliest not_after as POSIX
    seconds, and the facts compared, encoded (equal bytes: no certificate or trust event).
    The hot path of a load, so no Side is built here."""
    cert = _object(record.get("certificate"))
    san = _object(cert.get("san")).get("dns")
    chain = record.get("chain")
    sent = chain if type(chain) is list else []
    validation = _object(record.get("validation"))
    trusted = validation.get("trusted")
    first = earliest_expiry(record) if sent else None
    expiry = None
    if first is not None:
        when = _text(_object(sent[first.position]).get("not_after"))
        expiry = (when or first.not_after.isoformat(), first.which, first.sha256)
    scanned_at = _text(record.get("scanned_at"))
    at = parse_time(scanned_at)
    facts = (_text(record.get("ip")), _text(record.get("status")),
             _text(_object(record.get("error")).get("type")),
             _text(cert.get("sha256")), _text(cert.get("spki_sha256")),
             _text(cert.get("serial")), _text(_object(cert.get("issuer")).get("rfc4514")),
             _text(cert.get("not_after")),
             sorted({n for n in san if type(n) is str}) if type(san) is list else None,
             [_text(_object(e).get("sha256")) or "" for e in sent[1:]],
             trusted if type(trusted) is bool else None,
             _text(validation.get("reason")), expiry)
    try:
        encoded = orjson.dumps(facts)
    except orjson.JSONEncodeError:  # a lone surrogate in a hand-edited file
        encoded = _FACTS.encode(facts).encode("ascii")
    return (scanned_at, at.timestamp() if at is not None else None,
            first.not_after.timestamp() if first is not None else None, encoded)


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the output. `endpoint` is None only for a bad line."""

    kind: str
    material: bool
    endpoint: Endpoint | None
    old: Side | None
    new: Side | None
    detail: Mapping[str, object]

    def as_dict(self) -> dict[str, object]:
        return {"event": self.kind, "material": self.material,
                "endpoint": self.endpoint.as_dict() if self.endpoint is not None else None,
                "old": self.old.as_dict() if self.old is not None else None,
                "new": self.new.as_dict() if self.new is not None else None,
                "detail": dict(self.detail)}


def compare(where: Endpoint, old: Side | None, new: Side | None) -> list[Event]:
    """The events of one endpoint, in KINDS order (duplicates aside: see `Index`)."""
    def event(kind: str, material: bool, **detail: object) -> Event:
        return Event(kind, material, where, old, new, detail)

    if old is None and new is None:
        return []
    if old is None:
        return [event("new", False)]
    if new is None:
        return [event("gone", False)]
    events: list[Event] = []
    old_ok, new_ok = old.status == "ok", new.status == "ok"
    if old_ok and not new_ok:
        events.append(event("error_changed", True, change="started",
                            **{"from": None, "to": new.error_type}))
    elif new_ok and not old_ok:
        events.append(event("error_changed", False, change="stopped",
                            **{"from": old.error_type, "to": None}))
    elif not old_ok and old.error_type != new.error_type:
        events.append(event("error_changed", False, change="changed",
                            **{"from": old.error_type, "to": new.error_type}))
    if old.has_certificate and new.has_certificate:
        leaf_changed = old.sha256 != new.sha256
        if leaf_changed:
            same_issuer = old.issuer == new.issuer
            same_names = (old.san_dns == new.san_dns or old.san_dns is None
                          or new.san_dns is None)
            same_key = old.spki_sha256 is not None and old.spki_sha256 == new.spki_sha256
            events.append(event("renewed" if same_key else "rekeyed", False,
                                same_issuer=same_issuer, same_names=same_names))
            if not same_issuer:
                events.append(event("issuer_changed", True))
            if not same_names:
                assert old.san_dns is not None and new.san_dns is not None
                events.append(event("names_changed", True,
                                    added=sorted(set(new.san_dns) - set(old.san_dns)),
                                    removed=sorted(set(old.san_dns) - set(new.san_dns))))
        if old.chain != new.chain:
            events.append(event("chain_changed", not leaf_changed,
                                added=[s for s in new.chain if s not in old.chain],
                                removed=[s for s in old.chain if s not in new.chain],
                                leaf_changed=leaf_changed))
    if old.trusted is True and new.trusted is False:
        events.append(event("became_untrusted", True, reason=new.reason))
    elif old.trusted is False and new.trusted is True:
        events.append(event("became_trusted", False, reason=old.reason))
    if expiry_passed(old.at, new.expires, new.at):
        assert new.expiry is not None
        events.append(event("expiry_passed", True, certificate=new.expiry[1],
                            not_after=new.expiry[0]))
    return events


def expiry_passed(old_at: float | None, expires: float | None, new_at: float | None) -> bool:
    """The earliest not_after lies after the old scan and at or before the new one."""
    return (old_at is not None and expires is not None and new_at is not None
            and old_at < expires <= new_at)


class Index:
    """Both files' endpoints, reduced to their facts, in an SQLite database in a temporary
    file: memory stays bounded (SQLite's page cache and sorter) whatever the files' length
    and order. `load` each side, then `events`."""

    _CACHE_KIB = 16 << 10  # SQLite's page cache, and what its sorter keeps in memory
    _BATCH = 4096  # rows per executemany

    def __init__(self, *, by_address: bool = False) -> None:
        self.by_address = by_address
        self.skipped = [0, 0]  # records of invalid target lines, by side
        # "": a private database in a temporary file, which SQLite unlinks itself.
        self._db = sqlite3.connect("", isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE",
                       f"cache_size=-{self._CACHE_KIB}", "locking_mode=EXCLUSIVE"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE rec (host TEXT, port INTEGER, sni TEXT, ip TEXT, "
                         "side INTEGER, line INTEGER, scanned_at TEXT, at REAL, "
                         "expires REAL, facts BLOB)")
        self._db.execute("CREATE TABLE bad (side INTEGER, line INTEGER, reason TEXT)")
        self._files = ["", ""]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, side: int, path: str,
             seen: Callable[[Record | BadRecord], None] | None = None) -> None:
        """Read one result file into the index. `seen` gets every record and bad line as
        read. ResultFileError when the file cannot be read."""
        self._files[side] = path
        rows: list[tuple[object, ...]] = []
        bad: list[tuple[int, int, str]] = []
        self._db.execute("BEGIN")
        try:
            for number, read in read_results(path):
                item, row = read, None
                if not isinstance(read, BadRecord):
                    where = endpoint(read, by_address=self.by_address)
                    if where is None:
                        self.skipped[side] += 1
                    else:
                        scanned_at, at, expires, facts = stored(read)
                        unfit = _unfit(where, scanned_at)
                        if unfit is not None:
                            item = BadRecord(path, number, unfit)
                        else:
                            row = (where.host, where.port, where.sni, where.ip, side, number,
                                   scanned_at, at, expires, facts)
                if seen is not None:
                    seen(item)
                if isinstance(item, BadRecord):
                    bad.append((side, number, item.reason))
                if row is None:
                    continue
                rows.append(row)
                if len(rows) >= self._BATCH:
                    self._db.executemany("INSERT INTO rec VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
                    rows.clear()
        except OSError as exc:
            self._db.execute("ROLLBACK")
            raise ResultFileError(path, exc) from exc
        self._db.executemany("INSERT INTO rec VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        self._db.executemany("INSERT INTO bad VALUES (?,?,?)", bad)
        self._db.execute("COMMIT")

    def events(self) -> Iterator[Event]:
        """Every event, in the documented order."""
        for side, line, reason in self._db.execute(
                "SELECT side, line, reason FROM bad ORDER BY side, line"):
            yield Event("bad_line", False, None, None, None,
                        {"file": self._files[side], "side": SIDES[side], "line": line,
                         "reason": reason})
        rows = self._db.execute("SELECT host, port, sni, ip, side, line, scanned_at, at, "
                                "expires, facts FROM rec ORDER BY host, port, sni, ip, side, "
                                "line")
        for (host, port, sni, ip), group in itertools.groupby(rows, key=lambda r: r[:4]):
            yield from self._endpoint(Endpoint(host, port, sni, ip), group)

    def _endpoint(self, where: Endpoint, rows: Iterator[Any]) -> Iterator[Event]:
        # The last line of each side wins; the rows come in (side, line) order, and only
        # the last one and a few line numbers are kept, however often an endpoint repeats.
        last: list[Any] = [None, None]
        counts = [0, 0]
        lines: list[list[int]] = [[], []]
        for row in rows:
            side = row[4]
            last[side] = row
            counts[side] += 1
            if len(lines[side]) < DUPLICATE_LINES:
                lines[side].append(row[5])
        old_row, new_row = last
        if old_row is not None and new_row is not None and old_row[9] == new_row[9] \
                and not expiry_passed(old_row[7], new_row[8], new_row[7]) \
                and counts == [1, 1]:
            return  # unchanged: the common case, with no decoding
        old, new = (Side.from_row(*row[5:]) if row is not None else None for row in last)
        for side in (OLD, NEW):
            if counts[side] > 1:
                yield Event("duplicate", False, where, old, new,
                            {"file": self._files[side], "side": SIDES[side],
                             "kept": last[side][5], "count": counts[side],
                             "lines": lines[side]})
        yield from compare(where, old, new)


# The command line ---------------------------------------------------------------------


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `diff` and its flags to the command line's subcommands."""
    diff = commands.add_parser(
        "diff",
        help="what changed between two result files, one JSON line per event",
        description="Compare two result files (certscan scan output) endpoint by endpoint: "
                    "one JSON line per event (new, gone, renewed, rekeyed, issuer_changed, "
                    "names_changed, chain_changed, became_untrusted, became_trusted, "
                    "error_changed, expiry_passed; duplicate and bad_line for odd input), "
                    "each marked material or routine.",
    )
    diff.add_argument("old", metavar="OLD", help="the earlier result file (- for stdin)")
    diff.add_argument("new", metavar="NEW", help="the later result file (- for stdin)")
    diff.add_argument("--by-address", action="store_true",
                      help="key endpoints by address too (host, port, SNI and ip): for scans "
                           "that cover every address of a name")
    diff.add_argument("-o", "--output", default="-", metavar="OUT",
                      help="where events go (default: - for stdout)")
    diff.add_argument("--fail-on", type=_fail_on, metavar="CONDITIONS",
                      help="exit 3 when any holds: changed (a material event), and on NEW's "
                           "records expired, untrusted, expiring:N (30d, 12h, 2w), error; "
                           "comma-separated")


def _fail_on(text: str) -> FailOn:
    try:
        return FailOn.parse(text, allowed=CONDITIONS)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    """Run `certscan diff`: 0, EXIT_ALERT (3) when --fail-on trips, 1 when a file cannot be
    read or written (one line naming it), 2 for usage, 141 when the reader went away."""
    if args.old == "-" and args.new == "-":
        say("error: stdin (-) can be read only once")
        return EXIT_USAGE
    fail_on: FailOn | None = args.fail_on
    alarm = Alarm(fail_on, now=datetime.now(UTC)) if fail_on is not None else None
    try:
        out = _open_output(args.output)
    except OSError as exc:
        say(f"error: -o {args.output}: {os_reason(exc)}")
        return EXIT_USAGE

    def see(item: Record | BadRecord) -> None:
        if alarm is not None:  # a line that is not a record: what it stood for is unknown
            alarm.see(item if not isinstance(item, BadRecord) else {"status": None})

    try:
        with out, Index(by_address=args.by_address) as index:
            index.load(OLD, args.old)
            index.load(NEW, args.new, see)
            for side, count in enumerate(index.skipped):
                if count:
                    path = args.new if side else args.old
                    say(f"diff: {path}: {count} record(s) of invalid target lines skipped "
                         "(they name no endpoint)")
            for event in index.events():
                if event.material and alarm is not None:
                    alarm.see_change(event.kind)
                out.write(encode_json(event.as_dict()))
    except ResultFileError as exc:
        say(f"error: cannot read {exc}")
        return EXIT_FATAL
    except BrokenPipeError:
        return EXIT_BROKEN_PIPE  # the reader has had enough: normal, and quiet
    except OSError as exc:
        say(f"error: {'standard output' if args.output == '-' else args.output}: "
             f"{os_reason(exc)}")
        return EXIT_FATAL
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    if alarm is not None and alarm.tripped:
        for line in alarm.lines():
            say(f"fail-on: {line}")
        return EXIT_ALERT
    return EXIT_OK


class _Output:
    """Event lines to a file or our own copy of stdout, buffered. A broken pipe is raised
    as BrokenPipeError once, and nothing more is written (nor flushed on close)."""

    def __init__(self, fd: int) -> None:
        self._stream = open(fd, "wb", buffering=1 << 16)  # noqa: SIM115
        self._broken = False

    def write(self, data: bytes) -> None:
        try:
            self._stream.write(data)
        except BrokenPipeError:
            self._abandon()
            raise

    def __enter__(self) -> _Output:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if self._broken:
            return
        if kind is not None:  # a failure elsewhere: close without raising over it
            self._abandon()
            return
        try:
            self._stream.close()  # flushes: a full disk or a gone reader shows up here
        except OSError:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Drop whatever is buffered: point the descriptor at /dev/null and close."""
        self._broken = True
        with contextlib.suppress(OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)
            self._stream.close()


def _open_output(path: str) -> _Output:
    if path == "-":
        return _Output(os.dup(1))  # our own descriptor: closing it leaves stdout alone
    if os.path.isdir(path):
        raise IsADirectoryError(21, "Is a directory")
    return _Output(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))


def _unfit(where: Endpoint, scanned_at: str | None) -> str | None:
    """Why a record that names an endpoint still cannot be indexed (a hand-edited file:
    certscan never writes these), or None."""
    if not 0 < where.port < 65536:
        return f"not a certscan record: port {where.port} out of range"
    if f"{where.host}{where.sni}{where.ip}{scanned_at}".isascii():
        return None  # what certscan writes: no encoding to try
    for name, text in (("host", where.host), ("sni", where.sni), ("ip", where.ip),
                       ("scanned_at", scanned_at)):
        if text is not None and not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:
                return f"not a certscan record: {name} is not valid Unicode"
    return None


def _object(value: object) -> Mapping[str, Any]:
    if type(value) is dict:  # what JSON gives, and None: both skip the slow ABC check
        return value
    if value is None:
        return _EMPTY
    return value if isinstance(value, Mapping) else _EMPTY


def _text(value: object) -> str | None:
    return value if type(value) is str else None  # JSON gives no subclass of str


