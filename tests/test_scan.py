"""The scan core end to end against real TLS servers and real misbehaving peers on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import scanner
from dnsserver import dns_server
from scanner import certs
from schema import checked
from servers import (
    alert,
    fin_after_hello,
    free_port,
    garbage,
    next_address,
    raw_server,
    rst_after_hello,
    server_context,
    silent,
    tls_server,
)

Record = dict[str, Any]


async def scan_all(lines: list[str], **options: Any) -> list[Record]:
    options.setdefault("timeout", 2.0)
    return [checked(record) async for record in scanner.scan(lines, **options)]


def common_name(record: Record) -> str:
    """The name the certificate was issued for (trustme puts it in the SAN)."""
    cert = x509.load_pem_x509_certificate(record["certificate"]["pem"].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(san.get_values_for_type(x509.DNSName)[0])


def assert_ok(record: Record) -> None:
    assert record["status"] == "ok", record["error"]
    assert record["error"] is None
    der = x509.load_pem_x509_certificate(record["certificate"]["pem"].encode()).public_bytes(
        Encoding.DER
    )
    assert record["certificate"]["sha256"] == hashlib.sha256(der).hexdigest()
    assert record["chain"][0]["sha256"] == record["certificate"]["sha256"]


@pytest.mark.both_loops
async def test_a_good_server_gives_certificate_chain_and_tls_facts(ca: trustme.CA) -> None:
    child = ca.create_child_ca()
    leaf = child.issue_cert("good.test")
    async with tls_server(server_context(leaf)) as server:
        (record,) = await scan_all([f"{server.target} good.test"])
    assert_ok(record)
    assert record["schema_version"] == scanner.SCHEMA_VERSION
    assert record["target"] == f"{server.target} good.test"
    assert (record["host"], record["port"], record["ip"], record["sni"]) == (
        server.host, server.port, server.host, "good.test"
    )
    assert record["tls"]["version"] == "TLSv1.3"
    assert record["tls"]["cipher"]
    assert record["tls"]["alpn"] is None  # the server speaks no ALPN
    timing = record["timing_ms"]
    assert timing["resolve"] is None and timing["connect"] > 0 and timing["handshake"] > 0
    assert timing["total"] >= timing["connect"] + timing["handshake"]
    # The chain exactly as sent: leaf, then the intermediate (trustme sends no root).
    sent = [blob.bytes() for blob in leaf.cert_chain_pems]
    assert [entry["pem"].encode() for entry in record["chain"]] == sent
    assert record["validation"] is None  # no --ca-bundle: no verdict
    assert record["scanned_at"].endswith("Z")


async def test_sni_picks_the_certificate_and_ip_targets_send_none(ca: trustme.CA) -> None:
    one, two, plain = (ca.issue_cert(n) for n in ("one.test", "two.test", "default.test"))
    host = next_address()
    contexts = {"one.test": server_context(one), "two.test": server_context(two)}
    async with tls_server(server_context(plain), host, by_name=contexts) as server:
        records = await scan_all([
            f"{server.target} one.test",
            f"{server.target} two.test",
            server.target,
        ])
    by_sni = {r["sni"]: r for r in records}
    assert common_name(by_sni["one.test"]) == "one.test"
    assert common_name(by_sni["two.test"]) == "two.test"
    assert common_name(by_sni[None]) == "default.test"
    assert sorted(server.server_names, key=str) == sorted(["one.test", "two.test", None],
                                                          key=str)


async def test_an_idn_server_name_goes_out_as_its_a_label(ca: trustme.CA,
                                                          ca_pem: str) -> None:
    # The probe hands OpenSSL the name itself (not through ssl.SSLObject): it must still be
    # the A-label on the wire, and verdicts must match the certificate's A-label SAN.
    host = next_address()
    cert = ca.issue_cert("xn--bcher-kva.example")
    async with tls_server(server_context(cert), host) as server:
        [record] = await scan_all([f"{server.target} bücher.example"], ca_bundle=ca_pem)
    assert server.server_names == ["xn--bcher-kva.example"]
    assert record["status"] == "ok" and record["sni"] == "xn--bcher-kva.example"
    assert record["validation"]["trusted"] and record["validation"]["hostname_match"]


async def test_a_tls10_only_server_is_captured(ca: trustme.CA) -> None:
    leaf = ca.issue_cert("legacy.test")
    ctx = server_context(leaf, maximum=ssl.TLSVersion.TLSv1, seclevel0=True)
    async with tls_server(ctx) as server:
        (record,) = await scan_all([server.target])
    assert_ok(record)
    assert record["tls"]["version"] == "TLSv1"


async def test_alpn_is_reported(ca: trustme.CA) -> None:
    ctx = server_context(ca.issue_cert("alpn.test"))
    ctx.set_alpn_protocols(["http/1.1"])
    async with tls_server(ctx) as server:
        (record,) = await scan_all([server.target])
        (none,) = await scan_all([server.target], alpn=())
    assert record["tls"]["alpn"] == "http/1.1"
    assert none["tls"]["alpn"] is None


async def test_every_target_form(ca: trustme.CA) -> None:
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1", "named.test")
    ctx = server_context(leaf)
    # One port on four consecutive addresses (a /30), on ::1 and 127.0.0.1.
    base = next_address().rsplit(".", 1)[0]
    block = [f"{base}.{i}" for i in range(200, 204)]
    port = free_port(block[0])
    servers = [await asyncio.start_server(lambda r, w: w.close(), h, port, ssl=ctx)
               for h in [*block, "127.0.0.1", "::1"]]
    try:
        lines = [
            f"localhost:{port}",
            f"127.0.0.1:{port}",
            f"[::1]:{port}",
            f"https://localhost:{port}/some/path",
            f"{base}.200/30",
            f"{block[1]}:{port} named.test",
            "::1",
            f"{block[2]}",
        ]
        records = await scan_all(lines, ports=(port,))
    finally:
        for server in servers:
            server.close()
    assert len(records) == 4 + 7  # the /30 gives four records
    for record in records:
        assert_ok(record)
    by_target: dict[str, list[Record]] = {}
    for record in records:
        by_target.setdefault(record["target"], []).append(record)
    assert by_target[f"localhost:{port}"][0]["sni"] == "localhost"
    assert by_target[f"localhost:{port}"][0]["ip"] in ("127.0.0.1", "::1")
    assert by_target[f"127.0.0.1:{port}"][0]["sni"] is None
    assert by_target[f"[::1]:{port}"][0]["ip"] == "::1"
    assert by_target["::1"][0]["port"] == port
    assert by_target[f"https://localhost:{port}/some/path"][0]["host"] == "localhost"
    assert sorted(r["ip"] for r in by_target[f"{base}.200/30"]) == sorted(block)
    assert by_target[f"{block[1]}:{port} named.test"][0]["sni"] == "named.test"


async def test_ports_give_one_record_each(ca: trustme.CA) -> None:
    ctx = server_context(ca.issue_cert("ports.test"))
    async with tls_server(ctx) as server:
        closed = free_port(server.host)
        records = await scan_all([server.host], ports=(server.port, closed))
    by_port = {r["port"]: r for r in records}
    assert by_port[server.port]["status"] == "ok"
    assert by_port[closed]["error"]["type"] == "refused"


@pytest.mark.both_loops
@pytest.mark.parametrize(
    ("behaviour", "kind", "stage", "needle"),
    [
        (silent, "timeout", "handshake", "deadline"),
        (garbage, "not_tls", "handshake", "WRONG_VERSION_NUMBER"),
        (fin_after_hello, "closed", "handshake", ""),
        (rst_after_hello, "reset", "handshake", ""),
        (alert(112), "tls_alert", "handshake", "UNRECOGNIZED_NAME"),
        (alert(40), "tls_alert", "handshake", "HANDSHAKE_FAILURE"),
        (alert(70), "tls_alert", "handshake", "PROTOCOL_VERSION"),
    ],
    ids=["silent", "garbage", "fin", "rst", "alert-unrecognized-name", "alert-handshake",
         "alert-version"],
)
async def test_misbehaving_servers_get_their_error_type(
    behaviour: Any, kind: str, stage: str, needle: str
) -> None:
    async with raw_server(behaviour) as server:
        (record,) = await scan_all([server.target], timeout=0.5)
    assert record["status"] == "error"
    assert record["certificate"] is None and record["chain"] == []
    assert record["error"]["type"] == kind, record["error"]
    assert record["error"]["stage"] == stage
    assert needle in record["error"]["message"]
    assert record["ip"] == server.host


@pytest.mark.both_loops
async def test_nothing_listening_is_refused() -> None:
    host = next_address()
    (record,) = await scan_all([f"{host}:{free_port(host)}"])
    assert (record["error"]["type"], record["error"]["stage"]) == ("refused", "connect")


async def test_bad_lines_become_records_and_the_scan_goes_on(ca: trustme.CA) -> None:
    async with tls_server(server_context(ca.issue_cert("x.test"))) as server:
        records = await scan_all(["bad:port:here:x:", server.target, "host.test:99999"])
    assert len(records) == 3
    bad = [r for r in records if r["error"] and r["error"]["type"] == "invalid_target"]
    assert sorted(r["target"] for r in bad) == ["bad:port:here:x:", "host.test:99999"]
    assert all(r["error"]["stage"] == "target" for r in bad)
    assert any("api:3: port 99999 out of range" in r["error"]["message"] for r in bad)
    assert sum(r["status"] == "ok" for r in records) == 1


async def test_a_bug_is_internal_with_its_traceback(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(der: bytes, **_: object) -> dict[str, object]:
        raise ZeroDivisionError("certscan bug")

    monkeypatch.setattr(certs, "certificate_facts", broken)
    async with tls_server(server_context(ca.issue_cert("bug.test"))) as server:
        (record,) = await scan_all([server.target])
    assert record["status"] == "error"
    assert record["error"]["type"] == "internal"
    assert "ZeroDivisionError: certscan bug" in record["error"]["message"]
    assert "Traceback" in record["error"]["message"]


@pytest.mark.slow  # ~2 s
async def test_many_targets_each_get_exactly_one_record(ca: trustme.CA) -> None:
    ctx = server_context(ca.issue_cert("many.test"))
    async with tls_server(ctx) as good, raw_server(silent) as quiet:
        lines = [good.target, quiet.target, "not..a..target"] * 40
        records = await scan_all(lines, concurrency=7, timeout=0.3)
    assert len(records) == 120
    statuses = sorted((r["target"], r["status"]) for r in records)
    assert statuses.count((good.target, "ok")) == 40
    assert statuses.count((quiet.target, "error")) == 40


async def test_names_resolve_through_a_local_dns_server(ca: trustme.CA) -> None:
    """Host-name targets end to end: our own DNS server on loopback (aiodns pointed at it),
    a real TLS server at the address it gives; an unknown name is a `dns` error."""
    async with tls_server(server_context(ca.issue_cert("www.scan.test"))) as server:
        records = {"www.scan.test": [server.host]}
        async with dns_server("127.53.0.7", zone="scan.test", records=records) as (_, port):
            got = await scan_all(
                [f"www.scan.test:{server.port}", f"missing.scan.test:{server.port}"],
                resolver="aiodns", nameservers=(f"127.53.0.7:{port}",),
            )
    by_host = {r["host"]: r for r in got}
    ok = by_host["www.scan.test"]
    assert ok["status"] == "ok" and ok["ip"] == server.host and ok["sni"] == "www.scan.test"
    assert ok["timing_ms"]["resolve"] is not None
    missing = by_host["missing.scan.test"]
    assert (missing["error"]["type"], missing["error"]["stage"]) == ("dns", "resolve")
    assert missing["ip"] is None


@pytest.mark.parametrize(("maximum", "server_finishes"), [
    (ssl.TLSVersion.TLSv1_3, False),  # our Finished is not sent: nothing for the server
    (ssl.TLSVersion.TLSv1_2, True),  # ours precedes the server's Finished: it must go
])
async def test_the_client_finished_is_sent_only_when_the_handshake_needs_it(
    ca: trustme.CA, maximum: ssl.TLSVersion, server_finishes: bool
) -> None:
    context = server_context(ca.issue_cert("fin.test"), maximum=maximum)
    finished: list[bool] = []

    async def memory_bio_server(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                data = await reader.read(65536)
                if not data:  # the client hung up without finishing our handshake
                    finished.append(False)
                    return
                incoming.write(data)
                continue
            writer.write(outgoing.read())
            await writer.drain()
            finished.append(True)
            await reader.read(65536)  # until the client hangs up
            return

    async with raw_server(memory_bio_server) as server:
        [record] = await scan_all([server.target])
        for _ in range(100):  # the server's side ends when it sees the client leave
            if finished:
                break
            await asyncio.sleep(0.01)
    assert record["status"] == "ok", record["error"]
    assert record["tls"]["version"] == maximum.name.replace("_", ".")
    assert finished == [server_finishes]
