"""DER walks over a certificate, without `cryptography`: a lenient one for names and the
layout, and a strict one that reads every fact of a plainly encoded certificate.

Why not only `cryptography`: it answers all-or-nothing. It refuses a whole certificate over
one odd string in a name ('*' or '_' in a PrintableString, a lone surrogate in a
BMPString), and a whole name over Latin-1 in a T61String. Here names are decoded leniently
(the odd value is shown, not lost), and certs.py uses the layout to retry a refused
certificate with its names blanked, or to read one extension alone. Pure; the lenient walk
raises ValueError (or IndexError) on DER it cannot walk, which costs the caller one fact.

The strict walk (`simple_certificate`) exists for speed: building cryptography's objects
costs several times more than reading the few facts we report. It accepts only minimal
DER in the shapes real certificates use, with algorithms from short tables, and so only
certificates cryptography surely loads; on anything else it raises NotSimple (or
IndexError) and certs.py asks cryptography instead.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from datetime import datetime
from typing import NamedTuple, overload

from .hooks import attribute_label

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


# --- names ---

def attributes(der: bytes, name: Element) -> list[list[tuple[Element, Element]]]:
    """Each RDN of a Name as (type OID, value) pairs."""
    return [[_pair(der, atv) for atv in inside(der, rdn)] for rdn in inside(der, name)]


def _pair(der: bytes, attribute: Element) -> tuple[Element, Element]:
    oid, value = inside(der, attribute)  # AttributeTypeAndValue: exactly these two
    return oid, value


class Name(NamedTuple):
    rfc4514: str
    cn: str | None
    rdns: tuple[frozenset[tuple[str, str]], ...]  # (dotted OID, value): equal as x509.Name is
    # Walked strictly (_simple_name): no reason for cryptography to refuse a certificate,
    # once its values are blanked (certs.py).
    simple: bool

    def facts(self) -> dict[str, object]:  # a new dict each time: callers may change theirs
        return {"rfc4514": self.rfc4514, "cn": self.cn}


def decode_name(der: bytes) -> Name:
    """A Name, from its DER element. Issuers repeat (every leaf of a CA has the same one, the
    subject of the next certificate in the chain), so names are kept, unless hostile-large."""
    return _kept_name(der) if type(der) is bytes and len(der) <= 1024 else read_name(der)


def read_name(der: bytes) -> Name:
    """What an x509.Name of the decoded values would give, without building one:
    rfc4514_string(), the first CN, and equality."""
    try:
        return _simple_name(bytes(der))
    except (NotSimple, IndexError):
        return _name(_rdns(der), simple=False)


def _simple_name(der: bytes) -> Name:
    """read_name of a name in minimal DER, one attribute of a string type per RDN, plain OIDs
    (most names): a strict walk, and a quick one. Raises NotSimple (or IndexError) for others."""
    pos, end = _element(der, 0, len(der), 0x30)
    if end != len(der):
        raise NotSimple
    texts, sets, cn = [], [], None
    while pos < end:
        rdn, pos = _element(der, pos, end, 0x31)
        attribute, attribute_end = _element(der, rdn, pos, 0x30)
        oid = _listed(der, attribute)  # a plain OID is short, so this is its element
        value = attribute + len(oid)
        tag, kind = der[value], _plain_type(oid)
        if der[value + 1] == pos - value - 2 < 0x80:  # the value, to the end, short
            value, value_end = value + 2, pos
        else:
            value, value_end = _element(der, value, pos, tag)
        if kind is None or tag not in _STRING_TAGS or attribute_end != pos or value_end != pos:
            raise NotSimple  # more than one attribute, or more than a type and a value
        text = _text(tag, der[value:pos])
        texts.append(f"{kind.label}={_escaped(text)}")
        sets.append(frozenset([(kind.dotted, text)]))
        if cn is None and kind.label == "CN":
            cn = text
    texts.reverse()
    return Name(json_safe(",".join(texts)), None if cn is None else json_safe(cn), tuple(sets),
                simple=True)


def _name(rdns: list[list[tuple[_AttributeType, str]]], *, simple: bool) -> Name:
    rfc4514 = ",".join(["+".join([f"{kind.label}={_escaped(value)}" for kind, value in rdn])
                        for rdn in reversed(rdns)])
    cn = next((value for rdn in rdns for kind, value in rdn if kind.label == "CN"), None)
    sets = tuple([frozenset([(kind.dotted, value) for kind, value in rdn]) for rdn in rdns])
    return Name(json_safe(rfc4514), None if cn is None else json_safe(cn), sets, simple)


def _rdns(der: bytes) -> list[list[tuple[_AttributeType, str]]]:
    """The attributes of any name the lenient walk can read."""
    rdns = []
    for pairs in attributes(der, inside(der, (0, 0, 0, len(der)))[0]):
        if pairs:  # x509.Name holds no empty RDN
            rdn = [(_attribute_type(bytes(der[oid[2]:oid[3]])),  # bytes: a bytearray has no hash
                    _text(value[0], der[value[2]:value[3]])) for oid, value in pairs]
            if len({(kind.dotted, value) for kind, value in rdn}) != len(rdn):
                raise ValueError("duplicate attributes in an RDN")  # x509 refuses them too
            rdns.append(rdn)
    return rdns


_kept_name = functools.lru_cache(maxsize=1024)(read_name)  # at most 5 MB


_STRING_TAGS = frozenset({0x0C, 0x13, 0x14, 0x16, 0x1C, 0x1E})  # UTF8 ... BMPString


class _AttributeType(NamedTuple):
    dotted: str
    label: str  # in RFC 4514 strings: "CN", "O", ... or the dotted OID


# cryptography's x509.name._NAMEOID_TO_NAME: the types RFC 4514 strings name by label.
_LABELS = {bytes.fromhex(oid): label for oid, label in [
    ("550403", "CN"), ("550407", "L"), ("550408", "ST"), ("55040a", "O"), ("55040b", "OU"),
    ("550406", "C"), ("550409", "STREET"), ("0992268993f22c640119", "DC"),
    ("0992268993f22c640101", "UID")]}


@functools.lru_cache(maxsize=256)  # a few types recur; bounded against hostile ones
def _attribute_type(oid: bytes) -> _AttributeType:
    if _plain_oid(oid):
        dotted = dotted_oid(oid)
        return _AttributeType(dotted, _LABELS.get(oid, dotted))
    # An odd encoding (a padded arc, a huge one): cryptography's ObjectIdentifier decides
    # whether it is an OID at all, so the name fails or not as an x509.Name would.
    from cryptography import x509

    identifier = x509.ObjectIdentifier(dotted_oid(oid))
    return _AttributeType(identifier.dotted_string, attribute_label(identifier))


# An arc that starts with a padding byte 0x80, or one of 10 bytes or more (over 63 bits).
_ODD_ARC = re.compile(rb"(?:^|[\x00-\x7f])\x80|[\x80-\xff]{9}")


def _plain_oid(oid: bytes) -> bool:
    """Whether these OID contents are minimal and short: an OID that cryptography (which
    refuses padded arcs, huge ones and over 63 bytes) takes, and writes back as it is."""
    return 0 < len(oid) <= 32 and oid[-1] < 0x80 and _ODD_ARC.search(oid) is None


@functools.lru_cache(maxsize=256)  # a few recur; bounded against hostile ones
def _plain_type(oid: bytes) -> _AttributeType | None:
    """The attribute type of a whole OID element if the OID is plain, else None (extension
    OIDs are checked with it too)."""
    contents = oid[2:]
    if oid[0] != 0x06 or oid[1] != len(contents) or not _plain_oid(contents):
        return None
    return _attribute_type(contents)


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


# RFC 4514, 2.4, as cryptography's x509.name._escape_dn_value writes a value.
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "+": "\\+", ",": "\\,", ";": "\\;",
                          "<": "\\<", ">": "\\>", "\0": "\\00"})
_ESCAPED = re.compile('[\\\\"+,;<>\0]')  # what _ESCAPES maps: most values have none


def _escaped(value: str) -> str:
    if not value:
        return ""
    if _ESCAPED.search(value):
        value = value.translate(_ESCAPES)
    if value[0] == "#" or (value[0] == " " and len(value) > 1):
        value = "\\" + value
    if value[-1] == " ":
        value = value[:-1] + "\\ "
    return value


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


# --- the strict walk ---

class NotSimple(ValueError):
    """Not a certificate the strict walk vouches for: ask cryptography."""


class Simple(NamedTuple):
    """A certificate that walked strictly; names are left to decode_name, the key, SAN and
    basicConstraints to public_key, subject_alt_names and is_ca (each may still refuse)."""

    serial: bytes  # the INTEGER's contents
    issuer: bytes  # the whole Name element
    subject: bytes
    not_before: str  # "YYYY-MM-DDTHH:MM:SSZ"
    not_after: str
    expires: datetime  # not_after, in UTC
    spki: bytes  # the whole SubjectPublicKeyInfo element
    key_algorithm: str  # a value of _KEY_ALGORITHMS
    public_key: bytes  # the BIT STRING's bits
    signature_algorithm: str  # as cryptography names it
    extensions: dict[bytes, bytes]  # extnID element -> extnValue contents


SAN_OID, BASIC_CONSTRAINTS_OID = b"\x06\x03\x55\x1d\x11", b"\x06\x03\x55\x1d\x13"

# The AlgorithmIdentifiers accepted, whole, with the names cryptography gives them
# (hooks.oid_name); parameters as RFC 3279, 5758 and 8410 write them.
_SIGNATURE_ALGORITHMS = {bytes.fromhex(algorithm): name for algorithm, name in [
    ("300d06092a864886f70d0101040500", "md5WithRSAEncryption"),
    ("300d06092a864886f70d0101050500", "sha1WithRSAEncryption"),
    ("300d06092a864886f70d01010e0500", "sha224WithRSAEncryption"),
    ("300d06092a864886f70d01010b0500", "sha256WithRSAEncryption"),
    ("300d06092a864886f70d01010c0500", "sha384WithRSAEncryption"),
    ("300d06092a864886f70d01010d0500", "sha512WithRSAEncryption"),
    ("300906072a8648ce3d0401", "ecdsa-with-SHA1"),
    ("300a06082a8648ce3d040301", "ecdsa-with-SHA224"),
    ("300a06082a8648ce3d040302", "ecdsa-with-SHA256"),
    ("300a06082a8648ce3d040303", "ecdsa-with-SHA384"),
    ("300a06082a8648ce3d040304", "ecdsa-with-SHA512"),
    ("300906072a8648ce380403", "dsa-with-sha1"),
    ("300b0609608648016503040301", "dsa-with-sha224"),
    ("300b0609608648016503040302", "dsa-with-sha256"),
    ("300506032b6570", "ed25519"),
    ("300506032b6571", "ed448"),
]}
_KEY_ALGORITHMS = {bytes.fromhex(algorithm): name for algorithm, name in [
    ("300d06092a864886f70d0101010500", "rsa"),
    ("301306072a8648ce3d020106082a8648ce3d030107", "secp256r1"),
    ("301006072a8648ce3d020106052b81040022", "secp384r1"),
    ("301006072a8648ce3d020106052b81040023", "secp521r1"),
    ("300506032b6570", "ed25519"),
    ("300506032b6571", "ed448"),
    ("300506032b656e", "x25519"),
]}


def simple_certificate(der: bytes) -> Simple:
    """The parts of a certificate in the plain shape real ones have: minimal DER, version 3
    (or 1 without extensions), no unique IDs, listed algorithms (the same inside and out),
    plain times, extensions with unique plain OIDs and no explicit `critical` FALSE (which
    DER forbids and cryptography refuses)."""
    start, end = _element(der, 0, len(der), 0x30)
    tbs, tbs_end = _element(der, start, end, 0x30)
    algorithm = _listed(der, tbs_end)
    signature_algorithm = _SIGNATURE_ALGORITHMS.get(algorithm)
    algorithm_end = tbs_end + len(algorithm)
    if signature_algorithm is None or end != len(der) or _bits(der, algorithm_end, end)[1] != end:
        raise NotSimple
    v3 = der[tbs:tbs + 5] == b"\xa0\x03\x02\x01\x02"
    serial, pos = _element(der, tbs + 5 if v3 else tbs, tbs_end, 0x02)
    issuer = pos + len(algorithm)
    if not _minimal_integer(der[serial:pos]) or der[pos:issuer] != algorithm:
        raise NotSimple  # also an explicit version other than 3: it is no INTEGER
    validity = _element(der, issuer, tbs_end, 0x30)[1]
    subject = _element(der, validity, tbs_end, 0x30)[1]
    times = _VALIDITY.match(der, validity, subject)
    if times is None or times.end() != subject:
        raise NotSimple
    not_before, _ = _time(times[1] or times[2])
    not_after, expires = _time(times[3] or times[4])
    spki = _element(der, subject, tbs_end, 0x30)[1]
    spki_start, spki_end = _element(der, spki, tbs_end, 0x30)
    key_algorithm = _listed(der, spki_start)
    key, key_end = _bits(der, spki_start + len(key_algorithm), spki_end)
    if key_end != spki_end or key_algorithm not in _KEY_ALGORITHMS or (
            spki_end < tbs_end and not v3):
        raise NotSimple
    return Simple(der[serial:pos], der[issuer:validity], der[subject:spki], not_before,
                  not_after, expires, der[spki:spki_end], _KEY_ALGORITHMS[key_algorithm],
                  der[key:key_end], signature_algorithm,
                  _extensions(der, spki_end, tbs_end) if spki_end < tbs_end else {})


def _listed(der: bytes, pos: int) -> bytes:
    """The element at pos if its length is in the short form, as those of OIDs and
    AlgorithmIdentifiers are; else a slice that no table and no plain OID matches."""
    return der[pos:pos + 2 + der[pos + 1]]


def _element(der: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    """Where the contents of the element at pos start and end; it must be a `tag`, in
    minimal DER, and end within `end`."""
    length, start = der[pos + 1], pos + 2
    if length & 0x80:
        size = length & 0x7F
        length, start = int.from_bytes(der[start:start + size]), start + size
        if not 0 < size <= 3 or length < 0x80 or not length >> 8 * size - 8:
            raise NotSimple  # indefinite, over 16 MB, or not the shortest form
    if der[pos] != tag or start + length > end:
        raise NotSimple
    return start, start + length


def _bits(der: bytes, pos: int, end: int) -> tuple[int, int]:
    """Where the bits of the BIT STRING at pos start and end; it must hold whole bytes."""
    start, stop = _element(der, pos, end, 0x03)
    if start == stop or der[start]:  # the count of unused bits in the last byte
        raise NotSimple
    return start + 1, stop


def _minimal_integer(contents: bytes) -> bool:
    if len(contents) < 2:
        return len(contents) == 1
    return (contents[0], contents[1] & 0x80) not in ((0, 0), (0xFF, 0x80))


# Validity: two times, each a UTCTime or a GeneralizedTime of whole seconds in UTC.
_VALIDITY = re.compile(rb"\x30[\x1e\x20\x22]"
                       rb"(?:\x17\x0d(\d{12})|\x18\x0f(\d{14}))Z(?:\x17\x0d(\d{12})|\x18\x0f(\d{14}))Z")


def _time(digits: bytes) -> tuple[str, datetime]:
    """ISO text and moment of a UTCTime's digits (YYMMDDHHMMSS) or a GeneralizedTime's."""
    text = digits.decode()
    if len(text) == 12:
        text = ("20" if text < "50" else "19") + text
    # The hour is checked here as well: later Pythons may read 24:00 as the next midnight.
    if text[8:10] > "23":
        raise NotSimple
    iso = f"{text[:4]}-{text[4:6]}-{text[6:8]}T{text[8:10]}:{text[10:12]}:{text[12:]}Z"
    try:
        return iso, datetime.fromisoformat(iso)
    except ValueError:  # day 31 in April, a leap second, year 0, ...
        raise NotSimple from None


def _extensions(der: bytes, pos: int, end: int) -> dict[bytes, bytes]:
    start, stop = _element(der, pos, end, 0xA3)
    pos, stop = _element(der, start, stop, 0x30)
    if stop != end:
        raise NotSimple
    found = {}
    while pos < stop:
        start, extension_end = _element(der, pos, stop, 0x30)
        oid = _listed(der, start)  # a plain OID is short, so this is its element
        pos = start + len(oid)
        if der[pos] == 0x01:  # critical: only TRUE may be written
            if der[pos:pos + 3] != b"\x01\x01\xff":
                raise NotSimple
            pos += 3
        if der[pos] == 0x04 and der[pos + 1] == extension_end - pos - 2 < 0x80:  # most are
            value, pos = pos + 2, extension_end
        else:
            value, pos = _element(der, pos, extension_end, 0x04)
        if pos != extension_end or oid in found or _plain_type(oid) is None:
            raise NotSimple
        found[oid] = der[value:pos]
    # cryptography refuses duplicates, and certs.py isolates at most 128 extensions
    if not 0 < len(found) < 128:
        raise NotSimple
    return found


_GENERAL_NAMES = {0x81: "email", 0x82: "dns", 0x86: "uri", 0x87: "ip"}


def subject_alt_names(value: bytes) -> dict[str, list[str]]:
    """A SAN extension's names: rfc822Name, dNSName and URI in ASCII, IPv4 or IPv6
    addresses; any other name (all of which cryptography turns into objects we skip, or
    refuses) makes it NotSimple."""
    start, end = _element(value, 0, len(value), 0x30)
    if start == end or end != len(value):
        raise NotSimple
    found: dict[str, list[str]] = {"dns": [], "ip": [], "email": [], "uri": []}
    while start < end:
        tag = value[start]
        kind = _GENERAL_NAMES.get(tag)
        if kind is None:
            raise NotSimple
        start, stop = _element(value, start, end, tag)
        data = value[start:stop]
        if kind == "ip":
            found[kind].append(_address(data))
        elif data.isascii():
            found[kind].append(data.decode("ascii"))
        else:
            raise NotSimple
        start = stop
    return found


def _address(data: bytes) -> str:
    """str(ipaddress.ip_address(data)), as cryptography's IPAddress holds it."""
    if len(data) == 4:
        return "%d.%d.%d.%d" % tuple(data)  # noqa: UP031 - several times quicker
    if len(data) == 16:
        return str(ipaddress.IPv6Address(data))
    raise NotSimple  # a network (8 or 32 bytes) or nothing cryptography reads


