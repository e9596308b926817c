"""Mint certificates for the tests: PKI scenarios for the verifier, judged by a real stdlib
handshake, and single certificates for the facts tests, including ones no honest CA would
issue. The one place tests mint (apart from trustme, and a few certificates with extensions
the helpers here do not offer, built where they are used).

Every scenario is a chain as a server would send it, the server's key, a root bundle for the
client and the name the client asks for. ``stdlib_verdict`` is the oracle: an in-memory
handshake between a SECLEVEL=0 server (so it can even load RSA-1024 or SHA-1 certificates)
and ``ssl.create_default_context(cafile=roots)`` with the policy's verify flags
(``CLIENT_FLAGS``: for "default" exactly what 3.11 and 3.12 set, for "strict" what 3.13 sets).

For the facts tests, ``mint`` builds a certificate with ``cryptography``; ``patch`` then swaps
bytes of equal length (a string tag, a serial, a date) so the DER holds what the builder
refuses to write, and ``resign`` gives an Ed25519- or RSA-signed certificate a valid
signature over the patched bytes.
"""

from __future__ import annotations

import _ssl
import contextlib
import datetime as dt
import functools
import ipaddress
import ssl
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa, x25519
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# cryptography 51 deprecates DSA and warns on each use of its names; the tests still make
# DSA certificates (servers still send them), so they name DSA only with that warning off.
# The scanner's own code runs with every warning an error (pyproject's filterwarnings).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    _DSAPrivateKey = dsa.DSAPrivateKey
    _generate_dsa = dsa.generate_private_key

PrivateKey = (rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
              | ed448.Ed448PrivateKey | _DSAPrivateKey | x25519.X25519PrivateKey)
# Two clocks. The scenarios are judged by OpenSSL and by the stdlib client at the real time,
# so their validity is set around REAL_NOW. The facts tests compare dates and days_left, so
# they mint around a fixed NOW and read with now=NOW.
REAL_NOW = dt.datetime.now(dt.UTC)
NOW = dt.datetime(2026, 1, 31, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@functools.cache
def private_key(kind: str, slot: str = "") -> PrivateKey:
    """One key per (kind, slot), reused across tests: RSA and DSA generation is slow."""
    del slot  # only part of the cache key
    if kind.startswith("rsa"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    if kind.startswith("dsa"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            return _generate_dsa(key_size=int(kind[3:]))
    if kind in ("p256", "p384"):
        return ec.generate_private_key(ec.SECP256R1() if kind == "p256" else ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ed448":
        return ed448.Ed448PrivateKey.generate()
    if kind == "x25519":
        return x25519.X25519PrivateKey.generate()
    raise ValueError(kind)


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def issue(
    cn: str,
    issuer: Issued | None = None,
    *,
    key_kind: str = "rsa2048",
    slot: str | None = None,
    ca: bool | None = False,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    eku: tuple[x509.ObjectIdentifier, ...] | None = (ExtendedKeyUsageOID.SERVER_AUTH,),
    not_before: dt.datetime = REAL_NOW - 100 * DAY,
    not_after: dt.datetime = REAL_NOW + 30 * DAY,
    digest: hashes.HashAlgorithm | None = None,
    akid: bool = True,
    bc_critical: bool = True,
) -> Issued:
    """A certificate for ``cn`` signed by ``issuer`` (self-signed when None).

    ``ca=None`` leaves basicConstraints out altogether; signatures are SHA-256 (Ed25519 has
    its own), or SHA-1 when ``digest`` is ``hashes.SHA1()`` (RSA signers only).
    ``akid=False`` leaves out the authorityKeyIdentifier and ``bc_critical=False`` marks
    basicConstraints non-critical: both legal, both refused by OpenSSL's X509_STRICT.
    """
    own = private_key(key_kind, slot or cn)
    signer = issuer.key if issuer else own
    subject = name(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(own.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(own.public_key()), False)
    )
    if akid:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
        )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                                        bc_critical)
    if ca:
        usage = dict.fromkeys(
            ("digital_signature", "content_commitment", "key_encipherment",
             "data_encipherment", "key_agreement", "encipher_only", "decipher_only"),
            False,
        )
        builder = builder.add_extension(
            x509.KeyUsage(key_cert_sign=True, crl_sign=True, **usage), True
        )
    elif eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), False)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        return Issued(builder.sign(signer, None), own)
    cert = builder.sign(signer, hashes.SHA256())
    if isinstance(digest, hashes.SHA1):
        assert isinstance(signer, rsa.RSAPrivateKey), "SHA-1 scenarios are RSA"
        cert = _resign_sha1(cert, signer)
    return Issued(cert, own)


