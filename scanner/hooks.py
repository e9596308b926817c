"""Every private interpreter, OpenSSL, cryptography and rtls internal certscan uses, in one
place.

Each hook is three things: the fast private way; a self-test that checks, on a real object,
that the private way gives exactly what the public way gives; and the public fallback, used
when the self-test fails or the private attribute is missing. So a new Python, OpenSSL,
cryptography or rtls makes certscan slower, never wrong and never a crash. What cannot work
at all is refused with one clear message (`UnsupportedPlatform`), never guessed at.

| hook             | private way                                | public fallback              |
| ---------------- | ------------------------------------------ | ---------------------------- |
| wrap_bio         | SSLContext._wrap_bio: the _ssl._SSLSocket  | SSLContext.wrap_bio          |
| unverified_chain | _SSLSocket.get_unverified_chain() (3.10+): | SSLObject's (3.13+): DER     |
|                  | _ssl.Certificate objects, to lend (via     | only; before 3.13: refused   |
|                  | SSLObject._sslobj if wrap_bio fell back)   |                              |
| encoding_der     | Certificate.public_bytes(ENCODING_DER)     | its PEM, then PEM -> DER     |
| certificate_x509 | the X509* inside an _ssl.Certificate       | d2i_X509 of its DER          |
| libcrypto        | dlsym through _ssl's own handle: the copy  | none: verdicts refused       |
|                  | of libcrypto _ssl itself calls             |                              |
| oid_name         | ObjectIdentifier._name                     | _SIGNATURE_NAMES             |
| name_attribute   | NameAttribute(..., _validate=False)        | _RFC4514_LABELS              |
| warnings_filters | an "ignore" put first in warnings.filters  | warnings.catch_warnings      |
| rustls_connection| rtls's RustlsClientConnection, from its    | rtls's TLSContext.wrap_bio   |
|                  | context's builder, driven directly         | (its TLSObject)              |

When each self-test runs (times measured on CPython 3.11.7, OpenSSL 3.0.19):

- warnings_filters: at import (10 to 70 us).
- wrap_bio, unverified_chain, encoding_der: on the first handshake a process makes, not at
  import: they need real `_ssl.Certificate` objects, which only a handshake makes, so the
  test is an in-memory handshake by each way against a certificate built in below (~6 ms
  in a fresh process, with its two SSLContexts: a cost `certscan --version` and every usage
  error would pay for nothing, were it at import).
- libcrypto: on the first verdict (a scan without a trust store never needs it).
- certificate_x509: on the first certificate a verdict lends (it needs libcrypto bound).
- rustls_connection: on the first rustls handshake (two in-memory handshakes with the
  self-test server, two failed ones; ~2 ms), which is engines.rustls_missing's, made
  before workers fork.
- oid_name, name_attribute: on the first certificate cryptography reads (importing
  cryptography costs ~55 ms, which most scans never pay: certs.py's fast path needs none).

`STATUS` says how each hook is served in this process so far; `python -m scanner.selfcheck`
runs every self-test and prints it. Checked, every private way passing, with cryptography
51.0.1 and rtls 2026.9.21: CPython 3.11.7 with OpenSSL 3.0.19 (pyenv) and CPython 3.13.5
with OpenSSL 3.5 (Debian 13), where the public chain of 3.13 was also checked as the
fallback. 3.12 was not run: its ssl.py calls `_wrap_bio` as 3.11's and 3.13's do; the
self-tests decide there.
"""

from __future__ import annotations

import _ssl
import ctypes
import functools
import os
import ssl
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

if TYPE_CHECKING:
    from _ssl import Certificate as NativeCertificate

    from cryptography import x509

__all__ = [
    "STATUS",
    "HookStatus",
    "NativeCertificate",
    "RustlsTls",
    "UnsupportedPlatform",
    "attribute_label",
    "certificate_der",
    "ignoring_user_warnings",
    "lend",
    "libcrypto",
    "oid_name",
    "rustls_wrap",
    "settle_all",
    "unverified_chain",
    "wrap_bio",
]

P = ParamSpec("P")
T = TypeVar("T")


class UnsupportedPlatform(RuntimeError):
    """What certscan cannot do on this platform, and why: refused rather than guessed at."""


@dataclass(frozen=True, slots=True)
class HookStatus:
    """How one hook is served: "private" (its self-test passed), "public" (the fallback,
    `why` says what failed), "unchecked" (its self-test has not run yet: `why` says when it
    will) or "refused" (no way works here: `why` says why)."""

    way: Literal["private", "public", "unchecked", "refused"]
    why: str = ""

    def __str__(self) -> str:
        label = "public fallback" if self.way == "public" else self.way
        return f"{label}: {self.why}" if self.why else label


_FRESH: dict[str, HookStatus] = {
    "wrap_bio": HookStatus("unchecked", "on the first handshake"),
    "unverified_chain": HookStatus("unchecked", "on the first handshake"),
    "encoding_der": HookStatus("unchecked", "on the first handshake"),
    "certificate_x509": HookStatus("unchecked", "on the first certificate a verdict lends"),
    "libcrypto": HookStatus("unchecked", "on the first verdict"),
    "rustls_connection": HookStatus("unchecked", "on the first rustls handshake"),
    "oid_name": HookStatus("unchecked", "on the first certificate cryptography reads"),
    "name_attribute": HookStatus("unchecked", "on the first oddly encoded attribute type"),
    "warnings_filters": HookStatus("unchecked", "at import"),
}
# Hook name -> how this process serves it. Written once per hook, when its self-test runs
# (two threads racing to write it write the same thing); read by whoever wants to show it.
STATUS: dict[str, HookStatus] = dict(_FRESH)


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _settled(name: str, why: str | None) -> bool:
    STATUS[name] = _way(why)
    return why is None


