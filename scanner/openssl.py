"""ctypes bindings to the libcrypto that Python's ``_ssl`` itself uses.

``scanner.verify`` judges a captured chain with OpenSSL's own ``X509_verify_cert``, so that
its verdict is the stdlib's by construction. No Python package exposes that call on an
arbitrary chain and store, hence ctypes; and it must be the very libcrypto ``_ssl`` is linked
against (``_loaded_library``, bound once by ``bind``). The verification parameters are not
read from the running interpreter: they are pinned per policy in ``scanner.verify``.

Also here: lending the ``X509`` inside an ``_ssl.Certificate`` (``lend``), which skips
``d2i_X509``, with the checks that make reading that pointer safe, and DER decoding
(``decode``) for everything else.
"""

from __future__ import annotations

import _ssl
import ctypes
import functools
import ssl
import sys
from dataclasses import dataclass
from typing import Any

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


def _loaded_library(stem: str) -> ctypes.CDLL:
    """The copy of lib<stem> this process already mapped for ``_ssl`` (dlopen shares it).

    Checked by version: OpenSSL_version_num is the library's own.
    """
    paths = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = [line.split()[-1] for line in maps if f"/lib{stem}.so" in line]
    except OSError:  # not Linux: let the dynamic linker answer
        pass
    for path in dict.fromkeys(paths):
        if (lib := _if_ours(path)) is not None:
            return lib
    # find_library runs `ldconfig -p` in a subprocess (~10 ms): only when the maps fail.
    import ctypes.util

    found = ctypes.util.find_library(stem)
    if found and (lib := _if_ours(found)) is not None:
        return lib
    raise RuntimeError(f"lib{stem} {ssl.OPENSSL_VERSION} (the one _ssl uses) not found")


def _if_ours(path: str) -> ctypes.CDLL | None:
    lib = ctypes.CDLL(path)
    version = lib.OpenSSL_version_num
    version.restype, version.argtypes = ctypes.c_ulong, ()
    return lib if version() == ssl.OPENSSL_VERSION_NUMBER else None


@functools.cache
def bind() -> _OpenSSL:
    """Bind libcrypto once. Nothing here depends on the running interpreter's defaults."""
    if ssl.OPENSSL_VERSION_INFO[0] != 3:
        raise RuntimeError(f"verify needs OpenSSL 3, _ssl uses {ssl.OPENSSL_VERSION}")
    crypto = _loaded_library("crypto")
    for name, (restype, argtypes) in _SIGNATURES.items():
        func = getattr(crypto, name)
        func.restype, func.argtypes = restype, argtypes
    # Host flags: names from the SAN only (DESIGN's contract, and what browsers do), so
    # NEVER_CHECK_SUBJECT (0x20) is set even though 3.11's default client still falls back
    # to the subject CN when a certificate has no DNS SAN (hostname_checks_common_name is
    # True there). NO_PARTIAL_WILDCARDS (0x4) is what _ssl always sets.
    host_flags = 0x4 | 0x20
    return _OpenSSL(crypto, host_flags)


# -- lending the X509 inside an _ssl.Certificate ---------------------------------------------
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


def _layout_holds(lib: ctypes.CDLL, cert: _ssl.Certificate) -> bool:
    """Whether a Certificate's struct really holds its X509* at ``_X509_OFFSET``.

    First what can be checked without touching the pointer: CPython (``id`` is an address
    there, not elsewhere), the type's name, module and size as derived above. Only then is
    the pointer read and dereferenced once, the decisive test: it must be non-NULL and
    aligned, and OpenSSL's encoding of the X509 it points to must be byte for byte the DER
    the object reports (``public_bytes`` is i2d_X509 of its own ``cert``, so this can only
    hold if the pointer is that X509). i2d of a decoded certificate re-emits the encoding it
    cached while decoding, so this costs a few microseconds, once.
    """
    cls = type(cert)
    if (
        sys.implementation.name != "cpython"
        or cls is not _ssl.Certificate
        or (cls.__module__, cls.__name__) != ("_ssl", "Certificate")
        or cls.__basicsize__ != _CERTIFICATE_SIZE
        or cls.__itemsize__ != 0
    ):
        return False
    try:
        expected = cert.public_bytes(_ssl.ENCODING_DER)
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
    after that our own reference keeps it alive, whatever happens to ``item``.
    """
    # The only type trusted with a pointer read, by identity: it cannot be subclassed or
    # instantiated from Python (no Py_TPFLAGS_BASETYPE, no tp_new), so an object whose type
    # *is* _ssl.Certificate was made by _ssl itself, with the layout above.
    if type(item) is not _ssl.Certificate:
        return 0
    ok = _LAYOUT.get("ok")
    if ok is None:
        ok = _LAYOUT["ok"] = _layout_holds(lib, item)
    if not ok:
        return 0
    ptr = _x509_in(item)
    # X509_up_ref returns 1 when it took a usable reference; 0 (never for a live X509)
    # leaves nothing for us to free, and the DER path takes over.
    return ptr if ptr and lib.X509_up_ref(ptr) == 1 else 0


def decode(lib: ctypes.CDLL, item: object, index: int) -> int:
    """A new X509 decoded from DER: ``item`` itself, or what its ``public_bytes`` gives."""
    der = item
    if not isinstance(item, bytes):  # a Certificate not lent, or anything else exporting DER
        export = getattr(item, "public_bytes", None)
        der = export(_ssl.ENCODING_DER) if callable(export) else None
    if not isinstance(der, bytes):
        raise TypeError(f"certificate {index} of the chain is neither DER bytes nor an "
                        f"_ssl.Certificate: {type(item).__name__}")
    cursor = ctypes.c_char_p(der)  # d2i advances it; the bytes stay alive through `der`
    cert: int | None = lib.d2i_X509(None, ctypes.byref(cursor), len(der))
    if not cert:
        raise ValueError(f"certificate {index} of the chain is not DER X.509")
    return cert