_SHA256_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")  # sha256WithRSAEncryption
_SHA1_RSA = bytes.fromhex("300d06092a864886f70d0101050500")  # sha1WithRSAEncryption


def _der(tag: int, content: bytes) -> bytes:
    return _header(tag, len(content)) + content


def _resign_sha1(cert: x509.Certificate, signer: rsa.RSAPrivateKey) -> x509.Certificate:
    """cryptography refuses to sign certificates with SHA-1 now, so sign the TBS by hand.

    Both AlgorithmIdentifiers have the same length, so swapping the OID in the TBS keeps
    every DER length valid; the first match is the TBS signature field (after the serial).
    """
    tbs = cert.tbs_certificate_bytes.replace(_SHA256_RSA, _SHA1_RSA, 1)
    signature = signer.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    body = tbs + _SHA1_RSA + _der(0x03, b"\x00" + signature)
    return x509.load_der_x509_certificate(_der(0x30, body))


def pem(der: bytes) -> bytes:
    return ssl.DER_cert_to_PEM_cert(der).encode()


@dataclass(frozen=True)
class Scenario:
    """A server (chain as sent + key), a client bundle, a name, and what should happen."""

    id: str
    chain: list[bytes]
    key_pem: bytes
    roots_pem: bytes
    server_name: str
    reason: str | None  # expected reason; None when the stdlib client accepts

    def write_roots(self, directory: Path) -> Path:
        path = directory / f"{self.id}-roots.pem"
        path.write_bytes(self.roots_pem)
        return path


def key_pem(k: PrivateKey) -> bytes:
    return k.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _scenario(
    id: str, sent: list[Issued], roots: list[Issued], name: str, reason: str | None, *,
    tamper: Callable[[list[bytes]], list[bytes]] = lambda chain: chain,
) -> Scenario:
    return Scenario(
        id=id,
        chain=tamper([c.der for c in sent]),
        key_pem=key_pem(sent[0].key),
        roots_pem=b"".join(pem(r.der) for r in roots),
        server_name=name,
        reason=reason,
    )


def _flip_last_byte(chain: list[bytes]) -> list[bytes]:
    # The signature BIT STRING is the last field of a certificate, so its last byte is
    # signature: the structure still parses and only the signature check fails.
    leaf = bytearray(chain[0])
    leaf[-1] ^= 0x01
    return [bytes(leaf), *chain[1:]]


def _trustme_scenario() -> Scenario:
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    intermediate = ca.create_child_ca(key_type=trustme.KeyType.RSA)
    leaf = intermediate.issue_cert("rsa.example.org", key_type=trustme.KeyType.RSA)
    chain = [ssl.PEM_cert_to_DER_cert(b.bytes().decode()) for b in leaf.cert_chain_pems]
    return Scenario(
        id="rsa-via-intermediate", chain=chain, key_pem=leaf.private_key_pem.bytes(),
        roots_pem=ca.cert_pem.bytes(), server_name="rsa.example.org", reason=None,
    )


