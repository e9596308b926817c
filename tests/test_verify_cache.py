"""The trust store's cache of decoded certificates (scanner/verify.py, ``_Decoded``).

DER is decoded once per store; the verdicts must not move. test_verify.py holds them to the
stdlib client (the oracle) on stores that cache; here they are held to the same stores with
the cache off (``decode_cache=0``: each DER certificate decoded for the call and freed after
it, as before the cache), with shared X509s going through every kind of verdict in turn.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ed25519
from cryptography.utils import CryptographyDeprecationWarning

import pki
from scanner import verify
from scanner.verify import Policy, TrustStore, Verdict, verify_chain

SCENARIOS = {s.id: s for s in pki.scenarios()}
POLICIES: tuple[Policy, ...] = ("default", "strict")


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Callable[..., TrustStore]]:
    """stores(scenario_id, decode_cache=...) -> a store over that scenario's roots, closed
    afterwards. Loaded from one file per scenario, so both kinds carry the same label."""
    opened: list[TrustStore] = []

    def load(sid: str, decode_cache: int = verify.DECODE_CACHE_SIZE) -> TrustStore:
        store = TrustStore.load(str(SCENARIOS[sid].write_roots(tmp_path)),
                                decode_cache=decode_cache)
        opened.append(store)
        return store

    yield load
    for store in opened:
        store.close()


def _judge(chain: list[bytes], store: TrustStore, name: str | None,
           policy: Policy = "default") -> Verdict:
    return verify_chain(chain, store, server_name=name, policy=policy)


# -- (1) the same verdicts -------------------------------------------------------------------


def test_verdicts_with_the_cache_are_those_without(
    stores: Callable[..., TrustStore],
) -> None:
    # Every scenario on its own roots, both policies, with and without a name, twice: the
    # first pass decodes (and already shares the intermediates several scenarios send), the
    # second is all hits. Then every chain on one store ("base" roots), where the same
    # X509s go through trusted, expired, mismatched, untrusted and failed-signature
    # verdicts in turn.
    plain: dict[tuple[str, Policy, str | None], Verdict] = {}
    cached_stores, plain_stores = {}, {}
    for s in SCENARIOS.values():
        key = s.roots_pem  # one pair of stores per distinct bundle, as a scan has one
        if key not in cached_stores:
            cached_stores[key], plain_stores[key] = stores(s.id), stores(s.id, decode_cache=0)
        for policy in POLICIES:
            for name in (s.server_name, None):
                plain[s.id, policy, name] = _judge(s.chain, plain_stores[key], name, policy)
    for _pass in range(2):
        for (sid, policy, name), expected in plain.items():
            s = SCENARIOS[sid]
            verdict = _judge(s.chain, cached_stores[s.roots_pem], name, policy)
            assert verdict == expected, (sid, policy, name)
            if name is not None:  # what test_verify shows the stdlib client says
                assert verdict.reason == pki.expected_reason(s, policy), (sid, policy)
    assert all(store.decode_cache_info().size > 0 for store in cached_stores.values())
    assert all(store.decode_cache_info().size == 0 for store in plain_stores.values())

    base, base_plain = stores("wrong-host"), stores("wrong-host", decode_cache=0)
    for _pass in range(2):
        for s in SCENARIOS.values():
            for policy in POLICIES:
                assert (_judge(s.chain, base, s.server_name, policy)
                        == _judge(s.chain, base_plain, s.server_name, policy)), (s.id, policy)
    info = base.decode_cache_info()
    distinct = {der for s in SCENARIOS.values() for der in s.chain}
    assert (info.misses, info.size) == (len(distinct), len(distinct))


def test_the_same_certificate_twice_in_a_chain(stores: Callable[..., TrustStore]) -> None:
    # One cached X509 pushed twice on the untrusted stack (one reference per entry).
    s = SCENARIOS["long-chain"]
    leaf, *inters = s.chain
    cached, plain = stores(s.id), stores(s.id, decode_cache=0)
    for chain in ([leaf, leaf, *inters], [leaf, *inters, inters[0]], [leaf, leaf],
                  [leaf, inters[1], inters[1], inters[0], inters[2]]):
        for policy in POLICIES:
            assert (_judge(chain, cached, s.server_name, policy)
                    == _judge(chain, plain, s.server_name, policy))
    assert _judge([leaf, leaf, *inters], cached, s.server_name).trusted


def test_certificate_objects_are_lent_not_cached(stores: Callable[..., TrustStore]) -> None:
    s = SCENARIOS["expired-leaf"]
    store = stores(s.id)
    certs = pki.handshake_certificates(s)
    lent = verify_chain(certs, store, server_name=s.server_name)
    assert store.decode_cache_info()[:3] == (0, 0, 0)
    assert lent == _judge(s.chain, store, s.server_name)
    assert store.decode_cache_info().size == len(s.chain)


# -- (2) decoded once --------------------------------------------------------------------------


def test_a_repeated_chain_decodes_once(
    stores: Callable[..., TrustStore], d2i_calls: list[int],
) -> None:
    s = SCENARIOS["rsa-via-intermediate"]
    store = stores(s.id)
    first = _judge(s.chain, store, s.server_name)
    assert first.trusted and len(d2i_calls) == len(s.chain)
    for _ in range(20):
        assert _judge(list(s.chain), store, s.server_name) == first  # equal bytes, new list
        # Copies of the bytes (as from another connection) find them too.
        assert _judge([bytes(bytearray(d)) for d in s.chain], store, s.server_name) == first
    assert len(d2i_calls) == len(s.chain)
    assert store.decode_cache_info() == (40 * len(s.chain), len(s.chain), len(s.chain),
                                         verify.DECODE_CACHE_SIZE)
    # Another leaf under a cached intermediate: only the leaf is decoded.
    other = SCENARIOS["wrong-host"]
    base = stores(other.id)
    _judge(other.chain, base, other.server_name)
    d2i_calls.clear()
    for sid in ("expired-leaf", "wildcard-match", "cn-only"):
        assert SCENARIOS[sid].chain[1] == other.chain[1]
        _judge(SCENARIOS[sid].chain, base, SCENARIOS[sid].server_name)
    assert len(d2i_calls) == 3


# -- (3) bounded: eviction frees -------------------------------------------------------------



def _held(store: TrustStore) -> dict[bytes, int]:
    return dict(store._decoded._entries)


def test_eviction_frees_and_still_verifies(
    stores: Callable[..., TrustStore], x509_frees: tuple[Callable[[int], None], list[int]],
    d2i_calls: list[int],
) -> None:
    mark, freed = x509_frees
    long, wrong = SCENARIOS["long-chain"], SCENARIOS["wrong-host"]  # the same "base" root
    store = stores(long.id, decode_cache=2)
    assert _judge(long.chain, store, long.server_name).trusted
    held = _held(store)
    assert list(held) == long.chain[2:]  # the last two used; the first two already evicted
    assert store.decode_cache_info()[1:] == (4, 2, 2)
    for ptr in held.values():
        mark(ptr)
    # Two other certificates push them out: the cache's reference was the last one.
    verdict = _judge(wrong.chain, store, wrong.server_name)
    assert verdict.reason == "hostname_mismatch"
    assert list(_held(store)) == wrong.chain
    assert sorted(freed) == sorted(held.values())
    # Decoded again when needed, with the verdict of a store without the cache.
    d2i_calls.clear()
    again = _judge(long.chain, store, long.server_name)
    assert again == _judge(long.chain, stores(long.id, decode_cache=0), long.server_name)
    assert again.trusted and len(d2i_calls) == 2 * len(long.chain)
    # close() gives the cache's references back.
    freed.clear()
    held = _held(store)
    for ptr in held.values():
        mark(ptr)
    store.close()
    assert sorted(freed) == sorted(held.values())
    assert store.decode_cache_info().size == 0


def test_references_in_use_survive_eviction(
    stores: Callable[..., TrustStore], x509_frees: tuple[Callable[[int], None], list[int]],
) -> None:
    # The leaf is evicted while its verification still runs (the rest of its chain pushes
    # it out of a cache of one): it is freed after the verdict, not before.
    mark, freed = x509_frees
    s = SCENARIOS["rsa-via-intermediate"]
    store = stores(s.id, decode_cache=1)
    _judge(s.chain[:1], store, s.server_name)
    leaf = _held(store)[s.chain[0]]
    mark(leaf)
    assert _judge(s.chain, store, s.server_name).trusted  # leaf: a hit, then evicted
    assert freed == [leaf]
    assert list(_held(store)) == s.chain[1:]


def test_the_least_recently_used_goes_first(stores: Callable[..., TrustStore]) -> None:
    s = SCENARIOS["long-chain"]
    leaf, i3, i2, _ = s.chain
    store = stores(s.id, decode_cache=2)
    _judge([leaf, i3], store, s.server_name)
    _judge([leaf], store, s.server_name)  # a hit: the leaf is now the most recent
    _judge([i2], store, s.server_name)
    assert list(_held(store)) == [leaf, i2]


def test_the_byte_bound(monkeypatch: pytest.MonkeyPatch,
                        stores: Callable[..., TrustStore]) -> None:
    s = SCENARIOS["rsa-via-intermediate"]
    leaf, inter = s.chain
    monkeypatch.setattr(verify, "_DECODE_CACHE_BYTES", len(leaf) + len(inter) - 1)
    store = stores(s.id)
    assert _judge(s.chain, store, s.server_name).trusted
    assert list(_held(store)) == [inter]  # both would exceed the bound: the older goes
    assert store._decoded._bytes == len(inter)
    monkeypatch.setattr(verify, "_DECODE_CACHE_BYTES", min(len(leaf), len(inter)) - 1)
    small = stores(s.id)
    assert _judge(s.chain, small, s.server_name).trusted
    assert _judge(s.chain, small, s.server_name).trusted
    assert small.decode_cache_info()[:3] == (0, 4, 0)  # none fits: none is kept


def test_threads_sharing_a_small_cache(stores: Callable[..., TrustStore]) -> None:
    # Constant eviction under 4 threads: a reference handed out is never one an eviction
    # frees first (a crash or a wrong verdict otherwise).
    ids = ["wrong-host", "expired-leaf", "long-chain", "bad-signature", "chain-with-root"]
    store, plain = stores("wrong-host", decode_cache=2), stores("wrong-host", decode_cache=0)
    expected = {sid: _judge(SCENARIOS[sid].chain, plain, SCENARIOS[sid].server_name)
                for sid in ids}
    wrong: list[str] = []

    def run(offset: int) -> None:
        for i in range(60):
            s = SCENARIOS[ids[(i + offset) % len(ids)]]
            if _judge(s.chain, store, s.server_name) != expected[s.id]:
                wrong.append(s.id)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    info = store.decode_cache_info()
    assert info.size == 2 and info.hits + info.misses == 4 * sum(
        len(SCENARIOS[ids[i % len(ids)]].chain) for i in range(60))


# -- (4) what cannot be decoded ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [b"\x30\x03junk", b"", b"\x00" * 40, "truncated"])
def test_malformed_der_raises_as_before_and_is_not_kept(
    bad: bytes | str, stores: Callable[..., TrustStore], d2i_calls: list[int],
) -> None:
    s = SCENARIOS["rsa-via-intermediate"]
    der = s.chain[1][:-20] if bad == "truncated" else bad
    assert isinstance(der, bytes)
    cached, plain = stores(s.id), stores(s.id, decode_cache=0)
    with pytest.raises(ValueError, match="certificate 1 of the chain") as without:
        _judge([s.chain[0], der], plain, s.server_name)
    for attempt in range(1, 3):
        d2i_calls.clear()
        with pytest.raises(ValueError) as with_cache:
            _judge([s.chain[0], der], cached, s.server_name)
        assert str(with_cache.value) == str(without.value)
        assert len(d2i_calls) == (2 if attempt == 1 else 1)  # tried again every time
        assert list(_held(cached)) == [s.chain[0]]  # the leaf before it decoded fine
        assert cached.decode_cache_info()[:3] == (attempt - 1, attempt + 1, 1)
    # Not a DER item at all: TypeError, as before.
    with pytest.raises(TypeError, match="certificate 1 of the chain"):
        verify_chain([s.chain[0], "text"], cached, server_name=s.server_name)  # type: ignore[list-item]
    assert _judge(s.chain, cached, s.server_name).trusted


# -- the one chain-dependent write OpenSSL makes into a certificate --------------------------


def _elements(der: bytes) -> list[bytes]:
    """The DER elements inside the constructed element ``der``."""
    start, end = pki._bounds(der, 0)
    out = []
    while start < end:
        stop = pki._bounds(der, start)[1]
        out.append(der[start:stop])
        start = stop
    return out


_DSA_OID = bytes.fromhex("06072a8648ce380401")
# RFC 5114's 2048-bit MODP group with a 224-bit prime order subgroup (section 2.2), as DSA
# domain parameters, since generating some takes ~0.5 s. Any h^((p-1)/q) mod p other than 1
# generates the subgroup.
_DSA_P = int(
    "ad107e1e9123a9d0d660faa79559c51fa20d64e5683b9fd1b54b1597b61d0a75"
    "e6fa141df95a56dbaf9a3c407ba1df15eb3d688a309c180e1de6b85a1274a0a6"
    "6d3f8152ad6ac2129037c9edefda4df8d91e8fef55b7394b7ad5b7d0b6c12207"
    "c9f98d11ed34dbf6c6ba0b2c8bbc27be6a00e0a0b9c49708b3bf8a3170918836"
    "81286130bc8985db1602e714415d9330278273c7de31efdc7310f7121fd5a074"
    "15987d9adc0a486dcdf93acc44328387315d75e198c641a480cd86a1b9e587e8"
    "be60e69cc928b2b9c52172e413042e9b23f10b0e16e79763c9b53dcf4ba80a29"
    "e3fb73c16b8e75b97ef363e2ffa31f71cf9de5384e71b81c0ac4dffe0c10e64f", 16)
_DSA_Q = int("801c0d34c58d93fe997177101f80535a4738cebcbf389a99b36371eb", 16)


def _dsa2048_key() -> pki.PrivateKey:
    g = pow(2, (_DSA_P - 1) // _DSA_Q, _DSA_P)
    assert g != 1
    with warnings.catch_warnings():  # cryptography deprecates DSA (see pki)
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        numbers = dsa.DSAParameterNumbers(_DSA_P, _DSA_Q, g)
        key: pki.PrivateKey = numbers.parameters().generate_private_key()
    return key


def _without_dsa_parameters(der: bytes, signer: ed25519.Ed25519PrivateKey) -> bytes:
    """The certificate with its DSA key's parameters left out (to be inherited from the
    issuer's key, RFC 3279), signed again."""
    tbs, algorithm, _ = _elements(der)
    fields = [pki._der(0x30, pki._der(0x30, _DSA_OID) + _elements(f)[1])
              if f[0] == 0x30 and _elements(f)[0].startswith(b"\x30") and _DSA_OID in f[:20]
              else f for f in _elements(tbs)]
    tbs = pki._der(0x30, b"".join(fields))
    return pki._der(0x30, tbs + algorithm + pki._der(0x03, b"\x00" + signer.sign(tbs)))


