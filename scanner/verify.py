"""Would ``ssl.create_default_context(cafile=BUNDLE)`` accept this chain under this name?

Answered without a second connection by OpenSSL's own ``X509_verify_cert``, called through
ctypes in the very libcrypto ``_ssl`` is linked against, with the parameters libssl's
``ssl_verify_cert_chain`` sets: the stdlib's verdict by construction, not by imitation.

Which default context: the parameters are pinned per policy (``POLICIES``), not read from the
running interpreter, so a verdict does not change with the Python that runs certscan.
``default`` is what ``create_default_context`` sets on Python 3.11 and 3.12; ``strict`` adds
the two flags 3.13 adds there.

The chain may be DER bytes or the certificate objects a handshake already decoded
(``scanner.hooks.unverified_chain``): those lend their ``X509`` directly, which skips
``d2i_X509``, by far the largest cost of a call under OpenSSL 3.0 (see ``lend`` in
``scanner.hooks``; ``scanner.openssl`` holds the ctypes bindings). DER is decoded once per
trust store: each ``TrustStore`` keeps the X509s it decoded, by their exact bytes, in a
bounded LRU (``_Decoded``), since a scan meets the same intermediates, and the same leaf
behind a name's many addresses, again and again.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import ssl
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Literal, NamedTuple, Self

from .hooks import lend
from .openssl import bind, decode
from .values import Verdict

if TYPE_CHECKING:
    from .hooks import NativeCertificate

__all__ = ["POLICIES", "Policy", "TrustStore", "Verdict", "to_ssl_error", "verify_chain"]

Policy = Literal["default", "strict"]


@dataclass(frozen=True, slots=True)
class _Params:
    verify_flags: int  # X509_V_FLAG_*
    auth_level: int  # the security level: minimum key sizes and signature digests


# X509_V_FLAG_* values from OpenSSL's x509_vfy.h (the same numbers as ssl.VERIFY_X509_*).
_TRUSTED_FIRST = 0x8000  # what every SSLContext sets (and OpenSSL's own default since 1.1.0)
_X509_STRICT = 0x20  # RFC 5280 profile checks (3.0: X509_V_ERR 80-94), EC explicit params
_PARTIAL_CHAIN = 0x80000  # any store certificate is an anchor, not only self-signed roots
POLICIES: dict[str, _Params] = {
    # create_default_context() on 3.11 and 3.12: TRUSTED_FIRST only. Auth level 2: the
    # "@SECLEVEL=2" CPython (3.10+) puts at the head of every context's cipher string, which
    # is what libssl hands X509_verify_cert (SSL_get_security_level).
    "default": _Params(_TRUSTED_FIRST, 2),
    # 3.13's create_default_context: the same plus X509_STRICT and PARTIAL_CHAIN.
    "strict": _Params(_TRUSTED_FIRST | _X509_STRICT | _PARTIAL_CHAIN, 2),
}

# X509_V_ERR_* -> reason, numbers from OpenSSL 3.0 include/openssl/x509_vfy.h (they were
# renumbered in 3.0: 24 was INVALID_CA in 1.1.1, so the table is only read under OpenSSL 3).
_REASONS: dict[int, str] = {
    # Dates of any certificate in the built chain.
    9: "not_yet_valid",  # CERT_NOT_YET_VALID
    10: "expired",  # CERT_HAS_EXPIRED
    # The leaf is its own issuer (and the store does not hold it).
    18: "self_signed",  # DEPTH_ZERO_SELF_SIGNED_CERT
    # The chain ends in a root the store does not hold, which the server sent (19); the
    # same chain without that root is 2/20 below, also untrusted_root.
    19: "untrusted_root",  # SELF_SIGNED_CERT_IN_CHAIN
    # Signatures that do not verify or cannot be read.
    4: "bad_signature",  # UNABLE_TO_DECRYPT_CERT_SIGNATURE
    7: "bad_signature",  # CERT_SIGNATURE_FAILURE
    # An issuer that may not issue: not a CA, or not allowed to sign certificates.
    32: "invalid_ca",  # KEYUSAGE_NO_CERTSIGN
    79: "invalid_ca",  # INVALID_CA
    # The leaf (or a CA) is not for TLS servers (EKU / Netscape cert type).
    26: "invalid_purpose",  # INVALID_PURPOSE
    # The name the client asked for.
    62: "hostname_mismatch",  # HOSTNAME_MISMATCH
    64: "hostname_mismatch",  # IP_ADDRESS_MISMATCH
    # The security level (auth_level): keys and signature digests too weak for it.
    66: "weak_key",  # EE_KEY_TOO_SMALL
    67: "weak_key",  # CA_KEY_TOO_SMALL
    68: "weak_signature",  # CA_MD_TOO_WEAK: despite the name, any non-anchor cert (leaf too)
    # Trust settings in the store reject the anchor.
    27: "untrusted_root",  # CERT_UNTRUSTED
    28: "untrusted_root",  # CERT_REJECTED
}
# "Issuer not found": 2 UNABLE_TO_GET_ISSUER_CERT (the chain reached a store cert that is not
# a root), 20 UNABLE_TO_GET_ISSUER_CERT_LOCALLY, 21 UNABLE_TO_VERIFY_LEAF_SIGNATURE (a lone
# untrusted leaf). _issuer_reason splits them into untrusted_root / incomplete_chain.
_ISSUER_NOT_FOUND = frozenset({2, 20, 21})
_X509_V_ERR_UNSPECIFIED = 1  # a failed verification that set no code (internal error)
# _ssl words the two name errors itself, with the name (fill_and_set_sslerror in _ssl.c).
_NAME_ERRORS = {62: "Hostname mismatch", 64: "IP address mismatch"}


class DecodeCacheInfo(NamedTuple):
    """A trust store's cache of decoded certificates (``TrustStore.decode_cache_info``)."""

    hits: int
    misses: int  # DER decoded (or refused: a decoding failure counts, and is not kept)
    size: int  # certificates held now
    maxsize: int  # 0: no cache, every DER certificate is decoded


