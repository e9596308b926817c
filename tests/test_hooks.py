"""scanner.hooks: every private way passes its self-test on this interpreter and is the one
used; made unavailable (the private attribute removed, or its self-test made to fail, as a
new Python, OpenSSL or cryptography could), the public fallback is used and a real scan of
real TLS servers on loopback gives byte-identical records, verdicts included."""

from __future__ import annotations

import _ssl
import asyncio
import contextlib
import ctypes
import ctypes.util
import ssl
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

import scanner
from scanner import certs, der, hooks, openssl
from scanner.engines import rustls_missing
from servers import (
    Running,
    alert,
    fin_after_hello,
    garbage,
    next_address,
    raw_server,
    rst_after_hello,
    server_context,
    tls_server,
)

Record = dict[str, Any]
_VOLATILE = ("scanned_at", "timing_ms")  # everything else must be byte for byte the same
# An attribute type whose OID is longer than der.py's plain ones (35 bytes of contents): its
# label comes from hooks.attribute_label.
_LONG_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555." + ".".join(
    str(1000 + arc) for arc in range(14)))


def _forget() -> None:
    """As in a fresh process: hooks settle again on next use, and no cache holds what the
    previous ways computed (names, attribute types, chain entries)."""
    hooks._forget()
    openssl.bind.cache_clear()
    for cache in (der._kept_name, der._attribute_type, der._plain_type,
                  certs._kept_chain_entry):
        cache.cache_clear()


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A monkeypatch for the test's breakage, with the hooks forgotten before and after
    (after: while the breakage is still in place, so nothing settles on it)."""
    _forget()
    yield monkeypatch
    _forget()


def _odd_certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for certs.py's slow path (cryptography): a CN over 64
    characters (cryptography warns as it reads it), an attribute type of a long OID, and
    cryptography's name for its signature algorithm. Returns (certificate, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    with warnings.catch_warnings(action="ignore", category=UserWarning):  # the CN's length
        long_cn = x509.NameAttribute(NameOID.COMMON_NAME, "x" * 100, _validate=False)
    name = x509.Name([long_cn, x509.NameAttribute(_LONG_OID, "odd")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
            .not_valid_after(datetime(2999, 1, 1, tzinfo=UTC))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "odd.pem", tmp / "odd.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Servers:
    """Two servers scanned together: a trustme chain (certs.py's fast path; verdicts lend
    the handshake's X509s) and the odd certificate (the slow path), and one bundle for both."""

    def __init__(self, good: Running, odd: Running, bundle: str) -> None:
        self.targets = [f"{good.target} good.test", f"{odd.target} odd.test"]
        self.bundle = bundle

    async def scan(self, *, verdicts: bool = True) -> list[Record]:
        options: dict[str, Any] = {"timeout": 5.0, "engine": "openssl"}  # the hooks are its
        if verdicts:
            options["ca_bundle"] = self.bundle
        records = [record async for record in scanner.scan(self.targets, **options)]
        for record in records:
            for key in _VOLATILE:
                record.pop(key)
        return sorted(records, key=lambda record: str(record["target"]))


@asynccontextmanager
async def _servers(ca: trustme.CA, tmp: Path) -> AsyncIterator[Servers]:
    cert_path, key_path = _odd_certificate(tmp)
    odd_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    odd_context.load_cert_chain(cert_path, key_path)
    bundle = tmp / "bundle.pem"
    bundle.write_bytes(ca.cert_pem.bytes() + cert_path.read_bytes())
    leaf = ca.create_child_ca().issue_cert("good.test")
    async with tls_server(server_context(leaf)) as good, tls_server(odd_context) as odd:
        yield Servers(good, odd, str(bundle))


@pytest.fixture
async def servers(ca: trustme.CA, tmp_path: Path) -> AsyncIterator[Servers]:
    async with _servers(ca, tmp_path) as running:
        yield running


# -- here, every private way -----------------------------------------------------------------

def test_every_self_test_passes_here_and_the_private_ways_are_used(fresh: object) -> None:
    assert {name: status.way for name, status in hooks.STATUS.items()} == dict.fromkeys(
        hooks.STATUS, "unchecked")
    status = hooks.settle_all()
    assert {name: str(value) for name, value in status.items()} == dict.fromkeys(
        hooks._FRESH, "private")
    capture = hooks._capture()
    assert capture == hooks._Capture(private_wrap=True, chain="private",
                                     der=_ssl.ENCODING_DER)
    # The objects the private ways give are the private types themselves.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls = hooks.wrap_bio(context, ssl.MemoryBIO(), ssl.MemoryBIO(), "bücher.example")
    assert type(tls) is _ssl._SSLSocket
    assert tls.server_hostname == "xn--bcher-kva.example"  # wrap_bio's own encoding


async def test_a_scan_uses_the_private_ways(fresh: object, servers: Servers) -> None:
    records = await servers.scan()
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert records[0]["validation"]["trusted"]  # the trustme chain, lent to the verdict
    odd = records[1]["certificate"]
    assert odd["signature_algorithm"] == "ecdsa-with-SHA256"
    assert odd["subject"]["rfc4514"] == f"{_LONG_OID.dotted_string}=odd,CN={'x' * 100}"
    assert odd["self_signed"] is True
    assert {name: status.way for name, status in hooks.STATUS.items()} == dict.fromkeys(
        hooks.STATUS, "private") | {"rustls_connection": "unchecked"}  # an OpenSSL scan


def test_libcrypto_is_the_copy_python_ssl_module_uses(fresh: object) -> None:
    # On this platform (Linux, the system's OpenSSL 3): the libcrypto mapped for _ssl.
    lib = hooks.libcrypto()
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            mapped = {line.split()[-1] for line in maps if "/libcrypto.so" in line}
    except OSError:
        pytest.skip("no /proc/self/maps to compare with")
    assert mapped

    def address(library: ctypes.CDLL) -> int | None:
        return ctypes.cast(library.OpenSSL_version_num, ctypes.c_void_p).value

    assert address(lib) in {address(ctypes.CDLL(path)) for path in mapped}


# -- each private way made unavailable -------------------------------------------------------

def _owner_required(monkeypatch: pytest.MonkeyPatch) -> None:
    """A _wrap_bio that insists on its SSLObject (a plausible change): wrap_bio still works."""
    real = ssl.SSLContext._wrap_bio  # type: ignore[attr-defined]

    def wrap(self: ssl.SSLContext, *args: Any, owner: object, **kwargs: Any) -> Any:
        if owner is None:
            raise TypeError("owner must be an SSLObject")
        return real(self, *args, owner=owner, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "_wrap_bio", wrap)


def _chain_only_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """The private chain gone, on a Python with 3.13's public one (its ssl.py's words)."""

    def get_unverified_chain(self: ssl.SSLObject) -> list[bytes]:
        chain = self._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
        return [] if chain is None else [c.public_bytes(_ssl.ENCODING_DER) for c in chain]

    monkeypatch.setattr(ssl.SSLObject, "get_unverified_chain", get_unverified_chain,
                        raising=False)
    monkeypatch.setattr(hooks, "_native_chain", _gone)


def _gone(*args: object) -> object:
    raise AttributeError("no such attribute here")


def _no_encoding_der(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(_ssl, "ENCODING_DER")


def _other_struct(monkeypatch: pytest.MonkeyPatch) -> None:
    """An _ssl.Certificate of another size, as if its struct had changed."""
    monkeypatch.setattr(hooks, "_CERTIFICATE_SIZE", hooks._CERTIFICATE_SIZE + 8)


def _no_oid_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hooks, "_private_oid_name", _gone)


def _no_validate_keyword(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cryptography whose NameAttribute takes no _validate."""

    class NameAttribute(x509.NameAttribute[str]):
        def __init__(self, oid: x509.ObjectIdentifier, value: str) -> None:
            super().__init__(oid, value)

    monkeypatch.setattr(x509, "NameAttribute", NameAttribute)


def _context_aware_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """3.14's sys.flags.context_aware_warnings: the process-wide list is not what warns."""
    monkeypatch.setattr(hooks, "_context_aware_warnings", lambda: True)


def _no_self_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The self-test handshake itself cannot happen (say, no temporary directory)."""
    monkeypatch.setattr(hooks, "_self_test_server", _gone)


_BREAKAGES: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], dict[str, str]]] = {
    # breakage -> (how, the hooks it sends to their fallback)
    "wrap_bio": (_owner_required, {"wrap_bio": "public"}),
    # (No certificate objects: nothing to encode, nothing to lend.)
    "unverified_chain": (_chain_only_public, {"unverified_chain": "public", "wrap_bio": "public",
                                              "encoding_der": "public",
                                              "certificate_x509": "unchecked"}),
    "encoding_der": (_no_encoding_der, {"encoding_der": "public"}),
    "certificate_x509": (_other_struct, {"certificate_x509": "public"}),
    "oid_name": (_no_oid_name, {"oid_name": "public"}),
    "name_attribute": (_no_validate_keyword, {"name_attribute": "public"}),
    "warnings_filters": (_context_aware_warnings, {"warnings_filters": "public"}),
    # (Unchecked, then: the public ways where they exist; before 3.13 the chain has none.)
    "no_self_test": (_no_self_test, {"wrap_bio": "public", "encoding_der": "private"} | (
        {"unverified_chain": "public", "certificate_x509": "unchecked"}
        if hasattr(ssl.SSLObject, "get_unverified_chain") else {"unverified_chain": "private"})),
}


@pytest.mark.parametrize("breakage", list(_BREAKAGES))
async def test_a_fallback_gives_the_same_records(
    breakage: str, fresh: pytest.MonkeyPatch, servers: Servers,
) -> None:
    expected = await servers.scan()
    _forget()
    breaker, fallbacks = _BREAKAGES[breakage]
    breaker(fresh)
    got = await servers.scan()
    assert got == expected
    ways = {name: status.way for name, status in hooks.STATUS.items()}
    assert ways == dict(dict.fromkeys(hooks.STATUS, "private"), **fallbacks,
                        rustls_connection="unchecked")  # OpenSSL scans
    assert all(hooks.STATUS[name].why for name in fallbacks)  # each says why


def test_the_fallbacks_name_as_the_private_ways_do() -> None:
    # oid_name: every signature algorithm cryptography has, and one it does not name.
    oids = [oid for oid in vars(SignatureAlgorithmOID).values()
            if isinstance(oid, x509.ObjectIdentifier)]
    for oid in [*oids, x509.ObjectIdentifier("1.2.3.4")]:
        name = oid._name
        assert hooks._SIGNATURE_NAMES.get(oid.dotted_string, oid.dotted_string) == (
            oid.dotted_string if name == "Unknown OID" else name), oid
    # name_attribute: every attribute type cryptography has, and der.py's own table.
    for oid in [o for o in vars(NameOID).values() if isinstance(o, x509.ObjectIdentifier)]:
        assert hooks._public_label(oid) == hooks._private_label(oid) == x509.NameAttribute(
            oid, "xx").rfc4514_attribute_name
    assert {der.dotted_oid(contents): label for contents, label in der._LABELS.items()} == (
        hooks._RFC4514_LABELS)


def test_the_public_warnings_way_keeps_warnings_inside(fresh: pytest.MonkeyPatch) -> None:
    _context_aware_warnings(fresh)
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert hooks.ignoring_user_warnings(warnings.warn, "inside", UserWarning) is None
        warnings.warn("outside", UserWarning, stacklevel=1)
    assert [str(warning.message) for warning in seen] == ["outside"]
    assert warnings.filters == before
    assert hooks.STATUS["warnings_filters"].way == "public"


# -- what cannot work is refused -------------------------------------------------------------

async def test_no_chain_at_all_is_an_error_record_not_a_crash(
    fresh: pytest.MonkeyPatch, servers: Servers,
) -> None:
    # The private chain gone on a Python without the public one (before 3.13, as here).
    if hasattr(ssl.SSLObject, "get_unverified_chain"):
        fresh.delattr(ssl.SSLObject, "get_unverified_chain")
    fresh.setattr(hooks, "_native_chain", _gone)
    records = await servers.scan()
    assert [(r["status"], r["error"]["type"]) for r in records] == [("error", "internal")] * 2
    assert "cannot read the certificate chains" in records[0]["error"]["message"]
    assert hooks.STATUS["unverified_chain"].way == "refused"


def _libc() -> str:
    path = ctypes.util.find_library("c")
    if path is None:
        pytest.skip("no C library to stand in for a statically linked _ssl")
    return path


async def test_no_shared_libcrypto_refuses_verdicts_only(
    fresh: pytest.MonkeyPatch, servers: Servers,
) -> None:
    expected = await servers.scan(verdicts=False)
    _forget()
    fresh.setattr(_ssl, "__file__", _libc())  # an _ssl whose handle reaches no libcrypto
    with pytest.raises(scanner.UnsupportedPlatform, match="no verdicts on this platform"):
        await servers.scan()
    assert hooks.STATUS["libcrypto"].way == "refused"
    assert await servers.scan(verdicts=False) == expected  # scans without verdicts work


async def test_the_cli_refuses_verdicts_in_one_line(ca_pem: str) -> None:
    script = ("import _ssl, sys\n"
              f"_ssl.__file__ = {_libc()!r}\n"
              "from scanner.cli import main\n"
              "sys.exit(main())\n")
    target = f"{next_address()}:9"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, "scan", "-t", target, "--ca-bundle", ca_pem,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode == 2
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("certscan: error: --ca-bundle: no verdicts on this platform")
    assert "statically" in lines[0]


async def test_selfcheck_prints_every_hook() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scanner.selfcheck",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert (process.returncode, err) == (0, b"")
    *lines, engine, keys = out.decode().splitlines()
    assert [line.split() for line in lines] == [[name, "private"] for name in hooks._FRESH]
    assert engine.startswith("engine auto ")
    assert keys == f"verdict keys     {openssl.bind().legacy_keys_why}"


# -- rustls_connection: rtls's connection driven directly, or its TLSObject ------------------

_needs_rustls = pytest.mark.skipif(rustls_missing() is not None,
                                   reason=f"the rustls engine: {rustls_missing()}")


async def _rustls_records(servers: Servers) -> list[Record]:
    """The servers' records through the rustls engine, and the ends a handshake can meet
    before it finishes: bytes that are not TLS, an alert, a FIN, a reset."""
    odd = [garbage, alert(40), fin_after_hello, rst_after_hello]
    async with contextlib.AsyncExitStack() as stack:
        raws = [await stack.enter_async_context(raw_server(b)) for b in odd]
        labels = {raw.target: f"raw-{n}" for n, raw in enumerate(raws)}
        records = [record async for record in scanner.scan(
            [*servers.targets, *labels], timeout=2.0, engine="rustls",
            ca_bundle=servers.bundle)]
    for record in records:
        for key in _VOLATILE:
            record.pop(key)
        if record["target"] in labels:  # a new address each time: named by its behaviour
            record.update(target=labels[record["target"]], host=None, ip=None, port=None)
    return sorted(records, key=lambda record: str(record["target"]))


def _other_suite_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """An rtls whose TLSObject names suites otherwise than the table this hook reads."""
    monkeypatch.setattr(hooks._RustlsDirect, "cipher",
                        lambda self: ("TLS13_AES_128_GCM_SHA256", "TLSv1.3", 128))


def _no_names_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """An rtls that keeps its names elsewhere (its private tables renamed)."""
    monkeypatch.setattr(hooks, "_rtls_tables", _gone)


def _eof_unseen(monkeypatch: pytest.MonkeyPatch) -> None:
    """A direct way that waits for ever after a FIN, as rtls's TLSObject itself does."""
    real = hooks._RustlsDirect.do_handshake

    def do_handshake(self: Any) -> None:
        try:
            real(self)
        except ssl.SSLEOFError:
            raise ssl.SSLWantReadError("want read") from None

    monkeypatch.setattr(hooks._RustlsDirect, "do_handshake", do_handshake)


@_needs_rustls
@pytest.mark.parametrize("breakage", [_other_suite_names, _no_names_table, _eof_unseen],
                         ids=["suite names", "no names table", "eof unseen"])
async def test_rustls_fallback_gives_the_same_records(
    breakage: Callable[[pytest.MonkeyPatch], None], fresh: pytest.MonkeyPatch,
    servers: Servers,
) -> None:
    expected = await _rustls_records(servers)
    assert hooks.STATUS["rustls_connection"] == hooks.HookStatus("private")
    assert [r["engine"] for r in expected] == ["rustls"] * len(expected)
    assert [r["status"] for r in expected].count("ok") == 2
    assert {r["error"]["type"] for r in expected if r["error"]} == {
        "not_tls", "tls_alert", "closed", "reset"}
    _forget()
    breakage(fresh)
    assert await _rustls_records(servers) == expected
    assert hooks.STATUS["rustls_connection"].way == "public"
    assert hooks.STATUS["rustls_connection"].why


@_needs_rustls
def test_rustls_direct_answers_as_rtls_does(fresh: object) -> None:
    """Both ways, field by field, on the self-test server with ALPN: rtls's own names."""
    assert hooks._rustls_direct()
    server = hooks._self_test_server([])
    server.set_alpn_protocols(["h2"])
    client = hooks._rustls_context_for_test(["h2", "http/1.1"])
    direct = hooks._handshake(server, lambda i, o: hooks.rustls_wrap(client, i, o, "a.test"))
    assert type(direct) is hooks._RustlsDirect
    public = hooks._handshake(server, lambda i, o: hooks._public_rustls(client, i, o, "a.test"))
    assert direct.version() == public.version() == "TLSv1.3"
    assert direct.cipher() == public.cipher() == public.inner.cipher()
    assert direct.selected_alpn_protocol() == public.selected_alpn_protocol() == "h2"
    assert direct.chain() == public.chain() == tuple(
        ssl.PEM_cert_to_DER_cert(pem) for pem in hooks._SELF_TEST_CHAIN)


@_needs_rustls
@pytest.mark.parametrize("wrap", ["rustls_wrap", "_public_rustls"])
def test_a_server_flight_larger_than_rustls_takes_at_once(
        fresh: object, ca: trustme.CA, tmp_path: Path, wrap: str) -> None:
    """A leaf of 1500 names under an intermediate (~24 KB in one flight, given to the
    client at once): rustls takes 4 KiB a call, and refuses more until it has processed
    them."""
    leaf = ca.create_child_ca().issue_cert(*(f"h{n}.big.test" for n in range(1500)))
    pem = tmp_path / "big.pem"
    pem.write_bytes(b"".join(blob.bytes() for blob in (leaf.private_key_pem,
                                                          *leaf.cert_chain_pems)))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pem)
    client = hooks._rustls_context_for_test([])
    tls = hooks._handshake(server, lambda i, o: getattr(hooks, wrap)(client, i, o, "big.test"))
    expected = tuple(ssl.PEM_cert_to_DER_cert(blob.bytes().decode())
                     for blob in leaf.cert_chain_pems)
    assert sum(map(len, expected)) > 16 << 10
    assert tls.chain() == expected
