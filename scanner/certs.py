"""Certificate facts: DER bytes in, JSON-ready dicts out. Pure: no I/O, never raises.

Servers send whatever they like, so each fact is computed on its own and one that cannot be
read is None.

This runs once per scanned target, and most of its time went into building cryptography's
objects (every extension, an OpenSSL key, datetimes), most of a process's start-up into
importing it. So there are two paths to the same facts. The fast path reads a certificate
in the plain shape real ones have with a strict DER walk alone (der.simple_certificate). It
bails out (NotSimple) on anything it cannot vouch for: odd or non-minimal DER, an algorithm,
key or SAN name outside its tables, duplicate extensions, a certificate that may be
self-signed (that takes a signature check); the whole certificate then goes to the slow path,
which asks cryptography (imported only then) and which the fast path must equal to the byte
(tests/test_certs_fast.py compares them, on mutated certificates too).

The slow path works around `cryptography` answering all-or-nothing in two places, with a
small DER walk (`layout_of`): it refuses a whole certificate over one odd string in a name
('*' or '_' in a PrintableString, a lone surrogate in a BMPString) and a whole name over
Latin-1 in a T61String, so names are decoded here and a refused certificate is retried with
its names blanked; and it parses all extensions at once, so an extension fact is re-read
alone when another extension is malformed. Both paths decode names without building
x509.Name objects (several times slower), and bounded caches keep what repeats across
targets (issuer names, names' attributes, extensions, intermediate certificates).
"""

from __future__ import annotations

import functools
import hashlib
import struct
import warnings
from binascii import b2a_base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from hashlib import sha1, sha256
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from .der import (
    BASIC_CONSTRAINTS_OID,
    SAN_OID,
    Layout,
    Name,
    NotSimple,
    attributes,
    decode_name,
    dotted_oid,
    extension_oids,
    is_ca,
    json_safe,
    layout_of,
    public_key,
    read_name,
    serial_hex,
    simple_certificate,
    subject_alt_names,
)
from .hooks import ignoring_user_warnings, oid_name

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.dsa import DSAPublicKey

T = TypeVar("T")

_FACT_KEYS = ("pem", "sha256", "sha1", "spki_sha256", "serial", "subject", "issuer", "san",
              "not_before", "not_after", "days_left", "key", "signature_algorithm",
              "self_signed", "is_ca")
_CHAIN_KEYS = ("pem", "sha256", "subject", "issuer", "not_after")
_DAY = timedelta(days=1)


def der_to_pem(der: bytes) -> str:
    """PEM text for any bytes; they need not parse."""
    text = b2a_base64(der, newline=False)
    full, rest = divmod(len(text), 64)
    # Lines of 64 characters, cut by one call rather than a loop (but for hostile sizes).
    lines = _pem_lines(full)(text) if full <= 128 else [
        text[i:i + 64] for i in range(0, 64 * full, 64)]
    body = b"\n".join([*lines, text[-rest:]] if rest else lines).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n" if body else (
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")


@functools.lru_cache(maxsize=129)  # all there are
def _pem_lines(count: int) -> Callable[[bytes], tuple[bytes, ...]]:
    """What cuts the first `count` lines of 64 characters out of base64 text."""
    return struct.Struct("64s" * count).unpack_from


def certificate_facts(der: bytes, *, now: datetime) -> dict[str, object]:
    """Facts about one certificate, every key always present.

    pem, sha256 and sha1 are certain; any other field is None when its part of the DER cannot
    be read (all of them when it is not a certificate). `san` has empty lists when there is no
    SAN extension and is None when it is malformed. `serial` is lowercase hex in whole bytes,
    "-" first for the negative serials old CAs issued. `days_left` is negative once expired;
    a naive `now` is taken as UTC.
    """
    return _facts(der, _FACT_KEYS, now)


def chain_entry(der: bytes) -> dict[str, object]:
    """The short form for a chain certificate: pem, sha256, subject, issuer, not_after."""
    # Every leaf of a CA comes with the same intermediates: keep their entries, but not of
    # certificates so large that a hostile server could fill memory with them.
    small = type(der) is bytes and len(der) <= 4096  # a bytearray cannot be a cache key
    return leaf_entry(_kept_chain_entry(der) if small else _facts(der, _CHAIN_KEYS, None))


