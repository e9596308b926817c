"""The scan engine: a bounded queue of targets, N workers, records out in completion order.

    items --(producer)--> work queue (bounded) --> N workers --> result queue --> caller

Memory stays flat in the length of the input: the producer blocks when the work queue is
full, and the caller's pace bounds the result queue. Every target that enters gives exactly
one record, including bad lines and probes that crash (an `internal` record).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime

from .config import ScanConfig
from .errors import Stage, internal
from .probe import Prober
from .record import Record, bad_line_record, error_record, probe_record
from .resolve import make_resolver
from .targets import BadLine, Target
from .tls import capture_context
from .verify import TrustStore

_DONE = None  # sentinel on both queues

Result = tuple[Target | BadLine, Record]


class RateLimiter:
    """At most `rate` new connections per second, spread evenly (a token bucket of one)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if self._next > now:
                await asyncio.sleep(self._next - now)
                now = self._next
            self._next = now + self._interval


class Scan:
    """One scan over a stream of targets. Iterate `records()` once; `stop()` ends it early.

    After `stop()`: no new targets are taken; targets in flight get `grace` seconds to finish,
    then are dropped without a record (a resumed run picks them up).
    """

    def __init__(
        self,
        items: AsyncIterable[Target | BadLine],
        config: ScanConfig,
        *,
        store: TrustStore | None = None,
        grace: float = 2.0,
    ) -> None:
        self._items = items
        self._config = config
        self._store = store
        self._grace = grace
        self._in_flight: list[asyncio.Task[None]] = []  # the producer and the workers
        self.stopped_early = False

    def stop(self) -> None:
        if self.stopped_early:
            return
        self.stopped_early = True
        if self._in_flight:
            asyncio.get_running_loop().call_later(self._grace, self._drop_in_flight)

    def _drop_in_flight(self) -> None:
        """The grace period is over: whatever is still in flight goes without a record."""
        for task in self._in_flight:
            task.cancel()

    async def records(self) -> AsyncIterator[Record]:
        """The records, in completion order."""
        async for _, record in self.results():
            yield record

    async def results(self) -> AsyncIterator[Result]:
        """Each item with its record, in completion order (the item says which input it was)."""
        config = self._config
        resolver = make_resolver(config.resolver, config.resolver_threads, config.nameservers)
        limiter = RateLimiter(config.rate) if config.rate else None
        prober = Prober(
            capture_context(config.alpn),
            resolver,
            timeout=config.timeout,
            gate=config.handshake_gate(),
            retries=config.retries,
            before_connect=limiter.wait if limiter else None,
        )
        work: asyncio.Queue[Target | None] = asyncio.Queue(maxsize=config.concurrency * 2)
        results: asyncio.Queue[Result | None] = asyncio.Queue(maxsize=config.concurrency * 2)
        failure: list[BaseException] = []

        async def produce() -> None:
            try:
                async for item in self._items:
                    if self.stopped_early:
                        break
                    if isinstance(item, BadLine):
                        await results.put((item, bad_line_record(item, now=datetime.now(UTC))))
                    else:
                        await work.put(item)
            except Exception as exc:  # an input that fails mid-way (I/O error): fatal
                failure.append(exc)
            finally:
                for _ in workers:
                    await work.put(_DONE)

        async def work_loop() -> None:
            while (target := await work.get()) is not None:
                if self.stopped_early:
                    continue  # drain without probing: a stopped scan takes no new targets
                await results.put((target, await self._one(prober, target)))

        workers = [asyncio.create_task(work_loop()) for _ in range(config.concurrency)]
        producer = asyncio.create_task(produce())
        self._in_flight = [producer, *workers]

        async def close_results() -> None:
            # return_exceptions: after stop(), cancelled workers are expected, not failures
            # (a worker cannot fail otherwise: _one turns every exception into a record).
            await asyncio.gather(producer, *workers, return_exceptions=True)
            await results.put(_DONE)

        closer = asyncio.create_task(close_results())
        tasks = [producer, *workers, closer]
        try:
            while (result := await results.get()) is not None:
                yield result
            if failure:
                raise failure[0]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._in_flight = []
            resolver.close()

    async def _one(self, prober: Prober, target: Target) -> Record:
        try:
            outcome = await prober.probe(target)
            return probe_record(target, outcome, now=datetime.now(UTC), store=self._store)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in certscan: still exactly one record for the target
            return error_record(target, internal(exc, Stage.SCAN), now=datetime.now(UTC))
