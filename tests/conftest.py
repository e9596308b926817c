from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import trustme
import uvloop


@pytest.fixture(scope="session", params=["uvloop", "asyncio"])
def event_loop_policy(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoopPolicy]:
    """Every async test runs on both loops certscan supports: uvloop (the default) and
    the stdlib's, since they report the same network failures differently."""
    if request.param == "uvloop":
        yield uvloop.EventLoopPolicy()
    else:
        yield asyncio.DefaultEventLoopPolicy()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)
