"""Name resolution that keeps up with the scan.

`loop.getaddrinfo` runs on the loop's default executor: uvloop's is libuv's pool of four
threads, which at 50 ms per lookup caps a whole scan at ~40 names/s (DESIGN, "Decisions
already measured"). We use a thread pool of our own, wide enough for the lookups in flight,
and share one lookup between every target that names the same host (ports, SNI variants).
"""

from __future__ import annotations

import asyncio
import socket
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

# Answers kept per name, most recent first out; enough for the ports and SNI variants of a
# name to share one lookup, small enough that a million distinct names stay flat in memory.
_CACHE_SIZE = 4096


class Resolver(Protocol):
    async def resolve(self, host: str) -> list[str]:
        """The addresses of `host`, in the order the resolver prefers; raises gaierror."""
        ...

    def close(self) -> None: ...


class _Cache:
    """In-flight and finished lookups by name, so concurrent targets share one query.

    Failures are cached too: a name that does not exist is asked once, not once per port.
    """

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[str, asyncio.Future[list[str]]] = OrderedDict()

    def get(self, host: str) -> asyncio.Future[list[str]] | None:
        future = self._entries.get(host)
        if future is not None:
            self._entries.move_to_end(host)
        return future

    def put(self, host: str, future: asyncio.Future[list[str]]) -> None:
        self._entries[host] = future
        while len(self._entries) > self._size:
            _, old = self._entries.popitem(last=False)
            if old.done() and not old.cancelled():
                old.exception()  # mark retrieved: an evicted failure is not "never retrieved"


def _addresses(infos: list[tuple[object, ...]]) -> list[str]:
    seen: dict[str, None] = {}
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


class ThreadResolver:
    """getaddrinfo on a dedicated, wide thread pool; honours /etc/hosts and nsswitch."""

    def __init__(self, threads: int = 64) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="resolve")
        self._cache = _Cache()

    async def resolve(self, host: str) -> list[str]:
        future = self._cache.get(host)
        if future is None:
            loop = asyncio.get_running_loop()
            future = asyncio.ensure_future(self._lookup(loop, host))
            self._cache.put(host, future)
        # shield: one target's deadline must not cancel a lookup others are waiting on.
        return await asyncio.shield(future)

    async def _lookup(self, loop: asyncio.AbstractEventLoop, host: str) -> list[str]:
        infos = await loop.run_in_executor(
            self._executor, socket.getaddrinfo, host, None, 0, socket.SOCK_STREAM
        )
        return _addresses(list(infos))

    def close(self) -> None:
        # Lookups stuck in a slow resolver must not hold the process at exit.
        self._executor.shutdown(wait=False, cancel_futures=True)


class AiodnsResolver:
    """c-ares through aiodns: no threads, thousands of queries in flight."""

    def __init__(self) -> None:
        import aiodns  # optional dependency: `pip install certscan[aiodns]`

        self._resolver = aiodns.DNSResolver()
        self._cache = _Cache()

    async def resolve(self, host: str) -> list[str]:
        future = self._cache.get(host)
        if future is None:
            future = asyncio.ensure_future(self._lookup(host))
            self._cache.put(host, future)
        return await asyncio.shield(future)

    async def _lookup(self, host: str) -> list[str]:
        import aiodns

        try:
            result = await self._resolver.getaddrinfo(host, family=socket.AF_UNSPEC,
                                                      type=socket.SOCK_STREAM)
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else None
            message = exc.args[1] if len(exc.args) > 1 else str(exc)
            raise socket.gaierror(code, str(message)) from exc
        return list(dict.fromkeys(str(node.addr[0]) for node in result.nodes))

    def close(self) -> None:
        close = getattr(self._resolver, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                result.close()


def make_resolver(kind: str, threads: int) -> Resolver:
    if kind == "aiodns":
        return AiodnsResolver()
    return ThreadResolver(threads)
