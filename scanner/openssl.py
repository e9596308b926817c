"""ctypes bindings to the libcrypto that Python's ``_ssl`` itself uses.

``scanner.verify`` judges a captured chain with OpenSSL's own ``X509_verify_cert``, so that
its verdict is the stdlib's by construction. No Python package exposes that call on an
arbitrary chain and store, hence ctypes; and it must be the very libcrypto ``_ssl`` is linked
against (found by ``scanner.hooks.libcrypto``, bound once by ``bind``). The verification
parameters are not read from the running interpreter: they are pinned per policy in
``scanner.verify``.

Also here: DER decoding (``decode``) of what ``scanner.hooks.lend`` does not lend.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class _OpenSSL:
    crypto: ctypes.CDLL
    host_flags: int  # X509_CHECK_FLAG_* for every policy


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
    return _OpenSSL(crypto, host_flags)


def decode(lib: ctypes.CDLL, item: object, index: int) -> int:
    """A new X509 decoded from DER: ``item`` itself, or what its ``public_bytes`` gives."""
    der = item
    if not isinstance(item, bytes) and callable(getattr(item, "public_bytes", None)):
        der = certificate_der(item)  # a certificate object not lent, or anything like one
    if not isinstance(der, bytes):
        raise TypeError(f"certificate {index} of the chain is neither DER bytes nor a "
                        f"certificate object: {type(item).__name__}")
    cursor = ctypes.c_char_p(der)  # d2i advances it; the bytes stay alive through `der`
    cert: int | None = lib.d2i_X509(None, ctypes.byref(cursor), len(der))
    if not cert:
        raise ValueError(f"certificate {index} of the chain is not DER X.509")
    return cert
