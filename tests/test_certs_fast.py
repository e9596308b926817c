"""The fast path of scanner.certs (a strict DER walk) against its slow path (cryptography).

The fast path must give exactly what the slow path gives, or leave the certificate to it.
So every certificate the suite knows how to make, odd ones included, x509-limbo's and
public CAs' roots, and a few thousand byte-level mutations of some of them, are read both
ways and compared key for key. The tables the strict walk trusts (algorithms, curves, name
labels, escaping) are checked against cryptography itself, and what it reads in one step
(the usual keys, validities) or keeps across certificates (names' attributes, extensions)
against what it reads step by step.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import random
import re
import ssl
import string
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import pki
from pki import DAY, NOW, as_version_1, mint, patch, patch_nth, private_key, resign
from scanner import certs, der

Maker = Callable[[], bytes]


def both_ways(certificate: bytes) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """What the scanner reports (the fast path, or the slow one where it bails) and what the
    slow path alone reports: the facts of a leaf, and the entry of a chain certificate."""
    return (reported_facts(certificate),
            [certs._slow_facts(certificate, certs._FACT_KEYS, NOW),
             certs._slow_facts(certificate, certs._CHAIN_KEYS, None)])


def reported_facts(certificate: bytes) -> list[dict[str, object]]:
    return [certs.certificate_facts(certificate, now=NOW),
            certs._facts(certificate, certs._CHAIN_KEYS, None)]


def takes_fast_path(certificate: bytes) -> bool:
    try:
        certs._fast_facts(certificate, certs._FACT_KEYS, NOW)
    except Exception:
        return False
    return True


def tlv(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    size = (len(content).bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + len(content).to_bytes(size) + content


def rebuilt(certificate: bytes, *, signature: bytes | None = None,
            spki: bytes | None = None) -> bytes:
    """The certificate with another signature AlgorithmIdentifier (inside and out) or
    SubjectPublicKeyInfo, its lengths written again; the signature no longer verifies."""
    outer = der.inside(certificate, (0, 0, 0, len(certificate)))[0]
    tbs, algorithm, bits = der.inside(certificate, outer)
    fields = [certificate[pos:end] for _, pos, _, end in der.inside(certificate, tbs)]
    algorithm_bytes, bits_bytes = (certificate[pos:end] for _, pos, _, end in (algorithm, bits))
    serial = 1 if fields[0][0] == 0xA0 else 0
    if signature is not None:
        fields[serial + 1] = algorithm_bytes = signature
    if spki is not None:
        fields[serial + 5] = spki
    return tlv(0x30, tlv(0x30, b"".join(fields)) + algorithm_bytes + bits_bytes)


# --- the corpus ---

def leaf(key_kind: str, issuer_kind: str = "p256", **options: object) -> bytes:
    return mint(key=private_key(key_kind), subject="leaf.example", issuer="Corpus CA",
                issuer_key=private_key(issuer_kind, "issuer"), **options)  # type: ignore[arg-type]


@functools.cache
def p521_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP521R1())


def p256_key(slot: str = "") -> ec.EllipticCurvePrivateKey:
    key = private_key("p256", slot)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def full_leaf() -> bytes:
    """As a public CA issues them: O and CN, the usual extensions, DNS and IP SANs."""
    key, issuer = p256_key(), p256_key("issuer")
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Beispiel GmbH"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "www.beispiel.de")])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corpus CA")]))
               .public_key(key.public_key()).serial_number(2**150 + 7)
               .not_valid_before(NOW - DAY).not_valid_after(NOW + 90 * DAY)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
               .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                            False, False), True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer.public_key()), False)
               .add_extension(x509.SubjectAlternativeName([
                   x509.DNSName("www.beispiel.de"), x509.DNSName("beispiel.de"),
                   x509.IPAddress(ipaddress.ip_address("2001:db8::443"))]), False))
    return builder.sign(issuer, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def hostile_cn(tag: int, content: bytes) -> bytes:
    filler = "Q" * len(content)
    certificate = mint(subject=filler, issuer="Corpus CA", san=[x509.DNSName("h.example")])
    utf8 = bytes([0x0C, len(content)]) + filler.encode()
    return resign(patch(certificate, utf8, bytes([tag, len(content)]) + content, count=1),
                  private_key("ed25519"))


def to_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def trustme_certificates() -> Iterator[tuple[str, bytes]]:
    for key_type in (trustme.KeyType.ECDSA, trustme.KeyType.RSA):
        ca = trustme.CA(key_type=key_type)
        child = ca.create_child_ca(key_type=key_type)
        issued = child.issue_cert("example.org", "192.0.2.1", "::ffff:192.0.2.1",
                                  "ops@example.org", key_type=key_type)
        yield f"trustme-{key_type.name}-root", to_der(ca.cert_pem.bytes())
        for index, pem in enumerate(issued.cert_chain_pems):
            yield f"trustme-{key_type.name}-chain{index}", to_der(pem.bytes())


GENERAL_NAMES: dict[str, list[x509.GeneralName]] = {
    "every-kind": [x509.DNSName("a.example"), x509.DNSName("*.b.example"),
                   x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
                   x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
                   x509.IPAddress(ipaddress.ip_address("::ffff:10.0.0.1")),
                   x509.RFC822Name("ops@example.org"),
                   x509.UniformResourceIdentifier("spiffe://example.org/svc")],
    "other-name": [x509.DNSName("a.example"),
                   x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"),
                                  b"\x0c\x03u@x")],
    "directory-name": [x509.DirectoryName(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "dir")]))],
    "registered-id": [x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4"))],
    "ip-network": [x509.IPAddress(ipaddress.ip_network("192.0.2.0/24"))],
    "empty-dns": [x509.DNSName("")],
    "ten-thousand": [x509.DNSName(f"host{i}.example") for i in range(10_000)],
}

NAMES: dict[str, x509.Name] = {
    "empty": x509.Name([]),
    "no-cn": x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                        x509.NameAttribute(x509.ObjectIdentifier("1.2.3.4"), "x")]),
    "multi-valued": x509.Name([x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Ops")])]),
    "escapes": x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ' #Acme, "Inc" +<x>;'),
                          x509.NameAttribute(NameOID.COMMON_NAME, "a\nb\x00c\u202ed ")]),
    "unicode": x509.Name([x509.NameAttribute(NameOID.LOCALITY_NAME, "Zürich"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "中文.example")]),
    "ev": x509.Name([x509.NameAttribute(NameOID.JURISDICTION_COUNTRY_NAME, "US"),
                     x509.NameAttribute(NameOID.BUSINESS_CATEGORY, "Private Organization"),
                     x509.NameAttribute(NameOID.SERIAL_NUMBER, "123"),
                     x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example"),
                     x509.NameAttribute(NameOID.EMAIL_ADDRESS, "a@example.org"),
                     x509.NameAttribute(NameOID.COMMON_NAME, "ev.example")]),
    "long": x509.Name([x509.NameAttribute(x509.ObjectIdentifier("1.2.3.4"), "v" * 3000)]),
}


def corpus() -> dict[str, Maker]:
    """Every certificate the suite makes, by name; odd ones included."""
    makers: dict[str, Maker] = {
        "full-leaf": full_leaf,
        "bench-like-leaf": lambda: leaf("p256", ca=False, san=[
            x509.IPAddress(ipaddress.ip_address("127.88.1.1"))]),
        "p521-leaf": lambda: mint(key=p521_key(), subject="p521", issuer="Corpus CA",
                                  issuer_key=p521_key(), digest=hashes.SHA512()),
        "p521-signs": lambda: mint(key=private_key("p256"), subject="x", issuer="P521 CA",
                                   issuer_key=p521_key()),
        "x25519-leaf": lambda: leaf("x25519", issuer_kind="ed25519"),
        "v1-root": lambda: as_version_1(mint(subject="old root"), private_key("ed25519")),
        "v1-leaf": lambda: as_version_1(mint(subject="old leaf", issuer="old root"),
                                        private_key("ed25519")),
        "negative-serial": lambda: patch(leaf("p256", serial=0x5EC7A1), b"\x02\x03\x5e\xc7\xa1",
                                         b"\x02\x03\xde\xc7\xa1", count=1),
        "serial-1": lambda: leaf("p256", serial=1),
        "serial-0x80": lambda: leaf("p256", serial=0x80),
        "serial-max": lambda: leaf("p256", serial=2**159 - 1),
        "expired": lambda: leaf("p256", not_before=NOW - 500 * DAY, not_after=NOW - 400 * DAY),
        "expires-in-a-day-and-a-half": lambda: leaf(
            "p256", not_after=NOW + DAY + dt.timedelta(hours=12)),
        "generalized-times": generalized_times,
        "before-1950": lambda: patch(generalized_times(), b"\x18\x0f20500101000000Z",
                                     b"\x18\x0f19400101000000Z", count=1),
        "year-1": lambda: patch(generalized_times(), b"\x18\x0f20500101000000Z",
                                b"\x18\x0f00010101000000Z", count=1),
        "ca-path-length": ca_with_path_length,
        "malformed-san": lambda: patch(leaf("p256", san=[x509.DNSName("bad.example")], ca=True),
                                       b"bad.example", b"b\xe4d.example", count=1),
        "utf8-san": lambda: patch(leaf("p256", san=[x509.DNSName("bad.example")], ca=True),
                                  b"bad.example", "bä.example".encode(), count=1),
        "malformed-basic-constraints": lambda: patch(
            leaf("p256", san=[x509.DNSName("ok.example")], ca=True),
            b"\x30\x03\x01\x01\xff", b"\x30\x03\x01\x01\x07", count=1),
        "duplicate-extension": lambda: patch(
            leaf("p256", san=[x509.DNSName("ok.example")], ca=True),
            b"\x06\x03\x55\x1d\x13", b"\x06\x03\x55\x1d\x11", count=1),
        "explicit-critical-false": lambda: patch(
            leaf("p256", ca=True), b"\x01\x01\xff\x04", b"\x01\x01\x00\x04", count=1),
        "explicit-ca-false": lambda: patch(
            leaf("p256", ca=True), b"\x30\x03\x01\x01\xff", b"\x30\x03\x01\x01\x00", count=1),
        # issuer and subject the same text in other string types: self-signed all the same
        "self-issued-printable-utf8": lambda: resign(patch_nth(
            mint(subject="Same Name"), b"\x0c\x09Same Name", b"\x13\x09Same Name", 0),
            private_key("ed25519")),
        # cryptography reads these, or re-reads SAN and basicConstraints alone: fast
        "unknown-critical-extension": lambda: with_extension("1.2.3.4.5", b"\x05\x00"),
        "malformed-key-usage": lambda: with_extension("2.5.29.15", b"\x05\x00"),
        # the walk's other ways for what it mostly reads in one step
        "utctime-1990s": lambda: leaf("p256", not_before=dt.datetime(1995, 5, 5, tzinfo=dt.UTC)),
        "mixed-times": lambda: leaf("p256", not_after=dt.datetime(2051, 1, 1, tzinfo=dt.UTC)),
        "long-attribute": lambda: mint(
            key=private_key("p256"), issuer="Corpus CA", issuer_key=private_key("p256", "issuer"),
            subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Long " * 40),
                               x509.NameAttribute(NameOID.COMMON_NAME, "long.example")])),
        "long-extensions": lambda: with_extensions(
            ("1.3.6.1.4.1.11129.2.4.2", b"\x04\x82\x01\x2c" + bytes(300), False),
            ("1.3.6.1.4.1.55555.1", b"\x04\x82\x02\x58" + bytes(600), False)),
        "short-rdn-long-name": lambda: mint(
            key=private_key("p256"), issuer="Corpus CA", issuer_key=private_key("p256", "issuer"),
            subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x" * 60),
                               x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "y" * 60),
                               x509.NameAttribute(NameOID.COMMON_NAME, "z.example")])),
        "garbage": lambda: random.Random(7).randbytes(2000),
        "tiny": lambda: b"\x30\x03\x02\x01\x00",
        "truncated": lambda: leaf("p256")[:-80],
        "trailing-byte": lambda: leaf("p256") + b"\x00",
    }
    for kind in ("rsa2048", "rsa1024", "p256", "p384", "ed25519", "ed448", "dsa1024"):
        makers[f"{kind}-self-signed"] = functools.partial(
            mint, key=private_key(kind), ca=True)
        makers[f"{kind}-leaf"] = functools.partial(leaf, kind, ca=False, san=[
            x509.DNSName(f"{kind}.example")])
        makers[f"{kind}-signs"] = functools.partial(
            mint, key=private_key("p256"), subject="leaf", issuer=f"{kind} CA",
            issuer_key=private_key(kind, "issuer"))
    for bits in (3072, 4096):  # the usual RSA keys, as rsa2048
        makers[f"rsa{bits}-leaf"] = functools.partial(
            lambda bits: rebuilt(leaf("p256", ca=False, san=[x509.DNSName("rsa.example")]),
                                 spki=rsa_spki(bits)), bits)
    for digest in (hashes.SHA384(), hashes.SHA512()):
        makers[f"rsa-{digest.name}"] = functools.partial(leaf, "p256", issuer_kind="rsa2048",
                                                         digest=digest)
    makers["rsa-pss"] = functools.partial(leaf, "p256", issuer_kind="rsa2048", pss=True)
    for tag, content in [(0x13, b"*.my_host"), (0x14, b"M\xfcller"), (0x1E, b"\xd8\x00\x00A\x00"),
                         (0x1C, b"\x00\x00\xd8\x00\x00\x00\x00B"), (0x0C, b"\xff\xfeok"),
                         (0x16, b"caf\xe9"), (0x1E, b"\x00M\x00\xfc"), (0x12, b"12345"),
                         (0x1A, b"visible"), (0x04, b"octets")]:
        makers[f"cn-tag-{tag:#x}-{content.hex()}"] = functools.partial(hostile_cn, tag, content)
    for label, names in GENERAL_NAMES.items():
        makers[f"san-{label}"] = functools.partial(leaf, "p256", san=names)
    for label, name in NAMES.items():
        makers[f"name-{label}"] = functools.partial(mint, key=private_key("p256"), subject=name,
                                                    issuer="Corpus CA",
                                                    issuer_key=private_key("p256", "issuer"))
        makers[f"self-issued-{label}"] = functools.partial(mint, key=private_key("ed25519"),
                                                           subject=name)
    return makers


def with_extension(oid: str, value: bytes) -> bytes:
    """A leaf with a SAN, basicConstraints and one more, critical extension, as given."""
    key, issuer = p256_key(), p256_key("issuer")
    return (x509.CertificateBuilder().subject_name(x509.Name([]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corpus CA")]))
            .public_key(key.public_key()).serial_number(10)
            .not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("x.example")]), False)
            .sign(issuer, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def rsa_numbers(bits: int) -> tuple[int, int]:
    """An RSA modulus of `bits` bits (no product of two primes: quick to make, and as good
    for reading) and the usual exponent."""
    return random.Random(bits).getrandbits(bits) | 1 << bits - 1 | 1, 65537


def rsa_spki(bits: int) -> bytes:
    return rsa.RSAPublicNumbers(*reversed(rsa_numbers(bits))).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def with_extensions(*extensions: tuple[str, bytes, bool]) -> bytes:
    """A leaf with a SAN, basicConstraints and these (OID, value, critical) extensions."""
    key, issuer = p256_key(), p256_key("issuer")
    builder = (x509.CertificateBuilder().subject_name(x509.Name([]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corpus CA")]))
               .public_key(key.public_key()).serial_number(10)
               .not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName("x.example")]), False))
    for oid, value, critical in extensions:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical)
    return builder.sign(issuer, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def generalized_times() -> bytes:
    return leaf("p256", not_before=dt.datetime(2050, 1, 1, tzinfo=dt.UTC),
                not_after=dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC))


def ca_with_path_length() -> bytes:
    key, issuer = p256_key(), p256_key("issuer")
    return (x509.CertificateBuilder().subject_name(x509.Name([]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Root")]))
            .public_key(key.public_key()).serial_number(9)
            .not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=3), True)
            .sign(issuer, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


@functools.cache
def all_certificates() -> dict[str, bytes]:
    found = {name: make() for name, make in corpus().items()}
    found.update(trustme_certificates())
    for scenario in pki.scenarios():
        found.update((f"pki-{scenario.id}-{index}", certificate)
                     for index, certificate in enumerate(scenario.chain))
    return found


def test_corpus_fast_or_slow_gives_the_slow_facts() -> None:
    for name, certificate in all_certificates().items():
        reported, slow = both_ways(certificate)
        assert reported == slow, name


@pytest.mark.parametrize("name", [
    "full-leaf", "bench-like-leaf", "p521-leaf", "x25519-leaf", "v1-leaf", "negative-serial",
    "generalized-times", "san-every-kind", "name-ev", "name-unicode", "name-escapes",
    "rsa2048-leaf", "ed448-leaf", "trustme-ECDSA-chain0", "trustme-RSA-chain0", "expired",
    "ca-path-length", "unknown-critical-extension", "malformed-key-usage",
    # cryptography refuses the name's string, and reads the rest with the names blanked
    "cn-tag-0x13-2a2e6d795f686f7374", "cn-tag-0x14-4dfc6c6c6572",
    "utctime-1990s", "mixed-times", "before-1950", "long-attribute", "long-extensions",
    "short-rdn-long-name", "rsa3072-leaf", "rsa4096-leaf", "san-ten-thousand", "serial-0x80"])
def test_plain_certificates_take_the_fast_path(name: str) -> None:
    assert takes_fast_path(all_certificates()[name])


@pytest.mark.parametrize("name", [
    "v1-root", "rsa2048-self-signed", "malformed-san", "utf8-san", "duplicate-extension",
    "san-other-name", "name-multi-valued", "rsa-pss", "garbage", "trailing-byte",
    "explicit-critical-false", "explicit-ca-false", "self-issued-printable-utf8",
    "dsa1024-leaf", "cn-tag-0x12-3132333435"])
def test_odd_certificates_take_the_slow_path(name: str) -> None:
    assert not takes_fast_path(all_certificates()[name])


def test_the_fast_path_needs_no_cryptography() -> None:
    # Importing it costs a process some 70 ms: only certificates the fast path leaves need it.
    leaf = all_certificates()["full-leaf"]
    script = ("import datetime, sys\nfrom scanner import certs\n"
              f"der = bytes.fromhex('{leaf.hex()}')\n"
              "certs.certificate_facts(der, now=datetime.datetime.now())\n"
              "assert not [m for m in sys.modules if m.startswith('cryptography')]\n")
    subprocess.run([sys.executable, "-c", script], check=True)


def test_roots_chain_entries_take_the_fast_path() -> None:
    # Self-signed is no chain fact, so roots need no signature check there.
    root = all_certificates()["trustme-ECDSA-root"]
    assert certs._fast_facts(root, certs._CHAIN_KEYS, None) == certs._slow_facts(
        root, certs._CHAIN_KEYS, None)


# --- mutations ---

def mutations(certificate: bytes, count: int, rng: random.Random) -> Iterator[bytes]:
    """Flipped, overwritten, inserted and deleted bytes, and changed lengths."""
    lengths = [pos + 1 for _, pos, start, end in elements(certificate)
               if 0 < end - start < 0x80] or [0]
    for _ in range(count):
        data = bytearray(certificate)
        pos = rng.randrange(len(data))
        match rng.randrange(6):
            case 0:
                data[pos] ^= 1 << rng.randrange(8)
            case 1:
                data[pos] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0x81, 0xFF, rng.randrange(256)))
            case 2:
                data.insert(pos, rng.randrange(256))
            case 3:
                del data[pos]
            case 4:  # a length, so that DER that still walks is tested more than garbage
                data[rng.choice(lengths)] ^= rng.choice((1, 2, 0x80))
            case _:
                for _ in range(rng.randrange(2, 5)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
        yield bytes(data)


def elements(data: bytes) -> list[der.Element]:
    """Every element of the DER, as far as it walks."""
    found, todo = [], [(0, 0, 0, len(data))]
    while todo:
        try:
            children = der.inside(data, todo.pop())
        except (ValueError, IndexError):
            continue
        found += children
        todo += [child for child in children if child[0] & 0x20]  # constructed
    return found


MUTATED = ["full-leaf", "bench-like-leaf", "trustme-RSA-chain0", "trustme-ECDSA-root",
           "san-every-kind", "name-ev", "name-unicode", "v1-leaf", "rsa2048-leaf",
           "ed25519-leaf", "ed448-leaf", "p521-leaf", "generalized-times", "ca-path-length",
           "cn-tag-0x14-4dfc6c6c6572"]


@pytest.mark.parametrize("name", MUTATED)
def test_mutations_fast_or_slow_give_the_slow_facts(name: str) -> None:
    rng = random.Random(f"certscan-{name}")  # the same mutations on every run
    fast = 0
    for mutated in mutations(all_certificates()[name], 400, rng):
        reported, slow = both_ways(mutated)
        assert reported == slow, mutated.hex()
        fast += takes_fast_path(mutated)
    assert fast >= 30  # a mutation of content bytes keeps a certificate plain


# --- what the strict walk trusts ---

def test_signature_algorithms_are_named_as_cryptography_names_them() -> None:
    base = all_certificates()["bench-like-leaf"]
    for algorithm, name in der._SIGNATURE_ALGORITHMS.items():
        oid = x509.ObjectIdentifier(der.dotted_oid(algorithm[4:4 + algorithm[3]]))
        assert name == (oid.dotted_string if oid._name == "Unknown OID" else oid._name)
        certificate = rebuilt(base, signature=algorithm)
        assert takes_fast_path(certificate), name
        reported, slow = both_ways(certificate)
        assert reported == slow and reported[0]["signature_algorithm"] == name


def spki(key: object) -> tuple[bytes, bytes]:
    """A public key's AlgorithmIdentifier and BIT STRING."""
    data = key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    algorithm, bits = der.inside(data, der.inside(data, (0, 0, 0, len(data)))[0])
    return data[algorithm[1]:algorithm[3]], data[bits[1]:bits[3]]


