"""Verdicts end to end: real TLS servers on loopback serving each PKI scenario, scanned with
--ca-bundle, and the same server judged by a verifying stdlib client over the network."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

import scanner
from pki import Scenario, pem, scenarios
from schema import checked
from servers import next_address, server_context, tls_server

_BY_ID = {s.id: s for s in scenarios()}


def _server_context(scenario: Scenario, tmp: Path) -> ssl.SSLContext:
    chain, key = tmp / "chain.pem", tmp / "key.pem"
    chain.write_bytes(b"".join(pem(der) for der in scenario.chain))
    key.write_bytes(scenario.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # serve RSA-1024 and SHA-1 certificates too
    ctx.load_cert_chain(chain, key)
    return ctx


async def _stdlib_client(host: str, port: int, roots: Path, name: str) -> tuple[bool, int]:
    """What `ssl.create_default_context(cafile=roots)` concludes, over the network."""
    client = ssl.create_default_context(cafile=str(roots))
    client.hostname_checks_common_name = False  # names from the SAN only (the contract)
    try:
        async with asyncio.timeout(5):
            _, writer = await asyncio.open_connection(host, port, ssl=client,
                                                      server_hostname=name)
    except ssl.SSLCertVerificationError as exc:
        return False, exc.verify_code
    writer.transport.abort()
    return True, 0


def _code(message: str) -> int:
    match = re.search(r"X509_V_ERR (\d+)", message)
    return int(match.group(1)) if match else 0


@pytest.mark.parametrize("scenario", list(_BY_ID.values()), ids=list(_BY_ID))
async def test_verdict_matches_a_verifying_stdlib_client(
    scenario: Scenario, tmp_path: Path
) -> None:
    roots = scenario.write_roots(tmp_path)
    async with tls_server(_server_context(scenario, tmp_path)) as server:
        records = [
            checked(r) async for r in scanner.scan(
                [f"{server.target} {scenario.server_name}"], ca_bundle=str(roots), timeout=5
            )
        ]
        accepted, code = await _stdlib_client(server.host, server.port, roots,
                                               scenario.server_name)
    (record,) = records
    assert record["status"] == "ok", record["error"]
    validation: dict[str, Any] = record["validation"]
    assert validation["reason"] == scenario.reason
    assert validation["trusted"] is (scenario.reason is None)
    assert validation["store"] == str(roots)
    # The cross-check: the same server, a verifying stdlib client, the same conclusion.
    assert validation["trusted"] is accepted
    assert _code(validation["message"]) == code
    # The certificate is kept whatever the verdict.
    assert record["certificate"]["pem"] == pem(scenario.chain[0]).decode()
    assert len(record["chain"]) == len(scenario.chain)


async def test_a_valid_server_costs_one_handshake(ca: trustme.CA, ca_pem: str) -> None:
    async with tls_server(server_context(ca.issue_cert("one.test"))) as server:
        (record,) = [r async for r in scanner.scan([f"{server.target} one.test"],
                                                    ca_bundle=ca_pem)]
    assert record["validation"]["trusted"] is True
    assert record["validation"]["hostname_match"] is True
    assert len(server.server_names) == 1  # one ClientHello reached the server


async def test_an_invalid_server_also_costs_one_handshake(ca: trustme.CA, ca_pem: str) -> None:
    async with tls_server(server_context(ca.issue_cert("one.test"))) as server:
        (record,) = [r async for r in scanner.scan([f"{server.target} other.test"],
                                                    ca_bundle=ca_pem)]
    assert record["validation"]["reason"] == "hostname_mismatch"
    assert record["validation"]["hostname_match"] is False
    assert len(server.server_names) == 1  # one ClientHello reached the server


async def test_an_ip_target_is_judged_against_its_ip_san(ca: trustme.CA, ca_pem: str) -> None:
    host = next_address()
    async with tls_server(server_context(ca.issue_cert(host)), host) as server:
        (good,) = [r async for r in scanner.scan([server.target], ca_bundle=ca_pem)]
    async with tls_server(server_context(ca.issue_cert("127.0.0.1"))) as server:
        (bad,) = [r async for r in scanner.scan([server.target], ca_bundle=ca_pem)]
    assert good["sni"] is None and good["validation"]["trusted"] is True
    assert bad["validation"]["reason"] == "hostname_mismatch"


async def test_the_asyncio_twin_of_get_server_certificate(
    ca: trustme.CA, ca_pem: str, tmp_path: Path
) -> None:
    leaf = ca.issue_cert("twin.test")
    other = trustme.CA()
    other_pem = tmp_path / "other.pem"
    other.cert_pem.write_to_path(str(other_pem))
    async with tls_server(server_context(leaf)) as server:
        addr = (server.host, server.port)
        got = await scanner.get_server_certificate(addr)
        verified = await scanner.get_server_certificate(addr, ca_certs=ca_pem)
        stdlib = await asyncio.to_thread(ssl.get_server_certificate, addr, ca_certs=ca_pem)
        with pytest.raises(ssl.SSLCertVerificationError) as ours:
            await scanner.get_server_certificate(addr, ca_certs=str(other_pem))
        with pytest.raises(ssl.SSLCertVerificationError) as theirs:
            await asyncio.to_thread(ssl.get_server_certificate, addr,
                                    ca_certs=str(other_pem))
    expected = leaf.cert_chain_pems[0].bytes().decode()
    assert got == verified == expected
    assert ssl.PEM_cert_to_DER_cert(stdlib) == ssl.PEM_cert_to_DER_cert(expected)
    assert ours.value.verify_code == theirs.value.verify_code == 20
    assert ours.value.verify_message == theirs.value.verify_message
    host = next_address()
    with pytest.raises(ConnectionRefusedError):
        await scanner.get_server_certificate((host, 9))
