"""Reach: STARTTLS over a real connection, every address of a name, every name on an address.

The STARTTLS cases here run against small loopback stubs that speak just enough of a
protocol to upgrade (with asyncio's own start_tls) or to fail the way real servers fail:
upgrade not offered, refused, garbage, silence, a trickled greeting, a close, a reset,
bytes after the go-ahead. Real daemons speaking the real protocols are tests/test_daemons_*.
Names resolve through the tests' own DNS server (tests/dnsserver.py), aiodns pointed at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trustme

import scanner
from dnsserver import dns_server
from scanner.config import ConfigError, ScanConfig
from scanner.keys import item_key, record_key
from scanner.targets import Target, TargetError, parse_line
from schema import checked
from servers import Running, next_address, raw_server, server_context, tls_server

Record = dict[str, Any]
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def scan_all(lines: list[str], **options: Any) -> list[Record]:
    options.setdefault("timeout", 2.0)
    return [checked(record) async for record in scanner.scan(lines, **options)]


def subject_names(record: Record) -> list[str]:
    return list(record["certificate"]["san"]["dns"])


# --- target lines ---------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "port", "protocol"), [
    ("smtp://192.0.2.7", 25, "smtp"),
    ("smtp://192.0.2.7:587", 587, "smtp"),
    ("SMTP://192.0.2.7", 25, "smtp"),
    ("imap://192.0.2.7", 143, "imap"),
    ("pop3://192.0.2.7", 110, "pop3"),
    ("ftp://192.0.2.7", 21, "ftp"),
    ("ldap://192.0.2.7", 389, "ldap"),
    ("postgres://192.0.2.7", 5432, "postgres"),
    ("postgresql://192.0.2.7", 5432, "postgres"),
    ("mysql://192.0.2.7", 3306, "mysql"),
    ("xmpp://192.0.2.7", 5222, "xmpp"),
    ("https://192.0.2.7", 443, None),
    ("smtps://192.0.2.7", 465, None),
])
def test_a_scheme_names_the_protocol_and_its_port(line: str, port: int,
                                                   protocol: str | None) -> None:
    (target,) = parse_line(line, ports=(443,), starttls="imap")
    assert (target.port, target.starttls) == (port, protocol)


def test_starttls_applies_to_lines_without_a_scheme_only() -> None:
    (plain,) = parse_line("192.0.2.7:587", ports=(443,), starttls="smtp")
    assert plain.starttls == "smtp"
    (tls,) = parse_line("https://192.0.2.7", ports=(443,), starttls="smtp")
    assert tls.starttls is None


def test_the_server_name_follows_the_address_as_ever() -> None:
    (target,) = parse_line("smtp://192.0.2.7:587 mail.example.org", ports=(443,))
    assert (target.host, target.ip, target.sni, target.port) == (
        "192.0.2.7", "192.0.2.7", "mail.example.org", 587)


def test_several_names_give_one_target_each_in_order_without_repeats() -> None:
    targets = list(parse_line("192.0.2.7:443 a.example B.example a.example 192.0.2.9",
                              ports=(443,)))
    assert [t.sni for t in targets] == ["a.example", "b.example", "192.0.2.9"]
    assert {(t.host, t.port, t.text) for t in targets} == {
        ("192.0.2.7", 443, "192.0.2.7:443 a.example B.example a.example 192.0.2.9")}
    block = list(parse_line("192.0.2.0/31 a.example b.example", ports=(443, 8443)))
    assert len(block) == 2 * 2 * 2
    assert {t.sni for t in block} == {"a.example", "b.example"}


@pytest.mark.parametrize("line", ["gopher://192.0.2.7", "smtp://", "192.0.2.7 bad..name"])
def test_lines_that_cannot_be_targets_still_say_why(line: str) -> None:
    with pytest.raises(TargetError):
        list(parse_line(line, ports=(443,)))


def test_the_starttls_option_picks_the_protocols_port_unless_ports_are_given() -> None:
    assert ScanConfig(starttls="smtp").ports == (25,)
    assert ScanConfig(starttls="postgresql").starttls == "postgres"
    assert ScanConfig(starttls="smtp", ports="587").ports == (587,)
    assert ScanConfig().ports == (443,)
    with pytest.raises(ConfigError, match=r"^starttls: unknown STARTTLS protocol 'smtps'"):
        ScanConfig(starttls="smtps")


def test_resume_keys_tell_names_and_addresses_apart() -> None:
    a, b = parse_line("192.0.2.7:443 a.example b.example", ports=(443,))
    assert item_key(a) != item_key(b)
    record = {"target": a.text, "host": a.host, "port": a.port, "sni": "a.example"}
    assert item_key(a) == record_key(record["target"], record["host"], record["port"],
                                     record["sni"])
    name = Target("www.example", "www.example", 443, "www.example", None)
    v4, v6 = (Target("www.example", "www.example", 443, "www.example", ip)
              for ip in ("192.0.2.1", "2001:db8::1"))
    assert item_key(v4) == item_key(v6) == item_key(name)  # one target, wherever it went
    assert item_key(v4, by_address=True) != item_key(v6, by_address=True)


# --- STARTTLS against loopback stubs --------------------------------------------------------

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def smtp_stub(context: ssl.SSLContext | None = None, *,
              greeting: bytes = b"220 stub.test ESMTP\r\n",
              ehlo: bytes = b"250-stub.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
              answer: bytes = b"220 2.0.0 Ready to start TLS\r\n",
              after: bytes = b"") -> Behaviour:
    """An SMTP server: greeting, EHLO reply, STARTTLS reply, then TLS with `context`."""

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        if not (await reader.readline()).upper().startswith(b"EHLO "):
            return
        writer.write(ehlo)
        if await reader.readline() != b"STARTTLS\r\n":
            return
        writer.write(answer + after)
        await writer.drain()
        if context is not None and answer.startswith(b"220"):
            await writer.start_tls(context)
            await reader.read(1)
        else:
            await reader.read(1)

    return behaviour


def upgrading_context(ca: trustme.CA, name: str, seen: list[str | None]) -> ssl.SSLContext:
    context = server_context(ca.issue_cert(name))

    def note(_obj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        seen.append(server_name)

    context.sni_callback = note  # type: ignore[assignment]
    return context


@contextlib.asynccontextmanager
async def stub(behaviour: Behaviour) -> AsyncIterator[Running]:
    async with raw_server(behaviour) as running:
        yield running


@pytest.mark.both_loops
async def test_an_smtp_upgrade_captures_the_chain_and_says_so(
        ca: trustme.CA, ca_pem: str) -> None:
    seen: list[str | None] = []
    async with stub(smtp_stub(upgrading_context(ca, "mail.stub.test", seen))) as server:
        (record,) = await scan_all([f"smtp://{server.host}:{server.port} mail.stub.test"],
                                   ca_bundle=ca_pem)
    assert record["status"] == "ok", record["error"]
    assert record["starttls"] == "smtp"
    assert record["sni"] == "mail.stub.test" and seen == ["mail.stub.test"]
    assert record["validation"]["trusted"] is True
    assert record["validation"]["hostname_match"] is True
    assert subject_names(record) == ["mail.stub.test"]
    timing = record["timing_ms"]
    assert timing["starttls"] is not None and timing["starttls"] > 0
    assert timing["handshake"] is not None


async def test_the_option_upgrades_a_line_without_a_scheme(ca: trustme.CA) -> None:
    seen: list[str | None] = []
    async with stub(smtp_stub(upgrading_context(ca, "opt.stub.test", seen))) as server:
        (record,) = await scan_all([f"{server.host}:{server.port} opt.stub.test"],
                                   starttls="smtp")
    assert record["status"] == "ok", record["error"]
    assert record["starttls"] == "smtp"


async def test_plain_records_say_no_starttls(ca: trustme.CA) -> None:
    async with tls_server(server_context(ca.issue_cert("plain.test"))) as server:
        (record,) = await scan_all([f"{server.target} plain.test"])
    assert record["status"] == "ok" and record["starttls"] is None
    assert record["timing_ms"]["starttls"] is None


async def _silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 stub.test ESMTP\r\n")
    await reader.read()  # the EHLO goes unanswered for ever


async def _trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for byte in b"220-stub.test a greeting that never ends\r\n" * 100:
        writer.write(bytes([byte]))
        await asyncio.sleep(0.05)


async def _close_after_greeting(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
    writer.write(b"421 4.3.2 Service not available, closing channel\r\n")
    await writer.drain()
    writer.close()


async def _reset_after_ehlo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 stub.test ESMTP\r\n")
    await reader.readline()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()  # linger 0: an RST, not a FIN


async def _postgres_injection(reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
    await reader.readexactly(8)
    writer.write(b"S\x16\x03\x03\x00\x02\x02\x28")  # go-ahead, then bytes of its own
    await reader.read(1)


@pytest.mark.parametrize(("behaviour", "scheme", "kind", "stage", "words"), [
    (smtp_stub(ehlo=b"250-stub.test\r\n250 PIPELINING\r\n"), "smtp", "starttls", "starttls",
     ["STARTTLS", "250 PIPELINING"]),
    (smtp_stub(answer=b"454 4.7.0 TLS not available due to local problem\r\n"), "smtp",
     "starttls", "starttls", ["454 4.7.0 TLS not available"]),
    (smtp_stub(greeting=b"SSH-2.0-OpenSSH_9.2\r\n"), "smtp", "starttls", "starttls",
     ["SSH-2.0-OpenSSH_9.2"]),
    (smtp_stub(greeting=b"220 ok\r\n", ehlo=b"\x00\xff\x16garbage\r\n"), "smtp", "starttls",
     "starttls", ["\\x00\\xff"]),
    (_close_after_greeting, "smtp", "starttls", "starttls", ["421 4.3.2", "closed"]),
    (_reset_after_ehlo, "smtp", "reset", "starttls", []),
    (_silence, "smtp", "timeout", "starttls", []),
    (_trickle, "smtp", "timeout", "starttls", []),
    (_postgres_injection, "postgres", "starttls", "starttls", ["after its go-ahead"]),
], ids=["not-offered", "refused", "not-smtp", "garbage", "closed", "reset", "silence",
        "trickle", "injection"])
async def test_a_dance_that_fails_says_how_within_the_deadline(
        behaviour: Behaviour, scheme: str, kind: str, stage: str, words: list[str]) -> None:
    async with stub(behaviour) as server:
        started = time.perf_counter()
        (record,) = await scan_all([f"{scheme}://{server.host}:{server.port} x.test"],
                                   timeout=1.0)
        took = time.perf_counter() - started
    assert record["status"] == "error" and record["starttls"] == scheme
    error = record["error"]
    assert (error["type"], error["stage"]) == (kind, stage), error
    for word in words:
        assert word in error["message"], error["message"]
    assert took < 1.0 + 0.5  # the deadline holds, dance included (not a speed claim)
    assert record["certificate"] is None and record["chain"] == []


# --- every address of a name; every name on an address ---------------------------------------


@contextlib.asynccontextmanager
async def names(records: dict[str, list[str]]) -> AsyncIterator[dict[str, Any]]:
    host = "127.53.0.15"
    async with dns_server(host, zone="reach.test", records=records) as (_, port):
        yield {"resolver": "aiodns", "nameservers": (f"{host}:{port}",)}


@contextlib.asynccontextmanager
async def twin_servers(ca: trustme.CA) -> AsyncIterator[tuple[Running, Running]]:
    """Two TLS servers for www.reach.test on one port: on a 127.x address and on ::1,
    each with a certificate of its own (the half-finished renewal)."""
    for _ in range(20):
        async with contextlib.AsyncExitStack() as stack:
            v6 = await stack.enter_async_context(
                tls_server(server_context(ca.issue_cert("www.reach.test")), "::1"))
            try:
                v4 = await stack.enter_async_context(
                    tls_server(server_context(ca.issue_cert("www.reach.test")),
                               next_address(), port=v6.port))
            except OSError:
                continue
            yield v4, v6
            return
    pytest.fail("no port free on both ::1 and a 127.x address")


async def test_all_addresses_gives_one_record_per_address(ca: trustme.CA) -> None:
    async with twin_servers(ca) as (v4, v6), \
            names({"www.reach.test": [v4.host, "::1"]}) as dns:
        got = await scan_all([f"www.reach.test:{v4.port}"], all_addresses=True, **dns)
    assert sorted(r["ip"] for r in got) == sorted([v4.host, "::1"])
    for record in got:
        assert record["status"] == "ok", record["error"]
        assert record["host"] == "www.reach.test" and record["sni"] == "www.reach.test"
        assert record["target"] == f"www.reach.test:{v4.port}"
    # Two certificates for one name: the records tell them apart.
    assert len({r["certificate"]["sha256"] for r in got}) == 2
    assert (len(v4.server_names), len(v6.server_names)) == (1, 1)


async def test_without_all_addresses_the_first_address_that_answers_is_used(
        ca: trustme.CA) -> None:
    dead = next_address()  # nothing listens there: refused at once
    async with tls_server(server_context(ca.issue_cert("www.reach.test"))) as live, \
            names({"www.reach.test": [dead, live.host]}) as dns:
        (record,) = await scan_all([f"www.reach.test:{live.port}"], **dns)
    assert record["status"] == "ok", record["error"]
    assert record["ip"] == live.host


async def test_an_address_that_swallows_syns_leaves_time_for_the_next(
        ca: trustme.CA) -> None:
    """The first address is a loopback listener whose accept queue is full: connects to it
    hang, as to a host that drops SYNs. It gets its share of the deadline, not all of it."""
    async with tls_server(server_context(ca.issue_cert("www.reach.test"))) as live:
        full = socket.socket()
        full.bind((next_address(), live.port))
        full.listen(0)
        fillers = []
        try:
            for _ in range(8):  # fill the accept queue (nobody accepts)
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(full.getsockname())
                fillers.append(filler)
            async with names({"www.reach.test": [full.getsockname()[0], live.host]}) as dns:
                (record,) = await scan_all([f"www.reach.test:{live.port}"], timeout=2.0,
                                           **dns)
        finally:
            for filler in fillers:
                filler.close()
            full.close()
    assert record["status"] == "ok", record["error"]
    assert record["ip"] == live.host


async def test_when_no_address_answers_the_error_names_each() -> None:
    first, second = next_address(), next_address()
    async with names({"www.reach.test": [first, second]}) as dns:
        (record,) = await scan_all(["www.reach.test:9"], **dns)
    error = record["error"]
    assert (error["type"], error["stage"]) == ("refused", "connect")
    assert first in error["message"] and second in error["message"]
    assert record["ip"] == second


async def test_a_name_that_does_not_resolve_is_still_one_record_with_all_addresses() -> None:
    async with names({}) as dns:
        (record,) = await scan_all(["missing.reach.test:443"], all_addresses=True, **dns)
    assert (record["error"]["type"], record["error"]["stage"]) == ("dns", "resolve")


async def test_several_names_on_one_address_give_one_record_per_name(ca: trustme.CA) -> None:
    context = server_context(ca.issue_cert("a.reach.test"))
    other = server_context(ca.issue_cert("b.reach.test"))
    async with tls_server(context, by_name={"b.reach.test": other}) as server:
        got = await scan_all([f"{server.target} a.reach.test b.reach.test"])
    assert sorted(r["sni"] for r in got) == ["a.reach.test", "b.reach.test"]
    for record in got:
        assert record["status"] == "ok", record["error"]
        assert subject_names(record) == [record["sni"]]
    assert sorted(n for n in server.server_names if n) == ["a.reach.test", "b.reach.test"]


# --- the command line -------------------------------------------------------------------------


@pytest.mark.slow
async def test_resume_with_all_addresses_scans_only_the_missing_address(
        ca: trustme.CA, tmp_path: Any) -> None:
    """A run that recorded one of a name's two addresses, resumed: the other, only."""
    async with twin_servers(ca) as (v4, v6), \
            names({"www.reach.test": [v4.host, "::1"]}) as dns:
        out = tmp_path / "out.jsonl"
        done = {"target": f"www.reach.test:{v4.port}", "host": "www.reach.test",
                "port": v4.port, "ip": "::1", "sni": "www.reach.test", "status": "ok"}
        out.write_text(json.dumps(done) + "\n")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "scanner", "scan", "-q", "--all-addresses", "--resume",
            "--resolver", "aiodns", "--nameserver", dns["nameservers"][0],
            "-o", str(out), "-t", f"www.reach.test:{v4.port}")
        assert await asyncio.wait_for(process.wait(), 30) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["ip"] for r in lines] == ["::1", v4.host]
    assert (len(v4.server_names), len(v6.server_names)) == (1, 0)


