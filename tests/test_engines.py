"""Handshake engines: rustls first where it can, OpenSSL for the servers it cannot speak to.

Against real loopback servers: a modern one (rustls serves it, and the record's content is
the one OpenSSL gives), and the legacy ones an inventory still meets (TLS 1.0, CBC only,
static RSA only), which `auto` reaches through its OpenSSL fallback in the same deadline
and a forced `rustls` reports as the failure it is.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import pytest
import trustme

import scanner
from scanner.config import ConfigError, ScanConfig
from scanner.engines import falls_back, rustls_missing
from scanner.values import ErrorType, Failure, Stage
from schema import checked
from servers import fin_after_hello, garbage, raw_server, server_context, tls_server

pytestmark = pytest.mark.skipif(rustls_missing() is not None,
                                reason=f"the rustls engine: {rustls_missing()}")

Record = dict[str, Any]
# What may differ between two scans of one server: when, how long, and what was agreed.
_VOLATILE = ("scanned_at", "timing_ms", "engine", "tls")


async def scan_one(line: str, **options: Any) -> Record:
    options.setdefault("timeout", 3.0)
    (record,) = [checked(r) async for r in scanner.scan([line], **options)]
    return record


def legacy(cert: trustme.LeafCert, *, maximum: ssl.TLSVersion,
           ciphers: str = "ALL") -> ssl.SSLContext:
    return server_context(cert, maximum=maximum, seclevel0=True, ciphers=ciphers)


LEGACY: dict[str, Callable[[trustme.CA], ssl.SSLContext]] = {
    "tls1.0": lambda ca: legacy(ca.issue_cert("old.test"), maximum=ssl.TLSVersion.TLSv1),
    "tls1.1": lambda ca: legacy(ca.issue_cert("old.test"), maximum=ssl.TLSVersion.TLSv1_1),
    "cbc-only": lambda ca: legacy(ca.issue_cert("old.test"), maximum=ssl.TLSVersion.TLSv1_2,
                                  ciphers="ECDHE-ECDSA-AES128-SHA"),
    # Static RSA only (AES128-SHA): a Python server will not complete it with OpenSSL 3
    # either; `openssl s_server` does, and bench/run's legacy fleet (nginx) covers it.
}


async def test_a_modern_server_is_served_by_rustls_with_the_same_record(
        ca: trustme.CA, ca_pem: str) -> None:
    child = ca.create_child_ca()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    child.issue_cert("new.test").configure_cert(ctx)
    async with tls_server(ctx) as server:
        line = f"{server.target} new.test"
        fast = await scan_one(line, ca_bundle=ca_pem)
        slow = await scan_one(line, ca_bundle=ca_pem, engine="openssl")
    assert (fast["engine"], slow["engine"]) == ("rustls", "openssl")
    assert fast["status"] == "ok" and fast["validation"]["trusted"] is True
    assert len(fast["chain"]) == 2  # leaf and intermediate, as sent
    assert fast["tls"]["version"] == slow["tls"]["version"] == "TLSv1.3"
    for key in _VOLATILE:
        fast.pop(key), slow.pop(key)
    assert fast == slow  # chain bytes, facts and verdict: the same whichever engine


@pytest.mark.parametrize("kind", sorted(LEGACY))
async def test_auto_reaches_a_legacy_server_through_openssl_in_the_same_deadline(
        ca: trustme.CA, kind: str) -> None:
    async with tls_server(LEGACY[kind](ca)) as server:
        line = f"{server.target} old.test"
        auto = await scan_one(line, timeout=2.0)
        forced = await scan_one(line, engine="rustls")
        plain = await scan_one(line, engine="openssl")
    assert auto["status"] == "ok", auto["error"]
    assert auto["engine"] == "openssl"
    assert auto["certificate"] == plain["certificate"] and auto["chain"] == plain["chain"]
    assert auto["timing_ms"]["total"] < 2000
    # Forced, rustls says what it met, never a record that pretends otherwise.
    assert forced["status"] == "error" and forced["engine"] == "rustls"
    assert forced["error"]["type"] in ("tls_alert", "tls_error", "closed"), forced["error"]
    assert forced["error"]["message"].endswith("(rustls)")


async def test_a_name_rustls_will_not_send_goes_to_openssl_without_a_second_connection(
        ca: trustme.CA) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("scoped.test").configure_cert(ctx)
    async with tls_server(ctx) as server:
        record = await scan_one(f"{server.target} fe80::1%lo")  # an IPv6 literal with a zone
    assert record["status"] == "ok" and record["engine"] == "openssl"
    assert server.server_names == ["fe80::1%lo"]  # one connection: OpenSSL sends it as is


@pytest.mark.parametrize(("behaviour", "kind", "engine"), [
    (garbage, "not_tls", "rustls"),  # not TLS for either: no second connection
    (fin_after_hello, "closed", "openssl"),  # a hang-up on rustls's hello: OpenSSL tries
], ids=["garbage", "fin"])
async def test_failures_say_which_engine_met_them(behaviour: Any, kind: str,
                                                  engine: str) -> None:
    async with raw_server(behaviour) as server:
        record = await scan_one(server.target, timeout=1.0)
    assert record["error"]["type"] == kind
    assert record["engine"] == engine
    assert server.accepts == (1 if engine == "rustls" else 2)


def test_what_falls_back() -> None:
    def failure(kind: ErrorType, stage: Stage = Stage.HANDSHAKE, message: str = "") -> Failure:
        return Failure(kind, stage, message)

    assert falls_back(failure(ErrorType.TLS_ALERT, message="SSLV3_ALERT_HANDSHAKE_FAILURE: x"))
    assert falls_back(failure(ErrorType.TLS_ALERT, message="TLSV1_ALERT_PROTOCOL_VERSION: x"))
    assert not falls_back(failure(ErrorType.TLS_ALERT, message="TLSV1_UNRECOGNIZED_NAME: x"))
    assert falls_back(failure(ErrorType.TLS_ERROR, message="peer is incompatible"))
    assert falls_back(failure(ErrorType.CLOSED))
    for kind in (ErrorType.NOT_TLS, ErrorType.TIMEOUT):
        assert not falls_back(failure(kind))
    assert not falls_back(failure(ErrorType.REFUSED, Stage.CONNECT))
    assert not falls_back(failure(ErrorType.STARTTLS, Stage.STARTTLS))


def test_the_engine_option_is_checked() -> None:
    assert ScanConfig().engine == "auto"
    with pytest.raises(ConfigError, match=r"^engine: unknown engine 'boringssl'"):
        ScanConfig(engine="boringssl")  # type: ignore[arg-type]


def test_rustls_counts_as_missing_when_it_makes_no_client_hello(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check makes a real ClientHello (which also seeds aws-lc's generator before any
    worker is forked); a build that makes none is reported, and OpenSSL scans instead."""
    import scanner.engines as engines_module

    class Silent:
        def do_handshake(self) -> None:
            raise ssl.SSLWantReadError("nothing to send")

    monkeypatch.setattr(engines_module.hooks, "rustls_wrap", lambda *args: Silent())
    rustls_missing.cache_clear()
    try:
        assert rustls_missing() == "rtls does not work here: it made no ClientHello"
        chosen, fallback = engines_module.engines("auto", ())
        assert chosen.name == "openssl" and fallback is None
    finally:
        monkeypatch.undo()
        rustls_missing.cache_clear()
    assert rustls_missing() is None
