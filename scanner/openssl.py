"""ctypes bindings to the libcrypto that Python's ``_ssl`` itself uses.

``scanner.verify`` judges a captured chain with OpenSSL's own ``X509_verify_cert``, so that
its verdict is the stdlib's by construction. No Python package exposes that call on an
arbitrary chain and store, hence ctypes; and it must be the very libcrypto ``_ssl`` is linked
against (found by ``scanner.hooks.libcrypto``, bound once by ``bind``). The verification
parameters are not read from the running interpreter: they are pinned per policy in
``scanner.verify``.

Also here: DER decoding (``decode``) of what ``scanner.hooks.lend`` does not lend, with
OpenSSL 3.0/3.1's built-in key decoders where they give the same keys (``_LegacyKeys``).
"""

from __future__ import annotations

import base64
import ctypes
import functools
from dataclasses import dataclass
from typing import Any

from .hooks import certificate_der, libcrypto

_P = ctypes.c_void_p  # every OpenSSL pointer: the default c_int restype would truncate it
_SIGNATURES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    # name: (restype, argtypes), prototypes from the OpenSSL 3.0 headers.
    "OpenSSL_version_num": (ctypes.c_ulong, ()),
    "ERR_clear_error": (None, ()),  # keep failed loads out of _ssl's per-thread error queue
    "d2i_X509": (_P, (_P, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long)),
    # i2d_X509(x, unsigned char **out); a NULL out asks for the length only.
    "i2d_X509": (ctypes.c_int, (_P, ctypes.POINTER(ctypes.c_char_p))),
    "X509_up_ref": (ctypes.c_int, (_P,)),
    "X509_free": (None, (_P,)),
    "X509_check_ca": (ctypes.c_int, (_P,)),
    # X509_check_host(x, name, namelen, flags, char **peername): peername unused (NULL).
    "X509_check_host": (ctypes.c_int, (_P, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, _P)),
    "X509_check_ip_asc": (ctypes.c_int, (_P, ctypes.c_char_p, ctypes.c_uint)),
    # STACK_OF(X509) is a macro family over these since 1.1.0.
    "OPENSSL_sk_new_null": (_P, ()),
    "OPENSSL_sk_push": (ctypes.c_int, (_P, _P)),
    "OPENSSL_sk_free": (None, (_P,)),  # frees the stack only; the X509s are freed one by one
    "X509_STORE_new": (_P, ()),
    "X509_STORE_free": (None, (_P,)),
    "X509_STORE_load_file": (ctypes.c_int, (_P, ctypes.c_char_p)),  # 3.0+; certs and CRLs
    "X509_STORE_set_default_paths": (ctypes.c_int, (_P,)),
    "X509_STORE_CTX_new": (_P, ()),
    "X509_STORE_CTX_free": (None, (_P,)),
    "X509_STORE_CTX_init": (ctypes.c_int, (_P, _P, _P, _P)),  # borrows leaf and stack
    "X509_STORE_CTX_set_default": (ctypes.c_int, (_P, ctypes.c_char_p)),
    "X509_STORE_CTX_get0_param": (_P, (_P,)),
    "X509_STORE_CTX_get_error": (ctypes.c_int, (_P,)),
    "X509_STORE_CTX_get_error_depth": (ctypes.c_int, (_P,)),
    "X509_STORE_CTX_get_current_cert": (_P, (_P,)),
    "X509_VERIFY_PARAM_set_flags": (ctypes.c_int, (_P, ctypes.c_ulong)),
    "X509_VERIFY_PARAM_set_auth_level": (None, (_P, ctypes.c_int)),
    "X509_VERIFY_PARAM_set_hostflags": (None, (_P, ctypes.c_uint)),
    "X509_VERIFY_PARAM_set1_host": (ctypes.c_int, (_P, ctypes.c_char_p, ctypes.c_size_t)),
    "X509_VERIFY_PARAM_set1_ip_asc": (ctypes.c_int, (_P, ctypes.c_char_p)),
    "X509_VERIFY_PARAM_set_time": (None, (_P, ctypes.c_int64)),  # time_t: 64-bit on Linux
    "X509_verify_cert": (ctypes.c_int, (_P,)),
    "X509_verify_cert_error_string": (ctypes.c_char_p, (ctypes.c_long,)),
}
# For _LegacyKeys only; a libcrypto without them (built no-engine, OpenSSL 4) decodes as is.
_ENGINE_SIGNATURES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "ENGINE_new": (_P, ()),
    "ENGINE_free": (ctypes.c_int, (_P,)),
    "ENGINE_set_id": (ctypes.c_int, (_P, ctypes.c_char_p)),
    "ENGINE_set_name": (ctypes.c_int, (_P, ctypes.c_char_p)),
    "ENGINE_set_pkey_meths": (ctypes.c_int, (_P, _P)),
    "ENGINE_register_pkey_meths": (ctypes.c_int, (_P,)),
    "ENGINE_unregister_pkey_meths": (None, (_P,)),
    "EVP_PKEY_meth_find": (_P, (ctypes.c_int,)),
    "X509_get0_pubkey": (_P, (_P,)),
    "X509_verify": (ctypes.c_int, (_P, _P)),
    "EVP_PKEY_get0_provider": (_P, (_P,)),
    "EVP_PKEY_get_security_bits": (ctypes.c_int, (_P,)),
    "i2d_PUBKEY": (ctypes.c_int, (_P, ctypes.POINTER(ctypes.c_char_p))),
}