def test_keys_without_parameters_never_reach_x509_get_pubkey_parameters(
    tmp_path: Path,
) -> None:
    # X509_get_pubkey_parameters copies an issuer's DSA parameters into a certificate's key
    # that lacks them: the one write into an X509 that depends on the chain. Auth level 2
    # refuses such a key first (no parameters: no security bits), so a cached X509 never
    # carries parameters from one chain into the next.
    root_key = ed25519.Ed25519PrivateKey.generate()
    dsa_key = _dsa2048_key()
    start, end = pki.REAL_NOW - pki.DAY, pki.REAL_NOW + pki.DAY
    root = pki.mint(key=root_key, subject="Cache Root", ca=True, not_before=start,
                    not_after=end)
    leaf = pki.mint(key=dsa_key, subject="dsa.example.org", issuer="Cache Root",
                    issuer_key=root_key, san=[x509.DNSName("dsa.example.org")],
                    not_before=start, not_after=end)
    bare = _without_dsa_parameters(leaf, root_key)
    assert len(bare) < len(leaf)
    roots = tmp_path / "roots.pem"
    roots.write_bytes(pki.pem(root))
    with TrustStore.load(str(roots)) as cached, \
            TrustStore.load(str(roots), decode_cache=0) as plain:
        for chain in ([leaf], [bare], [leaf], [bare]):
            verdict = _judge(chain, cached, "dsa.example.org")
            assert verdict == _judge(chain, plain, "dsa.example.org")
            assert (verdict.trusted, verdict.code) == ((True, 0) if chain == [leaf]
                                                       else (False, 66))  # EE_KEY_TOO_SMALL
        assert cached.decode_cache_info()[:3] == (2, 2, 2)
