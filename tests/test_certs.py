from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import random
import ssl
import warnings
from collections.abc import Callable

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from pki import DAY, NOW, as_version_1, mint, patch, patch_nth, private_key, resign
from scanner import certs, der
from scanner.certs import certificate_facts, chain_entry, der_to_pem

ED25519_OID = b"\x06\x03\x2b\x65\x70"
UNKNOWN_OID = b"\x06\x03\x2b\x65\x7f"  # 1.3.101.127, assigned to nothing


def facts(der: bytes, now: dt.datetime = NOW) -> dict[str, object]:
    """certificate_facts, checked for the contract every record must keep."""
    result = certificate_facts(der, now=now)
    assert list(result) == list(certs._FACT_KEYS)
    assert json.loads(json.dumps(result, ensure_ascii=False).encode("utf-8")) == result
    return result


def chain(der: bytes) -> dict[str, object]:
    result = chain_entry(der)
    assert list(result) == ["pem", "sha256", "subject", "issuer", "not_after"]
    assert json.loads(json.dumps(result, ensure_ascii=False).encode("utf-8")) == result
    return result


def to_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def hostile_cn(tag: int, content: bytes) -> bytes:
    """A self-signed Ed25519 certificate whose CN (subject and issuer) is `content` under
    ASN.1 `tag`, validly signed: the builder will not write such strings, so patch them in."""
    filler = "Q" * len(content)
    der = mint(subject=filler, san=[x509.DNSName("hostile.example")], ca=False)
    utf8 = bytes([0x0C, len(content)]) + filler.encode()
    return resign(patch(der, utf8, bytes([tag, len(content)]) + content, count=2),
                  private_key("ed25519"))


# --- PEM and hashes ---

def test_pem_matches_cryptography_and_hashes_are_of_the_der() -> None:
    der = mint()
    cert = x509.load_der_x509_certificate(der)
    result = facts(der)
    assert result["pem"] == cert.public_bytes(serialization.Encoding.PEM).decode()
    assert result["sha256"] == hashlib.sha256(der).hexdigest()
    assert result["sha1"] == hashlib.sha1(der).hexdigest()
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    assert result["spki_sha256"] == hashlib.sha256(spki).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 47, 48, 49, 300, 3000, 6143, 6144, 6145, 10000])
def test_pem_of_bytes_that_do_not_parse(size: int) -> None:
    data = bytes(range(256))[:size] * 2 if size < 256 else random.Random(size).randbytes(size)
    pem = der_to_pem(data)
    assert pem == ssl.DER_cert_to_PEM_cert(data)  # lines of 64, but for hostile sizes
    lines = pem.splitlines()
    assert lines[0] == "-----BEGIN CERTIFICATE-----"
    assert lines[-1] == "-----END CERTIFICATE-----"
    assert all(len(line) <= 64 for line in lines[1:-1])
    assert "".join(lines[1:-1]) == base64.b64encode(data).decode()
    assert pem.endswith("\n") and "\n\n" not in pem


# --- keys, signatures, self-signed ---

@pytest.mark.parametrize(("kind", "key_type", "bits", "curve", "algorithm"), [
    ("rsa2048", "rsa", 2048, None, "sha256WithRSAEncryption"),
    ("rsa1024", "rsa", 1024, None, "sha256WithRSAEncryption"),
    ("p256", "ec", 256, "secp256r1", "ecdsa-with-SHA256"),
    ("p384", "ec", 384, "secp384r1", "ecdsa-with-SHA256"),
    ("ed25519", "ed25519", 256, None, "ed25519"),
    ("ed448", "ed448", 456, None, "ed448"),
    ("dsa1024", "dsa", 1024, None, "dsa-with-sha256"),
])
def test_key_types_self_signed(
        kind: str, key_type: str, bits: int, curve: str | None, algorithm: str) -> None:
    result = facts(mint(key=private_key(kind), ca=True))
    assert result["key"] == {"type": key_type, "bits": bits, "curve": curve}
    assert result["signature_algorithm"] == algorithm
    assert result["self_signed"] is True
    assert result["is_ca"] is True


