"""`certscan report RESULTS.jsonl`: a result file for a person.

    certscan report results.jsonl                        # the table, soonest expiry first
    certscan report results.jsonl --expiring-within 30d  # only what expires by then
    certscan report results.jsonl --csv inventory.csv --html inventory.html -q
    certscan report results.jsonl --fail-on expired,expiring:14d   # exit 3 when one holds

One row per endpoint (host, port, server name): when an endpoint has several records in the
file, the last one wins, and the header says how many were replaced. A record with no host
(an `invalid_target` line) is a row of its own, listed as an error. A line that is not a
record is counted in the header and listed below the table, never a crash.

A row's expiry is that of the certificate the server sent (leaf or chain) that expires
first; when that is not the leaf, the row says which (`chain[1]`, ...). Days left are whole
days from the moment of the report, rounded down as the record's own `days_left` is.
`--expiring-within` keeps the rows whose expiry falls within the span from now, the expired
ones included, in every output; the header's counts always cover the whole file, and so
does `--fail-on` (bad lines count as `error`, as alerts.py says).

Outputs:

- the table on stdout: plain text when stdout is not a terminal (no escape codes, widths
  unlimited unless COLUMNS is set); on a terminal, colours (none with NO_COLOR) and widths
  fitted to it. Strings from certificates are shown with their control, format and other
  non-printable characters (newlines, ANSI escapes, the right-to-left override, lone
  surrogates) as visible escapes (`\\x1b`, `\\u202e`), so a certificate cannot move the
  cursor, forge a line or reorder what follows. A backslash in a name is shown as it is.
- `--csv FILE`: one row per endpoint shown (bad lines are not records: they are not in
  it), `CSV_COLUMNS`, UTF-8, with the raw strings (no escapes: a spreadsheet is not a
  terminal). Formula injection is guarded: a text cell
  that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading apostrophe
  (`'=cmd|...`), which spreadsheets show and do not evaluate. Numbers we write ourselves
  (days left, port, line) are left as numbers, a negative one included.
- `--html FILE`: one self-contained page (`render_html`): no network at all.

`-` as FILE writes that output to stdout instead of the table.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import hashlib
import html
import io
import json
import os
import shutil
import sys
import textwrap
import traceback
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from ..runtime import os_reason, say
from .alerts import EXIT_ALERT, Alarm, FailOn, parse_span
from .results import BadRecord, Endpoint, Record, earliest_expiry, endpoint, read_results

EXIT_OK, EXIT_FATAL, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # the reader went away (`certscan report ... | head`), as scan does

SOON = timedelta(days=30)  # the header's "expiring within 30 days", as scan's summary says
BAD_LINES_KEPT = 1000  # bad lines listed (all are counted): a torn file can be all bad lines
NAMES_KEPT = 100  # names of one certificate kept for CSV and search (ten thousand SANs happen)
CHART_WEEKS = 26  # the HTML timeline: expired, then a bar a week for ~6 months, then later
_DAY = timedelta(days=1)


# -- rows ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Row:
    """One endpoint's line of the report, from its last record in the file.

    Certificate fields (names, subject, issuer, expiry, sha256, key) are empty (None, or
    `()` for names) when the record has no certificate, i.e. on every error record, and
    any one of them is empty when the scan could not read that field. `trusted`, `reason`
    and `hostname_match` are None when the scan gave no verdict (no --ca-bundle). The
    `error_*` fields are None unless `status` is not "ok".
    """

    line: int  # the record's line number in the result file
    endpoint: str  # Endpoint text; for a record with no host (invalid_target), its target
    target: str
    status: str
    scanned_at: str | None
    names: tuple[str, ...]  # SAN DNS names and addresses; else the subject CN
    name_count: int  # how many names the certificate has (names keeps NAMES_KEPT)
    subject: str | None
    issuer: str | None  # the leaf's issuer: its CN, else the whole RFC 4514 name
    expires: datetime | None  # the earliest not_after of the chain as sent
    position: int | None  # which certificate that is: 0 the leaf, 1 the next, ...
    expires_subject: str | None  # that certificate's subject
    trusted: bool | None
    reason: str | None
    hostname_match: bool | None
    error_type: str | None
    error_stage: str | None
    error_message: str | None
    sha256: str | None
    ip: str | None
    sni: str | None
    key: str | None  # "rsa 2048", "ec secp256r1", "ed25519"
    tls_version: str | None

    @property
    def which(self) -> str | None:
        """"leaf", "chain[1]", ...; None without an expiry."""
        if self.position is None:
            return None
        return "leaf" if self.position == 0 else f"chain[{self.position}]"

    def days_left(self, now: datetime) -> int | None:
        return None if self.expires is None else (self.expires - now) // _DAY

    def verdict(self) -> str:
        """The verdict, or the error: what the last column says."""
        if self.status != "ok":
            text = f"error: {self.error_type or 'unknown'}"
            if self.error_stage:
                text += f" ({self.error_stage})"
            return text + (f": {self.error_message}" if self.error_message else "")
        if self.trusted is None:
            return "no verdict"
        if self.trusted:
            return "trusted"
        text = f"untrusted: {self.reason or 'other'}"
        if self.hostname_match is False and self.reason != "hostname_mismatch":
            text += ", name mismatch"
        return text

    def names_text(self, limit: int = 1) -> str:
        """The first `limit` names, and how many more there are."""
        if not self.names:
            return self.subject or ""
        shown = ", ".join(self.names[:limit])
        more = self.name_count - min(limit, len(self.names))
        return f"{shown} +{more}" if more > 0 else shown

    def alarm_view(self) -> Record:
        """What `--fail-on` reads of the record (alerts.Alarm.see): status, verdict, and the
        earliest expiry at its place in the chain."""
        chain: list[dict[str, str | None]] = []
        if self.expires is not None and self.position is not None:
            chain = [{"not_after": None}] * self.position
            chain.append({"not_after": _iso(self.expires)})
        return {"status": self.status, "chain": chain,
                "validation": None if self.trusted is None else {"trusted": self.trusted}}


def _iso(moment: datetime) -> str:
    """As records write times ("2026-01-31T12:00:00Z"; years before 1000 padded)."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _obj(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _name(value: object, *, prefer_cn: bool) -> str | None:
    name = _obj(value)
    cn, rfc4514 = _str(name.get("cn")), _str(name.get("rfc4514"))
    return (cn or rfc4514) if prefer_cn else (rfc4514 or cn)


