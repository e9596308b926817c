"""The library face: `scan()` for many targets, `get_server_certificate()` for one."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from .certs import der_to_pem
from .config import ScanConfig
from .errors import ErrorType
from .gate import HandshakeGate
from .pool import Scan
from .probe import Prober
from .record import Record
from .resolve import ThreadResolver
from .targets import BadLine, Target, parse_line, parse_lines
from .tls import capture_context
from .verify import TrustStore, to_ssl_error, verify_chain


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


_TWIN_ERRORS: dict[ErrorType, type[OSError]] = {
    ErrorType.DNS: socket.gaierror,
    ErrorType.REFUSED: ConnectionRefusedError,
    ErrorType.RESET: ConnectionResetError,
    ErrorType.CLOSED: ConnectionAbortedError,
    ErrorType.TIMEOUT: TimeoutError,
    ErrorType.TLS_ALERT: ssl.SSLError,
    ErrorType.NOT_TLS: ssl.SSLError,
    ErrorType.TLS_ERROR: ssl.SSLError,
}


async def get_server_certificate(
    addr: tuple[str, int],
    ssl_version: int = ssl.PROTOCOL_TLS_CLIENT,
    ca_certs: str | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - the stdlib signature, by design
) -> str:
    """The asyncio twin of `ssl.get_server_certificate`: the server's leaf in PEM.

    As in the stdlib, the name is sent as SNI but not matched against the certificate, and
    with `ca_certs` the chain is validated and `ssl.SSLCertVerificationError` raised when it
    fails (with the stdlib's verify_code and verify_message). Unlike the stdlib, a failed
    validation never costs a second connection, and every TLS version the server speaks is
    accepted (`ssl_version` is kept for signature compatibility; only PROTOCOL_TLS_CLIENT
    and PROTOCOL_TLS are meaningful). Network failures raise OSError subclasses
    (TimeoutError, ConnectionRefusedError, socket.gaierror, ssl.SSLError, ...).
    """
    if ssl_version not in (ssl.PROTOCOL_TLS_CLIENT, ssl.PROTOCOL_TLS):
        raise ValueError("only PROTOCOL_TLS_CLIENT (TLS 1.0 to 1.3, negotiated) is supported")
    host, port = addr
    (target,) = parse_line(f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                           ports=(port,))
    store = TrustStore.load(ca_certs) if ca_certs is not None else None
    resolver = ThreadResolver(threads=1)
    try:
        prober = Prober(capture_context(), resolver, timeout=timeout,
                        gate=HandshakeGate(1, budget=timeout, fixed=True))
        outcome = await prober.probe(target)
        if outcome.error is not None:
            error = outcome.error
            raise _TWIN_ERRORS.get(error.type, OSError)(error.message) from error
        assert outcome.handshake is not None
        chain = outcome.handshake.chain
        if store is not None:
            verdict = verify_chain(chain, store, server_name=None)
            if not verdict.trusted:
                raise to_ssl_error(verdict)
        return der_to_pem(chain[0])
    finally:
        resolver.close()
        if store is not None:
            store.close()