def test_sha1_and_sha384_signatures_are_named() -> None:
    # cryptography 50 will not sign with SHA-1: relabel a SHA-256 certificate and re-sign.
    key = private_key("rsa2048")
    rsa_oid = b"\x2a\x86\x48\x86\xf7\x0d\x01\x01"
    sha256_rsa, sha1_rsa = rsa_oid + b"\x0b", rsa_oid + b"\x05"
    der = resign(patch(mint(key=key), sha256_rsa, sha1_rsa, count=2), key, hashes.SHA1())
    result = facts(der)
    assert result["signature_algorithm"] == "sha1WithRSAEncryption"
    assert result["self_signed"] is True
    der = mint(key=private_key("p384"), digest=hashes.SHA384())
    assert facts(der)["signature_algorithm"] == "ecdsa-with-SHA384"


def test_rsa_pss_self_signed() -> None:
    result = facts(mint(key=private_key("rsa2048"), pss=True))
    assert result["signature_algorithm"] == "rsassaPss"
    assert result["self_signed"] is True


def test_x25519_key_issued_by_another() -> None:
    # A key that cannot sign (RFC 8410 allows it in certificates) is never self-signed.
    der = mint(key=private_key("x25519"), subject="kex", issuer="kex",
               issuer_key=private_key("ed25519"))
    result = facts(der)
    assert result["key"] == {"type": "x25519", "bits": 256, "curve": None}
    assert result["self_signed"] is False


def test_version_1_certificate() -> None:
    der = as_version_1(mint(subject="old root"), private_key("ed25519"))
    assert x509.load_der_x509_certificate(der).version == x509.Version.v1
    result = facts(der)
    assert result["subject"] == result["issuer"] == {"rfc4514": "CN=old root", "cn": "old root"}
    assert result["self_signed"] is True and result["is_ca"] is False
    assert result["serial"] == "5ec7a1"


def test_trustme_ca_and_leaf() -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("example.org", "192.0.2.1", "ops@example.org")
    root = facts(to_der(ca.cert_pem.bytes()))
    result = facts(to_der(leaf.cert_chain_pems[0].bytes()))
    assert root["self_signed"] is True and root["is_ca"] is True
    assert result["self_signed"] is False and result["is_ca"] is False
    assert result["issuer"] == root["subject"]
    assert result["san"] == {"dns": ["example.org"], "ip": ["192.0.2.1"],
                             "email": ["ops@example.org"], "uri": []}


def test_issuer_equals_subject_but_signed_by_another_key_is_not_self_signed() -> None:
    der = mint(subject="same", issuer="same", issuer_key=private_key("ed25519", "other"))
    result = facts(der)
    assert result["subject"] == result["issuer"] == {"rfc4514": "CN=same", "cn": "same"}
    assert result["self_signed"] is False


def test_issued_by_another_name_with_its_own_key_is_not_self_signed() -> None:
    assert facts(mint(subject="leaf", issuer="someone else"))["self_signed"] is False


def test_issuer_and_subject_equal_as_names_but_not_as_bytes() -> None:
    # Issuer as PrintableString, subject as UTF8String: the same name, differently encoded.
    der = mint(subject="MARKER")
    der = patch_nth(der, b"\x0c\x06MARKER", b"\x13\x06MARKER", 0)
    assert facts(resign(der, private_key("ed25519")))["self_signed"] is True


def test_unknown_signature_algorithm_is_reported_by_oid() -> None:
    der = patch(mint(), ED25519_OID + b"\x30", UNKNOWN_OID + b"\x30", count=1)  # TBS copy only
    der = patch_nth(der, ED25519_OID, UNKNOWN_OID, 1)  # outer copy (0 is now the SPKI's)
    result = facts(der)
    assert result["signature_algorithm"] == "1.3.101.127"
    assert result["self_signed"] is False
    assert result["key"] == {"type": "ed25519", "bits": 256, "curve": None}


