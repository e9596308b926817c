"""Verdicts end to end: real TLS servers on loopback serving each PKI scenario, scanned with
--ca-bundle, and the same server judged by a verifying stdlib client over the network."""

from __future__ import annotations

import asyncio
import re
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trustme

import pki
import scanner
from pki import STRICT, Scenario, client_context, pem, scenarios
from scanner.record import error_record
from scanner.targets import parse_line
from scanner.values import ErrorType, Failure, Stage
from schema import checked
from servers import free_port, next_address, server_context, tls_server

_BY_ID = {s.id: s for s in scenarios()}


def _server_context(scenario: Scenario, tmp: Path) -> ssl.SSLContext:
    return pki.serving(scenario.chain, scenario.key_pem, tmp, weak=True)


async def _stdlib_client(host: str, port: int, roots: Path, name: str,
                         policy: str = "default") -> tuple[bool, int]:
    """What `ssl.create_default_context(cafile=roots)` concludes, over the network, with the
    policy's verify flags (those of 3.11/3.12 for "default"; names from the SAN only)."""
    client = client_context(roots, policy)
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
    assert (validation["policy"], validation["server_name"]) == ("default",
                                                                 scenario.server_name)
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


async def _scan_scenario(scenario: Scenario, tmp: Path, **options: Any
                         ) -> tuple[dict[str, Any], tuple[bool, int], str]:
    """Serve the scenario on loopback, scan it, and ask a verifying stdlib client too."""
    roots = scenario.write_roots(tmp)
    policy = options.get("verify_policy", "default")
    async with tls_server(_server_context(scenario, tmp)) as server:
        (record,) = [checked(r) async for r in scanner.scan(
            [f"{server.target} {scenario.server_name}"], ca_bundle=str(roots), timeout=5,
            **options)]
        stdlib = await _stdlib_client(server.host, server.port, roots, scenario.server_name,
                                      policy)
    return record, stdlib, server.target


async def test_a_root_the_store_lacks_is_untrusted_root_even_when_sent(tmp_path: Path) -> None:
    # leaf + intermediate + its own root, the root not in the store: X509_V_ERR 19, which
    # is not the leaf signing itself.
    record, stdlib, _ = await _scan_scenario(_BY_ID["chain-with-unknown-root"], tmp_path)
    assert len(record["chain"]) == 3
    assert record["chain"][2]["subject"] == record["chain"][2]["issuer"]
    assert record["validation"]["reason"] == "untrusted_root"
    assert _code(record["validation"]["message"]) == 19
    assert stdlib == (False, 19)
    # A leaf that is its own issuer (18) is self_signed.
    record, stdlib, _ = await _scan_scenario(_BY_ID["self-signed-leaf"], tmp_path)
    assert record["validation"]["reason"] == "self_signed"
    assert _code(record["validation"]["message"]) == 18
    assert stdlib == (False, 18)


@pytest.mark.parametrize("sid", list(STRICT))
async def test_the_strict_policy_end_to_end(sid: str, tmp_path: Path) -> None:
    # The scenarios whose verdict differs between the policies: each policy's verdict, and
    # the stdlib client with that policy's flags agrees over the network.
    scenario = _BY_ID[sid]
    reason, code = STRICT[sid]
    default, default_stdlib, _ = await _scan_scenario(scenario, tmp_path)
    strict, strict_stdlib, _ = await _scan_scenario(scenario, tmp_path, verify_policy="strict")
    assert default["validation"]["policy"] == "default"
    assert strict["validation"]["policy"] == "strict"
    assert default["validation"]["reason"] == scenario.reason != reason
    assert strict["validation"]["reason"] == reason
    assert _code(strict["validation"]["message"]) == code
    assert default_stdlib == (default["validation"]["trusted"],
                              _code(default["validation"]["message"]))
    assert strict_stdlib == (strict["validation"]["trusted"], code)


async def test_the_sni_is_what_was_sent_and_server_name_what_was_checked(
    ca: trustme.CA, ca_pem: str,
) -> None:
    # An IP literal as the explicit server name: no SNI goes out (RFC 6066; CPython never
    # sends a literal), the verdict checks the literal against the IP SAN.
    named = next_address()
    async with tls_server(server_context(ca.issue_cert(named, "name.test"))) as server:
        (by_ip,) = [checked(r) async for r in scanner.scan([f"{server.target} {named}"],
                                                           ca_bundle=ca_pem, timeout=5)]
        assert server.server_names == [None]
        (by_name,) = [checked(r) async for r in scanner.scan([f"{server.target} name.test"],
                                                             ca_bundle=ca_pem, timeout=5)]
        assert server.server_names == [None, "name.test"]
        (plain,) = [checked(r) async for r in scanner.scan([server.target], ca_bundle=ca_pem,
                                                           timeout=5)]
        assert server.server_names == [None, "name.test", None]
    assert by_ip["sni"] is None
    assert by_ip["validation"]["server_name"] == named
    assert by_ip["validation"]["trusted"] is True and by_ip["validation"]["hostname_match"]
    assert by_name["sni"] == by_name["validation"]["server_name"] == "name.test"
    assert by_name["validation"]["trusted"] is True
    # No name given: the target's own address is what the verdict checks (not in the SAN).
    assert plain["sni"] is None and plain["validation"]["server_name"] == server.host
    assert plain["validation"]["reason"] == "hostname_mismatch"


async def test_a_failed_probe_names_no_sni_for_an_ip_literal() -> None:
    host = next_address()
    named = next_address()
    line = f"{host}:{free_port(host)} {named}"
    (refused,) = [checked(r) async for r in scanner.scan([line], timeout=2)]
    assert refused["error"]["type"] == "refused" and refused["sni"] is None
    (target,) = parse_line(line, ports=(443,))
    assert target.sni == named  # still the name to verify against
    crashed = checked(error_record(target, Failure(ErrorType.INTERNAL, Stage.SCAN, "x"),
                                   now=datetime.now(UTC)).as_dict())
    assert crashed["sni"] is None
    (by_name,) = parse_line(f"{host}:443 name.test", ports=(443,))
    assert error_record(by_name, Failure(ErrorType.INTERNAL, Stage.SCAN, "x"),
                        now=datetime.now(UTC)).sni == "name.test"