# --- every protocol's refusal and silence, through the probe ---------------------------------

MYSQL_NO_SSL = bytes.fromhex(
    "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b646562313275310004000000"
    "767b284f3a6f444300fef7080200ff81150000000000001d000000644f3f2b585c43795b394a4a006d7973"
    "716c5f6e61746976655f70617373776f726400")  # MariaDB 10.11 started with --skip-ssl
XMPP_HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
               b"xmlns:stream='http://etherx.jabber.org/streams' id='1' from='x.test' "
               b"version='1.0'>")

# protocol -> does the server speak first?, its replies in turn (each after the client's
# next bytes), and words the record's message must hold.
REFUSALS: dict[str, tuple[bool, list[bytes], str]] = {
    "imap": (True, [b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"], "STARTTLS"),
    "pop3": (True, [b"+OK ready\r\n", b"+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n"], "STLS"),
    "ftp": (True, [b"220 ready\r\n", b"530 Please login with USER and PASS.\r\n"], "530"),
    "ldap": (False, [bytes.fromhex("300c02010178070a01350400040" + "0")], "53"),
    "postgres": (False, [b"N"], "SSL"),
    "mysql": (True, [MYSQL_NO_SSL], "SSL"),
    "xmpp": (False, [XMPP_HEADER + b"<stream:features><bind "
                     b"xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"],
             "STARTTLS"),
}


def scripted(speaks_first: bool, replies: list[bytes], *, then_silence: bool = False
             ) -> Behaviour:
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for n, reply in enumerate(replies):
            if n or not speaks_first:
                await reader.read(4096)
            writer.write(reply)
            await writer.drain()
        await reader.read()  # then wait: silent, or the client hangs up
        if then_silence:
            await asyncio.sleep(3600)

    return behaviour


@pytest.mark.parametrize("protocol", sorted(REFUSALS))
async def test_every_protocol_that_will_not_upgrade_says_so(protocol: str) -> None:
    speaks_first, replies, words = REFUSALS[protocol]
    async with stub(scripted(speaks_first, replies)) as server:
        (record,) = await scan_all([f"{protocol}://{server.host}:{server.port} x.test"],
                                   timeout=1.0)
    error = record["error"]
    assert (error["type"], error["stage"]) == ("starttls", "starttls"), error
    assert words in error["message"], error["message"]
    assert record["starttls"] == protocol and record["engine"] is None


GREETINGS = {"imap": b"* OK ready\r\n", "pop3": b"+OK ready\r\n", "ftp": b"220 ready\r\n"}


@pytest.mark.parametrize("protocol", sorted(REFUSALS))
async def test_every_protocol_that_goes_silent_times_out_at_starttls(protocol: str) -> None:
    greeting = GREETINGS.get(protocol)  # then nothing more; none at all for the rest
    async with stub(scripted(True, [greeting] if greeting else [], then_silence=True)
                    ) as server:
        started = time.perf_counter()
        (record,) = await scan_all([f"{protocol}://{server.host}:{server.port} x.test"],
                                   timeout=0.5)
        took = time.perf_counter() - started
    assert (record["error"]["type"], record["error"]["stage"]) == ("timeout", "starttls")
    assert took < 0.5 + 0.5