# The bounds of a store's cache. An X509 decoded by OpenSSL 3.0 takes ~2-4 KB; the DER, kept
# as the key, 1-2 KB more. The byte bound only matters for huge certificates (a server may
# send anything): the cache never holds more than that much DER, and one larger is not kept.
DECODE_CACHE_SIZE = 1024
_DECODE_CACHE_BYTES = 4 << 20


class TrustStore:
    """An X509_STORE loaded once, with the certificates verified against it decoded once
    (a bounded cache, see ``_Decoded``); safe to share between threads for verification.

    ``close()`` frees both: call it only once no verification is running.
    """

    __slots__ = ("_decoded", "_ptr", "label")

    def __init__(self, ptr: int, label: str, *, decode_cache: int = DECODE_CACHE_SIZE) -> None:
        self._ptr: int | None = ptr
        self.label = label
        self._decoded = _Decoded(decode_cache, _DECODE_CACHE_BYTES)

    @classmethod
    def load(cls, spec: str, *, decode_cache: int = DECODE_CACHE_SIZE) -> TrustStore:
        """``spec``: a PEM bundle, a directory (hashed or plain .pem/.crt files), "system"
        (what ``load_default_certs`` loads on Linux) or "certifi". ValueError if unusable;
        UnsupportedPlatform (``scanner.hooks``) where verdicts cannot be given at all.
        ``decode_cache``: how many decoded DER certificates to keep (0: none)."""
        lib = bind().crypto
        ptr = lib.X509_STORE_new()
        if not ptr:
            raise MemoryError("X509_STORE_new")
        try:
            cls._fill(lib, ptr, spec)
        except BaseException:
            lib.X509_STORE_free(ptr)
            raise
        finally:
            lib.ERR_clear_error()
        return cls(ptr, spec, decode_cache=decode_cache)

    @staticmethod
    def _fill(lib: ctypes.CDLL, ptr: int, spec: str) -> None:
        if spec == "system":
            # SSL_CTX_set_default_verify_paths, as load_default_certs calls it; like the stdlib
            # this cannot tell an empty system store from a full one.
            if not lib.X509_STORE_set_default_paths(ptr):
                raise ValueError("cannot load the system trust store")
            return
        path = spec
        if spec == "certifi":
            try:  # optional dependency, only for this spec
                certifi = importlib.import_module("certifi")
            except ImportError:
                raise ValueError("trust store 'certifi' needs the certifi package") from None
            path = str(certifi.where())
        if os.path.isdir(path):
            # Load every file eagerly: this covers c_rehash directories (their hash names
            # are links to the same certificates, which the store de-duplicates) and plain
            # directories of .pem/.crt files, which OpenSSL's lazy capath lookup would miss.
            try:
                files = sorted(e.path for e in os.scandir(path) if e.is_file())
            except OSError as exc:
                raise ValueError(f"trust store directory {path!r} is unreadable: {exc}") from exc
            loaded = sum(lib.X509_STORE_load_file(ptr, os.fsencode(f)) > 0 for f in files)
            if not loaded:
                raise ValueError(f"trust store directory {path!r} holds no readable certificate")
        elif not os.path.exists(path):
            raise ValueError(f"trust store {path!r} does not exist")
        elif lib.X509_STORE_load_file(ptr, os.fsencode(path)) <= 0:
            raise ValueError(f"trust store {path!r} holds no readable PEM certificate")

    def close(self) -> None:
        if self._ptr is not None:
            lib = bind().crypto
            lib.X509_STORE_free(self._ptr)
            self._ptr = None
            self._decoded.clear(lib)

    def decode_cache_info(self) -> DecodeCacheInfo:
        """Hits, misses and size of the cache of decoded certificates (for tests and stats)."""
        return self._decoded.info()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrustStore({self.label!r}{', closed' if self._ptr is None else ''})"


