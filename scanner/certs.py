"""Certificate facts: DER bytes in, JSON-ready dicts out. Pure: no I/O, never raises.

Servers send whatever they like, so each fact is computed on its own and one that cannot be
read is None. `cryptography` answers all-or-nothing in two places, worked around with a
small DER walk (`_layout`): it refuses a whole certificate over one odd string in a name
('*' or '_' in a PrintableString, a lone surrogate in a BMPString) and a whole name over
Latin-1 in a T61String, so names are decoded here and a refused certificate is retried with
its names blanked; and it parses all extensions at once, so an extension fact is re-read
alone when another extension is malformed.
"""

from __future__ import annotations

import base64
import hashlib
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa, x25519
from cryptography.x509.oid import ExtensionOID, NameOID

T = TypeVar("T")

_FACT_KEYS = ("pem", "sha256", "sha1", "spki_sha256", "serial", "subject", "issuer", "san",
              "not_before", "not_after", "days_left", "key", "signature_algorithm",
              "self_signed", "is_ca")


def der_to_pem(der: bytes) -> str:
    """PEM text for any bytes; they need not parse."""
    text = base64.b64encode(der).decode("ascii")
    body = "".join(text[i:i + 64] + "\n" for i in range(0, len(text), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


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
    return _facts(der, ("pem", "sha256", "subject", "issuer", "not_after"), None)


def _facts(der: bytes, keys: tuple[str, ...], now: datetime | None) -> dict[str, object]:
    # cryptography *warns* about RFC 5280 violations it still parses (negative serials,
    # over-long CN or country); we report such certificates as they are, and under `-W error`
    # a warning would become an exception that costs the field. Before Python 3.14 this
    # swaps process-wide filters: call from one thread (the event loop), not from a pool.
    with warnings.catch_warnings(action="ignore", category=UserWarning):
        layout = _field(lambda: _layout(der))
        parsed = _parse(der, layout)
        cert = parsed.cert if parsed else None
        readers: dict[str, Callable[[], object]] = {  # lazy: chain_entry wants only a few
            "pem": lambda: der_to_pem(der),
            "sha256": lambda: hashlib.sha256(der).hexdigest(),
            "sha1": lambda: hashlib.sha1(der).hexdigest(),
            "spki_sha256": lambda: hashlib.sha256(der[_need(layout).spki]).hexdigest(),
            "serial": lambda: _serial(der[_need(layout).serial]),
            "subject": lambda: _name_facts(_name(der, _need(layout).subject)),
            "issuer": lambda: _name_facts(_name(der, _need(layout).issuer)),
            "san": lambda: _san(_need(parsed)),
            "not_before": lambda: _iso(_need(cert).not_valid_before_utc),
            "not_after": lambda: _iso(_need(cert).not_valid_after_utc),
            "days_left": lambda: (_need(cert).not_valid_after_utc - _utc(_need(now)))
            // timedelta(days=1),
            "key": lambda: _key(_need(cert)),
            "signature_algorithm": lambda: _oid_name(_need(cert).signature_algorithm_oid),
            "self_signed": lambda: _self_signed(_need(parsed)),
            "is_ca": lambda: _is_ca(_need(parsed)),
        }
        return {key: _json_safe(_field(readers[key])) for key in keys}


def _field(compute: Callable[[], T]) -> T | None:
    """One fact, computed in isolation: bad input costs this fact, not the record."""
    try:
        return compute()
    except Exception:  # cryptography raises ValueError, TypeError, its own types, ...
        return None


def _need(value: T | None) -> T:
    if value is None:
        raise ValueError("that part of the certificate could not be read")
    return value


# --- a DER walk: just enough to find the serial, names, key and extension OIDs ---

class _Tlv(NamedTuple):
    tag: int
    pos: int  # of the tag byte
    start: int  # of the contents
    end: int


class _Layout(NamedTuple):
    tbs: slice  # the signed bytes
    serial: slice  # contents of the INTEGER
    issuer: _Tlv
    subject: _Tlv
    spki: slice
    extension_oids: list[_Tlv]


def _children(der: bytes, parent: _Tlv) -> list[_Tlv]:
    """The DER elements that make up parent's contents."""
    found, pos = [], parent.start
    while pos < parent.end:
        tag, length, start = der[pos], der[pos + 1], pos + 2
        if tag & 0x1F == 0x1F:
            raise ValueError("multi-byte tags do not occur in the parts read here")
        if length & 0x80:  # long form: the low bits count the length bytes that follow
            size = length & 0x7F
            length, start = int.from_bytes(der[start:start + size]), start + size
        if start + length > parent.end:
            raise ValueError("DER element overruns its parent")
        found.append(_Tlv(tag, pos, start, start + length))
        pos = start + length
    return found


def _layout(der: bytes) -> _Layout:
    tbs = _children(der, _children(der, _Tlv(0, 0, 0, len(der)))[0])[0]
    fields = _children(der, tbs)
    if fields[0].tag == 0xA0:  # explicit version; absent in v1 certificates
        fields.pop(0)
    serial, _, issuer, _, subject, spki, *optional = fields
    oids = [_children(der, extension)[0] for block in optional if block.tag == 0xA3
            for extension in _children(der, _children(der, block)[0])]
    return _Layout(slice(tbs.pos, tbs.end), slice(serial.start, serial.end), issuer, subject,
                   slice(spki.pos, spki.end), oids)


def _serial(contents: bytes) -> str:
    number = int.from_bytes(contents, signed=True)
    digits = f"{abs(number):x}"
    return ("-" if number < 0 else "") + digits.zfill(len(digits) + len(digits) % 2)


def _attributes(der: bytes, name: _Tlv) -> Iterator[list[tuple[_Tlv, _Tlv]]]:
    """Each RDN of a Name as (type OID, value) pairs."""
    for rdn in _children(der, name):
        yield [(oid, value) for oid, value in (_children(der, atv) for atv in _children(der, rdn))]


def _name(der: bytes, name: _Tlv) -> x509.Name:
    return x509.Name([x509.RelativeDistinguishedName([
        # _validate=False: real certificates break cryptography's limits (CN > 64 characters)
        x509.NameAttribute(x509.ObjectIdentifier(_dotted(der[oid.start:oid.end])),
                           _text(value.tag, der[value.start:value.end]), _validate=False)
        for oid, value in rdn]) for rdn in _attributes(der, name) if rdn])


def _name_facts(name: x509.Name) -> dict[str, object]:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {"rfc4514": name.rfc4514_string(), "cn": str(cns[0].value) if cns else None}


def _dotted(oid: bytes) -> str:
    arcs: list[int] = []
    arc = 0
    for byte in oid:
        arc = arc << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(arc)
            arc = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


def _text(tag: int, data: bytes) -> str:
    """Decode a name string leniently: an inventory wants to see the odd value, not lose it."""
    if tag in (0x1E, 0x1C):  # BMPString, UniversalString
        return data.decode("utf-16-be" if tag == 0x1E else "utf-32-be", "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # in practice T61String and friends hold Latin-1
        return data.decode("latin-1")


# --- facts cryptography parses ---

class _Parsed(NamedTuple):
    der: bytes
    loaded: bytes  # what cryptography loaded: `der`, or a copy with the names blanked
    cert: x509.Certificate
    layout: _Layout | None


def _parse(der: bytes, layout: _Layout | None) -> _Parsed | None:
    try:
        return _Parsed(der, der, x509.load_der_x509_certificate(der), layout)
    except Exception:
        if layout is None:
            return None

    # Names are decoded from `layout`, so blank them for cryptography. Lengths stay the same,
    # and so every offset in `layout`; the signature no longer matches (see _self_signed).
    def blanked() -> _Parsed:
        loaded = bytearray(der)
        for name in (_need(layout).issuer, _need(layout).subject):
            for _, value in (pair for rdn in _attributes(der, name) for pair in rdn):
                loaded[value.pos] = 0x0C  # UTF8String
                loaded[value.start:value.end] = b"?" * (value.end - value.start)
        return _Parsed(der, bytes(loaded), x509.load_der_x509_certificate(bytes(loaded)), layout)

    return _field(blanked)


def _extension(parsed: _Parsed, oid: x509.ObjectIdentifier) -> x509.ExtensionType | None:
    """The extension's value, None when absent; raises when it is malformed."""
    try:
        extensions = parsed.cert.extensions
    except Exception:
        # Give every other extension a unique private OID of the same length, so that
        # cryptography leaves it unparsed, and read this one alone.
        isolated = bytearray(parsed.loaded)
        for index, other in enumerate(_need(parsed.layout).extension_oids):
            size, dotted = other.end - other.start, _dotted(parsed.der[other.start:other.end])
            if size >= 3 and index < 128 and dotted != oid.dotted_string:
                isolated[other.start:other.end] = bytes([0x2A, *[0x81] * (size - 3), 1, index])
        extensions = x509.load_der_x509_certificate(bytes(isolated)).extensions
    try:
        return extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def _san(parsed: _Parsed) -> dict[str, list[str]]:
    san = _extension(parsed, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    names = san if isinstance(san, x509.SubjectAlternativeName) else x509.SubjectAlternativeName([])
    return {"dns": names.get_values_for_type(x509.DNSName),
            "ip": [str(ip) for ip in names.get_values_for_type(x509.IPAddress)],
            "email": names.get_values_for_type(x509.RFC822Name),
            "uri": names.get_values_for_type(x509.UniformResourceIdentifier)}


def _is_ca(parsed: _Parsed) -> bool:
    constraints = _extension(parsed, ExtensionOID.BASIC_CONSTRAINTS)
    return isinstance(constraints, x509.BasicConstraints) and constraints.ca


def _key(cert: x509.Certificate) -> dict[str, object]:
    key = _field(cert.public_key)  # raises for key types cryptography does not know
    kind, bits, curve = "unknown", None, None
    if isinstance(key, rsa.RSAPublicKey | dsa.DSAPublicKey):
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


def _self_signed(parsed: _Parsed) -> bool:
    """Issuer equals subject and the certificate's own key verifies its signature.

    Done by hand, not with `verify_directly_issued_by`: that needs cryptography to parse the
    names and to have loaded the signed bytes, and a certificate whose names had to be
    blanked has neither.
    """
    return _field(lambda: _signed_by_own_key(parsed.cert, parsed.der, _need(parsed.layout))) is True


def _signed_by_own_key(cert: x509.Certificate, der: bytes, layout: _Layout) -> bool:
    issuer, subject = layout.issuer, layout.subject
    if der[issuer.pos:issuer.end] != der[subject.pos:subject.end] and (
            _name(der, issuer) != _name(der, subject)):  # same name, other string types
        return False
    key, tbs, signature = cert.public_key(), der[layout.tbs], cert.signature
    scheme, digest = cert.signature_algorithm_parameters, cert.signature_hash_algorithm
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, tbs)
    elif digest is None:
        return False
    elif isinstance(key, rsa.RSAPublicKey) and isinstance(scheme, padding.PKCS1v15 | padding.PSS):
        key.verify(signature, tbs, scheme, digest)
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(scheme, ec.ECDSA):
        key.verify(signature, tbs, scheme)
    elif isinstance(key, dsa.DSAPublicKey):
        key.verify(signature, tbs, digest)
    else:
        return False
    return True  # each verify() raises InvalidSignature on a mismatch


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    return oid.dotted_string if oid._name == "Unknown OID" else oid._name


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:  # not strftime: it drops the leading zeros of year 1
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat("T", "seconds") + "Z"


def _json_safe(value: object) -> object:
    """Strings that encode as strict UTF-8: lone surrogates become U+FFFD."""
    if isinstance(value, str):
        return value if value.isascii() else (
            value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace"))
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value
