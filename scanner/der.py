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
IndexError) and certs.py asks cryptography instead. It runs once per scanned target, and
its cost is mostly steps of the interpreter, so it takes few: it walks positions, not
slices; reads the usual public keys and validities whole, each with one regex; reads short
elements inline; and keeps (in bounded caches) what repeats across certificates: names'
attributes and extensions, most of which are the same in every leaf of a CA.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import struct
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
    if contents and 0 < contents[0] < 0x80:  # positive, and so short as can be: most
        return contents.hex()
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
    end = len(der)
    pos = _whole(der, 0, 0x30)
    texts, sets, cn = [], [], None
    while pos < end:
        rdn_end = pos + 2 + der[pos + 1]
        if der[pos + 1] < 0x80 and rdn_end <= end:  # short, as most: small enough to keep
            text, attribute, value = _kept_rdn(der[pos:rdn_end])
        else:
            rdn_end = _element(der, pos, end, 0x31)[1]
            text, attribute, value = _rdn(der[pos:rdn_end])
        texts.append(text)
        sets.append(attribute)
        if cn is None and text.startswith("CN="):
            cn = value
        pos = rdn_end
    texts.reverse()
    rfc4514 = ",".join(texts)
    return _new_name((rfc4514 if rfc4514.isascii() else json_safe(rfc4514),
                      cn if cn is None or cn.isascii() else json_safe(cn), tuple(sets), True))


def _rdn(der: bytes) -> tuple[str, frozenset[tuple[str, str]], str]:
    """A whole RDN element of one attribute, a plain OID and a string in minimal DER: its
    RFC 4514 text ("CN=..."), its set of (dotted OID, value), and its value."""
    # Most are short throughout: SET { SEQUENCE { OID, string } } as
    # 31 n+2 30 n 06 k <OID> tag m <string>, the string to the end.
    value, end = 6 + der[5], len(der)
    if der[0] == 0x31 and der[2] == 0x30 and der[1] == end - 2 and (
            der[3] == end - 4 < 0x7E and der[value + 1] == end - value - 2):
        oid, start = 4, value + 2
    else:
        rdn, end = _element(der, 0, end, 0x31)
        oid, attribute_end = _element(der, rdn, end, 0x30)
        value = oid + 2 + der[oid + 1]  # a plain OID is short, so this is past it
        start, value_end = _element(der, value, end, der[value])
        if attribute_end != end or value_end != end or end != len(der):
            raise NotSimple  # more than one attribute, or more than a type and a value
    tag, kind = der[value], _plain_type(der[oid:value])
    if kind is None or tag not in _STRING_TAGS:
        raise NotSimple
    text = _text(tag, der[start:end])
    return f"{kind.label}={_escaped(text)}", frozenset([(kind.dotted, text)]), text


# Names' attributes repeat across leaves (C, ST, O, ...), as whole names of issuers do.
_kept_rdn = functools.lru_cache(maxsize=1024)(_rdn)  # short ones only: at most 0.3 MB
# Name(...) without the Python-level __new__ of a NamedTuple, which costs more than the rest.
_new_name = functools.partial(tuple.__new__, Name)


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


# The SubjectPublicKeyInfo elements of the usual keys, whole, as one regex with a group for
# the key bits in each alternative (_public_key_info reads any other key step by step): the
# usual RSA keys (_RSA_SIZES, the exponent 65537), uncompressed points on the NIST curves,
# and the raw keys (_RAW_KEYS). And the usual RSA keys' bits, for public_key.
_RSA_SIZES = (2048, 3072, 4096)


def _head(tag: int, size: int) -> bytes:
    """The tag and length of an element with `size` bytes of contents, in DER."""
    if size < 0x80:
        return bytes([tag, size])
    count = (size.bit_length() + 7) // 8
    return bytes([tag, 0x80 | count]) + size.to_bytes(count)


def _rsa_key(bits: int) -> tuple[bytes, int]:
    """A regex of the RSAPublicKey DER of a modulus of `bits` bits and the exponent 65537,
    and how long that DER is."""
    size = bits // 8
    modulus = _head(0x02, size + 1) + b"\x00"  # the top bit is set: a 0 byte, to be positive
    contents = len(modulus) + size + 5
    return (re.escape(_head(0x30, contents) + modulus) + b"[\x80-\xff]" + b".{%d}" % (size - 1)
            + re.escape(b"\x02\x03\x01\x00\x01"), len(_head(0x30, contents)) + contents)