# One lock for every store's cache: held only for a dict operation and an X509_up_ref. A fork
# while another thread held it would leave the child's copy locked for good, so the child
# starts with a new one. (lanes.fork_workers forks while the process is single-threaded and
# before any verdict anyway: each worker starts with a copy of the parent's cache, empty or
# not, whose X509s are the child's own copies, valid and referenced as in the parent.)
_LOCK = threading.Lock()


def _relock() -> None:
    global _LOCK  # noqa: PLW0603
    _LOCK = threading.Lock()


os.register_at_fork(after_in_child=_relock)


class _Decoded:
    """X509s decoded from DER, keyed by the exact bytes: an LRU bounded in count and in bytes.

    The cache holds one reference to each X509 it keeps (X509_free on eviction and on
    ``clear``); ``take`` hands out another, taken under the lock, so an eviction racing it
    cannot free the X509 first. The caller frees that one, like a decoded or lent X509.

    Sharing one X509 between verifications (and threads) is what libssl does with the
    certificates of an SSL_CTX's store, and what lending a handshake's X509 already did:
    X509_verify_cert keeps its state (chain built, error, depth, current certificate,
    parameters: name, time, flags) in the X509_STORE_CTX, which is per call. What it writes
    into a certificate is derived from the certificate alone and computed once, under the
    X509's own lock: the extension cache (ex_flags, EXFLAG_SET: key usage, basic
    constraints, SKID/AKID, self-issued/self-signed, signature info) and the SHA-1 hash
    X509_cmp compares. The one write that depends on the chain, X509_get_pubkey_parameters
    (a DSA key without parameters inherits its issuer's), cannot happen under our policies:
    OpenSSL's verify_chain calls it only once every certificate of the built chain has
    passed the auth-level key check (the leaf's first of all, the others' in
    check_auth_level), and a key without parameters has no security bits, so auth level 2
    has refused the chain by then (tests/test_verify_cache.py shows it for a leaf). Only DER
    bytes are cached: certificate objects are lent, or (look-alikes, an unknown layout)
    decoded each time.
    """

    __slots__ = ("_bytes", "_entries", "hits", "max_bytes", "maxsize", "misses")

    def __init__(self, maxsize: int, max_bytes: int) -> None:
        self.maxsize, self.max_bytes = maxsize, max_bytes
        self._entries: OrderedDict[bytes, int] = OrderedDict()
        self._bytes = 0  # DER bytes held, keys' lengths
        self.hits = self.misses = 0

    def take(self, lib: ctypes.CDLL, der: bytes, index: int) -> int:
        """A new reference to the X509 ``der`` decodes to; ``decode``'s errors otherwise."""
        key = der if type(der) is bytes else bytes(der)
        with _LOCK:
            cert = self._entries.get(key)
            if cert is not None and lib.X509_up_ref(cert) == 1:
                self._entries.move_to_end(key)
                self.hits += 1
                return cert
            self.misses += 1
        cert = decode(lib, key, index)  # raises as without a cache; nothing is kept then
        if len(key) > self.max_bytes:
            return cert
        evicted = []
        with _LOCK:
            # Not if another thread decoded it meanwhile (ours then is used once and freed).
            if key not in self._entries and lib.X509_up_ref(cert) == 1:
                self._entries[key] = cert
                self._bytes += len(key)
                while len(self._entries) > self.maxsize or self._bytes > self.max_bytes:
                    old_key, old = self._entries.popitem(last=False)
                    self._bytes -= len(old_key)
                    evicted.append(old)
        for old in evicted:  # out of reach of take(): no reference can be handed out now
            lib.X509_free(old)
        return cert

    def clear(self, lib: ctypes.CDLL) -> None:
        with _LOCK:
            held = list(self._entries.values())
            self._entries.clear()
            self._bytes = 0
        for cert in held:
            lib.X509_free(cert)

    def info(self) -> DecodeCacheInfo:
        with _LOCK:
            return DecodeCacheInfo(self.hits, self.misses, len(self._entries), self.maxsize)