def leaf_entry(facts: dict[str, object]) -> dict[str, object]:
    """chain_entry(der) from certificate_facts(der, ...), so that the leaf (chain[0]) is not
    parsed twice."""
    return {key: dict(value) if isinstance(value, dict) else value  # no dict shared by both
            for key, value in ((key, facts[key]) for key in _CHAIN_KEYS)}


@functools.lru_cache(maxsize=256)  # 2.5 MB at most, pem included
def _kept_chain_entry(der: bytes) -> dict[str, object]:
    return _facts(der, _CHAIN_KEYS, None)


def _facts(der: bytes, keys: tuple[str, ...], now: datetime | None) -> dict[str, object]:
    try:
        return _fast_facts(der, keys, now)
    except Exception:  # NotSimple, or an IndexError of truncated DER: cryptography reads it
        return _slow_facts(der, keys, now)


# --- the fast path: a strict DER walk ---

def _fast_facts(der: bytes, keys: tuple[str, ...], now: datetime | None) -> dict[str, object]:
    """The facts of a certificate the strict walk vouches for, as _slow_facts gives them;
    raises NotSimple (or IndexError) for any other.

    One function, no table of readers: it runs for every scanned target."""
    der = bytes(der)
    (serial, issuer_der, subject_der, not_before, not_after, expires, spki, key_algorithm,
     key_bits, signature_algorithm, extensions) = simple_certificate(der)
    # Issuers repeat across targets, leaves' subjects do not: keep only issuers.
    subject, issuer = read_name(subject_der), decode_name(issuer_der)
    # The names' shape matters, not their strings: a certificate that cryptography refuses
    # over a string ('*' in a PrintableString) the slow path reads with its names blanked,
    # to the same facts. A name of another shape might be refused even so.
    if not (subject.simple and issuer.simple):
        raise NotSimple
    if keys == _CHAIN_KEYS:
        return {"pem": der_to_pem(der), "sha256": sha256(der).hexdigest(),
                "subject": {"rfc4514": subject.rfc4514, "cn": subject.cn},
                "issuer": {"rfc4514": issuer.rfc4514, "cn": issuer.cn},
                "not_after": not_after}
    # A certificate whose names match may be self-signed, which a signature check decides:
    # the slow path's. Simple names with equal RDNs have equal RFC 4514 strings, so names
    # whose strings differ differ (equal strings of names that differ, rare, go there too).
    if issuer_der == subject_der or subject.rfc4514 == issuer.rfc4514:
        raise NotSimple
    kind, bits, curve = public_key(key_algorithm, key_bits)
    san, constraints = extensions.get(SAN_OID), extensions.get(BASIC_CONSTRAINTS_OID)
    facts: dict[str, object] = {  # as _READERS, key for key
        "pem": der_to_pem(der),
        "sha256": sha256(der).hexdigest(),
        "sha1": sha1(der).hexdigest(),
        "spki_sha256": sha256(spki).hexdigest(),
        "serial": serial_hex(serial),
        "subject": {"rfc4514": subject.rfc4514, "cn": subject.cn},  # as Name.facts()
        "issuer": {"rfc4514": issuer.rfc4514, "cn": issuer.cn},
        "san": {"dns": [], "ip": [], "email": [], "uri": []} if san is None else (
            subject_alt_names(san)),
        "not_before": not_before,
        "not_after": not_after,
        "days_left": (expires - _utc(_need(now))) // _DAY,
        "key": {"type": kind, "bits": bits, "curve": curve},
        "signature_algorithm": signature_algorithm,
        "self_signed": False,
        "is_ca": constraints is not None and is_ca(constraints),
    }
    return facts if keys == _FACT_KEYS else {key: facts[key] for key in keys}


# --- the slow path: cryptography ---

def _slow_facts(der: bytes, keys: tuple[str, ...], now: datetime | None) -> dict[str, object]:
    # cryptography *warns* about RFC 5280 violations it still parses (negative serials,
    # over-long CN or country); we report such certificates as they are, and under `-W error`
    # a warning would become an exception that costs the field. So UserWarnings are ignored
    # meanwhile, in process-wide filters: call from one thread (the event loop), not a pool.
    return ignoring_user_warnings(_read, der, keys, now)


