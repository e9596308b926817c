"""verify.py against the real stdlib client: every scenario is also judged by an in-memory
handshake with ``ssl.create_default_context(cafile=roots)``, and the two must agree."""

from __future__ import annotations

import _ssl
import ctypes
import datetime as dt
import os
import shutil
import ssl
import subprocess
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trustme

import pki
from scanner import hooks, openssl
from scanner.verify import POLICIES, Policy, TrustStore, Verdict, to_ssl_error, verify_chain

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


@pytest.mark.parametrize("policy", ["default", "strict"])
@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_agrees_with_the_stdlib_client(
    scenario: pki.Scenario, policy: Policy, store_for: dict[str, TrustStore]
) -> None:
    # "default" against create_default_context as 3.11 and 3.12 build it, "strict" against
    # the same with the two flags 3.13 adds (pki.CLIENT_FLAGS).
    oracle = pki.stdlib_verdict(scenario, policy)
    verdict = verify_chain(scenario.chain, store_for[scenario.id],
                           server_name=scenario.server_name, policy=policy)

    assert (verdict.trusted, verdict.code) == (oracle.accepted, oracle.verify_code)
    assert verdict.verify_message == oracle.verify_message
    assert verdict.reason == pki.expected_reason(scenario, policy)
    assert (verdict.policy, verdict.server_name) == (policy, scenario.server_name)
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
    # Names come from the SAN only (docs/architecture.md, "Verdicts"). 3.11's default
    # context would still fall back to the CN; the oracle is a default context with
    # hostname_checks_common_name False.
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
        "server_name": s.server_name,
        "policy": "default",
    }
    assert verdict.code == 10
    strict = verify_chain(s.chain, store_for[s.id], server_name=None, policy="strict")
    assert (strict.as_dict()["server_name"], strict.as_dict()["policy"]) == (None, "strict")


def test_self_signed_means_the_leaf_is_its_own_issuer(store_for: dict[str, TrustStore]) -> None:
    # 18 (DEPTH_ZERO_SELF_SIGNED_CERT): the leaf signed itself.
    leaf = SCENARIOS["self-signed-leaf"]
    verdict = verify_chain(leaf.chain, store_for[leaf.id], server_name=leaf.server_name)
    assert (verdict.reason, verdict.code) == ("self_signed", 18)
    # 19 (SELF_SIGNED_CERT_IN_CHAIN): a proper chain whose root, sent by the server, the
    # store does not hold. The same chain without the root (20) reads the same.
    sent = SCENARIOS["chain-with-unknown-root"]
    with_root = verify_chain(sent.chain, store_for[sent.id], server_name=sent.server_name)
    without = verify_chain(sent.chain[:2], store_for[sent.id], server_name=sent.server_name)
    assert (with_root.reason, with_root.code) == ("untrusted_root", 19)
    assert (without.reason, without.code) == ("untrusted_root", 20)
    assert with_root.hostname_match is True


def test_the_policies_are_pinned() -> None:
    assert POLICIES["default"].verify_flags == ssl.VERIFY_X509_TRUSTED_FIRST
    assert POLICIES["strict"].verify_flags == (
        ssl.VERIFY_X509_TRUSTED_FIRST | ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN)
    assert POLICIES["default"].auth_level == POLICIES["strict"].auth_level == 2
    # What they stand for: create_default_context of 3.11/3.12 ("default"), of 3.13+
    # ("strict"), at the security level CPython's cipher string sets on every context.
    client = ssl.create_default_context()
    stands_for = "default" if sys.version_info < (3, 13) else "strict"
    assert client.verify_flags == POLICIES[stands_for].verify_flags
    assert client.security_level == POLICIES[stands_for].auth_level
    assert pki.CLIENT_FLAGS[stands_for] == client.verify_flags


def test_x509_strict_refuses_what_the_default_policy_accepts(
    store_for: dict[str, TrustStore],
) -> None:
    # Both legal under RFC 5280 (and accepted by 3.11's default client); X509_STRICT
    # (3.13's default client) requires a critical basicConstraints in a CA certificate and
    # an authorityKeyIdentifier in every certificate but the anchor.
    for sid, code, words in [
        ("ca-basic-constraints-not-critical", 89, "Basic Constraints of CA cert not marked"),
        ("leaf-without-akid", 85, "Missing Authority Key Identifier"),
    ]:
        s = SCENARIOS[sid]
        default = verify_chain(s.chain, store_for[sid], server_name=s.server_name)
        strict = verify_chain(s.chain, store_for[sid], server_name=s.server_name,
                              policy="strict")
        assert (default.trusted, default.reason, default.policy) == (True, None, "default")
        assert (strict.trusted, strict.reason, strict.code) == (False, "other", code)
        assert strict.message.startswith(words) and strict.policy == "strict"
        assert strict.hostname_match is True