def test_unknown_key_type() -> None:
    der = mint()
    der = patch_nth(der, ED25519_OID, UNKNOWN_OID, 1)  # TBS sigalg, SPKI, outer sigalg
    result = facts(der)
    assert result["key"] == {"type": "unknown", "bits": None, "curve": None}
    assert result["spki_sha256"] is not None and result["self_signed"] is False
    assert result["signature_algorithm"] == "ed25519"


# --- names and SANs ---

def test_san_of_every_kind() -> None:
    der = mint(subject="svc", san=[
        x509.DNSName("a.example"), x509.DNSName("*.b.example"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
        x509.RFC822Name("ops@example.org"),
        x509.UniformResourceIdentifier("spiffe://example.org/svc"),
    ])
    assert facts(der)["san"] == {"dns": ["a.example", "*.b.example"],
                                 "ip": ["192.0.2.7", "2001:db8::1"],
                                 "email": ["ops@example.org"],
                                 "uri": ["spiffe://example.org/svc"]}


def test_cn_only_has_empty_san_lists() -> None:
    result = facts(mint(subject="only.example"))
    assert result["san"] == {"dns": [], "ip": [], "email": [], "uri": []}
    assert result["subject"] == {"rfc4514": "CN=only.example", "cn": "only.example"}
    assert result["is_ca"] is False


def test_name_without_cn_and_rfc4514_like_cryptography() -> None:
    subject = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")]),
        x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'Acme, "Inc" +<x>;'),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, " #ops ")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "a@b.c")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(x509.ObjectIdentifier("1.2.3.4"), "x")]),
    ])
    der = mint(subject=subject)
    result = facts(der)
    expected = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    assert result["subject"] == {"rfc4514": expected, "cn": None}
    assert expected.startswith("1.2.3.4=x,") and "\\," in expected


def test_ten_thousand_dns_names() -> None:
    names = [f"host{i}.example" for i in range(10_000)]
    result = facts(mint(san=[x509.DNSName(n) for n in names]))
    san = result["san"]
    assert isinstance(san, dict) and san["dns"] == names


def test_overlong_cn_and_country_do_not_warn() -> None:
    # cryptography warns on parsing names beyond its length limits (an error under this
    # suite's filterwarnings) and its builder refuses them: write O and OU, relabel as CN, C.
    long_cn, long_c = "x" * 100, "Germany"
    der = mint(subject=x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, long_c),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, long_cn)]))
    der = patch(der, b"\x55\x04\x0a\x0c\x64", b"\x55\x04\x03\x0c\x64", count=2)
    der = patch(der, b"\x55\x04\x0b\x0c\x07", b"\x55\x04\x06\x0c\x07", count=2)
    result = facts(der)
    assert result["subject"] == {"rfc4514": f"CN={long_cn},C={long_c}", "cn": long_cn}


# --- hostile strings ---

def test_control_characters_and_rtl_override_survive() -> None:
    evil = "a\nb\x00c\u202ed\"e"
    result = facts(mint(subject=evil))
    assert result["subject"] == {"rfc4514": 'CN=a\nb\\00c\u202ed\\"e', "cn": evil}


@pytest.mark.parametrize(("tag", "content", "cn"), [
    # PrintableString with '*' and '_': cryptography refuses the whole certificate
    (0x13, b"*.my_host", "*.my_host"),
    # T61String in Latin-1, as real ones are: cryptography refuses the name
    (0x14, b"M\xfcller", "Müller"),
    # BMPString with a lone surrogate and an odd length: refused at load
    (0x1E, b"\xd8\x00\x00A\x00", "\ufffdA\ufffd"),
    # UniversalString with a surrogate code point
    (0x1C, b"\x00\x00\xd8\x00\x00\x00\x00B", "\ufffdB"),
    # UTF8String that is not UTF-8, and IA5String with high bytes
    (0x0C, b"\xff\xfeok", "ÿþok"),
    (0x16, b"caf\xe9", "café"),
])
def test_bad_legacy_strings_cost_nothing(tag: int, content: bytes, cn: str) -> None:
    der = hostile_cn(tag, content)
    result = facts(der)
    assert result["subject"] == result["issuer"]
    assert result["subject"] == {"rfc4514": f"CN={cn}", "cn": cn}
    # ... and every other fact is still there, read from the original signed bytes
    assert result["self_signed"] is True
    assert result["not_after"] == "2026-05-01T12:00:00Z"
    assert result["san"] == {"dns": ["hostile.example"], "ip": [], "email": [], "uri": []}
    assert result["key"] == {"type": "ed25519", "bits": 256, "curve": None}
    assert result["is_ca"] is False
    assert result["serial"] == "5ec7a1"
    assert chain(der)["subject"] == result["subject"]


