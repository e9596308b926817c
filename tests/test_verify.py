"""verify.py against the real stdlib client: every scenario is also judged by an in-memory
handshake with ``ssl.create_default_context(cafile=roots)``, and the two must agree."""

from __future__ import annotations

import ctypes
import datetime as dt
import os
import shutil
import ssl
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trustme

import pki
from scanner.verify import TrustStore, Verdict, to_ssl_error, verify_chain

SCENARIOS = {s.id: s for s in pki.scenarios()}


@pytest.fixture
def store_for(tmp_path: Path) -> Iterator[dict[str, TrustStore]]:
    """Scenario id -> a TrustStore over that scenario's root bundle (closed afterwards)."""
    opened: dict[str, TrustStore] = {}

    class Stores(dict[str, TrustStore]):
        def __missing__(self, key: str) -> TrustStore:
            store = TrustStore.load(str(SCENARIOS[key].write_roots(tmp_path)))
            opened[key] = self[key] = store
            return store

    yield Stores()
    for store in opened.values():
        store.close()


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_agrees_with_the_stdlib_client(
    scenario: pki.Scenario, store_for: dict[str, TrustStore]
) -> None:
    oracle = pki.stdlib_verdict(scenario)
    verdict = verify_chain(scenario.chain, store_for[scenario.id],
                           server_name=scenario.server_name)

    assert (verdict.trusted, verdict.code) == (oracle.accepted, oracle.verify_code)
    assert verdict.verify_message == oracle.verify_message
    assert verdict.reason == scenario.reason
    if verdict.trusted:
        assert verdict.message == "ok"
        assert verdict.hostname_match is True
    else:
        assert verdict.message == f"{oracle.verify_message} (X509_V_ERR {oracle.verify_code})"
        error = to_ssl_error(verdict)
        assert isinstance(error, ssl.SSLCertVerificationError)
        assert (error.verify_code, error.verify_message) == (oracle.verify_code,
                                                             oracle.verify_message)
        assert (error.library, error.reason) == ("SSL", "CERTIFICATE_VERIFY_FAILED")
        assert str(error).startswith("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert verdict.hostname_match is (verdict.reason != "hostname_mismatch")


def test_cn_only_is_a_hostname_mismatch(store_for: dict[str, TrustStore]) -> None:
    # Names come from the SAN only (DESIGN). 3.11's default context would still fall back
    # to the CN; the oracle is a default context with hostname_checks_common_name False.
    verdict = verify_chain(SCENARIOS["cn-only"].chain, store_for["cn-only"],
                           server_name="cn-only.example.org")
    assert (verdict.trusted, verdict.reason, verdict.hostname_match) == (
        False, "hostname_mismatch", False)


def test_as_dict_has_exactly_the_record_keys(store_for: dict[str, TrustStore]) -> None:
    s = SCENARIOS["expired-leaf"]
    verdict = verify_chain(s.chain, store_for[s.id], server_name=s.server_name)
    assert verdict.as_dict() == {
        "trusted": False,
        "hostname_match": True,
        "reason": "expired",
        "message": "certificate has expired (X509_V_ERR 10)",
        "store": store_for[s.id].label,
    }
    assert verdict.code == 10


def test_at_replaces_the_clock(store_for: dict[str, TrustStore]) -> None:
    expired, early = SCENARIOS["expired-leaf"], SCENARIOS["not-yet-valid-leaf"]
    past = pki.NOW - 10 * pki.DAY
    assert verify_chain(expired.chain, store_for[expired.id], server_name=expired.server_name,
                        at=past).trusted
    later = (pki.NOW + 2 * pki.DAY).replace(tzinfo=None)  # naive means UTC
    assert verify_chain(early.chain, store_for[early.id], server_name=early.server_name,
                        at=later).trusted
    valid = SCENARIOS["rsa-via-intermediate"]  # trustme: valid until the year 3000
    far = verify_chain(valid.chain, store_for[valid.id], server_name=valid.server_name,
                       at=dt.datetime(3000, 6, 1, tzinfo=dt.UTC))
    assert far.reason == "expired"


def test_no_name_checks_the_chain_only(store_for: dict[str, TrustStore]) -> None:
    s = SCENARIOS["wrong-host"]
    verdict = verify_chain(s.chain, store_for[s.id], server_name=None)
    assert (verdict.trusted, verdict.hostname_match, verdict.reason) == (True, None, None)


def test_hostname_match_is_independent_of_chain_errors(
    store_for: dict[str, TrustStore],
) -> None:
    s = SCENARIOS["untrusted-root"]
    good = verify_chain(s.chain, store_for[s.id], server_name=s.server_name)
    bad = verify_chain(s.chain, store_for[s.id], server_name="nope.example.org")
    assert (good.reason, good.hostname_match) == ("untrusted_root", True)
    # Chain building fails before the name check, so the reason stays the chain's.
    assert (bad.reason, bad.hostname_match) == ("untrusted_root", False)


def test_names_are_encoded_like_the_stdlib(store_for: dict[str, TrustStore]) -> None:
    s = SCENARIOS["wildcard-match"]
    assert verify_chain(s.chain, store_for[s.id], server_name="A.Example.ORG").trusted
    verdict = verify_chain(s.chain, store_for[s.id], server_name="bücher.example.com")
    assert verdict.verify_message == (
        "Hostname mismatch, certificate is not valid for 'xn--bcher-kva.example.com'.")


@pytest.mark.parametrize("name", ["", ".example.org", "a..example.org"])
def test_names_the_stdlib_refuses_raise(name: str, store_for: dict[str, TrustStore]) -> None:
    s = SCENARIOS["wildcard-match"]
    with pytest.raises(ValueError, match="server_name"):
        verify_chain(s.chain, store_for[s.id], server_name=name)


def test_bad_chains_raise(store_for: dict[str, TrustStore]) -> None:
    store = store_for["wildcard-match"]
    with pytest.raises(ValueError, match="empty"):
        verify_chain([], store, server_name="a.example.org")
    with pytest.raises(ValueError, match="certificate 1"):
        verify_chain([SCENARIOS["wildcard-match"].chain[0], b"\x30\x03junk"], store,
                     server_name="a.example.org")


def test_to_ssl_error_refuses_a_trusted_verdict() -> None:
    with pytest.raises(ValueError):
        to_ssl_error(Verdict(True, True, None, "ok", "x"))


# -- trust stores ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_pki() -> tuple[trustme.CA, trustme.LeafCert, list[bytes]]:
    ca = trustme.CA()
    leaf = ca.create_child_ca().issue_cert("store.example.org")
    chain = [ssl.PEM_cert_to_DER_cert(b.bytes().decode()) for b in leaf.cert_chain_pems]
    return ca, leaf, chain


def _judge(store: TrustStore, chain: list[bytes]) -> Verdict:
    return verify_chain(chain, store, server_name="store.example.org")


def test_load_a_bundle_file(tmp_path: Path, rsa_pki: tuple[trustme.CA, object, list[bytes]]
                            ) -> None:
    ca, _, chain = rsa_pki
    other = trustme.CA()
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(other.cert_pem.bytes() + ca.cert_pem.bytes())
    with TrustStore.load(str(bundle)) as store:
        assert store.label == str(bundle)
        verdict = _judge(store, chain)
        assert verdict.trusted and verdict.store == str(bundle)


def test_load_a_directory_of_pem_files(
    tmp_path: Path, rsa_pki: tuple[trustme.CA, object, list[bytes]]
) -> None:
    ca, _, chain = rsa_pki
    (tmp_path / "README").write_text("not a certificate\n")
    (tmp_path / "other.crt").write_bytes(trustme.CA().cert_pem.bytes())
    ca.cert_pem.write_to_path(str(tmp_path / "ours.pem"))
    with TrustStore.load(str(tmp_path)) as store:
        assert _judge(store, chain).trusted


def test_load_a_hashed_directory_of_links(
    tmp_path: Path, rsa_pki: tuple[trustme.CA, object, list[bytes]]
) -> None:
    # The c_rehash layout: only <hash>.0 links, to files kept elsewhere.
    ca, _, chain = rsa_pki
    elsewhere, hashed = tmp_path / "share", tmp_path / "certs"
    elsewhere.mkdir()
    hashed.mkdir()
    ca.cert_pem.write_to_path(str(elsewhere / "ca.pem"))
    openssl = shutil.which("openssl")
    subject_hash = "0badc0de"  # any name will do for an eager load; the real one if we can
    if openssl:
        subject_hash = subprocess.run(
            [openssl, "x509", "-noout", "-subject_hash", "-in", str(elsewhere / "ca.pem")],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    os.symlink(elsewhere / "ca.pem", hashed / f"{subject_hash}.0")
    with TrustStore.load(str(hashed)) as store:
        assert _judge(store, chain).trusted


def test_load_system(rsa_pki: tuple[trustme.CA, object, list[bytes]]) -> None:
    with TrustStore.load("system") as store:
        verdict = _judge(store, rsa_pki[2])
    assert (verdict.store, verdict.trusted) == ("system", False)
    assert verdict.reason == "untrusted_root"


def test_load_certifi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                      rsa_pki: tuple[trustme.CA, object, list[bytes]]) -> None:
    ca, _, chain = rsa_pki
    bundle = tmp_path / "cacert.pem"
    ca.cert_pem.write_to_path(str(bundle))
    fake = types.ModuleType("certifi")
    fake.where = lambda: str(bundle)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "certifi", fake)
    with TrustStore.load("certifi") as store:
        assert store.label == "certifi"
        assert _judge(store, chain).trusted


