"""The engine: tagged jobs in, one record per job out, in one event loop.

    jobs --(producer)--> work queue (bounded) --> N probe tasks --> result queue --> caller

Every scan runs this engine: the library's `scan()` directly, the command line in each of
its lanes (lanes.py: this process's own loop and each forked worker's). It owns the three
promises a scan makes inside a loop: memory stays flat in the length of the input (the
producer waits when the work queue is full, and the caller's pace bounds the result
queue); a stop takes no new job, opens no new connection, and drops what is still in
flight after the grace period; and every job that enters gives exactly one record, bad
lines and probes that crash (an `internal` record) included. A job's tag says which input
a record answers (docs/architecture.md, "The engine").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from .assess import assess_all
from .config import ScanConfig
from .engines import engines
from .errors import Stage, internal
from .probe import Prober
from .record import bad_line_record, error_record
from .resolve import make_resolver
from .targets import BadLine, Target
from .values import Capture, Record
from .verify import Policy, TrustStore

_DONE = None  # sentinel on both queues
_T = TypeVar("_T")
GRACE = 2.0  # seconds a stopped scan gives its in-flight targets before dropping them


@dataclass(frozen=True, slots=True)
class Job:
    """One input to scan, and the tag its record will carry back: a target, or a line that
    is not one (its record is an `invalid_target`)."""

    tag: int
    item: Target | BadLine


Result = tuple[int, Record]  # a job's tag and its record


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


def take_ready(queue: asyncio.Queue[_T | None], first: _T) -> tuple[list[_T], bool]:
    """`first` and whatever else `queue` holds right now, up to its end (None), as one
    batch; and whether the end came."""
    batch = [first]
    while not queue.empty():
        more = queue.get_nowait()
        if more is None:
            return batch, True
        batch.append(more)
    return batch, False


class _Assessor:
    """Judges the captures of one turn of the loop together (`assess.assess_all`): the
    probes that finish in a turn (the handshake gate hands out slots a few per turn) wait
    for the end of it, then are judged stage by stage, which keeps each stage's code in
    the CPU's caches. A waiter cancelled meanwhile (a stop) is skipped."""

    def __init__(self, store: TrustStore | None, policy: Policy) -> None:
        self._store = store
        self._policy = policy
        self._pending: list[tuple[Target, Capture, asyncio.Future[Record]]] = []

    def assess(self, target: Target, capture: Capture) -> asyncio.Future[Record]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Record] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._run)
        self._pending.append((target, capture, future))
        return future

    def _run(self) -> None:
        batch = [item for item in self._pending if not item[2].done()]
        self._pending = []
        try:
            records = assess_all([(target, capture) for target, capture, _ in batch],
                                 now=datetime.now(UTC), store=self._store,
                                 policy=self._policy)
        except Exception as exc:  # a bug of ours: each waiter makes its `internal` record
            for _, _, future in batch:
                future.set_exception(exc)
            return
        for (_, _, future), record in zip(batch, records, strict=True):
            future.set_result(record)


class Scan:
    """One scan over a stream of jobs. Iterate `results()` once; `stop()` ends it early.

    After `stop()`: no new jobs are taken; targets in flight get `grace` seconds to finish,
    then are dropped without a record (a resumed run picks them up).
    """

    def __init__(
        self,
        jobs: AsyncIterable[Job],
        config: ScanConfig,
        *,
        store: TrustStore | None = None,
        grace: float = GRACE,
    ) -> None:
        self._jobs = jobs
        self._config = config
        self._grace = grace
        self._in_flight: list[asyncio.Task[None]] = []  # the producer and the workers
        self._limiter: RateLimiter | None = None
        self._assessor = _Assessor(store, config.verify_policy)
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

    async def results(self) -> AsyncGenerator[Result, None]:
        """Each job's tag with its record, in completion order. Raises, after the records
        of the jobs already taken, what the job stream raised (an InputError)."""
        async with contextlib.aclosing(self.batches()) as batches:
            async for batch in batches:
                for result in batch:
                    yield result

    async def batches(self) -> AsyncGenerator[list[Result], None]:
        """`results()` in batches: every record ready at once comes as one list (one hop
        through each layer above for all of them, not one per record)."""
        config = self._config
        resolver = make_resolver(config.resolver, config.resolver_threads, config.nameservers)
        limiter = self._limiter = RateLimiter(config.rate) if config.rate else None
        first, fallback = engines(config.engine, config.alpn)
        prober = Prober(
            first,
            resolver,
            timeout=config.timeout,
            gate=config.handshake_gate(),
            retries=config.retries,
            before_attempt=limiter.wait if limiter else None,
            fallback=fallback,
        )
        work: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=config.concurrency * 2)
        results: asyncio.Queue[Result | None] = asyncio.Queue(maxsize=config.concurrency * 2)
        failure: list[BaseException] = []

        async def produce() -> None:
            try:
                async for job in self._jobs:
                    if self.stopped_early:
                        break
                    if isinstance(job.item, BadLine):
                        record = bad_line_record(job.item, now=datetime.now(UTC))
                        await results.put((job.tag, record))
                    else:
                        await work.put(job)
            except Exception as exc:  # an input that fails mid-way (I/O error): fatal
                failure.append(exc)
            # Not in a `finally`: when the scan is torn down (cancelled), the workers are
            # cancelled too, and a put into a full queue would wait for them for ever.
            for _ in workers:
                await work.put(_DONE)

        async def work_loop() -> None:
            while (job := await work.get()) is not None:
                if self.stopped_early:
                    continue  # drain without probing: a stopped scan takes no new targets
                assert isinstance(job.item, Target)  # bad lines were answered above
                record = await self._one(prober, job.item)
                if record is not None:
                    await results.put((job.tag, record))

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
            ended = False
            while not ended and (result := await results.get()) is not None:
                batch, ended = take_ready(results, result)
                yield batch
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
            capture = await prober.probe(target)
            return await self._assessor.assess(target, capture)
        except Stopped:
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in certscan: still exactly one record for the target
            return error_record(target, internal(exc, Stage.SCAN), now=datetime.now(UTC))