def test_lone_surrogates_never_reach_the_output() -> None:
    # No input reaches this through cryptography today; the last line of defence still holds.
    assert der.json_safe({"a": ["x\ud800y", "\ud83d\ude00"], "b": 1}) == {
        "a": ["x\ufffdy", "\U0001f600"], "b": 1}


# --- serials and dates ---

@pytest.mark.parametrize(("serial", "text"), [
    (1, "01"), (0x0A, "0a"), (0x80, "80"), (0x5EC7A1, "5ec7a1"),
    (2**159 - 1, "7f" + "ff" * 19),
])
def test_serial_formatting(serial: int, text: str) -> None:
    assert facts(mint(serial=serial))["serial"] == text


def test_negative_serial() -> None:
    # The builder refuses negative serials and cryptography warns on parsing them.
    der = patch(mint(serial=0x5EC7A1), b"\x02\x03\x5e\xc7\xa1", b"\x02\x03\xde\xc7\xa1", count=1)
    result = facts(der)
    assert result["serial"] == "-21385f"  # 0xdec7a1 - 2**24
    assert result["not_after"] is not None


@pytest.mark.parametrize(("not_after", "days_left"), [
    (NOW + 90 * DAY, 90), (NOW + DAY + dt.timedelta(hours=12), 1),
    (NOW - dt.timedelta(hours=12), -1), (NOW - 400 * DAY, -400),
])
def test_days_left_floors(not_after: dt.datetime, days_left: int) -> None:
    result = facts(mint(not_before=NOW - 500 * DAY, not_after=not_after))
    assert result["days_left"] == days_left
    assert result["not_after"] == not_after.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_naive_now_is_utc() -> None:
    der = mint(not_after=NOW + 90 * DAY)
    assert facts(der, now=NOW.replace(tzinfo=None))["days_left"] == 90


def test_dates_outside_utctime() -> None:
    der = mint(not_before=dt.datetime(2050, 1, 1, tzinfo=dt.UTC),
               not_after=dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC))
    # The builder refuses dates before 1950; write one as GeneralizedTime by hand.
    der = patch(der, b"\x18\x0f20500101000000Z", b"\x18\x0f19400101000000Z", count=1)
    result = facts(der)
    assert result["not_before"] == "1940-01-01T00:00:00Z"
    assert result["not_after"] == "9999-12-31T23:59:59Z"
    assert result["days_left"] == 2912412  # 9999-12-31 minus 2026-01-31, whole days
    der = patch(der, b"19400101000000Z", b"00010101000000Z", count=1)
    assert facts(der)["not_before"] == "0001-01-01T00:00:00Z"


# --- malformed input ---

@pytest.mark.parametrize("der", [
    b"", b"\x30\x03\x02\x01\x00", b"\x30\x80", b"\xff" * 10,
    random.Random(7).randbytes(2000),
    mint()[:-80],  # truncated
], ids=["empty", "tiny-sequence", "indefinite", "ff", "random", "truncated"])
def test_garbage_gives_hashes_only(der: bytes) -> None:
    result = facts(der)
    assert result["pem"] == der_to_pem(der)
    assert result["sha256"] == hashlib.sha256(der).hexdigest()
    assert result["sha1"] == hashlib.sha1(der).hexdigest()
    assert [k for k, v in result.items() if v is not None] == ["pem", "sha256", "sha1"]
    assert chain(der)["subject"] is None and chain(der)["not_after"] is None