def _issuer_reason(lib: ctypes.CDLL, ctx: int) -> str:
    """Split "issuer not found" into the server's fault and the store's.

    OpenSSL stops at the top of what it could build. If that is still the leaf (depth 0) and
    the leaf is not a CA, the server sent nothing that leads above its own certificate:
    public CAs never issue leaves from a root, so an intermediate is missing
    (``incomplete_chain``). If the server's chain reached a CA certificate and that one's
    issuer is unknown, the store lacks the root (``untrusted_root``). The names alone cannot
    tell a leaf issued straight by an unknown root, or a missing second intermediate, from
    these; both are reported by this rule.
    """
    stuck = lib.X509_STORE_CTX_get_current_cert(ctx)
    depth = lib.X509_STORE_CTX_get_error_depth(ctx)
    if depth == 0 and stuck and lib.X509_check_ca(stuck) == 0:
        return "incomplete_chain"
    return "untrusted_root"


def verify_chain(
    chain: Sequence[bytes | NativeCertificate], store: TrustStore, *, server_name: str | None,
    at: datetime | None = None, policy: Policy = "default",
) -> Verdict:
    """Verify ``chain`` (leaf first, as the server sent it) for ``server_name``.

    Each certificate is DER bytes or a certificate object of the handshake's own
    (``scanner.hooks.unverified_chain``; the public ``get_unverified_chain`` of 3.13
    returns DER). Such an object lends the X509 the handshake already decoded, which saves
    ``d2i_X509`` (~0.3 ms a certificate under OpenSSL 3.0); the verdict is the same either
    way. DER bytes are decoded once per store (its cache, ``TrustStore.load``). Anything
    else with a ``public_bytes`` like theirs is decoded from its DER, every time.

    ``server_name`` is what the client would pass as ``server_hostname`` (DNS name or IP
    literal); None checks the chain only and leaves ``hostname_match`` None. ``at`` (naive
    means UTC) replaces the current time. ``policy`` picks the pinned parameters
    (``POLICIES``): "default" (Python 3.11/3.12's default context) or "strict" (3.13's).
    ValueError for an empty or undecodable chain, an unknown policy and for names the stdlib
    client itself refuses (empty, leading dot, not IDNA-encodable); TypeError for a chain
    item that is neither DER bytes nor a certificate object; UnsupportedPlatform
    (``scanner.hooks``) where no verdict can be given.
    """
    if not chain:
        raise ValueError("empty chain")
    params = POLICIES.get(policy)
    if params is None:
        raise ValueError(f"unknown verify policy {policy!r}: expected one of {sorted(POLICIES)}")
    name = _client_hostname(server_name)
    ossl = bind()
    lib = ossl.crypto
    if store._ptr is None:
        raise ValueError("trust store is closed")
    decoded = store._decoded
    certs: list[int] = []
    stack = ctx = None
    try:
        for index, item in enumerate(chain):
            # Every entry of `certs` is a reference of our own, lent, decoded or the cache's
            # X509 up-ref'd, freed below.
            if (cert := lend(lib, item)) == 0:
                if decoded.maxsize > 0 and isinstance(item, bytes):
                    cert = decoded.take(lib, item, index)
                else:
                    cert = decode(lib, item, index)
            certs.append(cert)
        stack = lib.OPENSSL_sk_new_null()
        ctx = lib.X509_STORE_CTX_new()
        if not stack or not ctx:
            raise MemoryError("OpenSSL allocation failed")
        for cert in certs:  # untrusted = everything sent, leaf included, as libssl does
            if not lib.OPENSSL_sk_push(stack, cert):
                raise MemoryError("OPENSSL_sk_push")
        if not lib.X509_STORE_CTX_init(ctx, store._ptr, certs[0], stack):
            raise MemoryError("X509_STORE_CTX_init")  # its only failure mode
        # libssl's ssl_verify_cert_chain: "ssl_server" defaults (purpose and trust
        # SSL_SERVER, default depth), then the SSL's auth level, flags and name: here the
        # policy's, pinned, not the running interpreter's.
        lib.X509_STORE_CTX_set_default(ctx, b"ssl_server")
        param = lib.X509_STORE_CTX_get0_param(ctx)
        lib.X509_VERIFY_PARAM_set_auth_level(param, params.auth_level)
        lib.X509_VERIFY_PARAM_set_flags(param, params.verify_flags)
        lib.X509_VERIFY_PARAM_set_hostflags(param, ossl.host_flags)
        is_ip = False
        if name is not None:
            # _ssl tries the name as an IP literal first (a2i_IPADDRESS), as set1_ip_asc does.
            is_ip = bool(lib.X509_VERIFY_PARAM_set1_ip_asc(param, name))
            if not is_ip and not lib.X509_VERIFY_PARAM_set1_host(param, name, len(name)):
                raise ValueError(f"OpenSSL refuses server name {server_name!r}")
        if at is not None:
            when = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
            lib.X509_VERIFY_PARAM_set_time(param, int(when.timestamp()))
        ok = lib.X509_verify_cert(ctx) == 1
        code = 0 if ok else (lib.X509_STORE_CTX_get_error(ctx) or _X509_V_ERR_UNSPECIFIED)
        reason = None if ok else _REASONS.get(code, "other")
        if code in _ISSUER_NOT_FOUND:
            reason = _issuer_reason(lib, ctx)
        match: bool | None = None
        if name is not None and (ok or code in _NAME_ERRORS):
            # Already answered, saving a call: a success includes check_id (X509_check_host
            # on the leaf with these host flags, or the IP compare, where flags play no
            # part), and 62/64 is exactly its failure. Any other error may have stopped
            # X509_verify_cert before check_id ran, so those get the explicit check below.
            match = ok
        elif name is not None and is_ip:
            match = lib.X509_check_ip_asc(certs[0], name, ossl.host_flags) == 1
        elif name is not None:
            match = lib.X509_check_host(certs[0], name, len(name), ossl.host_flags, None) == 1
    finally:
        if ctx:
            lib.X509_STORE_CTX_free(ctx)
        if stack:
            lib.OPENSSL_sk_free(stack)
        for cert in certs:
            lib.X509_free(cert)
        lib.ERR_clear_error()
    checked = None if name is None else name.decode()
    shown = _verify_message(lib, code, checked)
    return Verdict(
        trusted=ok, hostname_match=match, reason=reason,
        message="ok" if ok else f"{shown} (X509_V_ERR {code})",
        store=store.label, code=code, verify_message=shown,
        server_name=checked, policy=policy,
    )


