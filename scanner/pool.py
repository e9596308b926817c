"""The scan engine: a bounded queue of targets, N workers, records out in completion order.

    items --(producer)--> work queue (bounded) --> N workers --> result queue --> caller

Memory stays flat in the length of the input: the producer blocks when the work queue is
full, and the caller's pace bounds the result queue. Every target that enters gives exactly
one record, including bad lines and probes that crash (an `internal` record).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
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
GRACE = 2.0  # seconds a stopped scan gives its in-flight targets before dropping them

Result = tuple[Target | BadLine, Record]


class Stopped(Exception):
    """The scan was stopped before this target's turn came: it gets no record (a resumed
    run scans it)."""


class RateLimiter:
    """At most `rate` new connections per second, spread evenly: each caller is given the
    next free instant. `close()` (a stop) turns away every caller still waiting for its
    turn, and every later one, with `Stopped`: a stopped scan opens no new connection."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._waiting: set[asyncio.Future[None]] = set()
        self._closed = False

    async def wait(self) -> None:
        if self._closed:
            raise Stopped
        loop = asyncio.get_running_loop()
        now = loop.time()
        turn = max(self._next, now)
        self._next = turn + self._interval
        if turn <= now:
            return
        future: asyncio.Future[None] = loop.create_future()
        timer = loop.call_at(turn, _wake, future)
        self._waiting.add(future)
        try:
            await future
        finally:
            timer.cancel()
            self._waiting.discard(future)

    def close(self) -> None:
        self._closed = True
        for future in self._waiting:
            if not future.done():
                future.set_exception(Stopped())


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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
        grace: float = GRACE,
    ) -> None:
        self._items = items
        self._config = config
        self._store = store
        self._grace = grace
        self._in_flight: list[asyncio.Task[None]] = []  # the producer and the workers
        self._limiter: RateLimiter | None = None
        self.stopped_early = False

    def stop(self) -> None:
        if self.stopped_early:
            return
        self.stopped_early = True
        if self._limiter is not None:
            self._limiter.close()  # targets still waiting for their --rate turn: none
        if self._in_flight:
            asyncio.get_running_loop().call_later(self._grace, self._drop_in_flight)

    def _drop_in_flight(self) -> None:
        """The grace period is over: whatever is still in flight goes without a record."""
        for task in self._in_flight:
            task.cancel()

    async def records(self) -> AsyncIterator[Record]:
        """The records, in completion order."""
        async with contextlib.aclosing(self.results()) as results:
            async for _, record in results:
                yield record

    async def results(self) -> AsyncGenerator[Result, None]:
        """Each item with its record, in completion order (the item says which input it was)."""
        config = self._config
        resolver = make_resolver(config.resolver, config.resolver_threads, config.nameservers)
        limiter = self._limiter = RateLimiter(config.rate) if config.rate else None
        prober = Prober(
            capture_context(config.alpn),
            resolver,
            timeout=config.timeout,
            gate=config.handshake_gate(),
            retries=config.retries,
            before_attempt=limiter.wait if limiter else None,
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
            # Not in a `finally`: when the scan is torn down (cancelled), the workers are
            # cancelled too, and a put into a full queue would wait for them for ever.
            for _ in workers:
                await work.put(_DONE)

        async def work_loop() -> None:
            while (target := await work.get()) is not None:
                if self.stopped_early:
                    continue  # drain without probing: a stopped scan takes no new targets
                record = await self._one(prober, target)
                if record is not None:
                    await results.put((target, record))

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

    async def _one(self, prober: Prober, target: Target) -> Record | None:
        """The target's record; None when the scan stopped before the target started."""
        try:
            outcome = await prober.probe(target)
            return probe_record(target, outcome, now=datetime.now(UTC), store=self._store,
                                policy=self._config.verify_policy)
        except Stopped:
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in certscan: still exactly one record for the target
            return error_record(target, internal(exc, Stage.SCAN), now=datetime.now(UTC))