def test_keys_like_cryptography_reads_them() -> None:
    """Valid keys, and bit strings that are not (points off the curve, wrong lengths, odd
    RSA numbers), under every listed key algorithm."""
    base, rng = all_certificates()["bench-like-leaf"], random.Random(5)
    keys = [spki(key) for key in (
        private_key("p256").public_key(), private_key("p384").public_key(),
        p521_key().public_key(), private_key("ed25519").public_key(),
        private_key("ed448").public_key(), private_key("x25519").public_key(),
        private_key("rsa1024").public_key(), private_key("rsa2048").public_key(),
        rsa.generate_private_key(public_exponent=3, key_size=1024).public_key())]
    odd = [tlv(0x03, b"\x00" + rng.randbytes(size))
           for size in (0, 1, 32, 56, 57, 65, 97, 133, 140, 270)]
    odd += [tlv(0x03, b"\x00\x04" + rng.randbytes(size)) for size in (64, 96, 132)]
    odd += [tlv(0x03, b"\x00" + tlv(0x30, tlv(0x02, n) + tlv(0x02, e))) for n, e in [
        (bytes(128), b"\x01\x00\x01"), (b"\x80" + bytes(127), b"\x01\x00\x01"),
        (b"\x00\x80" + bytes(127), b"\x01\x00\x01"), (b"\x40" + bytes(127), b"\x00"),
        (b"\x40" + bytes(127), b"\x02"), (b"\x40" + bytes(63), b"\x03")]]
    for algorithm in der._KEY_ALGORITHMS:
        valid = [bits for key_algorithm, bits in keys if key_algorithm == algorithm]
        assert valid, algorithm.hex()
        for bits in valid + odd:
            certificate = rebuilt(base, spki=tlv(0x30, algorithm + bits))
            reported, slow = both_ways(certificate)
            assert reported == slow, (algorithm.hex(), bits.hex())
            assert takes_fast_path(certificate) or bits not in valid