@dataclass(frozen=True, slots=True)
class _OpenSSL:
    crypto: ctypes.CDLL
    host_flags: int  # X509_CHECK_FLAG_* for every policy
    legacy_keys: _LegacyKeys | None  # None: d2i_X509 decodes keys as this OpenSSL does
    legacy_keys_why: str  # why (not): for selfcheck


@functools.cache
def bind() -> _OpenSSL:
    """Bind libcrypto once. Nothing here depends on the running interpreter's defaults.
    UnsupportedPlatform (``scanner.hooks``) where verdicts cannot be given."""
    crypto = libcrypto()
    for name, (restype, argtypes) in _SIGNATURES.items():
        func = getattr(crypto, name)
        func.restype, func.argtypes = restype, argtypes
    # Host flags: names from the SAN only (the record's contract: README, "Verdicts"; and
    # what browsers do), so NEVER_CHECK_SUBJECT (0x20) is set even though 3.11's default
    # client still falls back to the subject CN when a certificate has no DNS SAN
    # (hostname_checks_common_name is True there). NO_PARTIAL_WILDCARDS (0x4) is what _ssl
    # always sets.
    host_flags = 0x4 | 0x20
    legacy, why = _LegacyKeys.set_up(crypto)
    return _OpenSSL(crypto, host_flags, legacy, why)


def decode(lib: ctypes.CDLL, item: object, index: int) -> int:
    """A new X509 decoded from DER: ``item`` itself, or what its ``public_bytes`` gives."""
    der = item
    if not isinstance(item, bytes) and callable(getattr(item, "public_bytes", None)):
        der = certificate_der(item)  # a certificate object not lent, or anything like one
    if not isinstance(der, bytes):
        raise TypeError(f"certificate {index} of the chain is neither DER bytes nor a "
                        f"certificate object: {type(item).__name__}")
    legacy = bind().legacy_keys
    cert = _d2i(lib, der) if legacy is None else legacy.d2i(der)
    if not cert:
        raise ValueError(f"certificate {index} of the chain is not DER X.509")
    return cert


def _d2i(lib: ctypes.CDLL, der: bytes) -> int | None:
    cursor = ctypes.c_char_p(der)  # d2i advances it; the bytes stay alive through `der`
    cert: int | None = lib.d2i_X509(None, ctypes.byref(cursor), len(der))
    return cert