def test_malformed_san_costs_only_the_san() -> None:
    # A dNSName must be IA5; cryptography loads the certificate, then fails on .extensions,
    # which would also take basicConstraints down with it.
    der = mint(san=[x509.DNSName("bad.example")], ca=True)
    der = patch(der, b"bad.example", b"b\xe4d.example", count=1)
    assert isinstance(x509.load_der_x509_certificate(der), x509.Certificate)
    result = facts(der)
    assert result["san"] is None
    assert result["is_ca"] is True
    assert result["subject"] == {"rfc4514": "CN=test.example", "cn": "test.example"}


def test_malformed_basic_constraints_costs_only_is_ca() -> None:
    der = mint(san=[x509.DNSName("ok.example")], ca=True)
    der = patch(der, b"\x30\x03\x01\x01\xff", b"\x30\x03\x01\x01\x07", count=1)  # not DER bool
    result = facts(der)
    assert result["is_ca"] is None
    assert result["san"] == {"dns": ["ok.example"], "ip": [], "email": [], "uri": []}


def test_duplicate_extension() -> None:
    # basicConstraints relabelled as a second SAN: both SANs are unreadable, the rest is not
    der = mint(san=[x509.DNSName("ok.example")], ca=True)
    der = patch(der, b"\x06\x03\x55\x1d\x13", b"\x06\x03\x55\x1d\x11", count=1)
    result = facts(der)
    assert result["san"] is None and result["is_ca"] is False
    assert result["not_after"] == "2026-05-01T12:00:00Z"


def test_chain_entry() -> None:
    der = mint(subject="leaf", issuer="Some CA", issuer_key=private_key("p256"))
    assert chain(der) == {
        "pem": der_to_pem(der), "sha256": hashlib.sha256(der).hexdigest(),
        "subject": {"rfc4514": "CN=leaf", "cn": "leaf"},
        "issuer": {"rfc4514": "CN=Some CA", "cn": "Some CA"},
        "not_after": "2026-05-01T12:00:00Z",
    }



# --- leaf_entry and the caches ---

def bench_like_leaf() -> bytes:
    """As the benchmark fleet's: ECDSA P-256, O and CN, an IP SAN, issued by a P-256 CA."""
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certscan bench"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "127.88.1.1")])
    return mint(key=private_key("p256"), subject=subject, issuer="certscan bench CA",
                issuer_key=private_key("p256", "ca"), ca=False,
                san=[x509.IPAddress(ipaddress.ip_address("127.88.1.1"))])


CERTIFICATES = {
    "p256-ip-leaf": bench_like_leaf,
    "rsa-under-intermediate": lambda: mint(
        key=private_key("rsa2048"), subject="www.example.com", issuer="Example TLS R2",
        issuer_key=private_key("rsa2048", "intermediate"), san=[x509.DNSName("example.com")]),
    "trustme-leaf": lambda: to_der(trustme.CA().issue_cert("example.org").cert_chain_pems[0]
                                   .bytes()),
    "self-signed-root": lambda: mint(key=private_key("p384"), subject="Root R1", ca=True),
    "t61-latin-1": lambda: hostile_cn(0x14, b"M\xfcller"),
    "printable-star": lambda: hostile_cn(0x13, b"*.my_host"),
    "garbage": lambda: b"\x30\x03\x02\x01\x00",
}


@pytest.mark.parametrize("make", CERTIFICATES.values(), ids=CERTIFICATES.keys())
def test_leaf_entry_is_the_chain_entry(make: Callable[[], bytes]) -> None:
    der = make()
    result = facts(der)
    entry = certs.leaf_entry(result)
    assert entry == chain(der) == chain(der)  # the second from the cache
    if isinstance(entry["subject"], dict):  # the two share no dict
        entry["subject"]["cn"] = "changed"
        assert result["subject"] != entry["subject"]


