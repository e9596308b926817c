from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

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
