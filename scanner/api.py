"""The library face: `scan()` for many targets, `get_server_certificate()` for one."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from .config import ScanConfig
from .pool import Scan
from .record import Record
from .targets import BadLine, Target, parse_lines
from .verify import TrustStore


async def _lines(
    targets: Iterable[str] | AsyncIterable[str], config: ScanConfig
) -> AsyncIterator[Target | BadLine]:
    if isinstance(targets, AsyncIterable):
        number = 0
        async for line in targets:
            number += 1
            for item in parse_lines([line], ports=config.ports, sni=config.sni,
                                    source="api", first_line=number):
                yield item
    else:
        for item in parse_lines(targets, ports=config.ports, sni=config.sni, source="api"):
            yield item


async def scan(
    targets: Iterable[str] | AsyncIterable[str], **options: Any
) -> AsyncIterator[Record]:
    """Scan target lines (any form `certscan scan` reads), yielding one record per target
    in completion order. `options` are `ScanConfig` fields (ports, sni, concurrency,
    timeout, ca_bundle, alpn, retries, rate, resolver, ...).

    A record's `validation` is null unless `ca_bundle` is given; `certificate` is null and
    `chain` empty when the handshake failed (then `error` says why).
    """
    config = ScanConfig(**options)
    store = TrustStore.load(config.ca_bundle) if config.ca_bundle else None
    try:
        async for record in Scan(_lines(targets, config), config, store=store).records():
            yield record
    finally:
        if store is not None:
            store.close()
