"""Certificate facts: DER bytes in, JSON-ready dicts out. Pure: no I/O, never raises.

Servers send whatever they like, so each fact is computed on its own and one that cannot be
read is None. `cryptography` answers all-or-nothing in two places, worked around with a
small DER walk (`_layout`): it refuses a whole certificate over one odd string in a name
('*' or '_' in a PrintableString, a lone surrogate in a BMPString) and a whole name over
Latin-1 in a T61String, so names are decoded here and a refused certificate is retried with
its names blanked; and it parses all extensions at once, so an extension fact is re-read
alone when another extension is malformed.

This runs once per scanned target, so: the walk skips what cryptography has checked, names
are decoded without building x509.Name objects (several times slower), and bounded caches
keep what repeats across targets (issuer names, intermediate certificates).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeVar, overload

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa, x25519
from cryptography.x509.oid import ExtensionOID

T = TypeVar("T")

_FACT_KEYS = ("pem", "sha256", "sha1", "spki_sha256", "serial", "subject", "issuer", "san",
              "not_before", "not_after", "days_left", "key", "signature_algorithm",
              "self_signed", "is_ca")
_CHAIN_KEYS = ("pem", "sha256", "subject", "issuer", "not_after")
_DAY = timedelta(days=1)


def der_to_pem(der: bytes) -> str:
    """PEM text for any bytes; they need not parse."""
    text = base64.b64encode(der).decode("ascii")
    body = "".join([text[i:i + 64] + "\n" for i in range(0, len(text), 64)])
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
    # cryptography *warns* about RFC 5280 violations it still parses (negative serials,
    # over-long CN or country); we report such certificates as they are, and under `-W error`
    # a warning would become an exception that costs the field. So UserWarnings are ignored
    # meanwhile, in process-wide filters: call from one thread (the event loop), not a pool.
    if getattr(sys.flags, "context_aware_warnings", False):  # 3.14+: filters per context
        with warnings.catch_warnings(action="ignore", category=UserWarning):
            return _read(der, keys, now)
    # What catch_warnings does, at a fraction of its cost: put an "ignore" filter first and
    # take it out again. It skips warnings' private _filters_mutated(), which only makes
    # warnings shown once show again, and "ignore" records none.
    filters: list[object] = warnings.filters  # type: ignore[assignment]
    filters.insert(0, _IGNORE_USER_WARNINGS)
    try:
        return _read(der, keys, now)
    finally:
        filters.remove(_IGNORE_USER_WARNINGS)  # the first equal one: ours


_IGNORE_USER_WARNINGS = ("ignore", None, UserWarning, None, 0)  # as simplefilter makes it


def _read(der: bytes, keys: tuple[str, ...], now: datetime | None) -> dict[str, object]:
    reading = _Reading(der, now)
    return {key: _field(_READERS[key], reading) for key in keys}


class _Reading:
    """One certificate as cryptography and the walk read it; facts are read from it lazily."""

    __slots__ = ("cert", "der", "layout", "names", "now", "parsed")

    def __init__(self, der: bytes, now: datetime | None) -> None:
        self.der, self.now = der, now
        self.names: dict[str, _Name] = {}
        self.layout, self.parsed = _parse(der)
        self.cert = self.parsed.cert if self.parsed else None

    def name(self, which: str) -> _Name:  # "subject" or "issuer"; decoded once per call
        if which not in self.names:
            element = getattr(_need(self.layout), which)
            self.names[which] = _name(self.der[element[1]:element[3]])
        return self.names[which]


_READERS: dict[str, Callable[[_Reading], object]] = {  # lazy: chain_entry wants only a few
    "pem": lambda r: der_to_pem(r.der),
    "sha256": lambda r: hashlib.sha256(r.der).hexdigest(),
    "sha1": lambda r: hashlib.sha1(r.der).hexdigest(),
    "spki_sha256": lambda r: hashlib.sha256(r.der[_need(r.layout).spki]).hexdigest(),
    "serial": lambda r: _serial(r.der[_need(r.layout).serial]),
    # Only names and SANs hold text from the certificate: they pass through _json_safe.
    "subject": lambda r: r.name("subject").facts(),
    "issuer": lambda r: r.name("issuer").facts(),
    "san": lambda r: _san(_need(r.parsed)),
    "not_before": lambda r: _iso(_need(r.cert).not_valid_before_utc),
    "not_after": lambda r: _iso(_need(r.cert).not_valid_after_utc),
    "days_left": lambda r: (_need(r.cert).not_valid_after_utc - _utc(_need(r.now))) // _DAY,
    "key": lambda r: _key(_need(r.cert)),
    "signature_algorithm": lambda r: _oid_name(_need(r.cert).signature_algorithm_oid),
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


# --- a DER walk: just enough to find the serial, names, key and extension OIDs ---

# (tag, pos of the tag byte, start of the contents, end); plain tuples: a NamedTuple costs
# several times more to make, and names are walked for every certificate.
_Element = tuple[int, int, int, int]


class _Layout(NamedTuple):
    tbs: _Element  # the signed bytes
    serial: slice  # contents of the INTEGER
    issuer: _Element
    subject: _Element
    spki: slice
    optional: list[_Element]  # after the key: unique IDs, extensions


def _inside(der: bytes, parent: _Element) -> list[_Element]:
    """The DER elements that make up parent's contents."""
    found, pos, end = [], parent[2], parent[3]
    while pos < end:
        tag, length, start = der[pos], der[pos + 1], pos + 2
        if tag & 0x1F == 0x1F:
            raise ValueError("multi-byte tags do not occur in the parts read here")
        if length & 0x80:  # long form: the low bits count the length bytes that follow
            size = length & 0x7F
            length, start = int.from_bytes(der[start:start + size]), start + size
        if start + length > end:
            raise ValueError("DER element overruns its parent")
        found.append((tag, pos, start, start + length))
        pos = start + length
    return found