def _chain(kind: str, tag: str, **leaf: object) -> tuple[Issued, Issued, Issued]:
    """root -> intermediate -> leaf, all with ``kind`` keys; ``leaf`` overrides issue()."""
    root = issue(f"{tag} Root", key_kind=kind, ca=True)
    inter = issue(f"{tag} Intermediate", root, key_kind=kind, ca=True)
    options: dict[str, object] = {"dns": (f"{tag}.example.org",), "key_kind": kind}
    options.update(leaf)
    return root, inter, issue(f"{tag}.example.org", inter, **options)  # type: ignore[arg-type]


@functools.cache
def scenarios() -> tuple[Scenario, ...]:
    s: list[Scenario] = [_trustme_scenario()]
    for kind in ("p256", "p384", "ed25519"):
        root, inter, leaf = _chain(kind, kind)
        s.append(_scenario(f"{kind}-chain", [leaf, inter], [root], f"{kind}.example.org", None))

    root, inter, leaf = _chain("rsa2048", "base")
    host = "base.example.org"
    s.append(_scenario("chain-with-root", [leaf, inter, root], [root], host, None))
    s.append(_scenario("chain-out-of-order", [leaf, root, inter], [root], host, None))
    s.append(_scenario("wrong-host", [leaf, inter], [root], "other.example.org",
                       "hostname_mismatch"))
    s.append(_scenario("incomplete-chain", [leaf], [root], host, "incomplete_chain"))
    s.append(_scenario("bad-signature", [leaf, inter], [root], host, "bad_signature",
                       tamper=_flip_last_byte))
    # Trusted under "strict" only (PARTIAL_CHAIN: any store certificate is an anchor).
    s.append(_scenario("store-holds-intermediate-only", [leaf], [inter], host,
                       "untrusted_root"))
    other = issue("Other Root", ca=True)
    s.append(_scenario("untrusted-root", [leaf, inter], [other], host, "untrusted_root"))
    # The server sends its own root, which the store lacks (X509_V_ERR 19): not self_signed.
    s.append(_scenario("chain-with-unknown-root", [leaf, inter, root], [other], host,
                       "untrusted_root"))

    i1 = issue("Long Intermediate 1", root, ca=True)
    i2 = issue("Long Intermediate 2", i1, ca=True)
    i3 = issue("Long Intermediate 3", i2, ca=True)
    long_leaf = issue("long.example.org", i3, dns=("long.example.org",))
    s.append(_scenario("long-chain", [long_leaf, i3, i2, i1], [root], "long.example.org", None))

    def leaf_case(id: str, reason: str | None, name: str = host, **opts: object) -> None:
        options: dict[str, object] = {"dns": (host,)}
        options.update(opts)
        cert = issue(f"{id}.leaf", inter, slot="leaf", **options)  # type: ignore[arg-type]
        s.append(_scenario(id, [cert, inter], [root], name, reason))

    leaf_case("expired-leaf", "expired", not_before=REAL_NOW - 60 * DAY,
              not_after=REAL_NOW - DAY)
    leaf_case("not-yet-valid-leaf", "not_yet_valid", not_before=REAL_NOW + DAY)
    leaf_case("client-auth-only-eku", "invalid_purpose", eku=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    leaf_case("rsa1024-leaf", "weak_key", key_kind="rsa1024")
    leaf_case("sha1-leaf", "weak_signature", digest=hashes.SHA1())
    leaf_case("wildcard-match", None, "a.example.org", dns=("*.example.org",))
    leaf_case("wildcard-too-deep", "hostname_mismatch", "a.b.example.org", dns=("*.example.org",))
    leaf_case("wildcard-apex", "hostname_mismatch", "example.org", dns=("*.example.org",))
    leaf_case("partial-wildcard", "hostname_mismatch", "web1.example.org",
              dns=("web*.example.org",))
    leaf_case("ip-san-match", None, "127.0.0.1", dns=(), ips=("127.0.0.1",))
    leaf_case("ip-san-mismatch", "hostname_mismatch", "127.0.0.2", dns=(), ips=("127.0.0.1",))
    leaf_case("ipv6-san-match", None, "::1", dns=(), ips=("::1",))
    leaf_case("ip-name-vs-dns-san", "hostname_mismatch", "127.0.0.1", dns=("127.0.0.1",))
    cn_reason = "hostname_mismatch"  # names from the SAN only
    cn = issue("cn-only.example.org", inter, slot="leaf")
    s.append(_scenario("cn-only", [cn, inter], [root], "cn-only.example.org", cn_reason))

    self_signed = issue(host, key_kind="rsa2048", slot="leaf", dns=(host,))
    s.append(_scenario("self-signed-leaf", [self_signed], [root], host, "self_signed"))
    s.append(_scenario("self-signed-leaf-trusted", [self_signed], [self_signed], host, None))

    old_inter = issue("Expired Intermediate", root, ca=True,
                      not_before=REAL_NOW - 90 * DAY, not_after=REAL_NOW - DAY)
    s.append(_scenario("expired-intermediate",
                       [issue(host, old_inter, slot="leaf", dns=(host,)), old_inter],
                       [root], host, "expired"))
    not_ca = issue("Not A CA Intermediate", root, ca=None, eku=None)
    s.append(_scenario("intermediate-not-ca",
                       [issue(host, not_ca, slot="leaf", dns=(host,)), not_ca],
                       [root], host, "invalid_ca"))
    weak_inter = issue("Weak Intermediate", root, ca=True, key_kind="rsa1024")
    s.append(_scenario("rsa1024-intermediate",
                       [issue(host, weak_inter, slot="leaf", dns=(host,)), weak_inter],
                       [root], host, "weak_key"))
    sha1_inter = issue("SHA1 Intermediate", root, ca=True, digest=hashes.SHA1())
    s.append(_scenario("sha1-intermediate",
                       [issue(host, sha1_inter, slot="leaf", dns=(host,)), sha1_inter],
                       [root], host, "weak_signature"))
    # The anchor's own signature is never checked, so a SHA-1 self-signed root is fine.
    sha1_root = issue("SHA1 Root", ca=True, digest=hashes.SHA1())
    sha1_root_inter = issue("Under SHA1 Root", sha1_root, ca=True)
    s.append(_scenario("sha1-root-is-fine",
                       [issue(host, sha1_root_inter, slot="leaf", dns=(host,)),
                        sha1_root_inter], [sha1_root], host, None))
    # Legal under RFC 5280 and accepted by default, refused by X509_STRICT ("strict").
    loose_inter = issue("Loose Intermediate", root, ca=True, bc_critical=False)
    s.append(_scenario("ca-basic-constraints-not-critical",
                       [issue(host, loose_inter, slot="leaf", dns=(host,)), loose_inter],
                       [root], host, None))
    leaf_case("leaf-without-akid", None, akid=False)
    return tuple(s)


# Scenarios judged otherwise under the "strict" policy: id -> (reason, X509_V_ERR code).
STRICT: dict[str, tuple[str | None, int]] = {
    "store-holds-intermediate-only": (None, 0),  # PARTIAL_CHAIN
    "ca-basic-constraints-not-critical": ("other", 89),  # X509_STRICT: CA_BCONS_NOT_CRITICAL
    "leaf-without-akid": ("other", 85),  # X509_STRICT: MISSING_AUTHORITY_KEY_IDENTIFIER
}


def expected_reason(scenario: Scenario, policy: str) -> str | None:
    if policy == "strict" and scenario.id in STRICT:
        return STRICT[scenario.id][0]
    return scenario.reason


# The oracle's verify flags per policy, spelled from the ssl module, not from scanner:
# create_default_context sets TRUSTED_FIRST alone on 3.11 and 3.12; 3.13 adds the other two.
CLIENT_FLAGS: dict[str, ssl.VerifyFlags] = {
    "default": ssl.VERIFY_X509_TRUSTED_FIRST,
    "strict": (ssl.VERIFY_X509_TRUSTED_FIRST | ssl.VERIFY_X509_STRICT
               | ssl.VERIFY_X509_PARTIAL_CHAIN),
}


def client_context(roots: Path, policy: str = "default") -> ssl.SSLContext:
    """A verifying stdlib client: ``create_default_context(cafile=roots)`` with the policy's
    flags (a no-op for "default" on 3.11 and 3.12) and names from the SAN only (the contract;
    3.11's default would still read a CN when there is no DNS SAN)."""
    ctx = ssl.create_default_context(cafile=str(roots))
    ctx.verify_flags = CLIENT_FLAGS[policy]
    ctx.hostname_checks_common_name = False
    return ctx


@dataclass(frozen=True)
class Handshake:
    accepted: bool
    verify_code: int  # 0 when accepted
    verify_message: str


def serving(chain: Sequence[bytes], key: bytes, tmp: str | Path, *, name: str = "server",
            weak: bool = False) -> ssl.SSLContext:
    """A server context that sends `chain` (DER, leaf first) exactly as listed, with `key`
    (PEM); files go to `tmp` under `name`. weak: SECLEVEL=0, so that it can even load and
    serve RSA-1024 or SHA-1 certificates."""
    chain_path, key_path = Path(tmp, f"{name}-chain.pem"), Path(tmp, f"{name}-key.pem")
    chain_path.write_bytes(b"".join(pem(der) for der in chain))
    key_path.write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if weak:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_cert_chain(chain_path, key_path)
    return ctx


def _server_context(scenario: Scenario, tmp: str) -> ssl.SSLContext:
    return serving(scenario.chain, scenario.key_pem, tmp, weak=True)


def _handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, scenario: Scenario
               ) -> ssl.SSLObject:
    """Run an in-memory handshake to its end; the client's SSLObject (errors propagate)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=scenario.server_name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        try:
            client.do_handshake()
            return client
        except ssl.SSLWantReadError:
            pass
        s_in.write(c_out.read())
        with contextlib.suppress(ssl.SSLWantReadError):  # the server waits on the client
            server.do_handshake()
        c_in.write(s_out.read())
    raise AssertionError(f"{scenario.id}: handshake neither finished nor failed")


def stdlib_verdict(scenario: Scenario, policy: str = "default") -> Handshake:
    """What ``client_context(roots, policy)`` says, over a real TLS handshake."""
    with tempfile.TemporaryDirectory() as tmp:
        server_ctx = _server_context(scenario, tmp)
        roots = scenario.write_roots(Path(tmp))
        client_ctx = client_context(roots, policy)
    try:
        _handshake(client_ctx, server_ctx, scenario)
    except ssl.SSLCertVerificationError as exc:
        return Handshake(False, exc.verify_code, exc.verify_message)
    return Handshake(True, 0, "ok")


def handshake_certificates(scenario: Scenario) -> list[_ssl.Certificate]:
    """The chain as a scanner receives it: ``_ssl.Certificate`` objects, leaf first.

    A non-verifying client (as the scanner's probe is) completes an in-memory handshake with
    the scenario's server; ``_sslobj.get_unverified_chain()`` then returns the certificates
    libssl decoded from the server's Certificate message (the public method of 3.13 would
    give DER). Nothing else keeps the handshake alive: the certificates own their X509s.
    """
    with tempfile.TemporaryDirectory() as tmp:
        server_ctx = _server_context(scenario, tmp)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    client = _handshake(client_ctx, server_ctx, scenario)
    certs: list[_ssl.Certificate] = client._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    return certs


# -- single certificates for the facts tests, odd ones included ------------------------------

def mint(
    *,
    key: PrivateKey | None = None,
    subject: x509.Name | str = "test.example",
    issuer: x509.Name | str | None = None,
    issuer_key: PrivateKey | None = None,
    san: Sequence[x509.GeneralName] = (),
    serial: int = 0x5EC7A1,
    not_before: dt.datetime = NOW - 10 * DAY,
    not_after: dt.datetime = NOW + 90 * DAY,
    ca: bool | None = None,
    digest: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
    pss: bool = False,
) -> bytes:
    """DER of a certificate; self-signed by `key` (Ed25519 by default) unless an issuer
    key is given. `ca` None leaves out basicConstraints."""
    key = key or private_key("ed25519")
    issuer_key = issuer_key or key
    assert not isinstance(issuer_key, x25519.X25519PrivateKey), "X25519 cannot sign"
    subject = name(subject) if isinstance(subject, str) else subject
    issuer = name(issuer) if isinstance(issuer, str) else issuer or subject
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(serial)
               .not_valid_before(not_before).not_valid_after(not_after))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if digest is None and not isinstance(issuer_key, ed25519.Ed25519PrivateKey
                                         | ed448.Ed448PrivateKey):
        digest = hashes.SHA256()
    scheme = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH) if pss else None
    return builder.sign(issuer_key, digest, rsa_padding=scheme).public_bytes(
        serialization.Encoding.DER)


def patch(der: bytes, old: bytes, new: bytes, *, count: int | None = None) -> bytes:
    """Replace every `old` (which must occur `count` times, when given) by `new`, same length,
    so that no enclosing DER length changes."""
    assert len(old) == len(new), (old, new)
    assert old in der, old
    if count is not None:
        assert der.count(old) == count, (old, der.count(old))
    return der.replace(old, new)


def patch_nth(der: bytes, old: bytes, new: bytes, nth: int) -> bytes:
    """Replace only the nth (0-based) occurrence of `old`."""
    assert len(old) == len(new)
    pos = -1
    for _ in range(nth + 1):
        pos = der.index(old, pos + 1)
    return der[:pos] + new + der[pos + len(old):]


def resign(der: bytes, key: PrivateKey, digest: hashes.HashAlgorithm | None = None) -> bytes:
    """Sign the (patched) TBSCertificate again. Only for keys whose signatures have a fixed
    length (Ed25519, RSA), so the signature is simply the last bytes of the DER."""
    tbs_pos = _bounds(der, 0)[0]
    tbs = der[tbs_pos:_bounds(der, tbs_pos)[1]]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return der[:-64] + key.sign(tbs)
    assert isinstance(key, rsa.RSAPrivateKey)
    return der[:-key.key_size // 8] + key.sign(tbs, padding.PKCS1v15(), digest or hashes.SHA256())


def as_version_1(der: bytes, key: PrivateKey) -> bytes:
    """The certificate without its version field, as v1 certificates (old roots) are:
    re-encoded and re-signed. It must have no extensions."""
    tbs_pos = _bounds(der, 0)[0]
    tbs_start, tbs_end = _bounds(der, tbs_pos)
    version = b"\xa0\x03\x02\x01\x02"
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert der[tbs_start:tbs_start + 5] == version and b"\xa3" not in der[tbs_end - 2:tbs_end]
    tbs = _header(0x30, tbs_end - tbs_start - 5) + der[tbs_start + 5:tbs_end]
    algorithm = der[tbs_end:_bounds(der, tbs_end)[1]]
    body = tbs + algorithm + b"\x03\x41\x00" + key.sign(tbs)
    return _header(0x30, len(body)) + body


def _bounds(der: bytes, pos: int) -> tuple[int, int]:
    """Where the contents of the DER element at `pos` start and end."""
    size = der[pos + 1]
    if not size & 0x80:
        return pos + 2, pos + 2 + size
    start = pos + 2 + (size & 0x7F)
    return start, start + int.from_bytes(der[pos + 2:start])


def _header(tag: int, length: int) -> bytes:
    if length < 0x80:
        return bytes([tag, length])
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size)