# X509_CHECK_FLAG_* aside, the numbers _LegacyKeys needs: NIDs and versions.
_NID_RSA, _NID_EC = 6, 408  # rsaEncryption, id-ecPublicKey
_DECODER_CACHE = 0x30200000  # OpenSSL 3.2 caches its decoder contexts
# Self-signed certificates, one per key type _LegacyKeys claims (EC P-256, RSA-1024): each
# must decode to the same key both ways, and its signature must verify with either.
_PROBES = (
    "MIIBBjCBraADAgECAgEBMAoGCCqGSM49BAMCMAwxCjAIBgNVBAMMAWswIBcNMjUwMTAxMDAwMDAwWhgPMjEyNTAx"
    "MDEwMDAwMDBaMAwxCjAIBgNVBAMMAWswWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARp5bPgRukVwyDfgugQ+ftp"
    "EmTM3F7aJ+l1cjTowEBMiCJfoVzOMo7ABsdcY1bgdO2Hh71kGoGl+h4QrS0N6lOCMAoGCCqGSM49BAMCA0gAMEUC"
    "IGDgHJdKuRcrqVhqfb3jvssOMtwiwi8zLE+IKDM3QJHcAiEAzDdiYUqByXMcDFjorJgp5PifYc+PtBwcnJTDPppc"
    "xLo=",
    "MIIBjTCB96ADAgECAgEBMA0GCSqGSIb3DQEBCwUAMAwxCjAIBgNVBAMMAWswIBcNMjUwMTAxMDAwMDAwWhgPMjEy"
    "NTAxMDEwMDAwMDBaMAwxCjAIBgNVBAMMAWswgZ8wDQYJKoZIhvcNAQEBBQADgY0AMIGJAoGBANjmKaWpiKD5wHS0"
    "p1xfK3xvhJ2+LxWTlOLXeJAr9+q+vljKyLVAurePR5qL0P0y7JflrtVpwuXPdrpMjmY0cykwAs5dMfs21yAavezm"
    "hBs9FPJuNKCQEyVUvs8wGsC2BoDqlkKFmdif7g9SWkvNyxH47dLhewpE4cgkWQSV66SdAgMBAAEwDQYJKoZIhvcN"
    "AQELBQADgYEAmZOIfUkLWxjgCBaJ7ZIOwKgZXEs/BqEZ9H9Agq8f4bE0V69odf50mtTitoMxac5pyGyHEGMFlYw1"
    "qSd43HxSj59KrKykxHmaDboi/nucv/ir7TjcGfig1/zKK3e9IaXrG7vkSpPwON/WT2JyDg+3VklPPmJ1w/V9alwA"
    "bAs+HSw=",
)
_PkeyMeths = ctypes.CFUNCTYPE(ctypes.c_int, _P, ctypes.POINTER(_P),
                              ctypes.POINTER(ctypes.POINTER(ctypes.c_int)), ctypes.c_int)