def test_name_labels_are_cryptographys() -> None:
    from cryptography.x509.name import _NAMEOID_TO_NAME

    assert {der.dotted_oid(oid): label for oid, label in der._LABELS.items()} == {
        oid.dotted_string: label for oid, label in _NAMEOID_TO_NAME.items()}


@pytest.mark.parametrize("dotted", ["2.5.4.3", "2.5.4.97", "1.3.6.1.4.1.311.60.2.1.3",
                                    "2.999.1", "1.2.840.113549.1.9.1", "0.9.2342.19200300.100.1.1",
                                    "2.5.4.3.1.2.3.4.5.6.7.8.9", f"1.2.{2**62}", "1.39.1"])
def test_plain_oids_are_as_cryptography_writes_them(dotted: str) -> None:
    oid = x509.ObjectIdentifier(dotted)
    name = x509.Name([x509.NameAttribute(oid, "xx")]).public_bytes()
    (((_, _, start, end), _),), = der.attributes(name, der.inside(name, (0, 0, 0, len(name)))[0])
    contents = name[start:end]
    assert der._plain_oid(contents)
    assert der._attribute_type(contents).dotted == oid.dotted_string
    assert der._attribute_type(contents).label == x509.NameAttribute(
        oid, "xx").rfc4514_attribute_name