def test_partial_chain_trusts_an_intermediate_alone_in_the_store(
    store_for: dict[str, TrustStore],
) -> None:
    s = SCENARIOS["store-holds-intermediate-only"]
    default = verify_chain(s.chain, store_for[s.id], server_name=s.server_name)
    strict = verify_chain(s.chain, store_for[s.id], server_name=s.server_name, policy="strict")
    assert (default.trusted, default.reason, default.code) == (False, "untrusted_root", 2)
    assert (strict.trusted, strict.reason) == (True, None)


def test_an_unknown_policy_raises(store_for: dict[str, TrustStore]) -> None:
    s = SCENARIOS["wildcard-match"]
    with pytest.raises(ValueError, match="policy"):
        verify_chain(s.chain, store_for[s.id], server_name=s.server_name,
                     policy="lenient")  # type: ignore[arg-type]


def test_the_verdict_does_not_follow_the_interpreters_defaults(
    monkeypatch: pytest.MonkeyPatch, store_for: dict[str, TrustStore],
) -> None:
    # The running interpreter's defaults dressed up as another's: a default context with
    # 3.13's flags and a cipher string at security level 0. Verdicts must not move.
    cases = ("store-holds-intermediate-only", "ca-basic-constraints-not-critical",
             "leaf-without-akid", "rsa1024-leaf", "sha1-leaf")
    before = {sid: verify_chain(SCENARIOS[sid].chain, store_for[sid],
                                server_name=SCENARIOS[sid].server_name) for sid in cases}
    real = ssl.create_default_context

    def other_interpreter(*args: object, **kwargs: object) -> ssl.SSLContext:
        ctx = real(*args, **kwargs)  # type: ignore[arg-type]
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
        return ctx

    try:
        with monkeypatch.context() as m:
            m.setattr(ssl, "create_default_context", other_interpreter)
            m.setattr(ssl, "_DEFAULT_CIPHERS", "@SECLEVEL=0:ALL", raising=False)
            openssl.bind.cache_clear()  # bound afresh, as in a new process
            after = {sid: verify_chain(SCENARIOS[sid].chain, store_for[sid],
                                       server_name=SCENARIOS[sid].server_name)
                     for sid in cases}
    finally:
        openssl.bind.cache_clear()  # bound again, with the real defaults, on next use
    assert after == before
    assert [before[sid].reason for sid in cases] == [
        "untrusted_root", None, None, "weak_key", "weak_signature"]


