from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable, Iterator, Mapping

import pytest
import trustme
import uvloop

from scanner import openssl


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Async tests run on uvloop, certscan's default loop. Tests marked `both_loops` also
    run on the stdlib loop, since the two report network failures differently."""
    if item.get_closest_marker("both_loops"):
        return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def d2i_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the d2i_X509 calls of libcrypto's binding (one entry per call): how many
    certificates the verdict decoded from DER."""
    lib = openssl.bind().crypto
    real = lib.d2i_X509
    calls: list[int] = []

    def counting(*args: object) -> object:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(lib, "d2i_X509", counting)
    return calls


_CRYPTO_EX_INDEX_X509 = 3  # openssl/crypto.h
# CRYPTO_EX_free: void (*)(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
# void *argp). Kept alive for the whole process: OpenSSL holds on to the function pointer.
_EX_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_int, ctypes.c_long, ctypes.c_void_p)
_FREE_CALLBACKS: list[object] = []


@pytest.fixture
def x509_frees() -> Iterator[tuple[Callable[[int], None], list[int]]]:
    """(mark, freed): mark(x509) tags an X509; freed lists tagged X509s as OpenSSL frees them.

    An ex_data index with a free callback: OpenSSL calls it from X509_free when the last
    reference goes (for every X509 while registered; only tagged ones are recorded), so
    "freed" means the reference count reached zero, exactly. Unregistered afterwards.
    """
    lib = openssl.bind().crypto
    new_index = lib.CRYPTO_get_ex_new_index
    new_index.restype = ctypes.c_int
    new_index.argtypes = (ctypes.c_int, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_void_p, _EX_FREE)
    set_ex = lib.X509_set_ex_data
    set_ex.restype, set_ex.argtypes = ctypes.c_int, (ctypes.c_void_p, ctypes.c_int,
                                                     ctypes.c_void_p)
    drop_index = lib.CRYPTO_free_ex_index
    drop_index.restype, drop_index.argtypes = ctypes.c_int, (ctypes.c_int, ctypes.c_int)
    freed: list[int] = []

    def on_free(parent: int | None, ptr: int | None, *_: object) -> None:
        if ptr:  # only X509s we tagged carry a value at our index
            freed.append(parent or 0)

    callback = _EX_FREE(on_free)
    _FREE_CALLBACKS.append(callback)
    index = new_index(_CRYPTO_EX_INDEX_X509, 0, None, None, None, callback)
    assert index >= 0

    def mark(x509: int) -> None:
        assert set_ex(x509, index, 1) == 1

    try:
        yield mark, freed
    finally:
        assert drop_index(_CRYPTO_EX_INDEX_X509, index) == 1  # callbacks become no-ops