def _client_hostname(server_name: str | None) -> bytes | None:
    """The bytes ``_ssl`` hands OpenSSL: SSLContext._encode_hostname, then its own checks."""
    if server_name is None:
        return None
    if not server_name or server_name.startswith("."):
        raise ValueError("server_name cannot be an empty string or start with a leading dot.")
    try:
        return server_name.encode("idna")
    except UnicodeError as exc:
        raise ValueError(f"server_name {server_name!r} is not IDNA-encodable: {exc}") from exc


def _verify_message(lib: ctypes.CDLL, code: int, name: str | None) -> str:
    """The stdlib's ``verify_message`` for ``code``."""
    if code == 0:
        return "ok"
    if code in _NAME_ERRORS:
        return f"{_NAME_ERRORS[code]}, certificate is not valid for '{name}'."
    text: bytes | None = lib.X509_verify_cert_error_string(code)
    return text.decode("utf-8", "replace") if text else f"X509_V_ERR {code}"


def to_ssl_error(verdict: Verdict) -> ssl.SSLCertVerificationError:
    """The exception a verifying stdlib handshake would have raised for this verdict."""
    if verdict.trusted:
        raise ValueError("a trusted verdict has no error")
    error = ssl.SSLCertVerificationError(
        1,  # SSL_ERROR_SSL, the errno _ssl gives every verification failure
        f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {verdict.verify_message}",
    )
    error.library = "SSL"
    error.reason = "CERTIFICATE_VERIFY_FAILED"
    error.verify_code = verdict.code
    error.verify_message = verdict.verify_message
    return error
