"""Captures judged together (assess.assess_all, the engine's batches): each record is the
one `assess` gives alone, a bug costs only its own target, and a scan's batches hold that
through real servers."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trustme

import scanner
from scanner import assess as assessing
from scanner import engine
from scanner.assess import assess, assess_all
from scanner.errors import ErrorType, Stage
from scanner.targets import Target
from scanner.values import Capture, Failure, Timings, TlsFacts
from scanner.verify import TrustStore
from schema import checked
from servers import server_context, tls_server

NOW = datetime(2026, 6, 1, tzinfo=UTC)
TLS = TlsFacts("TLSv1.3", "TLS_AES_128_GCM_SHA256", None)


def _target(name: str) -> Target:
    return Target(f"{name}:443", name, 443, name, None, "argv", 1, None)


def _capture(chain: tuple[bytes, ...], *, failed: bool = False) -> Capture:
    if failed:
        return Capture("127.0.0.1", None, (), Timings(total=1.0),
                       Failure(ErrorType.REFUSED, Stage.CONNECT, "refused"), (), None, None)
    return Capture("127.0.0.1", TLS, chain, Timings(total=1.0), None, (), None, "rustls")


def _chain(ca: trustme.CA, name: str) -> tuple[bytes, ...]:
    cert = ca.issue_cert(name)
    return tuple(blob.bytes() for blob in cert.cert_chain_pems)


@pytest.fixture
def store(ca: trustme.CA, tmp_path: Path) -> Any:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    with TrustStore.load(str(path)) as loaded:
        yield loaded


def _der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


def test_each_record_is_the_one_assess_gives_alone(ca: trustme.CA, store: TrustStore) -> None:
    other = trustme.CA()
    probes = [
        (_target("a.test"), _capture(tuple(map(_der, _chain(ca, "a.test"))))),
        (_target("b.test"), _capture((), failed=True)),
        (_target("c.test"), _capture(tuple(map(_der, _chain(ca, "elsewhere.test"))))),
        (_target("d.test"), _capture(tuple(map(_der, _chain(other, "d.test"))))),
        (_target("e.test"), _capture((b"\x30\x03\x02\x01\x00",))),  # not a certificate
    ]
    together = assess_all(probes, now=NOW, store=store)
    alone = [assess(t, c, now=NOW, store=store) for t, c in probes]
    assert together == alone
    assert [r.validation.reason if r.validation else None for r in together[:4]] == [
        None, None, "hostname_mismatch", "incomplete_chain"]
    assert together[1].failure is not None and together[1].failure.type is ErrorType.REFUSED
    assert together[4].failure is not None  # the server's garbage: a record, not a crash
    without = assess_all(probes[:1], now=NOW, store=None)
    assert without[0].validation is None and without[0].certificate is not None


def test_a_bug_in_one_verdict_costs_that_target_alone(
    ca: trustme.CA, store: TrustStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = assessing.verify_chain

    def broken_for_b(chain: Any, store: TrustStore, *, server_name: str | None,
                     **options: Any) -> Any:
        if server_name == "b.test":
            raise ZeroDivisionError("certscan bug")
        return real(chain, store, server_name=server_name, **options)

    monkeypatch.setattr(assessing, "verify_chain", broken_for_b)
    names = ("a.test", "b.test", "c.test")
    probes = [(_target(n), _capture(tuple(map(_der, _chain(ca, n))))) for n in names]
    records = assess_all(probes, now=NOW, store=store)
    assert [r.failure.type if r.failure else None for r in records] == [
        None, ErrorType.INTERNAL, None]
    assert records[1].failure is not None
    assert records[1].failure.stage is Stage.CERTIFICATE
    assert "ZeroDivisionError: certscan bug" in records[1].failure.message
    assert records[0].validation is not None and records[0].validation.trusted
    assert records[2].validation is not None and records[2].validation.trusted


async def test_captures_of_one_turn_are_judged_in_one_batch(
    ca: trustme.CA, store: TrustStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches: list[int] = []
    real = assessing.assess_all

    def counting(probes: Any, **options: Any) -> Any:
        batches.append(len(probes))
        return real(probes, **options)

    monkeypatch.setattr(engine, "assess_all", counting)
    assessor = engine._Assessor(store, "default")
    names = [f"n{i}.test" for i in range(5)]
    futures = [assessor.assess(_target(n), _capture(tuple(map(_der, _chain(ca, n)))))
               for n in names]
    futures[2].cancel()  # a stopped target: skipped, the others still judged
    done = [await f for i, f in enumerate(futures) if i != 2]
    assert batches == [4]
    assert [r.host for r in done] == [n for i, n in enumerate(names) if i != 2]
    assert all(r.validation is not None and r.validation.trusted for r in done)
    late = await assessor.assess(_target("late.test"), _capture((), failed=True))
    assert batches == [4, 1] and late.failure is not None


async def test_a_bug_in_a_batch_reaches_every_waiter(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(probes: Any, **options: Any) -> Any:
        raise ZeroDivisionError("certscan bug")

    monkeypatch.setattr(engine, "assess_all", broken)
    assessor = engine._Assessor(None, "default")
    futures = [assessor.assess(_target(n), _capture((), failed=True)) for n in ("a", "b")]
    for future in futures:
        with pytest.raises(ZeroDivisionError):
            await future


async def test_a_scan_still_gives_each_target_its_verdict(ca: trustme.CA, tmp_path: Path
                                                          ) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with tls_server(server_context(ca.issue_cert("x.test"))) as server:
        records = [checked(r) async for r in scanner.scan([f"{server.target} x.test"] * 30,
                                                        ca_bundle=str(bundle), concurrency=30)]
    assert len(records) == 30
    assert all(r["status"] == "ok" and r["validation"]["trusted"] for r in records)