def _layout(der: bytes, *, checked: bool) -> _Layout:
    """Where the parts are. Unless cryptography has `checked` the DER (extensions included),
    the extensions must walk as well: a certificate whose do not is not worth a retry."""
    tbs = _inside(der, _inside(der, (0, 0, 0, len(der)))[0])[0]
    fields = _inside(der, tbs)
    if fields[0][0] == 0xA0:  # explicit version; absent in v1 certificates
        fields.pop(0)
    serial, _, issuer, _, subject, spki, *optional = fields
    layout = _Layout(tbs, slice(serial[2], serial[3]), issuer, subject,
                     slice(spki[1], spki[3]), optional)
    if not checked:
        _extension_oids(der, layout)
    return layout


def _extension_oids(der: bytes, layout: _Layout) -> list[_Element]:
    return [_inside(der, extension)[0] for block in layout.optional if block[0] == 0xA3
            for extension in _inside(der, _inside(der, block)[0])]


def _serial(contents: bytes) -> str:
    number = int.from_bytes(contents, signed=True)
    digits = f"{abs(number):x}"
    return ("-" if number < 0 else "") + digits.zfill(len(digits) + len(digits) % 2)


def _attributes(der: bytes, name: _Element) -> list[list[tuple[_Element, _Element]]]:
    """Each RDN of a Name as (type OID, value) pairs."""
    return [[(oid, value) for oid, value in (_inside(der, atv) for atv in _inside(der, rdn))]
            for rdn in _inside(der, name)]


class _Name(NamedTuple):
    rfc4514: str
    cn: str | None
    rdns: tuple[frozenset[tuple[x509.ObjectIdentifier, str]], ...]  # equal as x509.Name is

    def facts(self) -> dict[str, object]:  # a new dict each time: callers may change theirs
        return {"rfc4514": self.rfc4514, "cn": self.cn}


def _name(der: bytes) -> _Name:
    """A Name, from its DER element. Issuers repeat (every leaf of a CA has the same one, the
    subject of the next certificate in the chain), so names are kept, unless hostile-large."""
    return _kept_name(der) if type(der) is bytes and len(der) <= 1024 else _read_name(der)


def _read_name(der: bytes) -> _Name:
    """What an x509.Name of the decoded values would give, without building one:
    rfc4514_string(), the first CN, and equality."""
    rdns, sets = [], []
    for pairs in _attributes(der, _inside(der, (0, 0, 0, len(der)))[0]):
        if pairs:  # x509.Name holds no empty RDN
            rdn = [(_attribute_type(bytes(der[oid[2]:oid[3]])),  # bytes: a bytearray has no hash
                    _text(value[0], der[value[2]:value[3]])) for oid, value in pairs]
            sets.append(unique := frozenset((kind.oid, value) for kind, value in rdn))
            if len(unique) != len(rdn):
                raise ValueError("duplicate attributes in an RDN")  # x509 refuses them too
            rdns.append(rdn)
    rfc4514 = ",".join("+".join(_rfc4514(kind, value) for kind, value in rdn)
                       for rdn in reversed(rdns))
    cn = next((value for rdn in rdns for kind, value in rdn if kind.label == "CN"), None)
    return _Name(_json_safe(rfc4514), None if cn is None else _json_safe(cn), tuple(sets))