def _key(value: object) -> str | None:
    key = _obj(value)
    kind = _str(key.get("type"))
    if kind is None:
        return None
    detail = _str(key.get("curve")) or key.get("bits")
    return f"{kind} {detail}" if isinstance(detail, str | int) and kind != detail else kind


def make_row(record: Record, line: int) -> Row:
    """A record as a row. Any field of the wrong type (a file edited by hand) reads as
    empty; nothing here raises."""
    cert, error, validation = (_obj(record.get(k)) for k in ("certificate", "error",
                                                              "validation"))
    san = _obj(cert.get("san"))
    names = [n for kind in ("dns", "ip") for n in (san.get(kind) or ()) if isinstance(n, str)]
    if not names and (cn := _str(_obj(cert.get("subject")).get("cn"))):
        names = [cn]
    first = earliest_expiry(record)
    where = endpoint(record)
    target = _str(record.get("target")) or ""
    trusted, match = validation.get("trusted"), validation.get("hostname_match")
    return Row(
        line=line,
        endpoint=str(where) if where is not None else target,
        target=target,
        status=_str(record.get("status")) or "error",
        scanned_at=_str(record.get("scanned_at")),
        names=tuple(names[:NAMES_KEPT]),
        name_count=len(names),
        subject=_name(cert.get("subject"), prefer_cn=False),
        issuer=_name(cert.get("issuer"), prefer_cn=True),
        expires=None if first is None else first.not_after,
        position=None if first is None else first.position,
        expires_subject=None if first is None else first.subject,
        trusted=trusted if isinstance(trusted, bool) else None,
        reason=_str(validation.get("reason")),
        hostname_match=match if isinstance(match, bool) else None,
        error_type=_str(error.get("type")),
        error_stage=_str(error.get("stage")),
        error_message=_str(error.get("message")),
        sha256=_str(cert.get("sha256")),
        ip=_str(record.get("ip")),
        sni=_str(record.get("sni")),
        key=_key(cert.get("key")),
        tls_version=_str(_obj(record.get("tls")).get("version")),
    )


@dataclass(frozen=True, slots=True)
class Inventory:
    """A result file read: the rows (one per endpoint, the last record winning), and the
    lines that were not records (the first BAD_LINES_KEPT of them; `bad_count` counts all)."""

    source: str
    rows: tuple[Row, ...]
    records: int  # records read, replaced ones included
    replaced: int  # records that a later record of the same endpoint replaced
    bad: tuple[BadRecord, ...]
    bad_count: int


def load(path: str) -> Inventory:
    """Read a result file as a stream, keeping a small row per endpoint (no PEM, no chain).
    OSError when it cannot be read."""
    rows: dict[Endpoint | int, Row] = {}
    bad: list[BadRecord] = []
    bad_count = records = replaced = 0
    for number, item in read_results(path):
        if isinstance(item, BadRecord):
            bad_count += 1
            if len(bad) < BAD_LINES_KEPT:
                bad.append(item)
            continue
        records += 1
        key: Endpoint | int = endpoint(item) or number  # no host: a row of its own
        if key in rows:
            replaced += 1
        rows[key] = make_row(item, number)
    return Inventory(path, tuple(rows.values()), records, replaced, tuple(bad), bad_count)


def ordered(rows: Iterable[Row], now: datetime, within: timedelta | None = None) -> list[Row]:
    """Soonest expiry first, rows without one (errors) last, each group by endpoint;
    with `within`, only the rows whose expiry is at most that far from now."""
    chosen = [r for r in rows
              if within is None or (r.expires is not None and r.expires <= now + within)]
    return sorted(chosen, key=lambda r: (r.expires is None, r.expires or now, r.endpoint,
                                         r.line))


# -- counts ----------------------------------------------------------------------------------