@pytest.mark.parametrize("contents", [b"", b"\x55\x04\x83", b"\x80\x55", b"\x55\x80\x03",
                                      b"\x2a" + b"\xff" * 10 + b"\x01", b"\x2a" * 33])
def test_odd_oids_are_not_plain(contents: bytes) -> None:
    assert not der._plain_oid(contents)


def test_escaping_is_cryptographys() -> None:
    rng = random.Random(11)
    alphabet = string.ascii_letters + ' #"+,;<>\\=\0\n\u202eü中'
    values = ["", " ", "  ", "#", " #", "a ", " a", "\\", "#a#", "a\0b"] + [
        "".join(rng.choices(alphabet, k=rng.randrange(1, 8))) for _ in range(2000)]
    for value in values:
        expected = x509.NameAttribute(NameOID.ORGANIZATION_NAME, value, _validate=False)
        assert f"O={der._escaped(value)}" == expected.rfc4514_string(), repr(value)


def test_strict_and_lenient_names_agree() -> None:
    names = {certificate[pos:end] for certificate in all_certificates().values()
             for kind, pos, _, end in elements(certificate) if kind == 0x30}
    simple = 0
    for name in names:
        try:
            strict = der._simple_name(name)
        except (der.NotSimple, IndexError):
            continue
        assert strict == der._name(der._rdns(name), simple=True), name.hex()
        simple += 1
    assert simple > 20


