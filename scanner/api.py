"""The library face: `scan()` for many targets, `get_server_certificate()` for one."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import itertools
import os
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, Unpack

from .certs import der_to_pem
from .config import ConfigError, ScanConfig, ScanOptions
from .engine import Job, Scan
from .engines import OpenSSLEngine
from .gate import HandshakeGate
from .keys import select
from .probe import Prober
from .resolve import ThreadResolver, every_address, make_resolver
from .targets import BadLine, Target, TargetError, parse_lines, parse_server_name
from .values import ErrorType, Failure, Stage
from .verify import TrustStore, to_ssl_error, verify_chain


async def _items(
    targets: Iterable[str] | AsyncIterable[str], config: ScanConfig
) -> AsyncIterator[Target | BadLine]:
    """The lines' targets (and bad lines), in input order."""
    if isinstance(targets, AsyncIterable):
        number = 0
        async for line in targets:
            number += 1
            for item in parse_lines([line], ports=config.ports, sni=config.sni,
                                    source="api", first_line=number,
                                    starttls=config.starttls):
                yield item
    else:
        for item in parse_lines(targets, ports=config.ports, sni=config.sni, source="api",
                                starttls=config.starttls):
            yield item


async def _jobs(items: AsyncIterable[Target | BadLine]) -> AsyncIterator[Job]:
    tags = itertools.count()
    async for item in items:
        yield Job(next(tags), item)


async def scan(
    targets: str | Iterable[str] | AsyncIterable[str], **options: Unpack[ScanOptions]
) -> AsyncIterator[dict[str, Any]]:
    """Scan target lines (any form `certscan scan` reads), yielding one record per target
    in completion order. `targets` is one line (a str) or an iterable or async iterable of
    lines. `options` are `ScanConfig` fields (ports, sni, concurrency, timeout, ca_bundle,
    alpn, retries, rate, resolver, starttls, all_addresses, shard, ...), in the forms
    ScanConfig accepts: `ports=8443`, `ports="443,8000-8010"`, `alpn="h2,http/1.1"`,
    `starttls="smtp"` and `shard="0/4"` as on the command line.

    ConfigError (a ValueError naming the option) for an option that cannot work, a
    `ca_bundle` that cannot be loaded included, before any record. A record's `validation`
    is null unless `ca_bundle` is given; `certificate` is null and `chain` empty when the
    handshake failed (then `error` says why).
    """
    config = ScanConfig.from_options(options)
    if isinstance(targets, str):
        targets = [targets]  # one line, not its characters
    elif isinstance(targets, bytes | bytearray):
        raise TypeError("targets: lines are str, not bytes")
    store = None
    if config.ca_bundle is not None:
        try:
            store = TrustStore.load(config.ca_bundle)
        except ValueError as exc:
            raise ConfigError(f"ca_bundle: {exc}") from exc
    resolver = None
    items = _items(targets, config)
    if config.shard is not None:
        items = select(items, config.shard)
    if config.all_addresses:
        resolver = make_resolver(config.resolver, config.resolver_threads, config.nameservers)
        items = every_address(items, resolver, seconds=config.timeout)
    try:
        engine = Scan(_jobs(items), config, store=store)
        async with contextlib.aclosing(engine.results()) as results:
            async for _, record in results:
                yield record.as_dict()
    finally:
        if store is not None:
            store.close()
        if resolver is not None:
            resolver.close()


@functools.cache
def _plain_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _handshake_error(incoming: bytes | None) -> ssl.SSLError:
    """The exception this very _ssl raises for a client handshake that reads `incoming`
    (None: the end of the stream), made on memory buffers: nothing leaves the process."""
    received = ssl.MemoryBIO()
    client = _plain_context().wrap_bio(received, ssl.MemoryBIO())
    if incoming is None:
        received.write_eof()
    else:
        received.write(incoming)
    try:
        client.do_handshake()
    except ssl.SSLError as exc:
        return exc
    raise AssertionError("a handshake without a server cannot succeed")


