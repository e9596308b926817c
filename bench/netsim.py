"""Regime B's bad network, in one uvloop process: silent hosts and (when netem is missing) delay.

    python bench/netsim.py --port 443 --silent FILE [--proxy FILE --delay 0.05]

- Silent hosts (`--silent`, one address a line): accept TCP, then never answer, and hold
  the connection until the client gives up.
- Delay proxy (`--proxy`, lines `listen_address backend_address`): the fallback when the
  kernel has no netem qdisc. Each byte is held `delay` seconds in each direction. The
  kernel completes the client's TCP handshake at once, so the missing round trip of
  connect() is added to the client's first flight instead: the client sees its first server
  byte 2 RTT after connect(), as with netem (1 RTT for TCP, 1 for TLS 1.3), but its
  connect stage looks instant and its handshake stage one RTT longer.

Prints `ready` on stdout once every listener is bound; runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import sys
from pathlib import Path
from typing import cast

import uvloop


class Silent(asyncio.Protocol):
    """Accepts and holds: never writes, never closes first.

    It does read (and drop) what arrives, only to see the client's FIN and free the socket;
    to the client this is the same as a server that never reads.
    """

    def data_received(self, data: bytes) -> None:
        pass


class Half(asyncio.Protocol):
    """One side of a proxied connection; whatever it receives reaches `peer` `delay` later."""

    def __init__(self, delay: float, first_extra: float = 0.0) -> None:
        self.loop = asyncio.get_running_loop()
        self.delay = delay
        self.first_extra = first_extra  # the TCP round trip the kernel skipped (client side)
        self.release_at = 0.0  # deliveries keep their order
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.backlog: list[bytes | None] = []  # reached us before the peer existed
        self.gone = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def _schedule(self, item: bytes | None) -> None:
        when = max(self.loop.time() + self.delay + self.first_extra, self.release_at)
        self.first_extra = 0.0
        self.release_at = when
        self.loop.call_at(when, self._deliver, item)

    def _deliver(self, item: bytes | None) -> None:
        if self.peer is None or self.peer.transport is None:
            self.backlog.append(item)
            return
        self.peer.send(item)

    def send(self, item: bytes | None) -> None:
        """`item` from the other side: bytes to write, or None for "close"."""
        if self.transport is None or self.transport.is_closing():
            return
        if item is None:
            self.transport.close()
        else:
            self.transport.write(item)

    def attach(self, peer: Half) -> None:
        self.peer = peer
        backlog, self.backlog = self.backlog, []
        for item in backlog:
            peer.send(item)

    def data_received(self, data: bytes) -> None:
        self._schedule(data)

    def eof_received(self) -> bool:
        self._schedule(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone:
            self.gone = True
            self._schedule(None)


class Downstream(Half):
    def __init__(self, backend: tuple[str, int], delay: float) -> None:
        super().__init__(delay, first_extra=2 * delay)
        self.backend = backend

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            _, upstream = await self.loop.create_connection(
                lambda: Half(self.delay), *self.backend
            )
        except OSError:
            if self.transport is not None:
                self.transport.abort()
            return
        upstream.attach(self)
        self.attach(upstream)


async def serve(
    port: int, silent: list[str], proxy: list[tuple[str, str]], delay: float
) -> None:
    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer] = []
    for address in silent:
        servers.append(await loop.create_server(Silent, address, port, backlog=1024))
    for listen, backend in proxy:
        servers.append(
            await loop.create_server(
                functools.partial(Downstream, (backend, port), delay), listen, port,
                backlog=1024,
            )
        )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--silent", help="file of addresses that accept and never answer")
    parser.add_argument("--proxy", help="file of 'listen backend' address pairs")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds each way")
    args = parser.parse_args()
    silent = Path(args.silent).read_text().split() if args.silent else []
    proxy: list[tuple[str, str]] = []
    for line in Path(args.proxy).read_text().splitlines() if args.proxy else []:
        listen, backend = line.split()
        proxy.append((listen, backend))
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port, silent, proxy, args.delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