# -- warnings_filters ------------------------------------------------------------------------

# What warnings.simplefilter("ignore", UserWarning) puts first in the list.
_IGNORE_USER_WARNINGS = ("ignore", None, UserWarning, None, 0)


def _context_aware_warnings() -> bool:
    """3.14+ may keep filters per context, and warn() then reads those, not the list."""
    return bool(getattr(sys.flags, "context_aware_warnings", False))


@functools.cache
def _direct_filters() -> bool:
    """Whether inserting into `warnings.filters` is what simplefilter does and takes effect."""
    try:
        why = _filters_differ()
    except Exception as exc:  # whatever a changed warnings module raises: use its public API
        why = _failure(exc)
    return _settled("warnings_filters", why)


def _filters_differ() -> str | None:
    if _context_aware_warnings():
        return "warnings filters are kept per context here (sys.flags.context_aware_warnings)"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("ignore", UserWarning)
        made = warnings.filters[0]
        warnings.simplefilter("always")
        filters = warnings.filters
        if type(filters) is not list:
            return f"warnings.filters is a {type(filters).__name__}, not a list"
        filters.insert(0, _IGNORE_USER_WARNINGS)
        try:
            warnings.warn("hidden", UserWarning, stacklevel=1)
        finally:
            filters.remove(_IGNORE_USER_WARNINGS)
        warnings.warn("shown", UserWarning, stacklevel=1)
    if made != _IGNORE_USER_WARNINGS:
        return f"simplefilter('ignore', UserWarning) makes {made!r}"
    if [str(warning.message) for warning in seen] != ["shown"]:
        return "a filter put into warnings.filters does not act as simplefilter's does"
    return None