def is_ca(value: bytes) -> bool:
    """basicConstraints' cA, from the three encodings in use; cryptography refuses others
    (an explicit FALSE) or turns them into errors (a path length without cA)."""
    if value == b"\x30\x00":
        return False
    if value == b"\x30\x03\x01\x01\xff" or (
            value[:7] == b"\x30\x06\x01\x01\xff\x02\x01" and len(value) == 8 and value[7] < 0x80):
        return True
    raise NotSimple


# The NIST curves, all with a = -3: (p, b, bytes of a coordinate, key size).
_CURVES = {
    "secp256r1": (2**256 - 2**224 + 2**192 + 2**96 - 1, int(
        "5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b", 16), 32, 256),
    "secp384r1": (2**384 - 2**128 - 2**96 + 2**32 - 1, int(
        "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875a"
        "c656398d8a2ed19d2a85c8edd3ec2aef", 16), 48, 384),
    "secp521r1": (2**521 - 1, int(
        "51953eb9618e1c9a1f929a21a0b68540eea2da725b99b315f3b8b489918ef109"
        "e156193951ec7e937b1652c0bd3bb1bf073573df883d2c34f1ef451fd46b503f00", 16), 66, 521),
}
_RAW_KEYS = {"ed25519": (32, 256), "ed448": (57, 456), "x25519": (32, 256)}  # bytes, bits