def test_at_replaces_the_clock(store_for: dict[str, TrustStore]) -> None:
    expired, early = SCENARIOS["expired-leaf"], SCENARIOS["not-yet-valid-leaf"]
    past = pki.REAL_NOW - 10 * pki.DAY
    assert verify_chain(expired.chain, store_for[expired.id], server_name=expired.server_name,
                        at=past).trusted
    later = (pki.REAL_NOW + 2 * pki.DAY).replace(tzinfo=None)  # naive means UTC
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
    openssl_cli = shutil.which("openssl")
    subject_hash = "0badc0de"  # any name will do for an eager load; the real one if we can
    if openssl_cli:
        subject_hash = subprocess.run(
            [openssl_cli, "x509", "-noout", "-subject_hash", "-in", str(elsewhere / "ca.pem")],
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


def _assert_heap_flat(jobs: list[tuple[Sequence[bytes | _ssl.Certificate], str]],
                      store: TrustStore) -> None:
    """Windows of 200 verifications until one grows the heap by less than 16 bytes a call."""
    if not Path("/proc/self/statm").exists():
        pytest.skip("needs Linux")
    growth = []
    for _window in range(12):
        before = _heap_in_use()
        for _ in range(200 // len(jobs)):
            for chain, name in jobs:
                verify_chain(chain, store, server_name=name)
        growth.append(_heap_in_use() - before)
        if growth[-1] < 16 * 200:
            return
    pytest.fail(f"the heap grew in every window of 200 verifications: {growth}")


_LEAK_JOBS = ("wrong-host", "untrusted-root", "bad-signature")


def test_no_leak(store_for: dict[str, TrustStore]) -> None:
    # OpenSSL 3.0 parses a certificate in ~0.3 ms (openssl#19119), so 20k verifications would
    # take ~20 s. Instead count malloc's bytes in use, which sees even the smallest object we
    # allocate (the stack header costs ~130 bytes a call when leaked). OpenSSL's own caches
    # grow for the first thousand or so calls, then the heap stays flat to the byte; a leak
    # grows it in every window. So: windows of 200 verifications (success, name, "issuer not
    # found" and signature paths) until one grows the heap by less than 16 bytes a call.
    jobs = [(SCENARIOS[i].chain, SCENARIOS[i].server_name) for i in _LEAK_JOBS]
    jobs.append((SCENARIOS["wrong-host"].chain, "base.example.org"))
    _assert_heap_flat(jobs, store_for["wrong-host"])


def test_no_leak_with_certificate_objects(
    store_for: dict[str, TrustStore], received: dict[str, list[_ssl.Certificate]],
) -> None:
    # The same windows over the handshake's certificates (the lending path). A reference
    # taken and never given back costs no heap while the certificate lives; that is what
    # test_lending_gives_every_reference_back checks.
    jobs: list[tuple[Sequence[bytes | _ssl.Certificate], str]] = [
        (received[i], SCENARIOS[i].server_name) for i in _LEAK_JOBS]
    jobs.append((received["wrong-host"], "base.example.org"))
    _assert_heap_flat(jobs, store_for["wrong-host"])


# -- _ssl.Certificate objects from a handshake -----------------------------------------------
#
# verify_chain may take the handshake's own certificates and borrow the X509 inside each
# instead of decoding DER (see scanner/hooks.py, lend). Same verdicts, no d2i_X509, and
# every reference it takes is given back.


@pytest.fixture(scope="module")
def received() -> dict[str, list[_ssl.Certificate]]:
    """Scenario id -> the chain a non-verifying client received, as _ssl.Certificate."""
    return {sid: pki.handshake_certificates(s) for sid, s in SCENARIOS.items()}


def _der(certs: list[_ssl.Certificate]) -> list[bytes]:
    return [c.public_bytes(_ssl.ENCODING_DER) for c in certs]


def test_the_layout_check_passes_on_this_interpreter(
    received: dict[str, list[_ssl.Certificate]],
) -> None:
    # The struct-offset reasoning of hooks.py, on the running CPython.
    assert object.__basicsize__ == hooks._X509_OFFSET
    assert _ssl.Certificate.__basicsize__ == hooks._CERTIFICATE_SIZE
    lib = openssl.bind().crypto
    for certs in received.values():
        assert all(hooks._layout_holds(lib, c) for c in certs)


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_certificate_objects_get_the_same_verdict(
    scenario: pki.Scenario, store_for: dict[str, TrustStore],
    received: dict[str, list[_ssl.Certificate]], d2i_calls: list[int],
) -> None:
    # Every scenario (trusted, expired, hostname mismatch, untrusted root, incomplete chain,
    # bad signature, ...): the handshake's certificates judge exactly like their DER, which
    # is what the stdlib client said (test_agrees_with_the_stdlib_client).
    certs = received[scenario.id]
    assert _der(certs) == scenario.chain  # the server sent the chain as listed
    store = store_for[scenario.id]
    lent = verify_chain(certs, store, server_name=scenario.server_name)
    assert d2i_calls == []  # nothing decoded: every X509 was the handshake's own
    from_der = verify_chain(scenario.chain, store, server_name=scenario.server_name)
    assert len(d2i_calls) == len(scenario.chain)
    assert lent == from_der
    assert lent.reason == scenario.reason
    assert verify_chain(certs, store, server_name=None) == verify_chain(
        scenario.chain, store, server_name=None)


def test_certificate_objects_and_der_can_mix(
    store_for: dict[str, TrustStore], received: dict[str, list[_ssl.Certificate]],
    d2i_calls: list[int],
) -> None:
    s = SCENARIOS["long-chain"]
    certs = received[s.id]
    mixed: list[bytes | _ssl.Certificate] = [certs[0], s.chain[1], certs[2], s.chain[3]]
    verdict = verify_chain(mixed, store_for[s.id], server_name=s.server_name)
    assert verdict.trusted
    assert len(d2i_calls) == 2


class Certificate:  # a look-alike: same name, module and size as _ssl's
    """Passes every check by name and size; only its type's identity gives it away."""

    __slots__ = ("_der", "_hash")
    __module__ = "_ssl"

    def __init__(self, der: bytes) -> None:
        self._der, self._hash = der, -1

    def public_bytes(self, encoding: int) -> bytes:
        assert encoding == _ssl.ENCODING_DER
        return self._der


def test_look_alikes_are_decoded_not_trusted(
    store_for: dict[str, TrustStore], d2i_calls: list[int],
) -> None:
    assert (Certificate.__name__, Certificate.__module__) == ("Certificate", "_ssl")
    assert Certificate.__basicsize__ == _ssl.Certificate.__basicsize__
    for sid in ("wildcard-match", "expired-leaf", "incomplete-chain"):
        s = SCENARIOS[sid]
        fakes = [Certificate(der) for der in s.chain]
        assert hooks.lend(openssl.bind().crypto, fakes[0]) == 0  # no pointer read
        before = len(d2i_calls)
        verdict = verify_chain(fakes, store_for[sid], server_name=s.server_name)  # type: ignore[arg-type]
        assert len(d2i_calls) - before == len(s.chain)  # fell back to its DER
        assert verdict == verify_chain(s.chain, store_for[sid], server_name=s.server_name)


def test_a_failed_layout_check_falls_back_to_der(
    monkeypatch: pytest.MonkeyPatch, store_for: dict[str, TrustStore],
    received: dict[str, list[_ssl.Certificate]], d2i_calls: list[int],
) -> None:
    s = SCENARIOS["expired-leaf"]
    expected = verify_chain(s.chain, store_for[s.id], server_name=s.server_name)
    d2i_calls.clear()
    monkeypatch.setitem(hooks._LAYOUT, "ok", False)  # as if this CPython's struct differed
    verdict = verify_chain(received[s.id], store_for[s.id], server_name=s.server_name)
    assert verdict == expected
    assert len(d2i_calls) == len(s.chain)


def test_the_layout_check_rejects_what_does_not_match(
    monkeypatch: pytest.MonkeyPatch, received: dict[str, list[_ssl.Certificate]],
) -> None:
    lib = openssl.bind().crypto
    leaf, other = received["wrong-host"][0], received["p256-chain"][0]
    assert hooks._layout_holds(lib, leaf)
    # A pointer to some other X509: its encoding is not the object's DER.
    other_x509 = hooks._x509_in(other)
    with monkeypatch.context() as m:
        m.setattr(hooks, "_x509_in", lambda cert: other_x509)
        assert not hooks._layout_holds(lib, leaf)
    # A struct of another size: rejected before any pointer is read.
    with monkeypatch.context() as m:
        m.setattr(hooks, "_CERTIFICATE_SIZE", hooks._CERTIFICATE_SIZE + 8)
        m.setattr(hooks, "_x509_in", lambda cert: pytest.fail("pointer read"))
        assert not hooks._layout_holds(lib, leaf)
    with monkeypatch.context() as m:
        m.setattr(hooks.sys.implementation, "name", "pypy")
        assert not hooks._layout_holds(lib, leaf)
    # The verdict is taken once and cached: a False one sends every Certificate to DER.
    monkeypatch.setitem(hooks._LAYOUT, "ok", True)  # so that undo restores what was there
    monkeypatch.delitem(hooks._LAYOUT, "ok")
    monkeypatch.setattr(hooks, "_CERTIFICATE_SIZE", hooks._CERTIFICATE_SIZE + 8)
    assert hooks.lend(lib, leaf) == 0
    assert hooks._LAYOUT["ok"] is False


def test_items_that_are_not_certificates_raise(store_for: dict[str, TrustStore]) -> None:
    s = SCENARIOS["wildcard-match"]
    with pytest.raises(TypeError, match="certificate 1 of the chain"):
        verify_chain([s.chain[0], "not a certificate"], store_for[s.id],  # type: ignore[list-item]
                     server_name=s.server_name)


def test_lending_gives_every_reference_back(
    store_for: dict[str, TrustStore],
    x509_frees: tuple[Callable[[int], None], list[int]],
) -> None:
    # X509_up_ref for each lent certificate, X509_free for each after the verification:
    # while the Certificate objects live their X509s must survive every call (one free too
    # many would free them under the objects), and once the objects go the X509s must be
    # freed (one up_ref too many would keep them forever).
    mark, freed = x509_frees
    lib = openssl.bind().crypto
    jobs = [SCENARIOS[i] for i in (*_LEAK_JOBS, "long-chain", "expired-leaf",
                                   "incomplete-chain")]
    chains = [pki.handshake_certificates(s) for s in jobs]  # the handshakes are gone
    tagged = {hooks._x509_in(c) for chain in chains for c in chain}
    assert len(tagged) == sum(len(chain) for chain in chains)
    for x509 in tagged:
        mark(x509)
    verdicts = []
    for _ in range(50):
        for s, chain in zip(jobs, chains, strict=True):
            verdicts.append(verify_chain(chain, store_for[s.id], server_name=s.server_name))
            assert freed == []
    assert {v.reason for v in verdicts} == {None, "hostname_mismatch", "untrusted_root",
                                           "bad_signature", "expired", "incomplete_chain"}
    assert hooks.lend(lib, chains[0][0]) != 0  # the lending path is the one exercised
    lib.X509_free(hooks._x509_in(chains[0][0]))  # (and give that reference back too)
    del chains, chain  # the last one, still bound by the loop
    assert sorted(freed) == sorted(tagged)
