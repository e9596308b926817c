"""Mint certificates for tests, including ones no honest CA would issue.

`mint` builds a certificate with `cryptography`; `patch` then swaps bytes of equal length
(a string tag, a serial, a date) so the DER holds what the builder refuses to write, and
`resign` gives an Ed25519- or RSA-signed certificate a valid signature over the patched bytes.
"""

from __future__ import annotations

import datetime as dt
import functools
import warnings
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa, x25519
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

# cryptography 51 deprecates DSA and warns on each use of its names; the tests still make
# DSA certificates (servers still send them), so they name DSA only with that warning off.
# The scanner's own code runs with every warning an error (pyproject's filterwarnings).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    _DSAPrivateKey = dsa.DSAPrivateKey
    _generate_dsa = dsa.generate_private_key

PrivateKey = (rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
              | ed448.Ed448PrivateKey | _DSAPrivateKey | x25519.X25519PrivateKey)
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