def ignoring_user_warnings(read: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``read(*args, **kwargs)`` with UserWarnings ignored.

    Private way: what catch_warnings does, at a fraction of its cost: put an "ignore" filter
    first in the process-wide list and take it out again, skipping warnings' private
    ``_filters_mutated()``, which only makes warnings shown once show again (and "ignore"
    records none). Process-wide, so call from one thread (the event loop), not a pool.
    Public fallback: ``warnings.catch_warnings``.
    """
    if _direct_filters():
        filters: list[object] = warnings.filters  # type: ignore[assignment]
        filters.insert(0, _IGNORE_USER_WARNINGS)
        try:
            return read(*args, **kwargs)
        finally:
            filters.remove(_IGNORE_USER_WARNINGS)  # the first equal one: ours
    with warnings.catch_warnings(action="ignore", category=UserWarning):
        return read(*args, **kwargs)


# -- wrap_bio, unverified_chain, encoding_der: judged by one in-memory handshake -------------

# A CA and a leaf it issued (EC P-256, valid 2000 to 9999), and the leaf's key: what the
# self-test's server sends. Not a secret: the key signs nothing but these handshakes.
_TEST_NAME = "self-test.invalid"
_SELF_TEST_CHAIN = (
    """-----BEGIN CERTIFICATE-----
MIIBTDCB9KADAgECAgECMAoGCCqGSM49BAMCMCAxHjAcBgNVBAMMFWNlcnRzY2Fu
IHNlbGYtdGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA85OTk5MTIzMTIzNTk1OVow
HTEbMBkGA1UEAwwSY2VydHNjYW4gc2VsZi10ZXN0MFkwEwYHKoZIzj0CAQYIKoZI
zj0DAQcDQgAEDdRl2ej8d+H0awN1rCF+mt+c9oeJTtcmOAvDU9vUoBYz7vqW6wFK
nHPWF9sL3s9m/HHs4PfrU7KahgjI0Sm+kaMgMB4wHAYDVR0RBBUwE4IRc2VsZi10
ZXN0LmludmFsaWQwCgYIKoZIzj0EAwIDRwAwRAIgEOEtIHtoq2OB0Dhco9YvtNBS
q/ktTVB4Rf71N7WHXT4CIAYyM1/vduwWHSKPlygR+NUzLP+9pAfOyt4Wsq7+PtIm
-----END CERTIFICATE-----
""",
    """-----BEGIN CERTIFICATE-----
MIIBRDCB6qADAgECAgEBMAoGCCqGSM49BAMCMCAxHjAcBgNVBAMMFWNlcnRzY2Fu
IHNlbGYtdGVzdCBDQTAgFw0wMDAxMDEwMDAwMDBaGA85OTk5MTIzMTIzNTk1OVow
IDEeMBwGA1UEAwwVY2VydHNjYW4gc2VsZi10ZXN0IENBMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAET2BzcYJje5LRZxLU5qkcQDerWJBSaDg/Ntbz5ozfKZ2/dJTO
dziLtOvidoEyEIJ1tmhg9xSG0ReO/VxMVUhMAqMTMBEwDwYDVR0TAQH/BAUwAwEB
/zAKBggqhkjOPQQDAgNJADBGAiEA/8RSfJ4qff0/b/sGctM0kI+innrqh6xZtOhQ
Cxov1nECIQDmGNAGAaoTnJt6v+9wYl3M+nGa/d9JM2s3v3SuUBItfw==
-----END CERTIFICATE-----
""",
)
_SELF_TEST_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZtZFAw6XntDVsemz
er/OtJkR3muO6bn9mS6sJnEkLgShRANCAAQN1GXZ6Px34fRrA3WsIX6a35z2h4lO
1yY4C8NT29SgFjPu+pbrAUqcc9YX2wvez2b8cezg9+tTspqGCMjRKb6R
-----END PRIVATE KEY-----
"""
# The only type whose objects lend their X509 (see certificate_x509); None if gone.
_CERTIFICATE: type | None = getattr(_ssl, "Certificate", None)


@dataclass(frozen=True, slots=True)
class _Capture:
    """How handshakes are made and read in this process."""

    private_wrap: bool  # SSLContext._wrap_bio (the _SSLSocket itself), else wrap_bio
    chain: Literal["private", "public", "none"]  # "none": no way to the chain works here
    der: int | None  # _ssl.ENCODING_DER when it checked out; None: DER through PEM


def _private_wrap_bio(context: ssl.SSLContext, incoming: ssl.MemoryBIO,
                      outgoing: ssl.MemoryBIO, server_hostname: str) -> Any:
    # What wrap_bio calls (SSLObject._create does so, 3.7 to 3.13 at least), minus the
    # SSLObject, whose Python frame per call (handshake step, version, cipher) costs more
    # than the calls. _wrap_bio takes ASCII only: this is wrap_bio's own encoding of the name.
    if not server_hostname.isascii():
        server_hostname = server_hostname.encode("idna").decode("ascii")
    return context._wrap_bio(  # type: ignore[attr-defined]
        incoming, outgoing, server_side=False, server_hostname=server_hostname,
        owner=None, session=None,
    )


def _native_chain(sslsocket: Any) -> Any:
    """The private method itself: _ssl.Certificate objects, each wrapping the X509 libssl
    decoded from the server's Certificate message (3.10 on)."""
    return sslsocket.get_unverified_chain()


def _sslsocket(tls: Any, capture: _Capture) -> Any:
    """The _ssl._SSLSocket behind what wrap_bio returned (an SSLObject keeps it as _sslobj)."""
    return tls if capture.private_wrap else tls._sslobj


@functools.cache
def _capture() -> _Capture:
    try:
        capture, status = _capture_self_test()
    except Exception as exc:  # no handshake even the public way: nothing to judge by
        capture, status = _untested(_failure(exc))
    STATUS.update(status)
    return capture


def _capture_self_test() -> tuple[_Capture, dict[str, HookStatus]]:
    """Handshakes with a server sending _SELF_TEST_CHAIN: the public way, then the private
    one, compared with each other and with what the server sent."""
    expected = [ssl.PEM_cert_to_DER_cert(pem) for pem in _SELF_TEST_CHAIN]
    names: list[str | None] = []
    server, client = _self_test_server(names), _self_test_client()
    public = _handshake(server, lambda i, o: client.wrap_bio(i, o, server_hostname=_TEST_NAME))
    private: Any = None
    try:
        private = _handshake(server, lambda i, o: _private_wrap_bio(client, i, o, _TEST_NAME))
        wrap_why = _session_differs(private, public, expected[0], names)
    except Exception as exc:
        wrap_why = _failure(exc)
    private_wrap = wrap_why is None
    status = {"wrap_bio": _way(wrap_why)}
    try:
        natives = _native_chain(private if private_wrap else public._sslobj)
        chain_why = _not_certificates(natives, len(expected))
    except Exception as exc:
        natives, chain_why = None, _failure(exc)
    der_value = getattr(_ssl, "ENCODING_DER", None)
    if chain_why is not None:
        der_why: str | None = "unchecked for want of certificate objects: their PEM is used"
    else:
        der_why = _der_differs(natives, der_value, expected)
        if der_why is not None and _encodings_differ(natives, None, expected) is not None:
            chain_why = "neither their DER nor their PEM is the certificate the server sent"
    status["encoding_der"] = _way(der_why)
    der = der_value if der_why is None and isinstance(der_value, int) else None
    if chain_why is None:
        status["unverified_chain"] = HookStatus("private")
        return _Capture(private_wrap, "private", der), status
    # 3.13+: SSLObject.get_unverified_chain gives the chain, as DER (no objects to lend).
    public_why = _public_chain_differs(public, expected)
    if public_why is not None:
        status["unverified_chain"] = HookStatus("refused", f"{chain_why}; and {public_why}")
        return _Capture(private_wrap, "none", der), status
    status["unverified_chain"] = HookStatus("public", chain_why)
    if private_wrap:
        status["wrap_bio"] = HookStatus("public", "the public chain is ssl.SSLObject's")
    return _Capture(False, "public", der), status


def _way(why: str | None) -> HookStatus:
    return HookStatus("private") if why is None else HookStatus("public", why)


def _untested(why: str) -> tuple[_Capture, dict[str, HookStatus]]:
    """No self-test handshake: public ways where they exist; the chain before 3.13 has none."""
    why = f"no self-test handshake ({why})"
    public_chain = hasattr(ssl.SSLObject, "get_unverified_chain")
    der_value = getattr(_ssl, "ENCODING_DER", None)
    return _Capture(False, "public" if public_chain else "private",
                    der_value if isinstance(der_value, int) else None), {
        "wrap_bio": HookStatus("public", why),
        "unverified_chain": HookStatus("public", why) if public_chain
        else HookStatus("private", f"unchecked: {why}"),
        "encoding_der": HookStatus("private", f"unchecked: {why}") if isinstance(
            der_value, int) else HookStatus("public", "_ssl.ENCODING_DER is gone"),
    }


def _self_test_server(names: list[str | None]) -> ssl.SSLContext:
    import tempfile

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain reads files only: a private directory (0700), gone once loaded.
    with tempfile.TemporaryDirectory(prefix="certscan-") as directory:
        path = os.path.join(directory, "self-test.pem")
        with open(path, "w", encoding="ascii") as file:
            file.write(_SELF_TEST_KEY + "".join(_SELF_TEST_CHAIN))
        server.load_cert_chain(path)
    server.sni_callback = lambda _tls, name, _context: names.append(name)
    return server


def _self_test_client() -> ssl.SSLContext:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE  # as the capture's
    return client


def _handshake(server: ssl.SSLContext, wrap: Callable[[ssl.MemoryBIO, ssl.MemoryBIO], Any]
               ) -> Any:
    """A whole handshake in memory: the client `wrap` makes, and a server on `server`."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = wrap(client_in, client_out)
    peer = server.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(8):  # TLS 1.3 takes three rounds, 1.2 four
        finished = True
        for side in (client, peer):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                finished = False
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if finished:
            return client
    raise ssl.SSLError("the self-test handshake did not finish")


def _session_differs(private: Any, public: ssl.SSLObject, leaf: bytes,
                     names: list[str | None]) -> str | None:
    """What the private object answers that the public one does not (None: nothing)."""
    for method in ("version", "cipher", "selected_alpn_protocol"):
        if getattr(private, method)() != getattr(public, method)():
            return f"its {method}() differs from ssl.SSLObject's"
    if private.getpeercert(True) != leaf or public.getpeercert(True) != leaf:
        return "getpeercert(True) is not the leaf the server sent"
    if names != [_TEST_NAME, _TEST_NAME]:
        return f"the server names sent were {names}"
    return None


def _public_chain_differs(public: ssl.SSLObject, expected: list[bytes]) -> str | None:
    method = getattr(public, "get_unverified_chain", None)
    if not callable(method):
        return "ssl.SSLObject has no get_unverified_chain (3.13+)"
    try:
        chain = list(method())
    except Exception as exc:
        return f"ssl.SSLObject.get_unverified_chain: {_failure(exc)}"
    return None if chain == expected else "ssl.SSLObject.get_unverified_chain gives another"


def _not_certificates(natives: Any, count: int) -> str | None:
    if not isinstance(natives, list | tuple) or len(natives) != count:
        return f"get_unverified_chain() gave {type(natives).__name__}, not the {count} sent"
    if _CERTIFICATE is None or any(type(cert) is not _CERTIFICATE for cert in natives):
        return "get_unverified_chain() gave no _ssl.Certificate objects"
    return None


def _der_differs(natives: Any, der_value: object, expected: list[bytes]) -> str | None:
    """What keeps `natives` from giving `expected` with `der_value` (_ssl.ENCODING_DER)."""
    if not isinstance(der_value, int):
        return "_ssl.ENCODING_DER is gone" if der_value is None else (
            f"_ssl.ENCODING_DER is {der_value!r}, not a number")
    return _encodings_differ(natives, der_value, expected)


def _encodings_differ(natives: Any, der_value: int | None, expected: list[bytes]
                      ) -> str | None:
    """What keeps `natives` from encoding as `expected` (None: nothing), with `der_value`,
    or with None through their PEM (public_bytes' default format)."""
    try:
        got = [_encoded(cert, der_value) for cert in natives]
    except Exception as exc:
        return _failure(exc)
    return None if got == expected else "not the DER the server sent"


def _encoded(cert: Any, der_value: int | None) -> bytes:
    if der_value is None:
        return ssl.PEM_cert_to_DER_cert(cert.public_bytes())
    der: bytes = cert.public_bytes(der_value)
    return der


def wrap_bio(context: ssl.SSLContext, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
             server_hostname: str) -> Any:
    """A client TLS object on memory BIOs with `do_handshake`, `version`, `cipher` and
    `selected_alpn_protocol`, as an ``ssl.SSLObject`` has them and raising the same errors:
    the ``_ssl._SSLSocket`` itself (private), or the SSLObject around it (public).
    UnsupportedPlatform where no way to read the chain works (see `unverified_chain`)."""
    capture = _capture()
    if capture.chain == "none":
        raise UnsupportedPlatform(
            f"certscan cannot read the certificate chains servers send on this Python "
            f"({sys.version.split()[0]}): {STATUS['unverified_chain'].why}")
    if capture.private_wrap:
        return _private_wrap_bio(context, incoming, outgoing, server_hostname)
    return context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)


def unverified_chain(tls: Any) -> tuple[tuple[bytes, ...], tuple[NativeCertificate, ...]]:
    """The certificates as the server sent them, leaf first: (DER, the handshake's own
    certificate objects). The objects (private way) let a verdict lend their X509s instead
    of decoding the DER again; the public way (3.13's SSLObject.get_unverified_chain) gives
    DER only, and the second tuple is empty. ``tls`` is what `wrap_bio` returned."""
    capture = _capture()
    if capture.chain == "public":
        return tuple(tls.get_unverified_chain()), ()
    native = tuple(_native_chain(_sslsocket(tls, capture)) or ())
    return tuple([certificate_der(cert) for cert in native]), native


def certificate_der(cert: Any) -> bytes:
    """The DER of an ``_ssl.Certificate`` (or of anything with its ``public_bytes``)."""
    return _encoded(cert, _capture().der)


# -- rustls_connection: rtls's connection object, driven without its Python layer -----------

class RustlsTls:
    """A client handshake on rustls over memory BIOs, as the probe drives it (the methods of
    an ``ssl.SSLObject`` it uses, raising the same errors), and the chain as DER.

    The public way wraps rtls's ``TLSObject`` (``TLSContext.wrap_bio``). rtls never reads a
    BIO's end of file: after the server's FIN it asks for more bytes for ever, where _ssl
    raises SSLEOFError; that one difference is made up here, in both ways."""

    __slots__ = ("_incoming", "inner")

    def __init__(self, inner: Any, incoming: ssl.MemoryBIO) -> None:
        self.inner = inner
        self._incoming = incoming

    def do_handshake(self) -> None:
        try:
            self.inner.do_handshake()
        except ssl.SSLWantReadError:
            if self._incoming.eof:
                raise _rustls_eof() from None
            raise

    def version(self) -> str | None:
        version: str | None = self.inner.version()
        return version

    def cipher(self) -> tuple[str, str, int] | None:
        cipher: tuple[str, str, int] | None = self.inner.cipher()
        return cipher

    def selected_alpn_protocol(self) -> str | None:
        alpn: str | None = self.inner.selected_alpn_protocol()
        return alpn

    def chain(self) -> tuple[bytes, ...]:
        return tuple(cert.public_bytes() for cert in self.inner.get_unverified_chain() or ())


class _RustlsDirect:
    """The private way: rtls's ``RustlsClientConnection`` (made by the builder its context
    keeps, ``TLSContext._get_builder()``) driven as rtls's own ``TLSObject`` drives it for a
    handshake, without that object's Python frames and its BIO copying (20-30 us of client
    CPU per handshake; bench/engines.py). Bytes rustls cannot take yet are kept here, not written
    back to a BIO that may have seen its end of file."""

    __slots__ = ("_conn", "_incoming", "_outgoing", "_unread")

    def __init__(self, conn: Any, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self._conn = conn
        self._incoming = incoming
        self._outgoing = outgoing
        self._unread = b""  # bytes rustls could not take yet (its buffer full)
        self._flush()  # the ClientHello

    def _flush(self) -> None:
        conn = self._conn
        while conn.wants_write():
            data = conn.write_tls()
            if not data:
                break
            self._outgoing.write(data)

    def do_handshake(self) -> None:
        conn = self._conn
        if not conn.is_handshaking():
            return
        data = self._unread + self._incoming.read()
        try:
            # read_tls takes at most 4 KiB a call, and refuses more ("buffer full") until
            # the records it holds are processed: so, chunk by chunk, each processed at once.
            while data and conn.is_handshaking():
                try:
                    taken = conn.read_tls(data)
                except ssl.SSLError as exc:
                    if "buffer full" not in str(exc):
                        raise
                    taken = 0
                data = data[taken:]
                conn.process_new_packets()
                if not taken:  # no room even after processing: the rest waits
                    break
        finally:
            self._unread = data
            self._flush()  # an alert rustls sends, or our next flight
        if conn.is_handshaking():
            if self._incoming.eof:
                raise _rustls_eof()
            raise ssl.SSLWantReadError(ssl.SSL_ERROR_WANT_READ,
                                       "The handshake operation did not complete")

    def version(self) -> str | None:
        number = self._conn.protocol_version()
        return None if number is None else _RUSTLS_VERSIONS.get(number)

    def cipher(self) -> tuple[str, str, int] | None:
        conn = self._conn
        suite = conn.negotiated_cipher_suite()
        if suite is None:
            return None
        number = conn.protocol_version()
        version = _RUSTLS_VERSIONS.get(number, "unknown") if number else "unknown"
        return (_RUSTLS_SUITES.get(suite, suite), version,
                conn.negotiated_cipher_suite_bits() or 0)

    def selected_alpn_protocol(self) -> str | None:
        alpn = self._conn.alpn_protocol()
        return None if alpn is None else alpn.decode("ascii", errors="replace")

    def chain(self) -> tuple[bytes, ...]:
        return tuple(bytes(der) for der in self._conn.peer_certificates() or ())


def _rustls_eof() -> ssl.SSLEOFError:
    error = ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "EOF occurred in violation of protocol (rustls)")
    error.reason = "UNEXPECTED_EOF_WHILE_READING"
    error.library = "rustls"
    return error


# rtls's own names for rustls's version numbers and suites, the ones its TLSObject answers
# with: read from rtls by the self-test, which holds the private way to them.
_RUSTLS_VERSIONS: dict[int, str] = {}
_RUSTLS_SUITES: dict[str, str] = {}


def _rustls_context_for_test(alpn: list[str]) -> Any:
    import rtls

    context = rtls.SSLContext(rtls.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    return context


def _private_rustls(context: Any, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                    server_hostname: str) -> _RustlsDirect:
    conn = context._get_builder().build_client_connection(server_hostname)
    return _RustlsDirect(conn, incoming, outgoing)


def _public_rustls(context: Any, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                   server_hostname: str) -> RustlsTls:
    return RustlsTls(context.wrap_bio(incoming, outgoing, server_hostname=server_hostname),
                     incoming)


@functools.cache
def _rustls_direct() -> bool:
    """Whether the private way answers as the public one: a handshake each way with the
    self-test server (ALPN on), then garbage from a server, then a FIN mid-handshake."""
    try:
        why = _rustls_differs()
    except ImportError as exc:
        STATUS["rustls_connection"] = HookStatus("unchecked", f"rtls does not import ({exc})")
        return False
    except Exception as exc:
        why = _failure(exc)
    return _settled("rustls_connection", why)


def _rtls_tables() -> tuple[dict[int, str], dict[str, str]]:
    """rtls's private tables of names: version numbers, and rustls's suites in OpenSSL's
    names (what its TLSObject answers with)."""
    from rtls import _object

    return dict(_object._VERSION_MAP), dict(_object._SUITE_TO_OPENSSL)


def _rustls_differs() -> str | None:
    versions, suites = _rtls_tables()
    _RUSTLS_VERSIONS.update(versions)
    _RUSTLS_SUITES.update(suites)
    expected = [ssl.PEM_cert_to_DER_cert(pem) for pem in _SELF_TEST_CHAIN]
    server = _self_test_server([])
    server.set_alpn_protocols(["h2"])
    client = _rustls_context_for_test(["h2", "http/1.1"])
    answers = []
    for wrap in (_public_rustls, _private_rustls):
        def made(incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 wrap: Callable[..., Any] = wrap) -> Any:
            return wrap(client, incoming, outgoing, _TEST_NAME)

        tls = _handshake(server, made)
        answers.append((tls.version(), tls.cipher(), tls.selected_alpn_protocol(),
                        list(tls.chain())))
    if answers[0] != answers[1]:
        return f"a handshake answers {answers[1][:3]}, not rtls's {answers[0][:3]}"
    if answers[1][3] != expected:
        return "the chain is not the one the server sent"
    for ending in (b"HTTP/1.1 400 Bad Request\r\n\r\n", b""):
        failures = [_rustls_failure(wrap, client, ending)
                    for wrap in (_public_rustls, _private_rustls)]
        if failures[0] != failures[1]:
            return f"{ending!r} from a server raises {failures[1]}, not {failures[0]}"
    return None


def _rustls_failure(wrap: Callable[..., Any], client: Any, answer: bytes) -> str:
    """What a client raises when a server answers its hello with `answer` and a FIN."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = wrap(client, incoming, outgoing, _TEST_NAME)
    if not outgoing.read():
        return "no ClientHello"
    incoming.write(answer)
    incoming.write_eof()
    try:
        tls.do_handshake()
    except ssl.SSLError as exc:
        return f"{type(exc).__name__} {getattr(exc, 'reason', None)} {exc}"
    return "no error"


def rustls_wrap(context: ssl.SSLContext, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                server_hostname: str) -> RustlsTls | _RustlsDirect:
    """A client TLS object for an rtls context: rtls's connection driven directly (private,
    where its self-test passed), else around rtls's public ``wrap_bio``. Both have
    `do_handshake`, `version`, `cipher`, `selected_alpn_protocol` and `chain` (DER)."""
    if _rustls_direct():
        return _private_rustls(context, incoming, outgoing, server_hostname)
    return _public_rustls(context, incoming, outgoing, server_hostname)


# -- certificate_x509: lending the X509 inside an _ssl.Certificate ----------------------------
#
# CPython's _ssl.Certificate (3.10 to 3.13 at least: Modules/_ssl.h, then Modules/_ssl/cert.c)
# is
#
#     typedef struct { PyObject_HEAD  X509 *cert;  Py_hash_t hash; } PySSLCertificate;
#
# and owns one reference to `cert` (newCertificate takes it with X509_up_ref, the dealloc
# drops it with X509_free) for as long as the Python object lives. `cert` is the X509 libssl
# decoded from the server's Certificate message during the handshake.
#
# Where `cert` sits: PyObject_HEAD is a single `PyObject ob_base`, and object.__basicsize__
# is sizeof(PyObject) (tp_basicsize of the base object type, which has nothing else): 16 on
# a regular 64-bit build (ob_refcnt, ob_type), more under Py_TRACE_REFS or free threading.
# PyObject holds pointers, so its alignment is at least a pointer's and its size (C pads a
# struct to its alignment) a multiple of it: the X509* follows with no padding, at offset
# object.__basicsize__.
# The struct is then that plus a pointer plus a Py_hash_t (a Py_ssize_t), which must equal
# Certificate.__basicsize__ (its tp_basicsize, sizeof(PySSLCertificate)). Any change to the
# struct that moved `cert` would change that size, so the size is checked, together with
# the name; then, once per process, the pointer itself (see _layout_holds).
_X509_OFFSET = object.__basicsize__
_CERTIFICATE_SIZE = (
    _X509_OFFSET + ctypes.sizeof(ctypes.c_void_p) + ctypes.sizeof(ctypes.c_ssize_t)
)
# The once-per-process verdict on the layout ("ok" -> bool), taken on the first Certificate
# seen. A dict rather than a global; two threads racing to fill it reach the same answer.
_LAYOUT: dict[str, bool] = {}


def _x509_in(cert: object) -> int:
    """The X509* stored in ``cert``'s struct (no reference taken): only for vetted types."""
    return ctypes.c_void_p.from_address(id(cert) + _X509_OFFSET).value or 0


def _layout_holds(lib: ctypes.CDLL, cert: object) -> bool:
    """Whether a Certificate's struct really holds its X509* at ``_X509_OFFSET``.

    First what can be checked without touching the pointer: CPython (``id`` is an address
    there, not elsewhere), the type's name, module and size as derived above. Only then is
    the pointer read and dereferenced once, the decisive test: it must be non-NULL and
    aligned, and OpenSSL's encoding of the X509 it points to must be byte for byte the DER
    the object reports (``public_bytes`` is i2d_X509 of its own ``cert``, so this can only
    hold if the pointer is that X509). i2d of a decoded certificate re-emits the encoding it
    cached while decoding, so this costs a few microseconds, once. ``lib`` is bound
    (``scanner.openssl.bind``).
    """
    cls = type(cert)
    if (
        sys.implementation.name != "cpython"
        or _CERTIFICATE is None
        or cls is not _CERTIFICATE
        or (cls.__module__, cls.__name__) != ("_ssl", "Certificate")
        or cls.__basicsize__ != _CERTIFICATE_SIZE
        or cls.__itemsize__ != 0
    ):
        return False
    try:
        expected = certificate_der(cert)
    except Exception:  # no DER from the object itself: nothing to compare against
        return False
    ptr = _x509_in(cert)
    if not ptr or ptr % ctypes.alignment(ctypes.c_void_p):
        return False
    size = lib.i2d_X509(ptr, None)
    if size != len(expected):
        return False
    buffer = ctypes.create_string_buffer(size)
    cursor = ctypes.c_char_p(ctypes.addressof(buffer))  # i2d advances it past what it wrote
    return lib.i2d_X509(ptr, ctypes.byref(cursor)) == size and buffer.raw == expected


def lend(lib: ctypes.CDLL, item: object) -> int:
    """A new reference to the X509 an ``_ssl.Certificate`` holds, or 0 to decode instead.

    The caller frees it with X509_free, like a decoded one. ``item`` is held by the caller's
    chain for the whole call, so its X509 cannot be freed between the read and the up_ref;
    after that our own reference keeps it alive, whatever happens to ``item``. ``lib`` is
    bound (``scanner.openssl.bind``).
    """
    # The only type trusted with a pointer read, by identity: it cannot be subclassed or
    # instantiated from Python (no Py_TPFLAGS_BASETYPE, no tp_new), so an object whose type
    # *is* _ssl.Certificate was made by _ssl itself, with the layout above.
    if _CERTIFICATE is None or type(item) is not _CERTIFICATE:
        return 0
    ok = _LAYOUT.get("ok")
    if ok is None:
        ok = _LAYOUT["ok"] = _layout_holds(lib, item)
        _settled("certificate_x509", None if ok else
                 "the _ssl.Certificate struct is not as read here: X509s are decoded from DER")
    if not ok:
        return 0
    ptr = _x509_in(item)
    # X509_up_ref returns 1 when it took a usable reference; 0 (never for a live X509)
    # leaves nothing for us to free, and the DER path takes over.
    return ptr if ptr and lib.X509_up_ref(ptr) == 1 else 0


# -- libcrypto: the very copy _ssl uses, or none -----------------------------------------------
#
# Verdicts call libcrypto through ctypes and may lend it X509s that _ssl's libcrypto made:
# that must be the same copy of the library, not merely the same version. So it is looked up
# the way _ssl's own calls are resolved: through _ssl's handle (dlopen of the extension,
# already loaded: no second copy, no initialiser run), whose symbol lookup goes through the
# libraries _ssl itself links; for an _ssl built into the interpreter, through the process's
# global scope, which resolved _ssl's exported calls. No other place is searched:
# /proc/self/maps may list a libcrypto that is not _ssl's (a statically linked _ssl next to a
# dynamically linked _hashlib), and ctypes.util.find_library names the system's, which under
# a statically linked OpenSSL is another copy, and on macOS is a stub whose loading aborts
# the process. Where the lookup fails, verdicts are refused: one message, no guess.

@functools.cache
def libcrypto() -> ctypes.CDLL:
    """The libcrypto ``_ssl`` is linked against (raw: ``scanner.openssl.bind`` types it).
    UnsupportedPlatform when that is no shared library this process can reach."""
    try:
        lib = _ssl_libcrypto()
    except UnsupportedPlatform as exc:
        STATUS["libcrypto"] = HookStatus("refused", str(exc))
        raise
    _settled("libcrypto", None)
    return lib


def _ssl_libcrypto() -> ctypes.CDLL:
    if ssl.OPENSSL_VERSION_INFO[0] != 3:  # the API scanner.openssl binds
        raise unsupported("certscan binds OpenSSL 3's libcrypto")
    path: str | None = getattr(_ssl, "__file__", None)  # None: _ssl is built in
    where = f"_ssl ({path})" if path else "the interpreter (_ssl is built in)"
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise unsupported(f"{where} cannot be opened as a shared library ({exc})") from None
    try:
        version = lib.OpenSSL_version_num
    except AttributeError:
        raise unsupported(f"{where} reaches no shared libcrypto: its OpenSSL is linked "
                          f"statically") from None
    version.restype, version.argtypes = ctypes.c_ulong, ()
    found: int = version()
    if found != ssl.OPENSSL_VERSION_NUMBER:
        raise unsupported(f"the libcrypto {where} reaches is version {found:#x}, not the "
                          f"{ssl.OPENSSL_VERSION_NUMBER:#x} Python's ssl module reports")
    return lib


def unsupported(why: str) -> UnsupportedPlatform:
    """The one message for verdicts that cannot be given here."""
    return UnsupportedPlatform(
        f"no verdicts on this platform ({sys.implementation.name} {sys.version.split()[0]} "
        f"on {sys.platform}, {ssl.OPENSSL_VERSION}): {why}. Verdicts need the libcrypto of "
        f"Python's ssl module as a shared library (CPython on Linux with the system's "
        f"OpenSSL 3); scans without a trust store work here")


# -- oid_name --------------------------------------------------------------------------------

# The names cryptography (51) gives the signature algorithms it names (those in
# x509.oid.SignatureAlgorithmOID; it names the others "Unknown OID"): the public fallback.
_SIGNATURE_NAMES = {
    "1.2.840.113549.1.1.4": "md5WithRSAEncryption",
    "1.2.840.113549.1.1.5": "sha1WithRSAEncryption",
    "1.2.840.113549.1.1.14": "sha224WithRSAEncryption",
    "1.2.840.113549.1.1.11": "sha256WithRSAEncryption",
    "1.2.840.113549.1.1.12": "sha384WithRSAEncryption",
    "1.2.840.113549.1.1.13": "sha512WithRSAEncryption",
    "1.2.840.113549.1.1.10": "rsassaPss",
    "1.2.840.10045.4.1": "ecdsa-with-SHA1",
    "1.2.840.10045.4.3.1": "ecdsa-with-SHA224",
    "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
    "1.2.840.10045.4.3.3": "ecdsa-with-SHA384",
    "1.2.840.10045.4.3.4": "ecdsa-with-SHA512",
    "1.2.840.10040.4.3": "dsa-with-sha1",
    "2.16.840.1.101.3.4.3.1": "dsa-with-sha224",
    "2.16.840.1.101.3.4.3.2": "dsa-with-sha256",
    "1.3.101.112": "ed25519",
    "1.3.101.113": "ed448",
    "2.16.840.1.101.3.4.3.17": "ML-DSA-44",
    "2.16.840.1.101.3.4.3.18": "ML-DSA-65",
    "2.16.840.1.101.3.4.3.19": "ML-DSA-87",
    "1.2.643.2.2.3": "GOST R 34.11-94 with GOST R 34.10-2001",
    "1.2.643.7.1.1.3.2": "GOST R 34.10-2012 with GOST R 34.11-2012 (256 bit)",
    "1.2.643.7.1.1.3.3": "GOST R 34.10-2012 with GOST R 34.11-2012 (512 bit)",
}
_UNNAMED_OID = "2.999.1"  # under the arc kept for examples: no library names it
_NO_NAME = "Unknown OID"  # what _name says for an OID cryptography does not name


def _private_oid_name(oid: x509.ObjectIdentifier) -> str:
    return oid._name


@functools.cache
def _oid_names_private() -> bool:
    from cryptography import x509

    why = None
    try:
        for dotted, name in (*_SIGNATURE_NAMES.items(), (_UNNAMED_OID, _NO_NAME)):
            got = _private_oid_name(x509.ObjectIdentifier(dotted))
            if got != name:
                why = f"ObjectIdentifier._name of {dotted} is {got!r}, not {name!r}"
                break
    except Exception as exc:  # AttributeError where _name is gone
        why = _failure(exc)
    return _settled("oid_name", why)


def oid_name(oid: x509.ObjectIdentifier) -> str:
    """cryptography's name for ``oid`` ("sha256WithRSAEncryption"), its dotted string where
    it has none. The fallback knows the signature algorithms only (any other OID gets its
    dotted string), which is what certscan names with it."""
    if _oid_names_private():
        name = _private_oid_name(oid)
        return oid.dotted_string if name == _NO_NAME else name
    return _SIGNATURE_NAMES.get(oid.dotted_string, oid.dotted_string)


# -- name_attribute --------------------------------------------------------------------------

# RFC 4514's names for attribute types, as cryptography writes them (its
# x509.name._NAMEOID_TO_NAME); any other type is written as its dotted OID. der.py's _LABELS
# is the same table by DER contents.
_RFC4514_LABELS = {
    "2.5.4.3": "CN", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU",
    "2.5.4.6": "C", "2.5.4.9": "STREET", "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}


def _private_label(identifier: x509.ObjectIdentifier) -> str:
    # _validate=False: the label must not depend on whether a placeholder value passes the
    # checks cryptography makes per type (a country's two letters, a CN's 64 characters).
    from cryptography import x509

    return x509.NameAttribute(identifier, "xx", _validate=False).rfc4514_attribute_name


@functools.cache
def _labels_private() -> bool:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    why = None
    try:
        types = [oid for oid in vars(NameOID).values() if isinstance(oid, x509.ObjectIdentifier)]
        for oid in [*types, x509.ObjectIdentifier(_UNNAMED_OID)]:
            got, want = _private_label(oid), _public_label(oid)
            if got != want:
                why = f"the label of {oid.dotted_string} is {got!r}, not {want!r}"
                break
    except Exception as exc:  # TypeError where _validate is gone
        why = _failure(exc)
    return _settled("name_attribute", why)


def _public_label(identifier: x509.ObjectIdentifier) -> str:
    return _RFC4514_LABELS.get(identifier.dotted_string, identifier.dotted_string)


def attribute_label(identifier: x509.ObjectIdentifier) -> str:
    """The name of an attribute type in RFC 4514 strings ("CN"; else the dotted OID), as
    ``x509.NameAttribute(identifier, value).rfc4514_attribute_name`` gives it."""
    return _private_label(identifier) if _labels_private() else _public_label(identifier)


# -- all at once -----------------------------------------------------------------------------

def settle_all() -> dict[str, HookStatus]:
    """Run every self-test now, those that wait for their first use too, and return STATUS.
    Costs a handshake, binding libcrypto and importing cryptography: for diagnostics."""
    _direct_filters()
    _capture()
    try:
        from .openssl import bind

        lib = bind().crypto
    except UnsupportedPlatform:
        lib = None
    if lib is not None and "ok" not in _LAYOUT:  # lend the self-test's own certificates
        server, client = _self_test_server([]), _self_test_client()
        try:
            tls = _handshake(server, lambda i, o: wrap_bio(client, i, o, _TEST_NAME))
        except UnsupportedPlatform:  # no chain to read: unverified_chain says why
            tls = None
        for cert in unverified_chain(tls)[1] if tls is not None else ():
            if ptr := lend(lib, cert):
                lib.X509_free(ptr)
    try:
        _oid_names_private()
        _labels_private()
    except ImportError:  # no cryptography: certs.py's slow path cannot run either
        pass
    _rustls_direct()
    return dict(STATUS)


def _forget() -> None:
    """Back to a fresh process's state: every self-test runs again on next use (tests)."""
    for settled in (_direct_filters, _capture, libcrypto, _oid_names_private, _labels_private,
                    _rustls_direct):
        settled.cache_clear()
    _LAYOUT.clear()
    STATUS.clear()
    STATUS.update(_FRESH)


def main() -> int:
    """``python -m scanner.selfcheck``: every hook and how this process serves it."""
    for name, status in settle_all().items():
        print(f"{name:<17} {status}")
    return 0


_direct_filters()  # the one self-test cheap enough for import time