def breakdowns(inventory: Inventory, now: datetime) -> list[tuple[str, list[tuple[str, int]]]]:
    """The header's counts over every row (not only those shown): most common first, but
    expiry in time order (expired, within 30 days, later)."""
    status, errors, verdicts, issuers, keys, tls = (Counter[str]() for _ in range(6))
    expiry: Counter[str] = Counter()
    for row in inventory.rows:
        status[row.status] += 1
        if row.status != "ok":
            errors[row.error_type or "unknown"] += 1
            continue
        verdicts["no verdict" if row.trusted is None
                 else "trusted" if row.trusted else f"untrusted: {row.reason or 'other'}"] += 1
        issuers[row.issuer or "(unreadable)"] += 1
        keys[row.key or "(unreadable)"] += 1
        tls[row.tls_version or "(unknown)"] += 1
        if row.expires is not None:
            if row.expires <= now:
                expiry[f"expired ({row.which})"] += 1
            elif row.expires <= now + SOON:
                expiry[f"within 30 days ({row.which})"] += 1
            else:
                expiry["later"] += 1
    soonest = sorted(expiry.items(), key=lambda item: (
        ("expired", "within", "later").index(item[0].split(" ")[0]), item[0]))
    return [("status", most_common(status)), ("errors", most_common(errors)),
            ("verdicts", most_common(verdicts)), ("expiry", soonest),
            ("issuers", most_common(issuers)), ("keys", most_common(keys)),
            ("tls", most_common(tls))]


def _scanned(rows: Sequence[Row]) -> str | None:
    times = [r.scanned_at for r in rows if r.scanned_at]
    if not times:
        return None
    first, last = min(times), max(times)  # ISO 8601 UTC, one format: text order is time's
    return visible(first) if first == last else f"{visible(first)} to {visible(last)}"


def headline(inventory: Inventory, shown: int, within: timedelta | None) -> list[str]:
    """What was read and what is shown: the first lines of the header."""
    endpoints = len(inventory.rows)
    text = (f"{inventory.records} record{'s' * (inventory.records != 1)}, "
            f"{endpoints} endpoint{'s' * (endpoints != 1)}")
    if inventory.replaced:
        text += (f" ({inventory.replaced} record{'s' * (inventory.replaced != 1)} replaced "
                 "by a later record of the same endpoint: the last record wins)")
    text += f", {inventory.bad_count} bad line{'s' * (inventory.bad_count != 1)}"
    lines = [text]
    if scanned := _scanned(inventory.rows):
        lines.append(f"scanned {scanned}")
    if within is None:
        lines.append(f"showing all {shown}, soonest expiry first")
    else:
        lines.append(f"showing {shown} of {endpoints}: expiring within {_span(within)} "
                     "(expired included), soonest first")
    return lines


def _span(span: timedelta) -> str:
    if span % _DAY == timedelta(0):
        return f"{span.days}d"
    return f"{int(span.total_seconds() // 3600)}h"


def most_common(counts: Counter[str]) -> list[tuple[str, int]]:
    """Most common first; equal counts by name, so the order never depends on the file's."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _counted(items: Sequence[tuple[str, int]], limit: int | None = None) -> str:
    text = ", ".join(f"{visible(k)} {n}" for k, n in items[:limit])
    if limit is not None and len(items) > limit:
        rest = items[limit:]
        text += f", {len(rest)} more ({sum(n for _, n in rest)})"
    return text or "none"


# -- the terminal ----------------------------------------------------------------------------

def visible(text: str) -> str:
    """The text with every character that is not printable as itself (control characters
    such as newline and ESC, format characters such as the right-to-left override, line
    separators, lone surrogates) replaced by a visible escape: `\\n`, `\\x1b`, `\\u202e`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if char in "\n\r\t":
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def cells(text: str) -> int:
    """Terminal columns the (visible) text takes: wide characters 2, combining marks 0."""
    if text.isascii():
        return len(text)
    return sum(_char_cells(c) for c in text)