def _key_info(algorithm: bytes, size: int) -> bytes:
    """A regex of a whole SubjectPublicKeyInfo of this AlgorithmIdentifier and `size` bytes
    of key bits, the key bits a group."""
    bits = _head(0x03, size + 1) + b"\x00"  # no unused bits
    return re.escape(_head(0x30, len(algorithm) + len(bits) + size) + algorithm + bits) + (
        b"(.{%d})" % size)


_USUAL_RSA_KEYS = re.compile(b"|".join(b"(%s)" % _rsa_key(bits)[0] for bits in _RSA_SIZES),
                             re.DOTALL)
_USUAL_KEY_SIZES = {"rsa": [_rsa_key(bits)[1] for bits in _RSA_SIZES],
                    "secp256r1": [65], "secp384r1": [97], "secp521r1": [133],
                    "ed25519": [32], "ed448": [57], "x25519": [32]}  # bytes of the key bits
_USUAL_KEY_ALGORITHMS = [(name, algorithm, size) for algorithm, name in _KEY_ALGORITHMS.items()
                         for size in _USUAL_KEY_SIZES[name]]  # group 1, 2, ...
_USUAL_KEYS = re.compile(b"|".join(_key_info(algorithm, size)
                                   for _, algorithm, size in _USUAL_KEY_ALGORITHMS), re.DOTALL)


def simple_certificate(der: bytes) -> Simple:
    """The parts of a certificate in the plain shape real ones have: minimal DER, version 3
    (or 1 without extensions), no unique IDs, listed algorithms (the same inside and out),
    plain times, extensions with unique plain OIDs and no explicit `critical` FALSE (which
    DER forbids and cryptography refuses).

    Written for few steps of the interpreter (see the module's docstring): what is fixed is
    compared whole, and only the parts returned are cut out."""
    start, end = _element(der, 0, len(der), 0x30)
    tbs, tbs_end = _element(der, start, end, 0x30)
    algorithm = der[tbs_end:tbs_end + 2 + der[tbs_end + 1]]  # the element, if listed: short
    signature_algorithm = _SIGNATURE_ALGORITHMS.get(algorithm)
    start, stop = _element(der, tbs_end + len(algorithm), end, 0x03)  # the signature's bits
    if signature_algorithm is None or end != len(der) or stop != end or (
            start == stop or der[start]):  # whole bytes: no unused bits in the last byte
        raise NotSimple
    v3 = der.startswith(b"\xa0\x03\x02\x01\x02", tbs)
    start = tbs + 5 if v3 else tbs
    pos = start + 2 + der[start + 1]  # serials are short (RFC 5280: 20 bytes at most)
    serial = der[start + 2:pos]
    if der[start] != 0x02 or der[start + 1] >= 0x80 or pos > tbs_end or not (
            0 < serial[0] < 0x80 or _minimal_integer(serial)):  # most are positive
        raise NotSimple  # also an explicit version other than 3: it is no INTEGER
    if not der.startswith(algorithm, pos):
        raise NotSimple
    issuer = pos + len(algorithm)
    validity = _element(der, issuer, tbs_end, 0x30)[1]
    not_before, not_after, expires, subject = _validity(der, validity, tbs_end)
    spki = _element(der, subject, tbs_end, 0x30)[1]
    usual = _USUAL_KEYS.match(der, spki, tbs_end)  # most keys, whole, in one step
    if usual and usual.lastindex:  # its group: the key bits
        key_algorithm, key = _USUAL_KEY_ALGORITHMS[usual.lastindex - 1][0], usual[usual.lastindex]
        spki_end = usual.end()
    else:
        key_algorithm, key, spki_end = _public_key_info(der, spki, tbs_end)
    if spki_end < tbs_end and not v3:
        raise NotSimple
    return _new_simple((serial, der[issuer:validity], der[subject:spki], not_before,
                        not_after, expires, der[spki:spki_end], key_algorithm, key,
                        signature_algorithm,
                        _extensions(der, spki_end, tbs_end) if spki_end < tbs_end else {}))