def test_load_real_certifi() -> None:
    pytest.importorskip("certifi")
    with TrustStore.load("certifi") as store:
        assert store.label == "certifi"


def test_certifi_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "certifi", None)  # makes the import fail
    with pytest.raises(ValueError, match="certifi package"):
        TrustStore.load("certifi")


@pytest.mark.parametrize("content", [None, b"", b"garbage\n", b"-----BEGIN CERTIFICATE-----\n"])
def test_unusable_bundles_raise(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bundle.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"trust store"):
        TrustStore.load(str(path))


def test_directory_without_certificates_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no readable certificate"):
        TrustStore.load(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="no readable certificate"):
        TrustStore.load(str(tmp_path))


def test_closed_store(tmp_path: Path, rsa_pki: tuple[trustme.CA, object, list[bytes]]) -> None:
    path = tmp_path / "ca.pem"
    rsa_pki[0].cert_pem.write_to_path(str(path))
    store = TrustStore.load(str(path))
    store.close()
    store.close()  # idempotent
    assert "closed" in repr(store)
    with pytest.raises(ValueError, match="closed"):
        _judge(store, rsa_pki[2])


# -- sharing and resources -------------------------------------------------------------------


def test_one_store_shared_by_threads(store_for: dict[str, TrustStore]) -> None:
    # All of these share the "base" root, so one store serves them all.
    ids = ["wrong-host", "untrusted-root", "expired-leaf", "incomplete-chain", "bad-signature",
           "chain-with-root", "long-chain"]
    store = store_for["wrong-host"]
    jobs = [SCENARIOS[i] for i in ids] * 40
    expected = {s.id: verify_chain(s.chain, store, server_name=s.server_name) for s in jobs}
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(
            lambda s: (s.id, verify_chain(s.chain, store, server_name=s.server_name)), jobs))
    assert len(results) == len(jobs)
    assert all(verdict == expected[sid] for sid, verdict in results)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