def public_key(algorithm: str, bits: bytes) -> tuple[str, int, str | None]:
    """(type, bits, curve) of a key cryptography would load: an RSA modulus and exponent in
    minimal DER, an uncompressed point on its curve (OpenSSL checks that), or raw bytes of
    the right length (OpenSSL checks no more)."""
    if algorithm == "rsa":
        return "rsa", _rsa_modulus(bits).bit_length(), None
    if algorithm in _RAW_KEYS:
        size, key_bits = _RAW_KEYS[algorithm]
        if len(bits) != size:
            raise NotSimple
        return algorithm, key_bits, None
    p, b, size, key_bits = _CURVES[algorithm]
    if len(bits) != 1 + 2 * size or bits[0] != 4:  # compressed points would need a sqrt
        raise NotSimple
    x, y = int.from_bytes(bits[1:1 + size]), int.from_bytes(bits[1 + size:])
    if x >= p or y >= p or (y * y - x * x * x + 3 * x - b) % p:
        raise NotSimple
    return "ec", key_bits, algorithm


def _rsa_modulus(bits: bytes) -> int:
    start, end = _element(bits, 0, len(bits), 0x30)
    n_start, n_end = _element(bits, start, end, 0x02)
    e_start, e_end = _element(bits, n_end, end, 0x02)
    n, e = bits[n_start:n_end], bits[e_start:e_end]
    if end != len(bits) or e_end != end or not (_minimal_integer(n) and _minimal_integer(e)):
        raise NotSimple
    modulus, exponent = int.from_bytes(n, signed=True), int.from_bytes(e, signed=True)
    # cryptography takes any non-negative numbers; these are surely taken.
    if not 512 <= modulus.bit_length() <= 16384 or modulus < 0 or exponent < 3 or not exponent & 1:
        raise NotSimple
    return modulus