def _read(der: bytes, keys: tuple[str, ...], now: datetime | None) -> dict[str, object]:
    reading = _Reading(der, now)
    return {key: _field(_READERS[key], reading) for key in keys}


class _Reading:
    """One certificate as cryptography and the walk read it; facts are read from it lazily."""

    __slots__ = ("cert", "der", "layout", "names", "now", "parsed")

    def __init__(self, der: bytes, now: datetime | None) -> None:
        self.der, self.now = der, now
        self.names: dict[str, Name] = {}
        self.layout, self.parsed = _parse(der)
        self.cert = self.parsed.cert if self.parsed else None

    def name(self, which: str) -> Name:  # "subject" or "issuer"; decoded once per call
        if which not in self.names:
            element = getattr(_need(self.layout), which)
            self.names[which] = decode_name(self.der[element[1]:element[3]])
        return self.names[which]


_READERS: dict[str, Callable[[_Reading], object]] = {  # lazy: chain_entry wants only a few
    "pem": lambda r: der_to_pem(r.der),
    "sha256": lambda r: hashlib.sha256(r.der).hexdigest(),
    "sha1": lambda r: hashlib.sha1(r.der).hexdigest(),
    "spki_sha256": lambda r: hashlib.sha256(r.der[_need(r.layout).spki]).hexdigest(),
    "serial": lambda r: serial_hex(r.der[_need(r.layout).serial]),
    # Only names and SANs hold text from the certificate: they pass through json_safe.
    "subject": lambda r: r.name("subject").facts(),
    "issuer": lambda r: r.name("issuer").facts(),
    "san": lambda r: _san(_need(r.parsed)),
    "not_before": lambda r: _iso(_need(r.cert).not_valid_before_utc),
    "not_after": lambda r: _iso(_need(r.cert).not_valid_after_utc),
    "days_left": lambda r: (_need(r.cert).not_valid_after_utc - _utc(_need(r.now))) // _DAY,
    "key": lambda r: _key(_need(r.cert)),
    "signature_algorithm": lambda r: oid_name(_need(r.cert).signature_algorithm_oid),
    "self_signed": lambda r: _self_signed(_need(r.parsed), r),
    "is_ca": lambda r: _is_ca(_need(r.parsed)),
}


def _field(compute: Callable[..., T], *args: object) -> T | None:
    """One fact, computed in isolation: bad input costs this fact, not the record."""
    try:
        return compute(*args)
    except Exception:  # cryptography raises ValueError, TypeError, its own types, ...
        return None


def _need(value: T | None) -> T:
    if value is None:
        raise ValueError("that part of the certificate could not be read")
    return value


class _Parsed(NamedTuple):
    der: bytes
    loaded: bytes  # what cryptography loaded: `der`, or a copy with the names blanked
    cert: x509.Certificate
    layout: Layout | None


def _parse(der: bytes) -> tuple[Layout | None, _Parsed | None]:
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
    except Exception:
        pass
    else:
        layout = _field(lambda: layout_of(der, checked=True))
        return layout, _Parsed(der, der, cert, layout)
    layout = _field(lambda: layout_of(der, checked=False))
    return layout, _field(lambda: _blanked(der, _need(layout)))


def _blanked(der: bytes, layout: Layout) -> _Parsed:
    # Names are decoded from `layout`, so blank them for cryptography. Lengths stay the same,
    # and so every offset in `layout`; the signature no longer matches (see _self_signed).
    from cryptography import x509

    loaded = bytearray(der)
    for name in (layout.issuer, layout.subject):
        for _, value in (pair for rdn in attributes(der, name) for pair in rdn):
            loaded[value[1]] = 0x0C  # UTF8String
            loaded[value[2]:value[3]] = b"?" * (value[3] - value[2])
    return _Parsed(der, bytes(loaded), x509.load_der_x509_certificate(bytes(loaded)), layout)


