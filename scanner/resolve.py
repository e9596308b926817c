"""Name resolution that keeps up with the scan.

`loop.getaddrinfo` runs on the loop's default executor: uvloop's is libuv's pool of four
threads, which at 50 ms per lookup caps a whole scan at ~40 names/s (bench/dns.py; README,
"Name resolution"). We use threads of our own, as many as the lookups in flight need, or
c-ares (aiodns), which needs none; and every target that names the same host (ports, SNI
variants) shares one lookup.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import queue
import socket
import threading
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from .targets import BadLine, Target, TargetError, parse_port, split_host_port

if TYPE_CHECKING:
    import aiodns

# Answers kept per name, most recent first out; enough for the ports and SNI variants of a
# name to share one lookup, small enough that a million distinct names stay flat in memory.
_CACHE_SIZE = 4096


class Resolver(Protocol):
    async def resolve(self, host: str) -> list[str]:
        """The addresses of `host` (never empty), in the order the resolver prefers;
        raises socket.gaierror when there are none."""
        ...

    def close(self) -> None: ...


class _Cache:
    """In-flight and finished lookups by name, so concurrent targets share one query.

    Failures are cached too: a name that does not exist is asked once, not once per port.
    """

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError(f"cache size must be at least 1, got {size}")
        self._size = size
        self._entries: OrderedDict[str, asyncio.Future[list[str]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def resolve(
        self, host: str, start: Callable[[str], Awaitable[list[str]]]
    ) -> list[str]:
        """The shared answer for `host`, starting the lookup with `start` if none is cached."""
        future = self._entries.get(host)
        # A cancelled lookup (the resolver was closed under it) is no answer: ask again.
        if future is None or future.cancelled():
            future = asyncio.ensure_future(start(host))
            self._put(host, future)
        else:
            self._entries.move_to_end(host)
        # shield: one target's deadline must not cancel a lookup others are waiting on. When
        # every waiter has gone, shield still marks the lookup's exception as retrieved.
        return list(await asyncio.shield(future))

    def _put(self, host: str, future: asyncio.Future[list[str]]) -> None:
        self._entries[host] = future
        self._entries.move_to_end(host)
        while len(self._entries) > self._size:
            _, old = self._entries.popitem(last=False)
            if old.done() and not old.cancelled():
                old.exception()  # mark retrieved: an evicted failure is not "never retrieved"


def _no_address(host: str) -> socket.gaierror:
    return socket.gaierror(socket.EAI_NODATA, f"{host}: the name has no address")


class _LookupThreads:
    """Blocking getaddrinfo on daemon threads, started as lookups need them.

    Not a ThreadPoolExecutor: at interpreter exit Python joins its workers even after
    `shutdown(wait=False)`, so one lookup stuck on a silent name server (resolv.conf's
    timeout times attempts, 10 s by default) would hold the finished scan's process open.
    """

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self._max = threads
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._jobs: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[list[str]], str] | None
        ] = queue.SimpleQueue()
        self._closed = False

    def submit(self, host: str) -> asyncio.Future[list[str]]:
        if self._closed:
            raise RuntimeError("the resolver is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[str]] = loop.create_future()
        self._jobs.put((loop, future, host))
        # A waiting thread takes the job; otherwise start one, up to the limit.
        if not self._idle.acquire(blocking=False) and len(self._threads) < self._max:
            thread = threading.Thread(
                target=self._work, name=f"resolve-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, host = job
            addresses: list[str] | None = None
            error: Exception | None = None
            try:
                infos = socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)
                addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
                if not addresses:
                    error = _no_address(host)
            except socket.gaierror as exc:
                error = exc
            except UnicodeError as exc:  # IDNA: a label over 63 characters, say
                error = socket.gaierror(socket.EAI_NONAME, f"{host}: not a valid name ({exc})")
            except Exception as exc:  # a bug, say: delivered to the waiting task, not lost
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, addresses, error)
            self._idle.release()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                loop, future, _ = job
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(future.cancel)
        for _ in self._threads:
            self._jobs.put(None)


def _settle(
    future: asyncio.Future[list[str]], addresses: list[str] | None, error: Exception | None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert addresses is not None
        future.set_result(addresses)


class ThreadResolver:
    """getaddrinfo on dedicated threads: honours /etc/hosts, nsswitch and resolv.conf
    exactly as every other program on the machine does.

    threads: lookups that can wait on the name server at once; it bounds throughput at
    about threads / (name server latency) names per second.
    """

    def __init__(self, threads: int = 64, *, cache_size: int = _CACHE_SIZE) -> None:
        self._threads = _LookupThreads(threads)
        self._cache = _Cache(cache_size)

    async def resolve(self, host: str) -> list[str]:
        return await self._cache.resolve(host, self._threads.submit)

    def close(self) -> None:
        # Lookups still queued are cancelled; those in progress are left to their daemon
        # threads, which cannot hold the process at exit.
        self._threads.close()


# c-ares status -> the getaddrinfo error code a caller of socket.getaddrinfo would see.
_ARES_TO_EAI = {
    "ARES_ENOTFOUND": socket.EAI_NONAME,  # NXDOMAIN
    "ARES_ENONAME": socket.EAI_NONAME,
    "ARES_EBADNAME": socket.EAI_NONAME,
    "ARES_ENODATA": socket.EAI_NODATA,  # the name exists, with no address
    "ARES_ETIMEOUT": socket.EAI_AGAIN,
    "ARES_ESERVFAIL": socket.EAI_AGAIN,
    "ARES_ECONNREFUSED": socket.EAI_AGAIN,
    "ARES_EREFUSED": socket.EAI_FAIL,
}


def check_nameserver(text: str) -> str:
    """Check one "IP", "IP:PORT", "[IPv6]:PORT" or bare IPv6 (split as target lines are:
    targets.split_host_port); c-ares takes the same syntax. ValueError naming it."""
    try:
        host, port = split_host_port(text)
    except TargetError:
        raise ValueError(f"nameserver {text!r}: expected [IPv6]:PORT") from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver {text!r}: not an IP address") from None
    if port is not None:
        try:
            parse_port(port)
        except TargetError:
            raise ValueError(f"nameserver {text!r}: bad port {port!r}") from None
    return text


class AiodnsResolver:
    """c-ares through aiodns: no threads per lookup, thousands of queries in flight.

    Resolves like getaddrinfo (c-ares reads /etc/hosts, resolv.conf's search domains and
    options), without nsswitch modules such as mDNS or LDAP.

    nameservers: "IP", "IP:PORT" or "[IPv6]:PORT" to ask instead of resolv.conf's.
    timeout, tries: per-query timeout in seconds and attempts per server (None: c-ares's
    defaults, from resolv.conf's options). The target's deadline still applies on top.
    """

    def __init__(
        self,
        nameservers: list[str] | None = None,
        *,
        timeout: float | None = None,
        tries: int | None = None,
        cache_size: int = _CACHE_SIZE,
    ) -> None:
        import aiodns  # noqa: F401 - optional dependency: fail here, not at the first lookup

        self._nameservers = [check_nameserver(server) for server in nameservers or ()]
        self._timeout = timeout
        self._tries = tries
        self._cache = _Cache(cache_size)
        # Made on first use, on the loop that runs the lookups: aiodns binds to a loop.
        self._resolver: aiodns.DNSResolver | None = None

    async def resolve(self, host: str) -> list[str]:
        return await self._cache.resolve(host, self._lookup)

    def _dns_resolver(self) -> aiodns.DNSResolver:
        if self._resolver is None:
            import aiodns

            options: dict[str, float | int] = {}
            if self._timeout is not None:
                options["timeout"] = self._timeout
            if self._tries is not None:
                options["tries"] = self._tries
            self._resolver = aiodns.DNSResolver(
                self._nameservers or None, loop=asyncio.get_running_loop(), **options
            )
        return self._resolver

    async def _lookup(self, host: str) -> list[str]:
        import aiodns

        try:
            result = await self._dns_resolver().getaddrinfo(
                host, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM
            )
        except aiodns.error.DNSError as exc:
            raise _gaierror(host, exc) from exc
        # c-ares gives addresses as bytes: (b"192.0.2.1", port) or (b"::1", port, flow, scope).
        addresses = list(
            dict.fromkeys(
                node.addr[0].decode() if isinstance(node.addr[0], bytes) else str(node.addr[0])
                for node in result.nodes
            )
        )
        if not addresses:
            raise _no_address(host)
        return addresses

    def close(self) -> None:
        resolver, self._resolver = self._resolver, None
        if resolver is None:
            return
        # aiodns 4's close() is a coroutine that never suspends (it cancels the pending
        # queries and hands the channel to pycares' own shutdown thread), while our protocol's
        # close() is synchronous: run it to its end right here. Should a later aiodns really
        # wait in there, at least end the queries; the channel goes with the resolver.
        closing = resolver.close()
        try:
            closing.send(None)
        except StopIteration:
            return
        closing.close()
        resolver.cancel()


def _gaierror(host: str, exc: aiodns.error.DNSError) -> socket.gaierror:
    import pycares

    status = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    name = pycares.errno.errorcode.get(status, "ARES_UNKNOWN") if status is not None else ""
    text = exc.args[1] if len(exc.args) > 1 else str(exc)
    code = _ARES_TO_EAI.get(name, socket.EAI_FAIL)
    return socket.gaierror(code, f"{host}: {text} (c-ares {name or 'error'})")


def make_resolver(kind: str, threads: int, nameservers: Sequence[str] = ()) -> Resolver:
    """The scan's resolver. `nameservers` applies to aiodns only: getaddrinfo always asks
    the system's (/etc/resolv.conf), which is what a thread pool can honour."""
    if kind == "aiodns":
        return AiodnsResolver(list(nameservers) or None)
    return ThreadResolver(threads)


# Lookups --all-addresses runs ahead of the scan, at most.
_LOOKAHEAD = 256


async def every_address(
    items: AsyncIterable[Target | BadLine], resolver: Resolver, *, seconds: float
) -> AsyncIterator[Target | BadLine]:
    """--all-addresses: each target that names a host becomes one target per address the
    host resolves to (A and AAAA, `ip` set, the name kept as host and server name), in
    input order. Lookups run ahead of the scan, up to _LOOKAHEAD at once. A name that does
    not resolve within `seconds` stays one target: its probe asks again and its record
    says why (dns, or a timeout at resolve). IP literals and bad lines pass as they are.
    """
    ahead: collections.deque[tuple[Target | BadLine, asyncio.Task[list[str]] | None]] = (
        collections.deque())

    async def lookup(host: str) -> list[str]:
        async with asyncio.timeout(seconds):
            return await resolver.resolve(host)

    async def next_ready() -> list[Target | BadLine]:
        """The first item's targets, once its lookup (if any) is over."""
        item, task = ahead.popleft()
        if task is None:
            return [item]
        await asyncio.wait([task])
        if task.cancelled() or task.exception() is not None:
            return [item]
        assert isinstance(item, Target)
        return [dataclasses.replace(item, ip=address) for address in task.result()]

    try:
        async for item in items:
            task = None
            if isinstance(item, Target) and item.ip is None:
                task = asyncio.create_task(lookup(item.host))
            ahead.append((item, task))
            # Hand on, in order, whatever is ready; wait only when too far ahead.
            while ahead and (len(ahead) > _LOOKAHEAD or ahead[0][1] is None
                             or ahead[0][1].done()):
                for each in await next_ready():
                    yield each
        while ahead:
            for each in await next_ready():
                yield each
    finally:
        for _, pending in ahead:
            if pending is not None:
                pending.cancel()