class _LegacyKeys:
    """d2i_X509 with OpenSSL's built-in key decoders, on OpenSSL 3.0 and 3.1.

    There, ``d2i_X509`` decodes the SubjectPublicKeyInfo through the provider decoders, and
    builds a decoder context from scratch for every key (``OSSL_DECODER_CTX_new_for_pkey``;
    3.2 caches them): ~0.2 ms of a P-256 leaf's ~0.25 ms here, the largest cost of a verdict
    from DER. It first tries the decoders 1.1.1 had, still built in, for a key type an
    ENGINE claims. So for the duration of a ``d2i_X509`` an ENGINE of ours, which does
    nothing but hand back OpenSSL's own built-in methods, claims RSA and EC keys (only
    while it decodes: the handshakes between keep using the providers). Decoding then
    costs ~0.05 ms, and the key is the same: a legacy one, exported to the providers where
    the verification uses it, as every key of 1.1.1-era code is under 3.0.

    ``set_up`` decides once, by a self-test: each of ``_PROBES`` must decode to the same
    public key both ways (its DER re-encoding and security bits), with the built-in
    decoder actually used, and its signature must verify with either key. Otherwise, or on
    OpenSSL 3.2 and later, or without the ENGINE API, certificates decode as they would
    anyway: this only changes speed. Another thread that needs an RSA or EC method while
    one of ours decodes gets OpenSSL's built-in one too, which does the same work.
    """

    __slots__ = ("_callback", "_engine", "_lib", "_nids")

    def __init__(self, lib: ctypes.CDLL, engine: int) -> None:
        self._lib, self._engine = lib, engine
        self._nids = (ctypes.c_int * 2)(_NID_RSA, _NID_EC)
        self._callback = _PkeyMeths(self._methods)  # kept alive as long as the engine

    @classmethod
    def set_up(cls, lib: ctypes.CDLL) -> tuple[_LegacyKeys | None, str]:
        """The decoder for this libcrypto, or None and why not."""
        version = lib.OpenSSL_version_num()
        if version >= _DECODER_CACHE:
            return None, "not needed: OpenSSL 3.2+ caches its key decoders"
        try:
            for name, (restype, argtypes) in _ENGINE_SIGNATURES.items():
                func = getattr(lib, name)
                func.restype, func.argtypes = restype, argtypes
        except AttributeError as exc:
            return None, f"unavailable: no ENGINE API in this libcrypto ({exc})"
        engine = lib.ENGINE_new()
        if not engine:
            return None, "unavailable: ENGINE_new failed"
        legacy = cls(lib, engine)
        ok = (lib.ENGINE_set_id(engine, b"certscan-builtin-keys")
              and lib.ENGINE_set_name(engine, b"OpenSSL's built-in RSA and EC key methods")
              and lib.ENGINE_set_pkey_meths(engine, ctypes.cast(legacy._callback, _P)))
        why = legacy._self_test() if ok else "ENGINE set-up failed"
        lib.ERR_clear_error()
        if why is not None:
            lib.ENGINE_free(engine)
            return None, f"refused: {why}"
        return legacy, "in use: RSA and EC keys decoded by OpenSSL's built-in decoders"

    def d2i(self, der: bytes) -> int | None:
        """A new X509 from ``der`` (None: not DER X.509), keys decoded the built-in way."""
        lib = self._lib
        lib.ENGINE_register_pkey_meths(self._engine)
        try:
            return _d2i(lib, der)
        finally:
            lib.ENGINE_unregister_pkey_meths(self._engine)

    def _methods(self, _engine: int, method: Any, nids: Any, nid: int) -> int:
        # ENGINE_PKEY_METHS_PTR: with no method pointer, the NIDs claimed; else that NID's.
        if not method:
            nids[0] = ctypes.cast(self._nids, ctypes.POINTER(ctypes.c_int))
            return len(self._nids)
        found = self._lib.EVP_PKEY_meth_find(nid) if nid in (_NID_RSA, _NID_EC) else None
        method[0] = found
        return 1 if found else 0

    def _self_test(self) -> str | None:
        lib = self._lib
        for index, encoded in enumerate(_PROBES):
            der = base64.b64decode(encoded)
            ours, theirs = self.d2i(der), _d2i(lib, der)
            try:
                if not ours or not theirs:
                    return f"probe {index} does not decode"
                keys = lib.X509_get0_pubkey(ours), lib.X509_get0_pubkey(theirs)
                if not all(keys):
                    return f"probe {index}: no public key"
                if lib.EVP_PKEY_get0_provider(keys[0]):
                    return f"probe {index}: the built-in decoder was not used"
                if _spki(lib, keys[0]) != _spki(lib, keys[1]) or len(set(map(
                        lib.EVP_PKEY_get_security_bits, keys))) != 1:
                    return f"probe {index} decodes to another key"
                if not (lib.X509_verify(ours, keys[0]) == lib.X509_verify(theirs, keys[1]) == 1):
                    return f"probe {index}: its signature does not verify"
            finally:
                for cert in (ours, theirs):
                    if cert:
                        lib.X509_free(cert)
        return None


def _spki(lib: ctypes.CDLL, key: int) -> bytes | None:
    """The DER SubjectPublicKeyInfo of an EVP_PKEY."""
    size = lib.i2d_PUBKEY(key, None)
    if size <= 0:
        return None
    buffer = ctypes.create_string_buffer(size)
    cursor = ctypes.cast(buffer, ctypes.c_char_p)
    lib.i2d_PUBKEY(key, ctypes.byref(cursor))
    return buffer.raw