def _char_cells(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _cut(text: str, width: int) -> str:
    if cells(text) <= width:
        return text
    kept, used = [], 0
    for char in text:
        used += _char_cells(char)
        if used > width - 1:
            break
        kept.append(char)
    return "".join(kept) + "…"


@dataclass(frozen=True, slots=True)
class _Column:
    title: str
    least: int  # the narrowest it is cut to when the terminal is narrow
    weight: float = 0.0  # its share when cut: 0 is never cut
    right: bool = False


TABLE = (_Column("ENDPOINT", 12, 4), _Column("NAMES", 8, 2), _Column("ISSUER", 8, 1.5),
         _Column("EXPIRES", 10), _Column("DAYS", 4, right=True),
         _Column("VERDICT / ERROR", 12, 3))
_NARROWEST = 3  # what a flexible column is cut to when even the `least` widths do not fit
_SGR = {"bad": "\x1b[31m", "warn": "\x1b[33m", "good": "\x1b[32m", "head": "\x1b[1m"}
_RESET = "\x1b[0m"


def table_cells(row: Row, now: datetime) -> tuple[str, ...]:
    """The row's cells as the terminal shows them (made visible, not yet cut)."""
    expires = ""
    if row.expires is not None:
        expires = row.expires.strftime("%Y-%m-%d")
        if row.position:
            expires += f" {row.which}"
    days = row.days_left(now)
    return (visible(row.endpoint), visible(row.names_text()), visible(row.issuer or ""),
            expires, "" if days is None else str(days), visible(row.verdict()))


def _severity(row: Row, now: datetime) -> tuple[str, str]:
    """The colours of the days cell and of the verdict cell."""
    days = ""
    if row.expires is not None:
        days = "bad" if row.expires <= now else "warn" if row.expires <= now + SOON else ""
    if row.status != "ok" or row.trusted is False:
        return days, "bad"
    return days, "good" if row.trusted else ""


def fit(natural: Sequence[int], width: int | None) -> list[int]:
    """Column widths: the natural ones, narrowed one step at a time until the table fits
    `width` (None: no limit), each step taken from the column widest for its weight (the
    endpoint and the verdict keep the most, the issuer the least): down to each column's
    `least` first, then, on a very narrow terminal, to _NARROWEST."""
    widths = list(natural)
    if width is None:
        return widths
    room = width - 2 * (len(widths) - 1)
    for floor in ([col.least for col in TABLE], [_NARROWEST] * len(TABLE)):
        while sum(widths) > room:
            candidates = [i for i, col in enumerate(TABLE)
                          if col.weight and widths[i] > min(floor[i], natural[i])]
            if not candidates:
                break
            widest = max(candidates, key=lambda i: widths[i] / TABLE[i].weight)
            widths[widest] -= 1
    return widths


def render_terminal(inventory: Inventory, rows: Sequence[Row], now: datetime, *,
                    within: timedelta | None = None, width: int | None = None,
                    color: bool = False) -> str:
    """The header, the table and the bad lines, as text. `width` None: no limit; `color`:
    ANSI colours (the only escape codes in the output: certificates' are made visible)."""
    def paint(kind: str, text: str) -> str:
        return f"{_SGR[kind]}{text}{_RESET}" if color and kind and text else text

    out: list[str] = []
    wrap = width if width and width > 40 else None
    head = [f"certscan report: {visible(inventory.source)}: "
            + "\n".join(headline(inventory, len(rows), within))]
    for label, counts in breakdowns(inventory, now):
        head.append(f"{label + ':':<10}{_counted(counts, 6 if label == 'issuers' else None)}")
    for text in "\n".join(head).splitlines():
        out.extend(textwrap.wrap(text, wrap, subsequent_indent=" " * 10,
                                 break_on_hyphens=False) if wrap else [text])
    out.append("")
    body = [table_cells(row, now) for row in rows]
    natural = [max([cells(col.title), *(cells(c[i]) for c in body)])
               for i, col in enumerate(TABLE)]
    widths = fit(natural, width)

    def line(values: Sequence[str], kinds: Sequence[str]) -> str:
        parts = []
        for i, (col, value) in enumerate(zip(TABLE, values, strict=True)):
            text = _cut(value, widths[i])
            pad = " " * (widths[i] - cells(text))
            last = i == len(TABLE) - 1
            parts.append(pad + paint(kinds[i], text) if col.right
                         else paint(kinds[i], text) + ("" if last else pad))
        return "  ".join(parts).rstrip()

    out.append(line([c.title for c in TABLE], ["head"] * len(TABLE)))
    for row, values in zip(rows, body, strict=True):
        days, verdict = _severity(row, now)
        out.append(line(values, ("", "", "", "", days, verdict)))
    if not rows:
        out.append("(no endpoint" + (f" expires within {_span(within)})" if within else ")"))
    if inventory.bad_count:
        out.append("")
        out.append(f"bad lines ({inventory.bad_count}):")
        out.extend(f"  {_cut(visible(str(bad)), (width or 10**9) - 2)}"
                   for bad in inventory.bad)
        if inventory.bad_count > len(inventory.bad):
            out.append(f"  ... and {inventory.bad_count - len(inventory.bad)} more")
    return "\n".join(out) + "\n"


# -- CSV -------------------------------------------------------------------------------------

CSV_COLUMNS = ("endpoint", "names", "issuer", "not_after", "expiring_certificate",
               "days_left", "verdict", "status", "error_type", "reason", "sha256", "ip",
               "sni", "key", "tls_version", "subject", "target", "scanned_at", "line")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def guarded(value: str | int | None) -> str | int:
    """A CSV cell: None is empty; a text cell that a spreadsheet would read as a formula
    (starting with = + - @, a tab or a carriage return) gets a leading apostrophe."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA):
        return "'" + value
    return value


def csv_row(row: Row, now: datetime) -> list[str | int]:
    names = " ".join(row.names)
    if row.name_count > len(row.names):
        names += f" +{row.name_count - len(row.names)}"
    values: tuple[str | int | None, ...] = (
        row.endpoint, names, row.issuer,
        None if row.expires is None else _iso(row.expires),
        row.which, row.days_left(now), row.verdict(), row.status, row.error_type,
        row.reason, row.sha256, row.ip, row.sni, row.key, row.tls_version, row.subject,
        row.target, row.scanned_at, row.line)
    return [guarded(value) for value in values]


def write_csv(rows: Iterable[Row], stream: TextIO, now: datetime) -> None:
    """`stream` opened with newline="" (the csv module writes its own line ends)."""
    writer = csv.writer(stream)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_row(row, now) for row in rows)


# -- HTML ------------------------------------------------------------------------------------

def _e(text: str | None) -> str:
    """Escaped for HTML text and attributes, after making it visible (a page is read by a
    person too: no invisible reordering or control characters)."""
    return html.escape(visible(text or ""), quote=True)


def script_json(value: object) -> str:
    """JSON for a <script type="application/json"> element: ASCII, with every `<` written
    as \\u003c, so neither `</script>` nor `<!--` can end or change the element."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


_CONTENT_POLICY = ("default-src 'none'; script-src {script}; style-src {style}; "
                   "img-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'")


def _html_row(row: Row, now: datetime, index: int) -> str:
    days = row.days_left(now)
    days_kind, verdict_kind = _severity(row, now)
    expires = ""
    if row.expires is not None:
        expires = f'<span class="nowrap">{row.expires.strftime("%Y-%m-%d %H:%M")}</span>'
        if row.position:
            expires += (f' <span class="which" title="{_e(row.expires_subject)}">'
                        f"{_e(row.which)}</span>")
    # Searched with the row's own text (the page adds it): only what the cells do not show.
    search = " ".join(filter(None, (
        row.target, " ".join(row.names[2:]), row.subject, row.sha256, row.ip,
        row.expires_subject))).lower()
    all_names = ", ".join(row.names)
    row_title = " ".join(filter(None, (f"line {row.line}", row.ip and f"address {row.ip}",
                                       row.sha256 and f"sha256 {row.sha256}")))
    return (
        f'<tr data-i="{index}" data-line="{row.line}" data-search="{_e(search)}">'
        f'<td title="{_e(row_title)}">{_e(row.endpoint)}</td>'
        f'<td title="{_e(all_names)}">{_e(row.names_text(2))}</td>'
        f'<td title="{_e(row.subject and "subject " + row.subject)}">{_e(row.issuer)}</td>'
        f'<td data-sort="{"" if row.expires is None else int(row.expires.timestamp())}">'
        f"{expires}</td>"
        f'<td class="num {days_kind}" data-sort="{"" if days is None else days}">'
        f'{"" if days is None else days}</td>'
        f'<td class="{verdict_kind}">{_e(row.verdict())}</td>'
        f"<td>{_e(row.key)}</td><td>{_e(row.tls_version)}</td></tr>")


_MAIN_COLUMNS = (("endpoint", "Endpoint", "text"), ("names", "Names", "text"),
                 ("issuer", "Issuer", "text"), ("expires", "Expires (UTC)", "number"),
                 ("days", "Days left", "number"), ("verdict", "Verdict or error", "text"),
                 ("key", "Key", "text"), ("tls", "TLS", "text"))


def _thead(columns: Iterable[tuple[str, str, str]]) -> str:
    return "<thead><tr>" + "".join(
        f'<th data-column="{name}" data-type="{kind}"><button type="button">{title}'
        "</button></th>" for name, title, kind in columns) + "</tr></thead>"


def _counts_table(label: str, counts: Sequence[tuple[str, int]]) -> str:
    body = "".join(f'<tr data-i="{i}"><td>{_e(key)}</td><td class="num">{n}</td></tr>'
                   for i, (key, n) in enumerate(counts))
    body = body or '<tr data-i="0"><td>none</td><td></td></tr>'
    return ('<table class="sortable counts">'
            + _thead(((label, _e(label), "text"), ("count", "count", "number")))
            + f"<tbody>{body}</tbody></table>")


def render_html(inventory: Inventory, rows: Sequence[Row], now: datetime, *,
                within: timedelta | None = None) -> str:
    """One self-contained page: the header's counts, an expiry timeline (an SVG the inline
    script draws: expired, a bar a week for CHART_WEEKS weeks, later), the table (click a
    header to sort, a search box filtering rows), the bad lines. No network: inline CSS
    and script, nothing fetched, and a Content-Security-Policy allowing only those two
    (by hash). Every string is escaped (html.escape, after `visible`); the chart's data is
    JSON in a <script type="application/json"> with `<` escaped (`script_json`).

    With `#selftest` in the URL the script also checks itself (sorts each column both
    ways, runs the searches named after `#selftest=`, comma-separated) and writes what it
    saw, and any error, as JSON into <pre id="selftest">: the tests' hook for a browser."""
    stamp = _iso(now)
    data = {
        "now": stamp,
        "weeks": CHART_WEEKS,
        "expiries": [[_iso(row.expires), visible(row.endpoint)]
                     for row in rows if row.expires is not None],
    }
    policy = _CONTENT_POLICY.format(script=_csp_hash(_SCRIPT), style=_csp_hash(_STYLE))
    head = headline(inventory, len(rows), within)
    counts = "".join(_counts_table(label, c) for label, c in breakdowns(inventory, now))
    bad = ""
    if inventory.bad_count:
        items = "".join(f'<tr data-i="{i}"><td class="num">{b.line}</td><td>{_e(b.reason)}'
                        "</td></tr>" for i, b in enumerate(inventory.bad))
        more = inventory.bad_count - len(inventory.bad)
        bad = (f"<h2>Bad lines ({inventory.bad_count})</h2>"
               '<table class="sortable" id="bad-lines">'
               + _thead((("line", "Line", "number"), ("reason", "Why it is not a record",
                                                       "text")))
               + f"<tbody>{items}</tbody></table>"
               + (f"<p>... and {more} more</p>" if more else ""))
    body_rows = "".join(_html_row(row, now, i) for i, row in enumerate(rows))
    title = f"certscan report: {inventory.source}"
    return "".join((
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<header><h1>{_e(title)}</h1><ul class=\"facts\"><li>generated {stamp}</li>",
        "".join(f"<li>{_e(line)}</li>" for line in head), "</ul></header>",
        '<section id="chart"><h2>Expiry timeline</h2>',
        "<p>Endpoints by the expiry of the first certificate of their chain to expire: "
        f"expired, then week by week for {CHART_WEEKS} weeks from the report, then later. "
        "Hover over a bar for its endpoints.</p>",
        '<svg id="timeline" role="img" aria-label="expiry timeline" '
        'xmlns="http://www.w3.org/2000/svg"></svg>',
        '<p class="legend"><span class="key expired"></span>expired '
        '<span class="key soon"></span>within 30 days <span class="key near"></span>'
        'within 90 days <span class="key later"></span>later</p></section>',
        f'<section id="counts"><h2>Counts</h2><div class="grid">{counts}</div></section>',
        '<section id="endpoints-section"><h2>Endpoints</h2>',
        '<p><input type="search" id="search" placeholder="Search endpoints, names, issuers, '
        'verdicts, SHA-256..." aria-label="search"> <span id="shown">'
        f"{len(rows)} endpoints</span></p>",
        '<table class="sortable" id="endpoints">', _thead(_MAIN_COLUMNS),
        f"<tbody>{body_rows}</tbody></table></section>",
        bad,
        '<pre id="selftest" hidden></pre>',
        f'<script type="application/json" id="report-data">{script_json(data)}</script>',
        f"<script>{_SCRIPT}</script></body></html>\n",
    ))


# -- the command -----------------------------------------------------------------------------

def _span_arg(text: str) -> timedelta:
    try:
        return parse_span(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fail_on_arg(text: str) -> FailOn:
    try:
        return FailOn.parse(text, allowed=("expired", "untrusted", "expiring", "error"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `report` subcommand and its flags; `run` carries it out."""
    report = commands.add_parser(
        "report", help="read a result file: a table, CSV or an HTML page, for a person",
        description="Read a result file (- for stdin): one row per endpoint (the last "
                    "record of an endpoint wins), soonest expiry first, with counts by "
                    "status, error, verdict, issuer, key and TLS version.")
    report.add_argument("results", metavar="RESULTS", help="a result file of certscan scan")
    report.add_argument("--expiring-within", type=_span_arg, metavar="SPAN",
                        help="only endpoints whose certificates (leaf or chain) expire "
                             "within SPAN (30d, 12h, 2w), the expired included")
    report.add_argument("--csv", metavar="FILE",
                        help="also write the rows as CSV (- for stdout, instead of the table)")
    report.add_argument("--html", metavar="FILE",
                        help="also write one self-contained HTML page (- for stdout)")
    report.add_argument("-q", "--quiet", action="store_true",
                        help="no table on stdout (with --csv/--html, or for --fail-on)")
    report.add_argument("--fail-on", type=_fail_on_arg, metavar="CONDITIONS",
                        help="exit 3 when any of these holds for an endpoint, naming the "
                             "counts: expired, untrusted, expiring:14d, error "
                             "(comma-separated)")


def _usage(args: argparse.Namespace) -> str | None:
    """What is wrong with the outputs asked for, before anything is read; else None."""
    outputs = [(flag, path) for flag, path in (("--csv", args.csv), ("--html", args.html))
               if path is not None]
    if [path for _, path in outputs].count("-") > 1:
        return "--csv - and --html -: only one output can go to stdout"
    if len(outputs) == 2 and outputs[0][1] == outputs[1][1]:
        return f"--csv and --html: both write {outputs[0][1]!r}"
    for flag, path in outputs:
        if path == "-":
            continue
        target = Path(path)
        if target.is_dir():
            return f"{flag} {path!r}: is a directory"
        if not target.parent.is_dir():
            return f"{flag} {path!r}: no such directory {str(target.parent)!r}"
    return None


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    # newline="": the CSV text already holds its \r\n line ends; lone surrogates (JSON
    # allows them) are written as escapes rather than failing the encode.
    with open(path, "w", encoding="utf-8", errors="backslashreplace", newline="") as out:
        out.write(text)


def _stdout_width() -> int | None:
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return shutil.get_terminal_size().columns
    return None


def run(args: argparse.Namespace) -> int:
    """`certscan report`: 0; EXIT_ALERT when --fail-on holds; 1 when a file cannot be read
    or written (one line naming it) or on a bug (one line; CERTSCAN_DEBUG=1 adds the
    traceback); 2 for a usage error that argparse could not see; 141 when the reader of
    stdout went away."""
    if problem := _usage(args):
        say(f"error: {problem}")
        return EXIT_USAGE
    if isinstance(sys.stdout, io.TextIOWrapper):  # a terminal or pipe that is not UTF-8
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        return _report(args)
    except BrokenPipeError:
        # The reader went away: quiet, as `cat`; stdout now points at /dev/null, so that
        # the interpreter's own flush at exit does not complain.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: one line, not a trace
        say(f"error: {type(exc).__name__}: {exc} (a bug in certscan report)")
        if os.environ.get("CERTSCAN_DEBUG"):
            traceback.print_exc()
        return EXIT_FATAL


def _report(args: argparse.Namespace) -> int:
    try:
        inventory = load(args.results)
    except OSError as exc:
        say(f"error: result file {args.results!r}: {os_reason(exc)}")
        return EXIT_FATAL
    now = datetime.now(UTC)
    within: timedelta | None = args.expiring_within
    rows = ordered(inventory.rows, now, within)
    outputs = {"--csv": args.csv, "--html": args.html}
    for flag, path in outputs.items():
        if path is None:
            continue
        if flag == "--csv":
            text = io.StringIO(newline="")
            write_csv(rows, text, now)
            page = text.getvalue()
        else:
            page = render_html(inventory, rows, now, within=within)
        try:
            _write(path, page)
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            say(f"error: {flag} {path!r}: {os_reason(exc)}")
            return EXIT_FATAL
    if not args.quiet and "-" not in outputs.values():
        tty = sys.stdout.isatty()
        sys.stdout.write(render_terminal(inventory, rows, now, within=within,
                                         width=_stdout_width(),
                                         color=tty and not os.environ.get("NO_COLOR")))
        sys.stdout.flush()
    if args.fail_on is None:
        return EXIT_OK
    # --fail-on judges what the report shows as current: each endpoint's last record,
    # whatever --expiring-within kept; a bad line gave no certificate (`error`).
    alarm = Alarm(args.fail_on, now=now)
    for row in inventory.rows:
        alarm.see(row.alarm_view())
    for _ in range(inventory.bad_count):
        alarm.see({"status": "error", "chain": []})
    if not alarm.tripped:
        return EXIT_OK
    for finding in alarm.lines():
        say(f"--fail-on: {finding}")
    return EXIT_ALERT


# -- the page's own style and script (hashed into its Content-Security-Policy) ---------------

_STYLE = """
:root { color-scheme: light dark; --bad: #c62828; --warn: #e08a00; --near: #c9b400;
  --good: #2e7d32; --later: #6b8fb5; --line: #8884; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.15em; margin: 1.2em 0 .4em; }
table { border-collapse: collapse; margin: 0 0 1em; }
th, td { border-bottom: 1px solid var(--line); padding: .2em .6em; text-align: left;
  vertical-align: top; unicode-bidi: isolate; overflow-wrap: break-word; }
#endpoints { font-size: 13px; }
#endpoints td:nth-child(3) { overflow-wrap: anywhere; }
.nowrap { white-space: nowrap; }
#endpoints td:nth-child(5), #endpoints td:nth-child(8) { white-space: nowrap; }
.facts { margin: 0; padding-left: 1.2em; }
th button { font: inherit; font-weight: 600; border: 0; background: none; padding: 0;
  cursor: pointer; color: inherit; }
th[aria-sort="ascending"] button::after { content: " \\25B2"; }
th[aria-sort="descending"] button::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.bad { color: var(--bad); font-weight: 600; } td.warn { color: var(--warn); }
td.good { color: var(--good); }
.which { font-size: .85em; padding: 0 .3em; border: 1px solid var(--warn); border-radius: 3px; }
.grid { display: flex; flex-wrap: wrap; gap: 0 1.5em; align-items: flex-start; }
#timeline { width: 100%; max-width: 960px; height: auto; display: block; }
#timeline .bar.expired, .key.expired { fill: var(--bad); background: var(--bad); }
#timeline .bar.soon, .key.soon { fill: var(--warn); background: var(--warn); }
#timeline .bar.near, .key.near { fill: var(--near); background: var(--near); }
#timeline .bar.later, .key.later { fill: var(--later); background: var(--later); }
#timeline text { font-size: 11px; fill: currentColor; }
#timeline .axis { stroke: currentColor; stroke-width: 1; }
.key { display: inline-block; width: .9em; height: .9em; margin: 0 .3em 0 1em;
  vertical-align: -.1em; }
#search { width: 28em; max-width: 100%; padding: .3em; }
"""

_SCRIPT = r"""
"use strict";
(() => {
  const problems = [];
  window.addEventListener("error", (e) => problems.push("error: " + e.message));
  window.addEventListener("unhandledrejection", (e) => problems.push("rejection: " + e.reason));
  document.addEventListener("securitypolicyviolation",
    (e) => problems.push("csp: " + e.violatedDirective + " " + e.blockedURI));
  const consoleError = console.error.bind(console);
  console.error = (...args) => {
    problems.push("console: " + args.join(" "));
    consoleError(...args);
  };

  const data = JSON.parse(document.getElementById("report-data").textContent);
  const NS = "http://www.w3.org/2000/svg";  // the SVG namespace: a name, nothing fetched
  const WEEK = 7 * 86400000;
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                  "Nov", "Dec"];
  const day = (t) => {
    const d = new Date(t);
    return d.getUTCDate() + " " + MONTHS[d.getUTCMonth()];
  };

  function bins() {
    const now = Date.parse(data.now);
    const out = [{label: "expired", tick: "expired", cls: "expired", count: 0, names: []}];
    for (let w = 0; w < data.weeks; w++) {
      const start = now + w * WEEK;
      out.push({label: "week of " + day(start) + " " + new Date(start).getUTCFullYear(),
                tick: w % 4 === 0 && w > 0 ? day(start) : "",
                cls: w * 7 < 30 ? "soon" : w * 7 < 90 ? "near" : "later", count: 0, names: []});
    }
    out.push({label: "after " + day(now + data.weeks * WEEK), tick: "later", cls: "later",
              count: 0, names: []});
    for (const [iso, name] of data.expiries) {
      const t = Date.parse(iso);
      if (Number.isNaN(t)) continue;
      const i = t <= now ? 0 : Math.min(Math.floor((t - now) / WEEK) + 1, data.weeks + 1);
      out[i].count++;
      if (out[i].names.length < 10) out[i].names.push(name);
    }
    return out;
  }

  function node(name, attrs, text) {
    const el = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function drawTimeline() {
    const svg = document.getElementById("timeline");
    const all = bins();
    const W = 960, H = 230, left = 34, right = 8, top = 16, bottom = 36;
    const slot = (W - left - right) / all.length;
    const max = Math.max(1, ...all.map((b) => b.count));
    const scale = (H - top - bottom) / max;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.append(node("line", {class: "axis", x1: left, y1: H - bottom, x2: W - right,
                             y2: H - bottom}));
    svg.append(node("text", {x: left - 6, y: top + 4, "text-anchor": "end"}, String(max)));
    svg.append(node("text", {x: left - 6, y: H - bottom, "text-anchor": "end"}, "0"));
    all.forEach((b, i) => {
      const x = left + i * slot;
      const h = b.count * scale;
      const rect = node("rect", {class: "bar " + b.cls, x: x + 1.5, y: H - bottom - h,
                                 width: Math.max(slot - 3, 1), height: h});
      rect.dataset.count = b.count;
      const more = b.count > b.names.length ? "\n..." : "";
      rect.append(node("title", {}, `${b.label}: ${b.count}` +
                       (b.names.length ? "\n" + b.names.join("\n") + more : "")));
      svg.append(rect);
      if (b.count) svg.append(node("text", {x: x + slot / 2, y: H - bottom - h - 3,
                                            "text-anchor": "middle"}, String(b.count)));
      if (b.tick) svg.append(node("text", {x: x + slot / 2, y: H - bottom + 14,
                                           "text-anchor": "middle"}, b.tick));
    });
    svg.dataset.bars = all.length;
    svg.dataset.total = all.reduce((n, b) => n + b.count, 0);
    svg.dataset.drawn = "yes";
  }

  const collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});

  function sortBy(th) {
    const table = th.closest("table");
    const index = th.cellIndex;
    const numeric = th.dataset.type === "number";
    const dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    for (const other of th.parentElement.cells) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    const body = table.tBodies[0];
    const keyed = Array.from(body.rows, (row) => {
      const cell = row.cells[index];
      const raw = cell ? (cell.dataset.sort ?? cell.textContent) : "";
      const key = numeric ? Number(raw) : raw;
      return {row, key, empty: raw === "" || (numeric && Number.isNaN(key)),
              i: Number(row.dataset.i)};
    });
    keyed.sort((a, b) => {
      if (a.empty !== b.empty) return a.empty ? 1 : -1;  // empty cells last, either way
      const c = a.empty ? 0 : numeric ? a.key - b.key : collator.compare(a.key, b.key);
      return c !== 0 ? dir * c : a.i - b.i;
    });
    const fragment = document.createDocumentFragment();
    for (const k of keyed) fragment.append(k.row);
    body.append(fragment);
  }

  for (const th of document.querySelectorAll("table.sortable thead th")) {
    th.querySelector("button").addEventListener("click", () => sortBy(th));
  }

  const search = document.getElementById("search");
  const shown = document.getElementById("shown");
  const endpoints = document.getElementById("endpoints");
  const hays = new WeakMap();  // each row's text, lower-cased once
  function filter() {
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const rows = endpoints.tBodies[0].rows;
    let count = 0;
    for (const row of rows) {
      let hay = hays.get(row);
      if (hay === undefined) {
        hay = Array.from(row.cells, (c) => c.textContent).concat(row.dataset.search)
          .join(" ").toLowerCase();
        hays.set(row, hay);
      }
      const keep = words.every((w) => hay.includes(w));
      row.hidden = !keep;
      if (keep) count++;
    }
    shown.textContent = words.length ? `${count} of ${rows.length} endpoints match`
                                     : `${rows.length} endpoints`;
  }
  search.addEventListener("input", filter);

  drawTimeline();
  if (search.value) filter();  // a search the browser restored

  function selftest() {
    const lines = () => Array.from(endpoints.tBodies[0].rows, (r) => Number(r.dataset.line));
    const visibleLines = () => Array.from(endpoints.tBodies[0].rows)
      .filter((r) => !r.hidden).map((r) => Number(r.dataset.line));
    const svg = document.getElementById("timeline");
    const out = {
      initial: lines(),
      chart: {drawn: svg.dataset.drawn || null, bars: Number(svg.dataset.bars),
              total: Number(svg.dataset.total),
              counts: Array.from(svg.querySelectorAll("rect.bar"), (r) => Number(r.dataset.count))},
      sorts: {}, searches: [],
    };
    for (const th of endpoints.tHead.rows[0].cells) {
      const button = th.querySelector("button");
      button.click();
      const asc = lines();
      button.click();
      out.sorts[th.dataset.column] = {asc, desc: lines(), aria: th.getAttribute("aria-sort")};
    }
    const terms = decodeURIComponent(location.hash.slice("#selftest=".length)).split(",");
    for (const term of location.hash.startsWith("#selftest=") ? terms : []) {
      search.value = term;
      search.dispatchEvent(new Event("input"));
      out.searches.push({term, lines: visibleLines(), shown: shown.textContent});
    }
    search.value = "";
    search.dispatchEvent(new Event("input"));
    out.cleared = visibleLines().length;
    out.pwned = Boolean(window.pwned);
    out.elements = {script: document.scripts.length, img: document.images.length,
                    iframe: document.querySelectorAll("iframe").length};
    out.problems = problems;
    const pre = document.getElementById("selftest");
    pre.textContent = JSON.stringify(out);
    pre.hidden = false;
  }
  if (location.hash.startsWith("#selftest")) {
    try { selftest(); } catch (e) {
      const pre = document.getElementById("selftest");
      pre.textContent = JSON.stringify({crash: String(e), problems});
    }
  }
})();
"""
