"""A lenient DER walk over a certificate: just enough to find the serial, the names, the
key and the extension OIDs, and to decode names the way an inventory wants them.

Why not only `cryptography`: it answers all-or-nothing. It refuses a whole certificate over
one odd string in a name ('*' or '_' in a PrintableString, a lone surrogate in a
BMPString), and a whole name over Latin-1 in a T61String. Here names are decoded leniently
(the odd value is shown, not lost), and certs.py uses the layout to retry a refused
certificate with its names blanked, or to read one extension alone. Pure; raises
ValueError (or IndexError) on DER it cannot walk, which costs the caller one fact.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple, overload

from cryptography import x509

# (tag, pos of the tag byte, start of the contents, end); plain tuples: a NamedTuple costs
# several times more to make, and names are walked for every certificate.
Element = tuple[int, int, int, int]


class Layout(NamedTuple):
    tbs: Element  # the signed bytes
    serial: slice  # contents of the INTEGER
    issuer: Element
    subject: Element
    spki: slice
    optional: list[Element]  # after the key: unique IDs, extensions


def inside(der: bytes, parent: Element) -> list[Element]:
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


def layout_of(der: bytes, *, checked: bool) -> Layout:
    """Where the parts are. Unless cryptography has `checked` the DER (extensions included),
    the extensions must walk as well: a certificate whose do not is not worth a retry."""
    tbs = inside(der, inside(der, (0, 0, 0, len(der)))[0])[0]
    fields = inside(der, tbs)
    if fields[0][0] == 0xA0:  # explicit version; absent in v1 certificates
        fields.pop(0)
    serial, _, issuer, _, subject, spki, *optional = fields
    layout = Layout(tbs, slice(serial[2], serial[3]), issuer, subject,
                     slice(spki[1], spki[3]), optional)
    if not checked:
        extension_oids(der, layout)
    return layout


def extension_oids(der: bytes, layout: Layout) -> list[Element]:
    return [inside(der, extension)[0] for block in layout.optional if block[0] == 0xA3
            for extension in inside(der, inside(der, block)[0])]


def serial_hex(contents: bytes) -> str:
    number = int.from_bytes(contents, signed=True)
    digits = f"{abs(number):x}"
    return ("-" if number < 0 else "") + digits.zfill(len(digits) + len(digits) % 2)


def attributes(der: bytes, name: Element) -> list[list[tuple[Element, Element]]]:
    """Each RDN of a Name as (type OID, value) pairs."""
    return [[(oid, value) for oid, value in (inside(der, atv) for atv in inside(der, rdn))]
            for rdn in inside(der, name)]


class Name(NamedTuple):
    rfc4514: str
    cn: str | None
    rdns: tuple[frozenset[tuple[x509.ObjectIdentifier, str]], ...]  # equal as x509.Name is

    def facts(self) -> dict[str, object]:  # a new dict each time: callers may change theirs
        return {"rfc4514": self.rfc4514, "cn": self.cn}


def decode_name(der: bytes) -> Name:
    """A Name, from its DER element. Issuers repeat (every leaf of a CA has the same one, the
    subject of the next certificate in the chain), so names are kept, unless hostile-large."""
    return _kept_name(der) if type(der) is bytes and len(der) <= 1024 else read_name(der)


def read_name(der: bytes) -> Name:
    """What an x509.Name of the decoded values would give, without building one:
    rfc4514_string(), the first CN, and equality."""
    rdns, sets = [], []
    for pairs in attributes(der, inside(der, (0, 0, 0, len(der)))[0]):
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
    return Name(json_safe(rfc4514), None if cn is None else json_safe(cn), tuple(sets))


_kept_name = functools.lru_cache(maxsize=1024)(read_name)  # at most 5 MB


class _AttributeType(NamedTuple):
    oid: x509.ObjectIdentifier
    label: str  # in RFC 4514 strings: "CN", "O", ... or the dotted OID


@functools.lru_cache(maxsize=256)  # a few types recur; bounded against hostile ones
def _attribute_type(oid: bytes) -> _AttributeType:
    identifier = x509.ObjectIdentifier(dotted_oid(oid))
    label = x509.NameAttribute(identifier, "xx", _validate=False).rfc4514_attribute_name
    return _AttributeType(identifier, label)


# Values that RFC 4514 never escapes; cryptography writes any other.
_PLAIN = re.compile(r"[\w.*@:/()'-]+(?: +[\w.*@:/()'-]+)*", re.ASCII)


def _rfc4514(kind: _AttributeType, value: str) -> str:
    if _PLAIN.fullmatch(value):
        return f"{kind.label}={value}"
    return x509.NameAttribute(kind.oid, value, _validate=False).rfc4514_string()


def dotted_oid(oid: bytes) -> str:
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


@overload
def json_safe(value: str) -> str: ...
@overload
def json_safe(value: object) -> object: ...
def json_safe(value: object) -> object:
    """Strings that encode as strict UTF-8: lone surrogates become U+FFFD."""
    if isinstance(value, str):
        return value if value.isascii() else (
            value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace"))
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value