_MALLINFO2: list[Callable[[], _MallInfo2]] = []


def _heap_in_use() -> int:
    """Bytes malloc has handed out and not got back (glibc >= 2.33), else the RSS."""
    if not _MALLINFO2:
        try:
            mallinfo2 = ctypes.CDLL(None).mallinfo2
        except (AttributeError, OSError):
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE")
        mallinfo2.restype, mallinfo2.argtypes = _MallInfo2, []
        _MALLINFO2.append(mallinfo2)
    return int(_MALLINFO2[0]().uordblks)


def test_no_leak(store_for: dict[str, TrustStore]) -> None:
    # OpenSSL 3.0 parses a certificate in ~0.3 ms (openssl#19119), so 20k verifications would
    # take ~20 s. Instead count malloc's bytes in use, which sees even the smallest object we
    # allocate (the stack header costs ~130 bytes a call when leaked). OpenSSL's own caches
    # grow for the first thousand or so calls, then the heap stays flat to the byte; a leak
    # grows it in every window. So: windows of 200 verifications (success, name, "issuer not
    # found" and signature paths) until one grows the heap by less than 16 bytes a call.
    if not Path("/proc/self/statm").exists():
        pytest.skip("needs Linux")
    store = store_for["wrong-host"]
    jobs = [SCENARIOS[i] for i in ("wrong-host", "untrusted-root", "bad-signature")]
    jobs.append(pki.Scenario("ok", SCENARIOS["wrong-host"].chain, b"", b"", "base.example.org",
                             None))
    growth = []
    for _window in range(12):
        before = _heap_in_use()
        for _ in range(50):
            for s in jobs:
                verify_chain(s.chain, store, server_name=s.server_name)
        growth.append(_heap_in_use() - before)
        if growth[-1] < 16 * 200:
            return
    pytest.fail(f"the heap grew in every window of 200 verifications: {growth}")