_kept_name = functools.lru_cache(maxsize=1024)(_read_name)  # at most 5 MB


class _AttributeType(NamedTuple):
    oid: x509.ObjectIdentifier
    label: str  # in RFC 4514 strings: "CN", "O", ... or the dotted OID


@functools.lru_cache(maxsize=256)  # a few types recur; bounded against hostile ones
def _attribute_type(oid: bytes) -> _AttributeType:
    identifier = x509.ObjectIdentifier(_dotted(oid))
    label = x509.NameAttribute(identifier, "xx", _validate=False).rfc4514_attribute_name
    return _AttributeType(identifier, label)


# Values that RFC 4514 never escapes; cryptography writes any other.
_PLAIN = re.compile(r"[\w.*@:/()'-]+(?: +[\w.*@:/()'-]+)*", re.ASCII)


def _rfc4514(kind: _AttributeType, value: str) -> str:
    if _PLAIN.fullmatch(value):
        return f"{kind.label}={value}"
    return x509.NameAttribute(kind.oid, value, _validate=False).rfc4514_string()


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


def _parse(der: bytes) -> tuple[_Layout | None, _Parsed | None]:
    try:
        cert = x509.load_der_x509_certificate(der)
    except Exception:
        pass
    else:
        layout = _field(lambda: _layout(der, checked=True))
        return layout, _Parsed(der, der, cert, layout)
    layout = _field(lambda: _layout(der, checked=False))
    return layout, _field(lambda: _blanked(der, _need(layout)))


def _blanked(der: bytes, layout: _Layout) -> _Parsed:
    # Names are decoded from `layout`, so blank them for cryptography. Lengths stay the same,
    # and so every offset in `layout`; the signature no longer matches (see _self_signed).
    loaded = bytearray(der)
    for name in (layout.issuer, layout.subject):
        for _, value in (pair for rdn in _attributes(der, name) for pair in rdn):
            loaded[value[1]] = 0x0C  # UTF8String
            loaded[value[2]:value[3]] = b"?" * (value[3] - value[2])
    return _Parsed(der, bytes(loaded), x509.load_der_x509_certificate(bytes(loaded)), layout)


def _extension(parsed: _Parsed, oid: x509.ObjectIdentifier) -> x509.ExtensionType | None:
    """The extension's value, None when absent; raises when it is malformed."""
    try:
        extensions = parsed.cert.extensions
    except Exception:
        # Give every other extension a unique private OID of the same length, so that
        # cryptography leaves it unparsed, and read this one alone.
        isolated = bytearray(parsed.loaded)
        for index, (_, _, start, end) in enumerate(_extension_oids(parsed.der,
                                                                   _need(parsed.layout))):
            size, dotted = end - start, _dotted(parsed.der[start:end])
            if size >= 3 and index < 128 and dotted != oid.dotted_string:
                isolated[start:end] = bytes([0x2A, *[0x81] * (size - 3), 1, index])
        extensions = x509.load_der_x509_certificate(bytes(isolated)).extensions
    try:
        return extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


_SAN_KINDS: dict[type, str] = {x509.DNSName: "dns", x509.IPAddress: "ip",
                               x509.RFC822Name: "email", x509.UniformResourceIdentifier: "uri"}


def _san(parsed: _Parsed) -> dict[str, list[str]]:
    san = _extension(parsed, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    found: dict[str, list[str]] = {"dns": [], "ip": [], "email": [], "uri": []}
    for general in san if isinstance(san, x509.SubjectAlternativeName) else ():
        kind = _SAN_KINDS.get(type(general))
        if kind:
            found[kind].append(_json_safe(str(general.value)))
    return found


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


def _self_signed(parsed: _Parsed, reading: _Reading) -> bool:
    """Issuer equals subject and the certificate's own key verifies its signature.

    Done by hand, not with `verify_directly_issued_by`: that needs cryptography to parse the
    names and to have loaded the signed bytes, and a certificate whose names had to be
    blanked has neither.
    """
    return _field(_signed_by_own_key, parsed, reading) is True


def _signed_by_own_key(parsed: _Parsed, reading: _Reading) -> bool:
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


@overload
def _json_safe(value: str) -> str: ...
@overload
def _json_safe(value: object) -> object: ...
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