def test_curves_hold_their_generators() -> None:
    for curve in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()):
        key = ec.generate_private_key(curve).public_key()
        point = key.public_bytes(serialization.Encoding.X962,
                                 serialization.PublicFormat.UncompressedPoint)
        assert der.public_key(curve.name, point) == ("ec", curve.key_size, curve.name)
        with pytest.raises(der.NotSimple):
            der.public_key(curve.name, point[:-1] + bytes([point[-1] ^ 1]))


# --- the walk's one-step ways, and what it keeps ---

def validity_leaf() -> bytes:
    """A leaf valid from 2026-01-02 03:04:05 to 2027-06-07 08:09:10, as UTCTimes."""
    return leaf("p256", not_before=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
                not_after=dt.datetime(2027, 6, 7, 8, 9, 10, tzinfo=dt.UTC))


@pytest.mark.parametrize("digits", [
    b"260230030405", b"261302030405", b"260100030405", b"260102240405", b"260102036005",
    b"260102030460", b"260431030405", b"240229030405", b"250229030405", b"000229030405",
    b"490102030405", b"500102030405", b"991231235959", b"2601020304a5", b"26010203040 "])
@pytest.mark.parametrize("which", [b"260102030405", b"270607080910"])
def test_odd_times_fast_or_slow_give_the_slow_facts(which: bytes, digits: bytes) -> None:
    """Days that do not exist, hours, minutes and seconds out of range, leap years, both
    centuries of UTCTime, and digits that are not: as notBefore and as notAfter."""
    certificate = patch(validity_leaf(), b"\x17\x0d" + which + b"Z", b"\x17\x0d" + digits + b"Z",
                        count=1)
    reported, slow = both_ways(certificate)
    assert reported == slow
    assert takes_fast_path(certificate) == (digits in (
        b"240229030405", b"000229030405", b"490102030405", b"500102030405", b"991231235959"))


