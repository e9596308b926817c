"""`certscan metrics RESULTS.jsonl [-o FILE]`: a result file as Prometheus metrics, in the
text exposition format (0.0.4) that node_exporter's textfile collector reads.

Names follow the field's conventions (blackbox_exporter's `probe_success` and
`probe_ssl_earliest_cert_expiry`, ssl_exporter's `ssl_cert_not_after`): times are absolute
Unix timestamps (`*_timestamp_seconds`), never days left, so an alert is
`certscan_chain_earliest_not_after_timestamp_seconds - time() < 14 * 86400` and stays right
however old the file is; every metric is a gauge with HELP and TYPE; no sample carries a
timestamp (the textfile collector refuses them).

One endpoint is (host, port, sni), as `results.endpoint` has it. When a file holds an
endpoint twice (files concatenated, a target listed twice), its last record wins: the
metrics are the file's latest word on each endpoint. Every per-endpoint series has the
labels host, port, sni and ip (the address of that last record; "" when none), nothing
else but a few fixed-vocabulary labels and, on `certscan_cert_info` alone, the issuer CN and
serial. See `FAMILIES` for each metric and README "metrics" for the cardinality.

Memory: the exposition format needs each metric's samples together, so nothing can be
written before the last line is read. Per endpoint this holds one bytes row, its escaped
labels and values already as they are output, keyed by an 8-byte hash of its identity as
keys.record_key does for --resume (two endpoints of a million share a hash with odds of
about 3e-8): ~350 bytes an endpoint in all, measured (a million endpoints: 370 MB peak
RSS). Records themselves are dropped as soon as they are read.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import signal
import stat
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

from ..runtime import os_reason, say
from ..values import ErrorType
from .results import BadRecord, Record, earliest_expiry, endpoint, parse_time, read_results

EXIT_OK, EXIT_FATAL, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # the reader went away: quiet, as `certscan scan`

# Server-controlled strings that become label values (certscan_cert_info) are cut to this
# many characters: RFC 5280 bounds a CN at 64 and a serial at 20 octets (41 hex characters
# with a sign), so only a hostile certificate is ever cut. A long label value would cost
# every sample of the series, and Prometheus can refuse a whole scrape over one
# (label_value_length_limit).
LABEL_MAX = 128

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_CHUNK = 1 << 20  # bytes joined into one write


class UsageError(Exception):
    """An argument that cannot work, found before anything is read; the message names it."""


def escape(value: str) -> bytes:
    """A label value as the exposition format writes it between double quotes: backslash,
    double quote and line feed escaped, UTF-8. A lone surrogate (a hand-edited `\\ud800` in
    a result file) is not UTF-8 and becomes U+FFFD."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.translate(_ESCAPES)
    try:
        return value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode()


def _capped(value: object) -> bytes:
    """A server-controlled string as a label value, cut to LABEL_MAX characters (the cut
    ends in "..."); "" for anything not a string."""
    if not isinstance(value, str):
        return b""
    if len(value) > LABEL_MAX:
        value = value[: LABEL_MAX - 3] + "..."
    return escape(value)


