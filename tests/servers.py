"""Real servers on loopback for the tests: TLS servers with trustme certificates, and the
misbehaving peers a scanner meets (silent, garbage, FIN, RST, alert, slow, endless).

Each test gets its own 127.x.y.z address from `next_address()`, so tests never collide on
ports and a "host" in a test is a real, distinct address.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
import struct
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trustme

_counter = itertools.count(1)


def next_address() -> str:
    """A fresh loopback address, 127.77.x.y; unique within the test process."""
    n = next(_counter)
    return f"127.77.{(n >> 8) & 255}.{n & 255}"


def free_port(host: str) -> int:
    """A port with nothing listening on `host` (bound, then released)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Running:
    host: str
    port: int
    accepts: int = 0
    server_names: list[str | None] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def server_context(
    cert: trustme.LeafCert,
    *,
    maximum: ssl.TLSVersion | None = None,
    seclevel0: bool = False,
    ciphers: str = "ALL",
) -> ssl.SSLContext:
    """A server context for `cert`. seclevel0: TLS 1.0 up and `ciphers` (TLS 1.2 and
    below) at OpenSSL's security level 0, for the legacy servers an inventory meets."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 servers, on purpose
        if seclevel0:
            ctx.set_ciphers(f"{ciphers}:@SECLEVEL=0")
            ctx.minimum_version = ssl.TLSVersion.TLSv1
        if maximum is not None:
            ctx.maximum_version = maximum
    cert.configure_cert(ctx)
    return ctx


@asynccontextmanager
async def tls_server(
    ctx: ssl.SSLContext,
    host: str | None = None,
    *,
    by_name: dict[str, ssl.SSLContext] | None = None,
    port: int = 0,
) -> AsyncIterator[Running]:
    """A TLS server that completes handshakes and then waits for the client to leave.

    by_name: other contexts chosen by SNI (two certificates on one address).
    port: 0 for any free one.
    """
    host = host or next_address()
    running = Running(host, 0)

    def pick(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        running.server_names.append(name)
        if by_name and name in by_name:
            sslobj.context = by_name[name]

    ctx.sni_callback = pick  # type: ignore[assignment]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        running.accepts += 1
        try:
            await reader.read(1)
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(handle, host, port, ssl=ctx, backlog=4096)
    running.port = server.sockets[0].getsockname()[1]
    async with server:
        yield running
        server.close()


Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(behaviour: Behaviour, host: str | None = None,
                     *, port: int = 0) -> AsyncIterator[Running]:
    """A plain TCP server whose connections are handled by `behaviour` (port 0: any)."""
    host = host or next_address()
    running = Running(host, 0)
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        running.accepts += 1
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await behaviour(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Teardown cancels handlers still sleeping; 3.11's start_server logs a
            # cancelled handler as an error, so end it quietly here instead.
            return
        finally:
            handlers.discard(task)
            writer.transport.abort()

    server = await asyncio.start_server(handle, host, port, backlog=4096)
    running.port = server.sockets[0].getsockname()[1]
    try:
        yield running
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def read_client_hello(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(5)
    (length,) = struct.unpack("!H", header[3:5])
    return header + await reader.readexactly(length)


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_client_hello(reader)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(3600)


async def fin_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_client_hello(reader)
    writer.write_eof()  # FIN, and keep the socket open so the kernel sends no RST
    await asyncio.sleep(3600)


async def rst_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_client_hello(reader)
    sock = writer.get_extra_info("socket")
    # SO_LINGER with a zero timeout turns close() into an RST.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def alert(description: int) -> Behaviour:
    """Answer the ClientHello with a fatal TLS alert record."""

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_client_hello(reader)
        writer.write(bytes([21, 3, 3, 0, 2, 2, description]))
        await writer.drain()
        await asyncio.sleep(3600)

    return behaviour


def trickle(interval: float, payload: bytes = b"\x16\x03\x03\x40\x00") -> Behaviour:
    """One byte every `interval` seconds, for ever: a handshake that never completes."""

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_client_hello(reader)
        for byte in itertools.cycle(payload + b"\x00" * 64):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(interval)

    return behaviour


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A valid-looking handshake record header announcing a huge message, then data for ever."""
    await read_client_hello(reader)
    block = b"\x16\x03\x03\x40\x00" + b"\x02" + b"\x00" * 16383
    while True:
        writer.write(block)
        await writer.drain()