# Simple(...) without the Python-level __new__ of a NamedTuple, as _new_name.
_new_simple = functools.partial(tuple.__new__, Simple)


def _public_key_info(der: bytes, pos: int, end: int) -> tuple[str, bytes, int]:
    """The algorithm (a value of _KEY_ALGORITHMS) and bits of the SubjectPublicKeyInfo at
    pos, and where it ends."""
    start, spki_end = _element(der, pos, end, 0x30)
    algorithm = der[start:start + 2 + der[start + 1]]  # the element, if listed: short
    key, key_end = _bits(der, start + len(algorithm), spki_end)
    if key_end != spki_end or algorithm not in _KEY_ALGORITHMS:
        raise NotSimple
    return _KEY_ALGORITHMS[algorithm], der[key:key_end], spki_end


def _whole(der: bytes, pos: int, tag: int) -> int:
    """Where the contents of the element at pos start; it must be a `tag`, in minimal DER,
    and run to the end of `der`."""
    end = len(der)
    if der[pos] == tag and der[pos + 1] == end - pos - 2 < 0x80:  # short, as most
        return pos + 2
    start, stop = _element(der, pos, end, tag)
    if stop != end:
        raise NotSimple
    return start


def _element(der: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    """Where the contents of the element at pos start and end; it must be a `tag`, in
    minimal DER, and end within `end`."""
    length = der[pos + 1]
    if length < 0x80:
        start = pos + 2
    elif length == 0x82:  # long form, 2 length bytes: 256 bytes to 64 kB
        start, length = pos + 4, der[pos + 2] << 8 | der[pos + 3]
        if length < 0x100:
            raise NotSimple  # not the shortest form
    elif length == 0x81:
        start, length = pos + 3, der[pos + 2]
        if length < 0x80:
            raise NotSimple
    elif length == 0x83:
        start, length = pos + 5, int.from_bytes(der[pos + 2:pos + 5])
        if length < 0x10000:
            raise NotSimple
    else:
        raise NotSimple  # indefinite, or over 16 MB
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


# Validity: two times, each a UTCTime or a GeneralizedTime of whole seconds in UTC, and an
# hour from 00 to 23 (later Pythons may read 24:00 as the next midnight).
_TIME = rb"(\x17\x0d\d{6}(?:[01]\d|2[0-3])\d{4}|\x18\x0f\d{8}(?:[01]\d|2[0-3])\d{4})Z"
_VALIDITY = re.compile(rb"\x30[\x1e\x20\x22]" + _TIME + _TIME)
# The digits of a Validity of two UTCTimes, YYMMDDHHMMSS each, and their ISO texts when
# both years are from 2000 to 2049; and the digits of one time, from its tag on.
_UTC_VALIDITY = struct.Struct("4x2s2s2s2s2s2s3x2s2s2s2s2s2s").unpack_from
_UTC_ISO = b"20%s-%s-%sT%s:%s:%sZ20%s-%s-%sT%s:%s:%sZ"
_UTC_TIME = struct.Struct("2x2s2s2s2s2s2s").unpack
_GENERALIZED_TIME = struct.Struct("2x4s2s2s2s2s2s").unpack


def _validity(der: bytes, pos: int, end: int) -> tuple[str, str, datetime, int]:
    """The Validity at pos: ISO texts ("YYYY-MM-DDTHH:MM:SSZ") of notBefore and notAfter,
    notAfter's moment and where the Validity ends."""
    times = _VALIDITY.match(der, pos, end)
    if times is None or der[pos + 1] != times.end() - pos - 2:  # just the two times
        raise NotSimple
    if der[pos + 1] == 0x1E and der[pos + 4] < 0x35 and der[pos + 19] < 0x35:  # most
        both = (_UTC_ISO % _UTC_VALIDITY(der, pos)).decode()
        not_before, not_after = both[:20], both[20:]
    else:
        not_before, not_after = _time(times[1]), _time(times[2])
    try:
        datetime.fromisoformat(not_before)  # day 31 in April, a leap second, year 0, ...
        return not_before, not_after, datetime.fromisoformat(not_after), times.end()
    except ValueError:
        raise NotSimple from None


def _time(element: bytes) -> str:
    """The ISO text of a UTCTime (YYMMDDHHMMSS, 1950 to 2049) or a GeneralizedTime
    (YYYYMMDDHHMMSS), from _VALIDITY's group: tag, length and digits."""
    if element[0] == 0x18:
        return (b"%s-%s-%sT%s:%s:%sZ" % _GENERALIZED_TIME(element)).decode()
    return ((b"20%s-%s-%sT%s:%s:%sZ" if element[2] < 0x35 else b"19%s-%s-%sT%s:%s:%sZ")
            % _UTC_TIME(element)).decode()


def _extensions(der: bytes, pos: int, end: int) -> dict[bytes, bytes]:
    start, stop = _element(der, pos, end, 0xA3)
    pos, stop = _element(der, start, stop, 0x30)
    if stop != end:
        raise NotSimple
    found = {}
    while pos < stop:
        extension_end = pos + 2 + der[pos + 1]
        if der[pos + 1] < 0x80 and extension_end <= stop:  # short, as most
            oid, value = _kept_extension(der[pos:extension_end])
        else:
            extension_end = _element(der, pos, stop, 0x30)[1]
            element = der[pos:extension_end]
            oid, value = (_kept_extension if len(element) <= 512 else _extension)(element)
        if oid in found:
            raise NotSimple
        found[oid] = value
        pos = extension_end
    # cryptography refuses duplicates, and certs.py isolates at most 128 extensions
    if not 0 < len(found) < 128:
        raise NotSimple
    return found


def _extension(element: bytes) -> tuple[bytes, bytes]:
    """The extnID element and the extnValue contents of a whole Extension element, which
    must be a SEQUENCE of a plain OID, no `critical` or TRUE, and an OCTET STRING."""
    end = len(element)
    pos = _whole(element, 0, 0x30)
    value = pos + 2 + element[pos + 1]  # a plain OID is short, so this is past it
    oid = element[pos:value]
    if element[value] == 0x01:  # critical: only TRUE may be written
        if not element.startswith(b"\x01\x01\xff", value):
            raise NotSimple
        value += 3
    start = _whole(element, value, 0x04)
    if _plain_type(oid) is None:
        raise NotSimple
    return oid, element[start:end]


# Most extensions of a leaf are the same in every leaf of its CA (all but the key
# identifier, SAN and SCTs, say): keep what they hold. Exceptions are not kept.
_kept_extension = functools.lru_cache(maxsize=1024)(_extension)  # at most 0.5 MB


def subject_alt_names(value: bytes) -> dict[str, list[str]]:
    """A SAN extension's names: rfc822Name, dNSName and URI in ASCII, IPv4 or IPv6
    addresses; any other name (all of which cryptography turns into objects we skip, or
    refuses) makes it NotSimple."""
    end = len(value)
    start = _whole(value, 0, 0x30)
    if start == end:
        raise NotSimple
    dns: list[str] = []
    ip: list[str] = []
    email: list[str] = []
    uri: list[str] = []
    while start < end:
        tag, stop = value[start], start + 2 + value[start + 1]
        if value[start + 1] < 0x80 and stop <= end:  # most names are short
            start += 2
        else:
            start, stop = _element(value, start, end, tag)  # the tag is checked below
        data = value[start:stop]
        if tag == 0x82 and data.isascii():
            dns.append(data.decode("ascii"))
        elif tag == 0x87:
            ip.append(_address(data))
        elif tag in (0x81, 0x86) and data.isascii():
            (email if tag == 0x81 else uri).append(data.decode("ascii"))
        else:
            raise NotSimple
        start = stop
    return {"dns": dns, "ip": ip, "email": email, "uri": uri}


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
        usual = _USUAL_RSA_KEYS.fullmatch(bits)  # most, in one step
        if usual and usual.lastindex:
            return "rsa", _RSA_SIZES[usual.lastindex - 1], None
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
    if x >= p or y >= p or (y * y - (x * x - 3) * x - b) % p:
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