@functools.cache
def real_world_certificates() -> dict[str, bytes]:
    """x509-limbo's certificates (odd ones on purpose) and public CAs' roots."""
    limbo = Path(__file__).resolve().parent / "data" / "x509-limbo" / "limbo.json"
    pems = {pem for case in json.loads(limbo.read_text())["testcases"]
            for pem in [*case["trusted_certs"], *case["untrusted_intermediates"],
                        case["peer_certificate"]]}
    try:
        import certifi
    except ImportError:  # pragma: no cover - the suite's venv has it
        pass
    else:
        with open(certifi.where()) as bundle:
            pems.update(re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                                   bundle.read(), re.DOTALL))
    return {f"real-{index}": ssl.PEM_cert_to_DER_cert(pem)
            for index, pem in enumerate(sorted(pems))}


def test_real_world_certificates_fast_or_slow_give_the_slow_facts() -> None:
    fast = 0
    with warnings.catch_warnings():  # cryptography warns about some of limbo's
        warnings.simplefilter("ignore")
        for name, certificate in real_world_certificates().items():
            reported, slow = both_ways(certificate)
            assert reported == slow, name
            fast += takes_fast_path(certificate)
    assert fast > 400


def test_usual_keys_are_read_as_the_walk_reads_them() -> None:
    """The SubjectPublicKeyInfo shapes read in one step, against the step by step walk."""
    rng = random.Random(3)
    for name, algorithm, size in der._USUAL_KEY_ALGORITHMS:
        element = tlv(0x30, algorithm + tlv(0x03, b"\x00" + rng.randbytes(size)))
        usual = der._USUAL_KEYS.fullmatch(element)
        assert usual and usual.lastindex
        assert (der._USUAL_KEY_ALGORITHMS[usual.lastindex - 1][0], usual[usual.lastindex],
                usual.end()) == der._public_key_info(element, 0, len(element)) == (
            name, element[-size:], len(element))
        unused_bit = element[:-size - 1] + b"\x01" + element[-size:]
        for odd in (element[:-1], element + b"\x00", unused_bit):
            assert not der._USUAL_KEYS.fullmatch(odd)


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
def test_usual_rsa_keys_are_read_as_the_modulus_is(bits: int) -> None:
    modulus, exponent = rsa_numbers(bits)
    for n, e in [(modulus, exponent), (modulus >> 1, exponent), (modulus, 3),
                 (modulus | 1 << bits, exponent), (modulus, 65539)]:
        size = (n.bit_length() + 8) // 8
        modulus_bytes = n.to_bytes(size)
        exponent_bytes = e.to_bytes((e.bit_length() + 8) // 8)
        key_bits = tlv(0x30, tlv(0x02, modulus_bytes) + tlv(0x02, exponent_bytes))
        assert der.public_key("rsa", key_bits) == ("rsa", n.bit_length(), None)
        assert bool(der._USUAL_RSA_KEYS.fullmatch(key_bits)) == (
            n.bit_length() in der._RSA_SIZES and e == 65537)
    for odd in [tlv(0x30, tlv(0x02, b"\x00\x00" + modulus.to_bytes(bits // 8)[1:])
                           + tlv(0x02, b"\x01\x00\x01"))]:  # not the shortest modulus
        with pytest.raises(der.NotSimple):
            der.public_key("rsa", odd)


def test_kept_parts_are_as_read() -> None:
    """Names' attributes and extensions are kept across certificates: read again from the
    caches, every certificate gives what it gave with them empty."""
    corpus = {**all_certificates(), **real_world_certificates()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        der._kept_rdn.cache_clear()
        der._kept_extension.cache_clear()
        fresh = {name: reported_facts(certificate) for name, certificate in corpus.items()}
        assert der._kept_rdn.cache_info().hits and der._kept_extension.cache_info().hits
        assert {name: reported_facts(certificate) for name, certificate in corpus.items()} == fresh


def test_refused_parts_are_not_kept() -> None:
    rdn = b"\x31\x0a\x30\x08\x06\x03\x55\x04\x03\x04\x01x"  # an OCTET STRING: no string
    extension = b"\x30\x0a\x06\x03\x55\x1d\x13\x01\x01\x00\x04\x00"  # critical FALSE
    for kept, part in ((der._kept_rdn, rdn), (der._kept_extension, extension)):
        size = kept.cache_info().currsize
        for _ in range(2):
            with pytest.raises(der.NotSimple):
                kept(part)
        assert kept.cache_info().currsize == size