def timestamp(moment: datetime | None) -> bytes:
    """Seconds since the Unix epoch as a sample value: an integer for whole seconds (a
    certificate's times), else with its milliseconds (scanned_at); b"" for None."""
    if moment is None:
        return b""
    millis = (moment - _EPOCH) // _MILLISECOND
    if millis % 1000 == 0:
        return str(millis // 1000).encode()
    return repr(millis / 1000).encode()


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


# One endpoint's row: its fields joined by b"\n", which an escaped label value never holds.
# Field 0 is the endpoint's label set (host, port, sni, ip) and comes first, so sorting the
# rows sorts the output by host.
LABELS, STATUS, ERROR, STAGE, SCANNED, NOT_BEFORE, NOT_AFTER, EARLIEST, TRUSTED, REASON, \
    ISSUER_CN, SERIAL, HAS_CERT = range(13)


def endpoint_row(record: Record) -> tuple[bytes, bytes] | None:
    """(identity, row) for a record of an endpoint; None for a record that names none (an
    `invalid_target`). The identity is the escaped host, port and sni."""
    where = endpoint(record)
    if where is None:
        return None
    identity = (b'host="' + escape(where.host) + b'",port="' + str(where.port).encode()
                + b'",sni="' + escape(where.sni or "") + b'"')
    error = record.get("error")
    error = error if isinstance(error, dict) else {}
    certificate = record.get("certificate")
    certificate = certificate if isinstance(certificate, dict) else None
    validation = record.get("validation")
    validation = validation if isinstance(validation, dict) else {}
    trusted = validation.get("trusted")
    fields = [b""] * 13
    fields[LABELS] = identity + b',ip="' + escape(_text(record.get("ip"))) + b'"'
    fields[STATUS] = escape(_text(record.get("status")))
    fields[ERROR] = escape(_text(error.get("type")))
    fields[STAGE] = escape(_text(error.get("stage")))
    fields[SCANNED] = timestamp(parse_time(record.get("scanned_at")))
    if certificate is not None:
        fields[NOT_BEFORE] = timestamp(parse_time(certificate.get("not_before")))
        fields[NOT_AFTER] = timestamp(parse_time(certificate.get("not_after")))
        issuer = certificate.get("issuer")
        fields[ISSUER_CN] = _capped(issuer.get("cn") if isinstance(issuer, dict) else None)
        fields[SERIAL] = _capped(certificate.get("serial"))
        fields[HAS_CERT] = b"1"
    first = earliest_expiry(record)
    fields[EARLIEST] = timestamp(first.not_after if first is not None else None)
    if isinstance(trusted, bool):
        fields[TRUSTED] = b"1" if trusted else b"0"
        fields[REASON] = escape(_text(validation.get("reason"))) if not trusted else b""
    return identity, b"\n".join(fields)


Sample = Callable[[list[bytes]], tuple[bytes, bytes] | None]  # row -> (more labels, value)


@dataclass(frozen=True, slots=True)
class Family:
    """One per-endpoint metric: its name, HELP text, and its sample of a row (None: the
    endpoint has none)."""

    name: str
    help: str
    sample: Sample


def _value(field: int) -> Sample:
    return lambda row: (b"", row[field]) if row[field] else None


def _success(row: list[bytes]) -> tuple[bytes, bytes]:
    return b"", b"1" if row[STATUS] == b"ok" else b"0"


def _error_info(row: list[bytes]) -> tuple[bytes, bytes] | None:
    if not row[ERROR]:
        return None
    return b',error="' + row[ERROR] + b'",stage="' + row[STAGE] + b'"', b"1"


def _untrusted_info(row: list[bytes]) -> tuple[bytes, bytes] | None:
    if row[TRUSTED] != b"0":
        return None
    return b',reason="' + row[REASON] + b'"', b"1"


def _cert_info(row: list[bytes]) -> tuple[bytes, bytes] | None:
    if not row[HAS_CERT]:
        return None
    return b',issuer_cn="' + row[ISSUER_CN] + b'",serial="' + row[SERIAL] + b'"', b"1"


FAMILIES = (
    Family("certscan_probe_success",
           "Whether the last scan of the endpoint captured a certificate (record status ok): "
           "1, else 0.", _success),
    Family("certscan_probe_error_info",
           "Why the last scan of the endpoint failed: its error type and stage; 1, present "
           "only for endpoints whose last scan failed.", _error_info),
    Family("certscan_scan_timestamp_seconds",
           "When the last scan of the endpoint finished (record scanned_at), in Unix time.",
           _value(SCANNED)),
    Family("certscan_cert_not_before_timestamp_seconds",
           "Start of the validity of the leaf certificate (notBefore), in Unix time.",
           _value(NOT_BEFORE)),
    Family("certscan_cert_not_after_timestamp_seconds",
           "End of the validity of the leaf certificate (notAfter), in Unix time.",
           _value(NOT_AFTER)),
    Family("certscan_chain_earliest_not_after_timestamp_seconds",
           "Earliest notAfter of every certificate the server sent, leaf included, in Unix "
           "time: the one to alert on.", _value(EARLIEST)),
    Family("certscan_cert_trusted",
           "Verdict on the chain and name against the scan's trust store (--ca-bundle) at "
           "scan time: 1 trusted, 0 not; absent when the scan gave no verdict.",
           _value(TRUSTED)),
    Family("certscan_cert_untrusted_info",
           "Why the verdict refused the chain (validation reason); 1, present only where "
           "certscan_cert_trusted is 0.", _untrusted_info),
    Family("certscan_cert_info",
           "The leaf certificate's issuer CN and serial number (hex); 1. A new series for "
           "each certificate an endpoint serves.", _cert_info),
)
RECORDS = ("certscan_records",
           "Records in the result file by status and error type, the last one only of an "
           "endpoint scanned more than once.")
INVALID = ("certscan_result_lines_invalid",
           "Lines of the result file that are not certscan records (not JSON, torn, another "
           "tool's); they are skipped.")


class Snapshot:
    """The last record of each endpoint in a result file, held as its output rows, with the
    counts the summary metrics need. `see` each record, then `chunks()`."""

    def __init__(self) -> None:
        self._rows: dict[int, bytes] = {}
        self.records: Counter[tuple[bytes, bytes]] = Counter()  # (status, error type)
        self.invalid = 0
        self.first_invalid: BadRecord | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def see(self, record: Record) -> None:
        found = endpoint_row(record)
        if found is None:  # an invalid_target: no endpoint to hold, only a count
            error = record.get("error")
            kind = error.get("type") if isinstance(error, dict) else None
            self.records[escape(_text(record.get("status"))), escape(_text(kind))] += 1
            return
        identity, row = found
        key = int.from_bytes(hashlib.blake2b(identity, digest_size=8).digest(), "big")
        old = self._rows.get(key)
        if old is not None:  # the endpoint again: its last record wins
            self.records[_status(old)] -= 1
        self._rows[key] = row
        self.records[_status(row)] += 1

    def see_bad(self, bad: BadRecord) -> None:
        self.invalid += 1
        if self.first_invalid is None:
            self.first_invalid = bad

    def chunks(self) -> Iterator[bytes]:
        """The exposition, in pieces of about _CHUNK bytes: the summary, then each
        per-endpoint metric with its endpoints sorted by label set."""
        yield self._summary()
        rows = sorted(self._rows.values())
        for family in FAMILIES:
            name = family.name.encode()
            out = [b"# HELP %s %s\n# TYPE %s gauge\n" % (name, family.help.encode(), name)]
            size = 0
            for row in rows:
                fields = row.split(b"\n")
                sample = family.sample(fields)
                if sample is None:
                    continue
                line = b"%s{%s%s} %s\n" % (name, fields[LABELS], sample[0], sample[1])
                out.append(line)
                size += len(line)
                if size >= _CHUNK:
                    yield b"".join(out)
                    out, size = [], 0
            yield b"".join(out)

    def _summary(self) -> bytes:
        counts = Counter({(b"ok", b""): 0})
        counts.update({(b"error", str(kind).encode()): 0 for kind in ErrorType})
        counts.update(+self.records)
        fixed = list(counts)[: 1 + len(ErrorType)]
        order = fixed + sorted(key for key in counts if key not in fixed)
        name, text = RECORDS
        lines = [f"# HELP {name} {text}\n# TYPE {name} gauge\n".encode()]
        lines += [b'%s{status="%s",error="%s"} %d\n' % (name.encode(), status, kind,
                                                      counts[status, kind])
                  for status, kind in order]
        name, text = INVALID
        lines.append(f"# HELP {name} {text}\n# TYPE {name} gauge\n{name} {self.invalid}\n"
                     .encode())
        return b"".join(lines)


def _status(row: bytes) -> tuple[bytes, bytes]:
    fields = row.split(b"\n", ERROR + 1)
    return fields[STATUS], fields[ERROR]


def exposition(records: Iterable[Record | BadRecord]) -> bytes:
    """The whole exposition of these records, at once (for tests and small files)."""
    snapshot = Snapshot()
    for item in records:
        if isinstance(item, BadRecord):
            snapshot.see_bad(item)
        else:
            snapshot.see(item)
    return b"".join(snapshot.chunks())


# --- the command line ---------------------------------------------------------------------


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `metrics` subcommand; cli.py runs `run(args)` for it."""
    parser = commands.add_parser(
        "metrics",
        help="write a result file as Prometheus metrics (node_exporter's textfile collector)",
        description="Write the last record of each endpoint in RESULTS as Prometheus metrics "
                    "(text exposition format), for node_exporter's textfile collector.",
    )
    parser.add_argument("results", metavar="RESULTS.jsonl",
                        help="a result file of certscan scan; - is stdin")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write FILE atomically (FILE.tmp in its directory, then renamed "
                             "over it), as the textfile collector needs (default: stdout)")


def run(args: argparse.Namespace) -> int:
    """Exit status: 0; 1 a read or write failing part-way (one line naming the file; FILE,
    if given, is left as it was); 2 a usage error, before anything is read; 141 the reader
    of stdout went away."""
    source: str = args.results
    destination: str | None = None if args.output in (None, "-") else args.output
    try:
        _check_input(source)
        out = _open_output(destination, source)
    except UsageError as exc:
        say(f"error: {exc}")
        return EXIT_USAGE
    try:
        snapshot = Snapshot()
        try:
            for _, item in read_results(source):
                if isinstance(item, BadRecord):
                    snapshot.see_bad(item)
                else:
                    snapshot.see(item)
        except OSError as exc:
            say(f"error: {_name(source)}: read failed: {os_reason(exc)}")
            out.discard()
            return EXIT_FATAL
        if snapshot.first_invalid is not None:
            say(f"{_name(source)}: {snapshot.invalid} line(s) not records, counted in "
                 f"certscan_result_lines_invalid (first: {snapshot.first_invalid})")
        try:
            for chunk in snapshot.chunks():
                out.write(chunk)
            out.commit()
        except BrokenPipeError:
            out.discard()
            if destination is None:  # the interpreter's own flush at exit must not fail again
                _silence_stdout()
            return EXIT_BROKEN_PIPE
        except OSError as exc:
            out.discard()
            say(f"error: {out.name}: write failed: {os_reason(exc)}")
            return EXIT_FATAL
    except BaseException:  # Ctrl-C, a bug: never leave FILE.tmp behind
        out.discard()
        raise
    return EXIT_OK


def _silence_stdout() -> None:
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def _check_input(source: str) -> None:
    if source == "-":
        return
    try:
        mode = os.stat(source).st_mode
    except OSError as exc:
        raise UsageError(f"{source}: {os_reason(exc)}") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{source}: is a directory")
    if not os.access(source, os.R_OK):
        raise UsageError(f"{source}: permission denied")


class _Output:
    """stdout, or FILE written as FILE.tmp and renamed over FILE by `commit`: the textfile
    collector reads only *.prom files and never sees FILE.tmp, and a rename within one
    directory is atomic, so it reads the old file or the new one, never half of one."""

    def __init__(self, name: str, stream: BinaryIO, path: str | None) -> None:
        self.name = name
        self._stream = stream
        self._path = path

    def write(self, data: bytes) -> None:
        self._stream.write(data)

    def commit(self) -> None:
        self._stream.flush()
        if self._path is None:
            return
        os.fsync(self._stream.fileno())  # a crash after the rename never leaves an empty FILE
        self._stream.close()
        os.replace(self._path + ".tmp", self._path)

    def discard(self) -> None:
        """Nothing is committed: FILE.tmp is removed and FILE stays as it was."""
        if self._path is None:
            return
        with contextlib.suppress(OSError):
            self._stream.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path + ".tmp")


def _open_output(path: str | None, source: str) -> _Output:
    if path is None:
        return _Output("stdout", sys.stdout.buffer, None)
    if os.path.isdir(path):
        raise UsageError(f"-o {path}: is a directory")
    if source != "-" and os.path.exists(path) and os.path.samefile(source, path):
        raise UsageError(f"-o {path}: is the result file itself")
    try:
        stream = open(path + ".tmp", "wb")  # noqa: SIM115 (closed by commit or discard)
    except OSError as exc:
        raise UsageError(f"-o {path}: {os_reason(exc)}") from None
    return _Output(path, stream, path)


def _name(source: str) -> str:
    return "stdin" if source == "-" else source


