"""`certscan report`: a result file from a real scan of loopback servers (trusted, expiring
in 5 days, expired, wrong name, an intermediate expiring before its leaf, a certificate full
of hostile strings, a refused port, a line that is no target), plus edited copies (an older
record of an endpoint, lines that are not records). The table's order, filter and counts,
the neutralised terminal output (also on a real pty), the CSV and its formula guard, the
HTML's escaping, exit statuses; and the page in a real headless browser."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import fcntl
import html
import io
import json
import os
import pty
import re
import shutil
import ssl
import struct
import subprocess
import sys
import termios
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import trustme

import pki
import scanner
from scanner.inventory import report
from scanner.inventory.alerts import EXIT_ALERT
from schema import checked
from servers import free_port, next_address, server_context, tls_server

Record = dict[str, Any]
HOSTILE_CA = "\x1b[2J\x1b[31mEvil CA\u202e\nforged line"
HOSTILE_NAMES = ("=cmd|' /C calc'!A0", "<script>alert(1)</script>",
                 "<img src=x onerror=window.pwned=1>")


@dataclass(frozen=True)
class Fleet:
    """The result file and, for each case, the line its (winning) record is on."""

    path: Path
    lines: dict[str, int]
    records: dict[str, Record]


def _pem_context(tmp: Path, name: str, chain: list[pki.Issued]) -> ssl.SSLContext:
    return pki.serving([c.der for c in chain], pki.key_pem(chain[0].key), tmp, name=name)


def _servers(ca: trustme.CA, bundle: Path, tmp: Path) -> dict[str, ssl.SSLContext]:
    """A server context per case; the root of the hostile and chained cases (its CN full
    of escapes) joins the trust store, so their verdicts are about the names and dates."""
    now = datetime.now(UTC)

    def days(n: int) -> datetime:
        return now + timedelta(days=n)

    root = pki.issue(HOSTILE_CA, ca=True, key_kind="p256", not_before=days(-9),
                     not_after=days(900))
    intermediate = pki.issue("Short-lived Intermediate", root, ca=True, key_kind="p256",
                             not_before=days(-9), not_after=days(10))
    chained = pki.issue("chained.test", intermediate, key_kind="p256", dns=("chained.test",),
                        not_before=days(-9), not_after=days(300))
    hostile = pki.issue("hostile", root, key_kind="p256", dns=HOSTILE_NAMES,
                        not_before=days(-9), not_after=days(200))
    bundle.write_bytes(bundle.read_bytes() + pki.pem(root.der))
    return {
        "good": server_context(ca.create_child_ca().issue_cert("good.test")),
        "soon": server_context(ca.issue_cert("soon.test", not_after=days(5))),
        "gone": server_context(ca.issue_cert("gone.test", not_before=days(-30),
                                             not_after=days(-1))),
        "mismatch": server_context(ca.issue_cert("other.test")),
        "chained": _pem_context(tmp, "chained", [chained, intermediate]),
        "hostile": _pem_context(tmp, "hostile", [hostile]),
    }


NAMES = {"good": "good.test", "soon": "soon.test", "gone": "gone.test",
         "mismatch": "wrong.test", "chained": "chained.test", "hostile": "hostile.test"}


async def _scan(contexts: dict[str, ssl.SSLContext], bundle: str) -> dict[str, Record]:
    """Each case's record from a real scan with verdicts, plus a refused port and a line
    that is no target."""
    targets: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as stack:
        for case, ctx in contexts.items():
            server = await stack.enter_async_context(tls_server(ctx))
            targets[f"{server.target} {NAMES[case]}"] = case
        refused = next_address()
        targets[f"{refused}:{free_port(refused)}"] = "refused"
        targets["example.test:99999"] = "invalid"
        records = [checked(r) async for r in scanner.scan(list(targets), timeout=3,
                                                          ca_bundle=bundle)]
    return {targets[r["target"]]: r for r in records}


ORDER = ("good", "soon", "gone", "mismatch", "chained", "hostile", "refused", "invalid")
BAD_LINES = ("this is not JSON\n", "[1, 2, 3]\n", '{"target": "x", "status": "ok"}\n')
TORN = '{"schema_version": 1, "target": "127.0.0.1:4'


@pytest.fixture(scope="module")
def fleet(ca: trustme.CA, ca_pem: str, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    tmp = tmp_path_factory.mktemp("report")
    bundle = tmp / "bundle.pem"
    bundle.write_bytes(Path(ca_pem).read_bytes())
    records = asyncio.run(_scan(_servers(ca, bundle, tmp), str(bundle)))
    # An older record of the good endpoint, before its real one: the last record wins.
    older = {**records["good"], "status": "error", "certificate": None, "chain": [],
             "tls": None, "validation": None,
             "error": {"type": "timeout", "stage": "handshake", "message": "timed out"}}
    lines = [json.dumps(checked(older)) + "\n", BAD_LINES[0]]
    where: dict[str, int] = {}
    for case in ORDER:
        lines.append(json.dumps(records[case]) + "\n")
        where[case] = len(lines)
    lines += [*BAD_LINES[1:], TORN]
    path = tmp / "results.jsonl"
    path.write_text("".join(lines))
    return Fleet(path, where, records)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="certscan")
    report.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    return report.run(_parser().parse_args(["report", *argv]))


def _now() -> datetime:
    return datetime.now(UTC)


# -- reading ---------------------------------------------------------------------------------

def test_one_row_per_endpoint_the_last_record_winning(fleet: Fleet) -> None:
    inventory = report.load(str(fleet.path))
    assert (inventory.records, inventory.replaced, inventory.bad_count) == (9, 1, 4)
    rows = {row.line: row for row in inventory.rows}
    assert set(rows) == set(fleet.lines.values())
    good = rows[fleet.lines["good"]]
    assert good.status == "ok" and good.trusted is True  # the later record, not the timeout
    assert [b.line for b in inventory.bad] == [2, 11, 12, 13]
    assert "torn" in inventory.bad[-1].reason


def test_soonest_expiry_first_chain_named_errors_last(fleet: Fleet) -> None:
    now = _now()
    rows = report.ordered(report.load(str(fleet.path)).rows, now)
    by_line = {v: k for k, v in fleet.lines.items()}
    assert [by_line[r.line] for r in rows] == [
        "gone", "soon", "chained", "hostile",
        *sorted(["good", "mismatch"], key=lambda c: rows_endpoint(rows, fleet.lines[c])),
        *sorted(["refused", "invalid"], key=lambda c: rows_endpoint(rows, fleet.lines[c])),
    ]
    chained = next(r for r in rows if r.line == fleet.lines["chained"])
    assert chained.which == "chain[1]" and chained.expires_subject == "CN=Short-lived Intermediate"
    assert chained.days_left(now) == 9  # 10 days less the seconds since the scan: rounded down
    gone = next(r for r in rows if r.line == fleet.lines["gone"])
    assert gone.which == "leaf" and gone.days_left(now) == -2  # floor, as the record's days_left
    assert gone.verdict() == "untrusted: expired"
    invalid = next(r for r in rows if r.line == fleet.lines["invalid"])
    assert invalid.endpoint == "example.test:99999"
    assert invalid.verdict().startswith("error: invalid_target (target): ")


def rows_endpoint(rows: list[report.Row], line: int) -> str:
    return next(r.endpoint for r in rows if r.line == line)


def test_expiring_within_keeps_expired_and_chain_expiries(fleet: Fleet) -> None:
    now = _now()
    rows = report.ordered(report.load(str(fleet.path)).rows, now, timedelta(days=30))
    assert [r.line for r in rows] == [fleet.lines[c] for c in ("gone", "soon", "chained")]
    assert report.ordered(report.load(str(fleet.path)).rows, now, timedelta(hours=1)) == [
        r for r in rows if r.line == fleet.lines["gone"]]


def test_header_counts_cover_the_whole_file(fleet: Fleet) -> None:
    counts = {k: dict(v) for k, v in report.breakdowns(report.load(str(fleet.path)), _now())}
    assert counts["status"] == {"ok": 6, "error": 2}
    assert counts["errors"] == {"refused": 1, "invalid_target": 1}
    assert counts["verdicts"] == {"trusted": 3, "untrusted: expired": 1,
                                  "untrusted: hostname_mismatch": 2}
    assert counts["expiry"] == {"expired (leaf)": 1, "within 30 days (leaf)": 1,
                                "within 30 days (chain[1])": 1, "later": 3}
    assert counts["tls"] == {"TLSv1.3": 6}
    assert counts["issuers"][HOSTILE_CA] == 1  # the hostile leaf; chained's is the intermediate
    assert counts["issuers"]["Short-lived Intermediate"] == 1
    assert sum(counts["keys"].values()) == 6


def test_a_record_of_odd_types_is_a_row_not_a_crash() -> None:
    odd = {"target": 7, "status": ["ok"], "error": "boom", "certificate": "pem?",
           "chain": [1, {"not_after": 5}, {"not_after": "soon"}], "validation": [],
           "host": "h.test", "port": "443", "tls": {"version": 1.3}}
    row = report.make_row(odd, 1)
    assert (row.endpoint, row.status, row.expires, row.names) == ("", "error", None, ())
    assert row.verdict() == "error: unknown"
    report.render_terminal(report.Inventory("x", (row,), 1, 0, (), 0), [row], _now())


# -- the terminal ----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "shown"), [
    ("a\nb", "a\\nb"), ("\x1b[31mred", "\\x1b[31mred"),
    ("abc\u202eexe.txt", "abc\\u202eexe.txt"), ("\ud800", "\\ud800"),
    ("line\u2028sep", "line\\u2028sep"), ("\x7f\x85\x00\t", "\\x7f\\x85\\x00\\t"),
    ("zero\u200bwidth", "zero\\u200bwidth"), ("bücher 例え", "bücher 例え"),
    ("O=A\\, B", "O=A\\, B"),  # a backslash stays as it is (RFC 4514 uses them)
])
def test_hostile_characters_are_made_visible(text: str, shown: str) -> None:
    assert report.visible(text) == shown
    assert report.visible(text).isprintable()


def test_plain_table_when_not_a_terminal(fleet: Fleet, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert _run(str(fleet.path)) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out  # no escape code at all, ours or theirs
    assert "\\x1b[2J\\x1b[31mEvil CA\\u202e\\nforged line" in out
    head, _, rest = out.partition("\nENDPOINT")
    assert head.startswith(f"certscan report: {fleet.path}: 9 records, 8 endpoints "
                           "(1 record replaced by a later record of the same endpoint: the "
                           "last record wins), 4 bad lines")
    assert "status:   ok 6, error 2" in head
    assert "errors:   invalid_target 1, refused 1" in head
    assert "verdicts: trusted 3, untrusted: hostname_mismatch 2, untrusted: expired 1" in head
    assert "expiry:   expired (leaf) 1, within 30 days (chain[1]) 1, within 30 days (leaf) " \
           "1, later 3" in head
    assert "tls:      TLSv1.3 6" in head
    table, _, bad = rest.partition("\n\nbad lines (4):\n")
    rows = table.splitlines()[1:]
    assert len(rows) == 8  # one line per row: no certificate string broke one
    ends = [fleet.records[c]["port"] for c in ("gone", "soon", "chained", "hostile")]
    assert [int(re.split(r"[: ]", r)[1]) for r in rows[:4]] == ends
    assert "chain[1]" in rows[2] and "untrusted: expired" in rows[0]
    assert rows[-1].startswith("example.test:99999") and "error: invalid_target" in rows[-1]
    assert bad.splitlines()[0].startswith(f"  {fleet.path}:2: not JSON")
    assert "torn" in bad.splitlines()[-1]


def test_filtered_table_and_fitted_width(fleet: Fleet, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert _run(str(fleet.path), "--expiring-within", "30d") == 0
    out = capsys.readouterr().out
    assert "showing 3 of 8: expiring within 30d (expired included)" in out
    assert all(report.cells(line) <= 80 for line in out.splitlines()), out
    table = out.split("\nENDPOINT", 1)[1].split("\n\n")[0].splitlines()[1:]
    assert len(table) == 3 and all("…" in line or len(line) <= 80 for line in table)


def test_narrow_columns_fit_and_cut_by_display_width() -> None:
    assert report.cells("例え") == 4 and report.cells("e\u0301") == 1
    assert report.fit([40, 30, 30, 10, 4, 60], 80) == [21, 11, 8, 10, 4, 16]  # by weight
    assert report.fit([40, 30, 30, 19, 4, 60], 60) == [10, 5, 4, 19, 4, 8]  # below least
    assert report.fit([10, 10, 10, 10, 4, 10], 80) == [10, 10, 10, 10, 4, 10]
    assert report.fit([10, 10, 10, 10, 4, 10], None) == [10, 10, 10, 10, 4, 10]


@pytest.mark.slow
def test_colours_and_fitted_widths_on_a_real_terminal(fleet: Fleet) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    code = ("import argparse, sys; from scanner.inventory import report; "
            "p = argparse.ArgumentParser(prog='certscan'); "
            "report.add_parser(p.add_subparsers(dest='command')); "
            "sys.exit(report.run(p.parse_args(sys.argv[1:])))")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR")}
    process = subprocess.Popen([sys.executable, "-c", code, "report", str(fleet.path)],
                               stdout=slave, stderr=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert process.wait(timeout=30) == 0
    out = b"".join(chunks).decode().replace("\r\n", "\n")
    codes = set(re.findall(r"\x1b\[[0-9;]*[A-Za-z]", out))
    assert codes == {"\x1b[1m", "\x1b[0m", "\x1b[31m", "\x1b[33m", "\x1b[32m"}
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert "\x1b" not in plain  # every escape was one of ours
    assert all(report.cells(line) <= 100 for line in plain.splitlines()), plain
    assert "\x1b[31muntrusted: exp" in out and "\x1b[32mtrusted\x1b[0m" in out


# -- exit statuses ---------------------------------------------------------------------------

@pytest.mark.parametrize(("conditions", "code", "lines"), [
    ("expired", EXIT_ALERT, ["expired: 1 (leaf 1)"]),
    ("expiring:14d", EXIT_ALERT, ["expiring within 14d: 2 (chain[1] 1, leaf 1)"]),
    ("untrusted,error", EXIT_ALERT, ["untrusted: 3", "error: 6"]),  # 4 of them bad lines
    ("expiring:1h", 0, []),
])
def test_fail_on(fleet: Fleet, capsys: pytest.CaptureFixture[str], conditions: str, code: int,
                 lines: list[str]) -> None:
    assert _run(str(fleet.path), "-q", "--fail-on", conditions) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"certscan: --fail-on: {line}" for line in lines]


def test_an_unreadable_result_file_is_one_line_and_1(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    assert _run(str(missing)) == 1
    assert capsys.readouterr().err == (f"certscan: error: result file '{missing}': "
                                       "no such file or directory\n")
    assert _run(str(tmp_path)) == 1
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_an_output_that_fails_is_one_line_and_1(fleet: Fleet,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(str(fleet.path), "--html", "/dev/full", "-q") == 1
    assert capsys.readouterr().err == ("certscan: error: --html '/dev/full': no space left "
                                       "on device\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["--expiring-within", "soon"], "argument --expiring-within: 'soon' is not a span"),
    (["--fail-on", "changed"], "argument --fail-on: unknown condition 'changed'"),
])
def test_bad_flags_are_usage_errors(argv: list[str], message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["report", "r.jsonl", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_outputs_that_cannot_work_are_usage_errors(fleet: Fleet, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(str(fleet.path), "--csv", str(tmp_path / "no" / "x.csv")) == 2
    assert "--csv" in capsys.readouterr().err
    assert _run(str(fleet.path), "--html", str(tmp_path)) == 2
    assert "is a directory" in capsys.readouterr().err
    assert _run(str(fleet.path), "--csv", "-", "--html", "-") == 2


# -- CSV -------------------------------------------------------------------------------------

@pytest.mark.parametrize("lead", ["=", "+", "-", "@", "\t", "\r"])
def test_formula_guard(lead: str) -> None:
    assert report.guarded(f"{lead}1+1") == f"'{lead}1+1"
    assert report.guarded("a=1") == "a=1" and report.guarded(-3) == -3
    assert report.guarded(None) == ""


def test_csv_rows_columns_and_guard(fleet: Fleet, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "inventory.csv"
    assert _run(str(fleet.path), "--csv", str(out), "-q") == 0
    assert capsys.readouterr().out == ""
    with out.open(newline="", encoding="utf-8") as stream:
        header, *rows = list(csv.reader(stream))
    assert tuple(header) == report.CSV_COLUMNS
    assert len(rows) == 8
    by_line = {int(r[header.index("line")]): dict(zip(header, r, strict=True)) for r in rows}
    hostile = by_line[fleet.lines["hostile"]]
    assert hostile["names"] == "'" + " ".join(HOSTILE_NAMES)  # =cmd|... would be a formula
    assert hostile["issuer"] == HOSTILE_CA  # raw: a spreadsheet is not a terminal
    good = by_line[fleet.lines["good"]]
    cert = fleet.records["good"]["certificate"]
    assert (good["sha256"], good["ip"], good["sni"], good["tls_version"], good["verdict"]) == (
        cert["sha256"], fleet.records["good"]["ip"], "good.test", "TLSv1.3", "trusted")
    assert good["key"].startswith(cert["key"]["type"])
    gone = by_line[fleet.lines["gone"]]
    assert gone["days_left"] == "-2"  # a number of ours: no apostrophe
    assert by_line[fleet.lines["chained"]]["expiring_certificate"] == "chain[1]"
    assert [int(r[header.index("line")]) for r in rows][:3] == [
        fleet.lines[c] for c in ("gone", "soon", "chained")]
    for row in rows:
        for cell in row:
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), cell


def test_csv_to_stdout_replaces_the_table(fleet: Fleet,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(str(fleet.path), "--csv", "-", "--expiring-within", "30d") == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out, newline="")))
    assert len(rows) == 4 and rows[0][0] == "endpoint"


# -- HTML ------------------------------------------------------------------------------------

def _page(fleet: Fleet, tmp_path: Path) -> tuple[Path, str]:
    out = tmp_path / "report.html"
    assert _run(str(fleet.path), "--html", str(out), "-q") == 0
    return out, out.read_text(encoding="utf-8")


def test_html_escapes_every_string_and_embeds_json_safely(fleet: Fleet,
                                                          tmp_path: Path) -> None:
    _, page = _page(fleet, tmp_path)
    assert "<script>alert(1)</script>" not in page and "<img" not in page
    assert html.escape("<script>alert(1)</script>") in page
    assert page.count("<script") == 2  # the JSON data and the page's own script
    assert "\x1b" not in page and "\u202e" not in page
    data = re.search(r'<script type="application/json" id="report-data">(.*?)</script>',
                     page, re.S)
    assert data is not None and "<" not in data.group(1)
    parsed = json.loads(data.group(1))
    assert len(parsed["expiries"]) == 6 and parsed["weeks"] == report.CHART_WEEKS
    assert report.script_json({"a": "</script><!--"}) == '{"a":"\\u003c/script>\\u003c!--"}'
    assert json.loads(report.script_json({"a": "</script><!--"})) == {"a": "</script><!--"}


def test_html_fetches_nothing_and_allows_only_its_own_script(fleet: Fleet,
                                                              tmp_path: Path) -> None:
    _, page = _page(fleet, tmp_path)
    tags = _Tags()
    tags.feed(page)
    assert set(tags.names) == {"html", "head", "meta", "title", "style", "body", "header",
                               "h1", "ul", "li", "p", "section", "h2", "svg", "span", "div",
                               "table", "thead", "tr", "th", "button", "tbody", "td",
                               "input", "pre", "script"}
    assert not tags.references, tags.references
    style = page.split("<style>", 1)[1].split("</style>", 1)[0]
    assert "url(" not in style and "@import" not in style
    assert re.findall(r"https?://[^\s\"'<]*", page) == ["http://www.w3.org/2000/svg"] * 2
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page)
    assert policy is not None and "default-src 'none'" in policy.group(1)
    script = page.rsplit("<script>", 1)[1].split("</script>", 1)[0]
    assert report._csp_hash(script) in policy.group(1)


class _Tags(HTMLParser):
    """Every tag of a page, and any attribute that could fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.names: Counter[str] = Counter()
        self.references: list[tuple[str, str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names[tag] += 1
        self.references += [(tag, k, v) for k, v in attrs
                            if k in ("src", "href", "action", "srcset", "poster", "data")
                            or k.startswith("on")]


def _chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


def _selftest(browser: str, page: Path, terms: list[str], profile: Path) -> tuple[Any, str]:
    url = page.as_uri() + "#selftest=" + ",".join(terms)
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="selftest">(.*?)</pre>', result.stdout, re.S)
    assert found is not None, result.stdout[-2000:]
    return json.loads(html.unescape(found.group(1))), result.stderr


def _natural(text: str) -> list[tuple[int, int | str]]:
    """Intl.Collator({numeric: true})'s order, for these endpoints: numbers by value,
    digits before letters."""
    return [(0, int(p)) if p.isdigit() else (1, p.lower()) for p in re.findall(r"\d+|\D+", text)]


@pytest.mark.slow
def test_the_page_in_a_real_browser(fleet: Fleet, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium to run the page in (apt-get install -y chromium)")
    page, _ = _page(fleet, tmp_path)
    sha = fleet.records["good"]["certificate"]["sha256"][:12]
    seen, log = _selftest(browser, page, ["soon.test", sha, "error:", "zzz-nothing"],
                          tmp_path / "profile")
    assert "crash" not in seen, seen
    assert seen["problems"] == []
    assert not [line for line in log.splitlines() if "CONSOLE" in line], log
    assert seen["pwned"] is False
    assert seen["elements"] == {"script": 2, "img": 0, "iframe": 0}
    chart = seen["chart"]
    assert chart["drawn"] == "yes" and chart["bars"] == report.CHART_WEEKS + 2
    assert chart["total"] == 6 and sum(chart["counts"]) == 6
    assert chart["counts"][0] == 1  # expired
    assert sum(chart["counts"][1:6]) == 2  # the next 5 weeks: soon (5 days), chained (10)
    rows = report.ordered(report.load(str(fleet.path)).rows, _now())
    assert seen["initial"] == [r.line for r in rows]
    now = _now()
    by_days = sorted(rows, key=lambda r: (r.expires is None, r.days_left(now) or 0))
    assert seen["sorts"]["days"]["asc"] == [r.line for r in by_days]
    by_days_desc = sorted(rows, key=lambda r: (r.expires is None, -(r.days_left(now) or 0)))
    assert seen["sorts"]["days"]["desc"] == [r.line for r in by_days_desc]
    assert seen["sorts"]["days"]["aria"] == "descending"
    by_endpoint = sorted(rows, key=lambda r: _natural(r.endpoint))
    assert seen["sorts"]["endpoint"]["asc"] == [r.line for r in by_endpoint]
    assert seen["sorts"]["endpoint"]["desc"] == [r.line for r in reversed(by_endpoint)]
    searches = {s["term"]: s for s in seen["searches"]}
    assert searches["soon.test"]["lines"] == [fleet.lines["soon"]]
    assert searches["soon.test"]["shown"] == "1 of 8 endpoints match"
    assert searches[sha]["lines"] == [fleet.lines["good"]]
    assert sorted(searches["error:"]["lines"]) == sorted(
        fleet.lines[c] for c in ("refused", "invalid"))
    assert searches["zzz-nothing"]["lines"] == []
    assert seen["cleared"] == 8


def test_every_output_from_one_run(fleet: Fleet, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    paths = [tmp_path / "a.csv", tmp_path / "a.html"]
    assert _run(str(fleet.path), "--csv", str(paths[0]), "--html", str(paths[1])) == 0
    assert "ENDPOINT" in capsys.readouterr().out
    assert all(p.stat().st_size > 0 for p in paths)
