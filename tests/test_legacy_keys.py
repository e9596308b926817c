"""Certificates decoded with OpenSSL's built-in key decoders (scanner/openssl.py,
``_LegacyKeys``): the verdicts must be exactly those of the plain ``d2i_X509``.

On OpenSSL 3.0 and 3.1 every DER certificate a verdict decodes goes through ``_LegacyKeys``
(speed only). Here each chain is judged twice, by the same ``verify_chain`` on stores
without a decode cache: once as it runs, once with ``bind().legacy_keys`` taken away, and
the two verdicts must be equal field by field. The chains: all of x509-limbo's cases
(tests/data/x509-limbo: 207 independent path-validation cases, under both policies, at
their validation time), every scenario of pki.py, and keys off the beaten track (explicit
EC parameters, other curves, RSA-PSS, DSA, a point off its curve).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import ipaddress
import json
import shutil
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import pki
from scanner import openssl
from scanner.verify import Policy, TrustStore, Verdict, verify_chain

LIMBO = Path(__file__).resolve().parent / "data" / "x509-limbo" / "limbo.json"
POLICIES: tuple[Policy, ...] = ("default", "strict")
LEGACY = openssl.bind().legacy_keys
needs_legacy = pytest.mark.skipif(
    LEGACY is None, reason=f"built-in key decoders not used here: {openssl.bind().legacy_keys_why}")


@pytest.fixture
def judge(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
          ) -> Iterator[Callable[..., tuple[Verdict, Verdict]]]:
    """judge(chain, roots_pem, name, policy, at) -> (verdict as it runs, verdict with the
    plain d2i_X509), on one store without a decode cache."""
    stores: dict[bytes, TrustStore] = {}
    plain = dataclasses.replace(openssl.bind(), legacy_keys=None)

    def run(chain: list[bytes], roots: bytes, name: str | None, policy: Policy = "default",
            at: dt.datetime | None = None) -> tuple[Verdict, Verdict]:
        if roots not in stores:
            path = tmp_path / f"roots-{len(stores)}.pem"
            path.write_bytes(roots)
            stores[roots] = TrustStore.load(str(path), decode_cache=0)
        store = stores[roots]
        ours = verify_chain(chain, store, server_name=name, policy=policy, at=at)
        with monkeypatch.context() as patch:
            patch.setattr(openssl, "bind", lambda: plain)
            theirs = verify_chain(chain, store, server_name=name, policy=policy, at=at)
        return ours, theirs

    yield run
    for store in stores.values():
        store.close()


def test_used_where_openssl_rebuilds_its_decoders() -> None:
    bound = openssl.bind()
    if bound.crypto.OpenSSL_version_num() >= 0x30200000:
        assert bound.legacy_keys is None
        assert bound.legacy_keys_why.startswith("not needed")
    else:  # 3.0 and 3.1: the self-test passes on the ENGINE API every Debian/RHEL build has
        assert bound.legacy_keys is not None, bound.legacy_keys_why
        assert bound.legacy_keys_why.startswith("in use")


@needs_legacy
def test_a_failing_self_test_leaves_d2i_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = openssl.bind().crypto
    # A probe whose key is not what it claims: an EC SubjectPublicKeyInfo cut short.
    der = bytearray(base64.b64decode(openssl._PROBES[0]))
    point = der.find(bytes.fromhex("034200"))
    der[point + 4] = 0x05  # no longer an uncompressed point (0x04): neither decoder takes it
    monkeypatch.setattr(openssl, "_PROBES", (base64.b64encode(bytes(der)).decode(),))
    legacy, why = openssl._LegacyKeys.set_up(lib)
    assert legacy is None and why.startswith("refused: probe 0"), why
    monkeypatch.setattr(openssl, "_PROBES", ("MIIB",))  # not a certificate at all
    legacy, why = openssl._LegacyKeys.set_up(lib)
    assert (legacy, why) == (None, "refused: probe 0 does not decode")


@needs_legacy
def test_the_engine_claims_keys_only_while_it_decodes() -> None:
    # After a decode, a key decoded the plain way is a provider key again (no ENGINE of
    # ours is registered for the handshakes in between).
    lib = openssl.bind().crypto
    der = base64.b64decode(openssl._PROBES[0])
    assert LEGACY is not None
    ours = LEGACY.d2i(der)
    plain = openssl._d2i(lib, der)
    try:
        assert ours and plain
        assert not lib.EVP_PKEY_get0_provider(lib.X509_get0_pubkey(ours))
        assert lib.EVP_PKEY_get0_provider(lib.X509_get0_pubkey(plain))
    finally:
        lib.X509_free(ours)
        lib.X509_free(plain)


# -- the same verdicts -----------------------------------------------------------------------


def _limbo_cases() -> list[dict[str, object]]:
    cases: list[dict[str, object]] = json.loads(LIMBO.read_text())["testcases"]
    return cases


def _der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)  # not parsed: some cases are odd on purpose


@needs_legacy
def test_limbo_verdicts_are_the_same_both_ways(judge: Callable[..., tuple[Verdict, Verdict]]
                                               ) -> None:
    judged = trusted = 0
    for case in _limbo_cases():
        roots = "".join(case["trusted_certs"]).encode()  # type: ignore[arg-type]
        chain = [_der(case["peer_certificate"]),  # type: ignore[arg-type]
                 *(_der(pem) for pem in case["untrusted_intermediates"])]  # type: ignore[union-attr]
        peer = case["expected_peer_name"] or {}
        name = peer.get("value") if peer.get("kind") in ("DNS", "IP") else None  # type: ignore[union-attr]
        at = (dt.datetime.fromisoformat(str(case["validation_time"]))
              if case["validation_time"] else None)
        if not roots:
            continue  # a store needs one certificate; such cases judge nothing here
        for policy in POLICIES:
            ours, theirs = judge(chain, roots, name, policy, at)
            assert ours == theirs, (case["id"], policy)
            judged += 1
            trusted += ours.trusted
    assert judged >= 400 and trusted >= 100, (judged, trusted)  # the corpus really ran


@needs_legacy
def test_pki_scenarios_are_the_same_both_ways(judge: Callable[..., tuple[Verdict, Verdict]]
                                              ) -> None:
    for s in pki.scenarios():
        for policy in POLICIES:
            for name in (s.server_name, None):
                ours, theirs = judge(list(s.chain), s.roots_pem, name, policy)
                assert ours == theirs, (s.id, policy, name)
                if name is not None:
                    assert ours.reason == pki.expected_reason(s, policy), (s.id, policy)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _cli_chain(tmp: Path, key_args: list[str], name: str) -> tuple[list[bytes], bytes]:
    """root -> leaf made by the openssl command, both with keys from ``key_args``
    (genpkey), the leaf for DNS:``name``: (chain as DER, the root as PEM)."""
    d = tmp / name
    d.mkdir()
    for who in ("root", "leaf"):
        _openssl("genpkey", *key_args, "-out", f"{who}.key", cwd=d)
    _openssl("req", "-x509", "-new", "-key", "root.key", "-subj", f"/CN={name} root",
             "-days", "30", "-out", "root.pem", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    (d / "ext").write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n"
                           "authorityKeyIdentifier=keyid\n")
    _openssl("req", "-new", "-key", "leaf.key", "-subj", f"/CN={name}", "-out", "leaf.csr",
             cwd=d)
    _openssl("x509", "-req", "-in", "leaf.csr", "-CA", "root.pem", "-CAkey", "root.key",
             "-set_serial", "2", "-days", "20", "-extfile", "ext", "-out", "leaf.pem", cwd=d)
    leaf = _der((d / "leaf.pem").read_text())
    return [leaf], (d / "root.pem").read_bytes()


# genpkey arguments for each kind of key: the two kinds the ENGINE claims in their odd
# forms, and others it does not claim (decoded the plain way either way).
ODD_KEYS = {
    "ec-explicit": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-pkeyopt", "ec_param_enc:explicit"],
    "secp256k1": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
    "brainpool": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:brainpoolP256r1"],
    "p521": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
    "rsa-3072-e3": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072",
                    "-pkeyopt", "rsa_keygen_pubexp:3"],
    "rsa-pss": ["-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048"],
    "ed448": ["-algorithm", "ED448"],
}


@needs_legacy
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("kind", sorted(ODD_KEYS))
def test_odd_keys_are_judged_the_same_both_ways(
    kind: str, tmp_path: Path, judge: Callable[..., tuple[Verdict, Verdict]],
) -> None:
    name = f"{kind}.example.org"
    chain, root = _cli_chain(tmp_path, ODD_KEYS[kind], name)
    for policy in POLICIES:
        for server_name in (name, "other.example.org", None):
            ours, theirs = judge(chain, root, server_name, policy)
            assert ours == theirs, (kind, policy, server_name)
    if kind == "ec-explicit":  # OpenSSL 3 refuses explicit curve parameters in a chain
        assert judge(chain, root, name, "strict")[0].code == 94  # EC_KEY_EXPLICIT_PARAMS


def _point_off_curve_chain() -> tuple[list[bytes], bytes]:
    """A leaf whose P-256 point is not on the curve, correctly signed by its root."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "off-curve root")])
    now = dt.datetime.now(dt.UTC)
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "off.example")]))
            .issuer_name(root_name).public_key(ec.generate_private_key(ec.SECP256R1())
                                                .public_key())
            .serial_number(2).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=20))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(root_key, hashes.SHA256()))
    tbs = bytearray(leaf.tbs_certificate_bytes)
    point = tbs.find(bytes.fromhex("03420004"))
    tbs[point + 4 + 63] ^= 0x01  # the last byte of Y: off the curve
    signature = root_key.sign(bytes(tbs), ec.ECDSA(hashes.SHA256()))
    algorithm = bytes.fromhex("300a06082a8648ce3d040302")  # ecdsa-with-SHA256
    body = bytes(tbs) + algorithm + _tlv(0x03, b"\x00" + signature)
    return [_tlv(0x30, body)], root.public_bytes(serialization.Encoding.PEM)


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + body


@needs_legacy
def test_a_point_off_its_curve_is_judged_the_same_both_ways(
    judge: Callable[..., tuple[Verdict, Verdict]],
) -> None:
    chain, root = _point_off_curve_chain()
    for policy in POLICIES:
        ours, theirs = judge(chain, root, "127.0.0.1", policy)
        assert ours == theirs, policy
        assert not ours.trusted