@functools.cache
def _handshake_error_location() -> str:
    """The location _ssl appends to a failed handshake's SSLError, " (_ssl.c:NNNN)": its one
    raise in do_handshake, for sockets and memory buffers alike. Our verification errors
    are made, not raised there, so they take it from here."""
    text = str(_handshake_error(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
    at = text.rfind(" (_ssl.c:")
    return text[at:] if at >= 0 and text.endswith(")") else ""


@functools.cache
def _handshake_timeout_text() -> str:
    """The text of _ssl's TimeoutError for a handshake that waited too long (it names its
    own line): from a handshake over a socket pair that nobody answers, waiting 1 ms."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(0.001)
        try:
            _plain_context().wrap_socket(ours)
        except TimeoutError as exc:
            return str(exc)
        except OSError:
            pass
    return "The handshake operation timed out"


def _timeout_error(error: Failure) -> OSError:
    if error.stage is Stage.HANDSHAKE:
        return TimeoutError(_handshake_timeout_text())
    return TimeoutError("timed out")  # socket.connect's (the stdlib's DNS never times out)


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))  # OSError() picks the subclass that errno names


# Failures with no exception of the stdlib's kind behind them, made as _ssl or the socket
# module would have made them. (Table: the one place to look when a new case turns up.)
_TWIN_ERRORS: dict[ErrorType, Callable[[Failure], BaseException]] = {
    ErrorType.TIMEOUT: _timeout_error,
    ErrorType.CLOSED: lambda _: _handshake_error(None),  # a FIN mid-handshake: SSLEOFError
    ErrorType.RESET: lambda _: _os_error(errno.ECONNRESET),
    ErrorType.REFUSED: lambda _: _os_error(errno.ECONNREFUSED),
    ErrorType.DNS: lambda error: socket.gaierror(socket.EAI_NONAME, error.message),
    ErrorType.TLS_ERROR: lambda error: ssl.SSLError(error.message),  # e.g. no certificate
}


def _stdlib_error(failure: Failure, cause: BaseException | None) -> BaseException:
    """What `ssl.get_server_certificate` raises where the probe met `failure`, raised as
    `cause` (None when certscan itself decided): the one table from the taxonomy back to
    the stdlib's exceptions."""
    if isinstance(cause, ssl.SSLError | socket.gaierror):
        return cause  # the same _ssl, the same getaddrinfo: the stdlib's exception already
    if isinstance(cause, OSError) and cause.errno:
        # A socket's own error, worded as the socket module words it (asyncio's says
        # "Connect call failed (...)" for the same ECONNREFUSED).
        return _os_error(cause.errno)
    make = _TWIN_ERRORS.get(failure.type)
    if make is not None:
        return make(failure)
    return cause if cause is not None else OSError(failure.message)  # an internal error: itself


def _as_raised(error: ssl.SSLCertVerificationError) -> ssl.SSLCertVerificationError:
    """`error` with the text a verifying handshake's would have: _ssl's location added."""
    text = error.strerror or str(error)
    if "(_ssl.c:" in text:
        return error
    raised = ssl.SSLCertVerificationError(error.errno, text + _handshake_error_location())
    for name in ("library", "reason", "verify_code", "verify_message"):
        setattr(raised, name, getattr(error, name, None))
    return raised


async def _twin_target(host: str, port: int, seconds: float) -> Target:
    """The stdlib connects wherever getaddrinfo takes `host`; certscan connects to host names
    and IP addresses. A host that is neither is handed to getaddrinfo as the stdlib hands
    it, so that it fails as it would there (and a ValueError if getaddrinfo takes it)."""
    try:
        name = parse_server_name(host)
    except TargetError:
        async with asyncio.timeout(seconds):
            await asyncio.to_thread(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        raise
    try:
        ip: str | None = str(ipaddress.ip_address(name))
    except ValueError:
        ip = None
    shown = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
    return Target(shown, name, port, None if ip else name, ip, source="api")


async def get_server_certificate(
    addr: tuple[str, int],
    ssl_version: int = ssl.PROTOCOL_TLS_CLIENT,
    ca_certs: str | os.PathLike[str] | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - the stdlib signature, by design
) -> str:
    """The asyncio twin of `ssl.get_server_certificate`: the server's leaf in PEM.

    As in the stdlib, the name is sent as SNI but not matched against the certificate, and
    with `ca_certs` the chain is validated and `ssl.SSLCertVerificationError` raised when it
    fails (with the stdlib's verify_code and verify_message). Unlike the stdlib, a failed
    validation never costs a second connection, every TLS version the server speaks is
    accepted (`ssl_version` is kept for signature compatibility; only PROTOCOL_TLS_CLIENT
    and PROTOCOL_TLS are meaningful), and `timeout` is one deadline for the whole call
    (name lookup included), not one per socket operation.

    Failures raise what the stdlib raises, with its errno and text: `ca_certs` is read
    first, by the stdlib's own load_verify_locations (FileNotFoundError, or ssl.SSLError
    for a file without a certificate); then socket.gaierror from getaddrinfo,
    ConnectionRefusedError / ConnectionResetError with their errno, ssl.SSLError (an
    alert, bytes that are not TLS), ssl.SSLEOFError (the server hung up), TimeoutError.
    """
    if ssl_version not in (ssl.PROTOCOL_TLS_CLIENT, ssl.PROTOCOL_TLS):
        raise ValueError("only PROTOCOL_TLS_CLIENT (TLS 1.0 to 1.3, negotiated) is supported")
    host, port = addr
    store = None
    if ca_certs is not None:
        # The stdlib's own reading of the file first, for its exceptions as they are.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca_certs)
        store = TrustStore.load(os.fspath(ca_certs))
    resolver = ThreadResolver(threads=1)
    try:
        target = await _twin_target(host, port, timeout)
        # OpenSSL, as the stdlib: the same _ssl raises the same exceptions.
        prober = Prober(OpenSSLEngine(()), resolver, timeout=timeout,
                        gate=HandshakeGate(1, budget=timeout, fixed=True))
        capture = await prober.probe(target)
        if capture.failure is not None:
            error = _stdlib_error(capture.failure, capture.cause)
            if error is capture.cause:
                raise error
            raise error from capture.cause
        chain = capture.chain
        if store is not None:
            verdict = verify_chain(chain, store, server_name=None)
            if not verdict.trusted:
                raise _as_raised(to_ssl_error(verdict))
        return der_to_pem(chain[0])
    finally:
        resolver.close()
        if store is not None:
            store.close()