def test_cached_results_are_copies() -> None:
    der = mint(subject="leaf", issuer="Some CA", issuer_key=private_key("p256"))
    first = chain(der)
    first["pem"] = None
    assert isinstance(first["subject"], dict) and isinstance(first["issuer"], dict)
    first["subject"]["cn"] = first["issuer"]["cn"] = "changed"
    again = chain(der)
    assert again["pem"] == der_to_pem(der)
    assert again["subject"] == {"rfc4514": "CN=leaf", "cn": "leaf"}
    assert again["issuer"] == {"rfc4514": "CN=Some CA", "cn": "Some CA"}
    result = facts(der)
    assert isinstance(result["issuer"], dict)
    result["issuer"]["cn"] = "changed"
    assert facts(der)["issuer"] == {"rfc4514": "CN=Some CA", "cn": "Some CA"}


def test_caches_are_bounded() -> None:
    # Hostile servers can send any number of different names and chain certificates.
    assert 0 < (der._kept_name.cache_info().maxsize or 0) <= 1024
    assert 0 < (certs._kept_chain_entry.cache_info().maxsize or 0) <= 256
    # ... and parts of names and extensions of any size: those kept are small
    assert 0 < (der._kept_rdn.cache_info().maxsize or 0) <= 1024
    assert 0 < (der._kept_extension.cache_info().maxsize or 0) <= 1024
    assert 0 < (certs._pem_lines.cache_info().maxsize or 0) <= 129


def test_large_names_and_certificates_are_read_without_keeping() -> None:
    big = x509.Name([x509.NameAttribute(x509.ObjectIdentifier("1.2.3.4"), "v" * 3000)])
    der = mint(subject=big, issuer=big)
    assert len(der) > 6000
    result = facts(der)
    assert result["subject"] == result["issuer"] == {"rfc4514": "1.2.3.4=" + "v" * 3000,
                                                     "cn": None}
    assert result["self_signed"] is True
    assert chain(der) == certs.leaf_entry(result)


@pytest.mark.parametrize("make", [bench_like_leaf, lambda: hostile_cn(0x14, b"M\xfcller"),
                                  lambda: hostile_cn(0x1E, b"\xd8\x00\x00A\x00")])
def test_bytearray_gives_the_same_facts(make: Callable[[], bytes]) -> None:
    der = make()
    assert certificate_facts(bytearray(der), now=NOW) == facts(der)
    assert chain_entry(bytearray(der)) == chain(der)


@pytest.mark.parametrize("value", [
    "plain", "two words", "dots.and-dashes_*@:/()'", "a  b", " lead", "trail ", " ", "#hash",
    "a#b", "x=y", "a,b", 'q"t', "back\\slash", "semi;colon", "<angle>", "plus+", "nul\x00",
    "new\nline", "tab\t", "Müller", "中文", "\u202eevil",
])
def test_rfc4514_like_cryptography(value: str) -> None:
    # Plain values are written here without asking cryptography; the rest as it writes them.
    subject = x509.Name([
        x509.RelativeDistinguishedName([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, value),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, value + "x")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, value)])])
    der = mint(subject=subject)
    expected = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    assert facts(der)["subject"] == {"rfc4514": expected, "cn": value}


def test_warnings_stay_inside_and_filters_are_restored() -> None:
    # Negative serial and an over-long CN: cryptography warns about both.
    der = patch(mint(serial=0x5EC7A1), b"\x02\x03\x5e\xc7\xa1", b"\x02\x03\xde\xc7\xa1", count=1)
    long_cn = patch(mint(subject=x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                               "x" * 100)])),
                    b"\x55\x04\x0a\x0c\x64", b"\x55\x04\x03\x0c\x64", count=2)
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for certificate in (der, long_cn, b"garbage"):
            facts(certificate)
            chain_entry(bytearray(certificate))  # not from the cache
        warnings.warn("outside", UserWarning, stacklevel=1)
    assert [str(warning.message) for warning in seen] == ["outside"]
    assert warnings.filters == before
    with pytest.raises(UserWarning):  # this suite's filterwarnings = error, as before
        warnings.warn("still an error", UserWarning, stacklevel=1)