def _extension(parsed: _Parsed, oid: x509.ObjectIdentifier) -> x509.ExtensionType | None:
    """The extension's value, None when absent; raises when it is malformed."""
    from cryptography import x509

    try:
        extensions = parsed.cert.extensions
    except Exception:
        # Give every other extension a unique private OID of the same length, so that
        # cryptography leaves it unparsed, and read this one alone.
        isolated = bytearray(parsed.loaded)
        for index, (_, _, start, end) in enumerate(extension_oids(parsed.der,
                                                                   _need(parsed.layout))):
            size, dotted = end - start, dotted_oid(parsed.der[start:end])
            if size >= 3 and index < 128 and dotted != oid.dotted_string:
                isolated[start:end] = bytes([0x2A, *[0x81] * (size - 3), 1, index])
        extensions = x509.load_der_x509_certificate(bytes(isolated)).extensions
    try:
        return extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def _san(parsed: _Parsed) -> dict[str, list[str]]:
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    san = _extension(parsed, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    kinds: dict[type, str] = {x509.DNSName: "dns", x509.IPAddress: "ip",
                              x509.RFC822Name: "email", x509.UniformResourceIdentifier: "uri"}
    found: dict[str, list[str]] = {"dns": [], "ip": [], "email": [], "uri": []}
    for general in san if isinstance(san, x509.SubjectAlternativeName) else ():
        kind = kinds.get(type(general))
        if kind:
            found[kind].append(json_safe(str(general.value)))
    return found


def _is_ca(parsed: _Parsed) -> bool:
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    constraints = _extension(parsed, ExtensionOID.BASIC_CONSTRAINTS)
    return isinstance(constraints, x509.BasicConstraints) and constraints.ca


@functools.cache
def _dsa_public_key() -> type[DSAPublicKey]:
    """cryptography's DSA key class. From cryptography 51 on, naming it warns that DSA is
    deprecated; a scanner still meets DSA certificates and must still report them."""
    from cryptography.hazmat.primitives.asymmetric import dsa
    from cryptography.utils import CryptographyDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return dsa.DSAPublicKey


def _key(cert: x509.Certificate) -> dict[str, object]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519

    key = _field(cert.public_key)  # raises for key types cryptography does not know
    kind, bits, curve = "unknown", None, None
    if isinstance(key, rsa.RSAPublicKey | _dsa_public_key()):
        kind, bits = "rsa" if isinstance(key, rsa.RSAPublicKey) else "dsa", key.key_size
    elif isinstance(key, ec.EllipticCurvePublicKey):
        kind, bits, curve = "ec", key.key_size, key.curve.name
    elif isinstance(key, ed25519.Ed25519PublicKey):
        kind, bits = "ed25519", 256
    elif isinstance(key, ed448.Ed448PublicKey):
        kind, bits = "ed448", 456
    elif isinstance(key, x25519.X25519PublicKey):
        kind, bits = "x25519", 256
    return {"type": kind, "bits": bits, "curve": curve}


def _self_signed(parsed: _Parsed, reading: _Reading) -> bool:
    """Issuer equals subject and the certificate's own key verifies its signature.

    Done by hand, not with `verify_directly_issued_by`: that needs cryptography to parse the
    names and to have loaded the signed bytes, and a certificate whose names had to be
    blanked has neither.
    """
    return _field(_signed_by_own_key, parsed, reading) is True


def _signed_by_own_key(parsed: _Parsed, reading: _Reading) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

    der, cert, layout = parsed.der, parsed.cert, _need(parsed.layout)
    issuer, subject = layout.issuer, layout.subject
    if der[issuer[1]:issuer[3]] != der[subject[1]:subject[3]] and (
            reading.name("issuer").rdns != reading.name("subject").rdns):  # other string types
        return False
    key, tbs, signature = cert.public_key(), der[layout.tbs[1]:layout.tbs[3]], cert.signature
    scheme, digest = cert.signature_algorithm_parameters, cert.signature_hash_algorithm
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, tbs)
    elif digest is None:
        return False
    elif isinstance(key, rsa.RSAPublicKey) and isinstance(scheme, padding.PKCS1v15 | padding.PSS):
        key.verify(signature, tbs, scheme, digest)
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(scheme, ec.ECDSA):
        key.verify(signature, tbs, scheme)
    elif isinstance(key, _dsa_public_key()):
        key.verify(signature, tbs, digest)
    else:
        return False
    return True  # each verify() raises InvalidSignature on a mismatch


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:  # not strftime: it drops the leading zeros of year 1
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat("T", "seconds") + "Z"
