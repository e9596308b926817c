"""Lanes: the engine running in this process's event loop and in forked workers' loops,
and the router that deals tagged jobs out to them and gathers their records.

One event loop drives one core; the client's OpenSSL work is what costs, so a scan uses
every core by running N loops: this process's own and N-1 worker processes, forked before
the parent starts its loop. Each loop runs the same engine (engine.Scan). The parent reads
the targets, tags them, deals each to the lane with the fewest jobs in flight, and is the
one writer of the output:

    parent: targets --> Router --> LocalLane:   engine.Scan in this loop
                               \\-> ProcessLane: --(wire frames)--> worker: engine.Scan
            output  <-- Router <-- every lane's records

The guarantees hold across processes: every job dealt out comes back as exactly one
record (a lane that ends early, a worker killed or crashed in C code, costs its in-flight
jobs an `internal` record each, and gets no more jobs); a stop reaches every lane, which
finishes or drops its in-flight jobs within the grace period; `--resume` works on the
single output file the parent writes. docs/architecture.md, "Processes", has the picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import fcntl
import gc
import os
import signal
import sys
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from . import engines
from .config import ScanConfig
from .engine import Job, Scan, take_ready
from .record import bad_line_record, error_record
from .runtime import loop_factory, run_with_loop
from .sink import Output, OutputError
from .targets import BadLine, Target
from .values import ErrorType, Failure, Stage
from .verify import TrustStore
from .wire import Line, read_record, read_target, record_frame, target_frame

_READ_CHUNK = 1 << 18
_LINE_LIMIT = 64 << 20  # a record can be large (a 300 KB chain is ~0.5 MB of JSON)

Results = list[tuple[int, Line]]  # a lane's batch: each job's tag with its record


class Lane(Protocol):
    """Where jobs are scanned: one event loop running the engine."""

    name: str
    ended_early: str | None  # once `results()` is over: why jobs may have been lost

    def send(self, jobs: Sequence[Job]) -> None:
        """Hand jobs over, without waiting (the router bounds what is in flight)."""

    def close(self) -> None:
        """No more jobs: finish those sent, then end `results()`."""

    def stop(self) -> None:
        """A stop: take no new job; finish or drop those in flight within the grace."""

    def results(self) -> AsyncGenerator[Results, None]:
        """Records as they come, in batches, until the lane ends."""

    def kill(self) -> None:
        """Teardown: end at once, whatever is in flight."""


class LocalLane:
    """The engine in this process's own loop: its jobs and records cross no pipe."""

    def __init__(self, config: ScanConfig, store: TrustStore | None) -> None:
        self.name = "this process"
        self.ended_early: str | None = None
        self._queue: asyncio.Queue[Job | None] = asyncio.Queue()  # bounded by the router
        self._scan = Scan(self._jobs(), config, store=store)

    async def _jobs(self) -> AsyncIterator[Job]:
        while (job := await self._queue.get()) is not None:
            yield job

    def send(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self._queue.put_nowait(job)

    def close(self) -> None:
        self._queue.put_nowait(None)

    def stop(self) -> None:
        self._scan.stop()
        self.close()

    async def results(self) -> AsyncGenerator[Results, None]:
        async with contextlib.aclosing(self._scan.batches()) as batches:
            async for batch in batches:
                yield [(tag, Line.of(record)) for tag, record in batch]

    def kill(self) -> None:
        pass  # its tasks end with the loop's: cancelled by the router's teardown


@dataclass
class Worker:
    """A forked worker process and our ends of its two pipes."""

    index: int
    pid: int
    targets_fd: int  # we write target frames here
    records_fd: int  # we read record frames here
    status: int | None = None  # its exit status, once reaped


class ProcessLane:
    """The engine in a forked worker's loop, reached through two pipes of wire frames."""

    def __init__(self, worker: Worker) -> None:
        self.name = f"worker process {worker.index}"
        self.ended_early: str | None = None
        self._worker = worker
        self._stopping = False
        self._targets: asyncio.WriteTransport | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        # A plain protocol: the router bounds the jobs in flight, so the transport's own
        # buffer stays small; no flow control is needed on this side.
        self._targets, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(self._worker.targets_fd, "wb", 0))

    def send(self, jobs: Sequence[Job]) -> None:
        assert self._targets is not None
        frames = []
        for job in jobs:
            assert isinstance(job.item, Target)  # the router answers bad lines itself
            frames.append(target_frame(job.tag, job.item))
        if not self._targets.is_closing():
            self._targets.write(b"".join(frames))

    def close(self) -> None:
        if self._targets is not None:
            self._targets.close()  # EOF: the worker finishes what it has, then exits

    def stop(self) -> None:
        self._stopping = True
        self._signal(signal.SIGTERM)  # the worker stops its engine, as a user's signal would

    async def results(self) -> AsyncGenerator[Results, None]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_LINE_LIMIT)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(self._worker.records_fd, "rb", 0))
        pending = bytearray()
        while chunk := await reader.read(_READ_CHUNK):
            pending += chunk
            end = pending.rfind(b"\n") + 1
            if not end:
                continue  # a large record still arriving
            frames = bytes(pending[:end]).splitlines(keepends=True)
            del pending[:end]
            yield [read_record(frame) for frame in frames]
        worker = self._worker
        _, status = await asyncio.to_thread(os.waitpid, worker.pid, 0)
        worker.status = os.waitstatus_to_exitcode(status)  # -N: killed by signal N
        if worker.status != 0 and not self._stopping:
            how = (f"was killed by signal {-worker.status}" if worker.status < 0
                   else f"exited with status {worker.status}")
            self.ended_early = f"{self.name} {how}"

    def kill(self) -> None:
        worker = self._worker
        if worker.status is None:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                # Blocking, but a SIGKILLed child is reaped at once, and this runs in
                # cleanup, where awaiting a thread could itself be cancelled.
                os.waitpid(worker.pid, 0)
            worker.status = -signal.SIGKILL

    def _signal(self, signum: int) -> None:
        if self._worker.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._worker.pid, signum)


class Router:
    """The parent's half of a scan: tags the inputs, deals each job to the live lane with
    the fewest in flight (at most `cap` a lane), and gathers every lane's records.

    Bad lines are answered here (they need no lane). A lane that ends early gives each of
    its jobs still in flight an `internal` record, and gets no more; a stop reaches every
    lane. An input that fails stops the dealing, lets the lanes finish what they were
    dealt, and is raised once their records are out.
    """

    def __init__(self, items: AsyncIterable[Target | BadLine], lanes: Sequence[Lane],
                 cap: int) -> None:
        self._items = items
        self._lanes = list(lanes)
        self._cap = cap
        self._stopping = False
        self._credit = asyncio.Event()  # set when a lane has room again (or on a stop)

    def stop(self) -> None:
        self._stopping = True
        self._credit.set()  # a dealer waiting for room stops waiting
        for lane in self._lanes:
            lane.stop()

    async def batches(self) -> AsyncGenerator[list[Line], None]:
        """Records as they come back; what is ready at once goes out as one batch."""
        loop = asyncio.get_running_loop()
        # Not bounded by size: what enters is bounded already (records come only from jobs
        # dealt, at most `cap` a lane), and the caller empties it on every turn.
        out: asyncio.Queue[list[Line] | None] = asyncio.Queue()
        credit = self._credit
        in_flight: dict[int, dict[int, Job]] = {id(lane): {} for lane in self._lanes}
        live = list(self._lanes)
        dealt: dict[int, list[Job]] = {id(lane): [] for lane in self._lanes}

        def send() -> None:
            """What was dealt in this turn of the loop: one hand-over per lane."""
            for lane in live:
                jobs = dealt[id(lane)]
                if jobs:
                    lane.send(jobs)
                    dealt[id(lane)] = []

        async def lane_with_room() -> Lane | None:
            while live and not self._stopping:
                lane = min(live, key=lambda lane: len(in_flight[id(lane)]))
                if len(in_flight[id(lane)]) < self._cap:
                    return lane
                credit.clear()
                await credit.wait()
            return None

        async def deal() -> None:
            tag = 0
            try:
                async for item in self._items:
                    if self._stopping:
                        break
                    tag += 1
                    if isinstance(item, BadLine):
                        await out.put([Line.of(bad_line_record(item, now=datetime.now(UTC)))])
                        continue
                    lane = await lane_with_room()
                    if lane is None:
                        if not self._stopping:  # every lane ended early: nothing can scan it
                            await out.put([_lost(Job(tag, item), "no lane left to scan it")])
                        continue
                    if not any(dealt.values()):
                        loop.call_soon(send)
                    job = Job(tag, item)
                    in_flight[id(lane)][tag] = job
                    dealt[id(lane)].append(job)
            finally:
                send()
                for lane in self._lanes:
                    lane.close()

        async def collect(lane: Lane) -> None:
            mine = in_flight[id(lane)]
            async with contextlib.aclosing(lane.results()) as results:
                async for batch in results:
                    for tag, _ in batch:
                        mine.pop(tag, None)
                    credit.set()
                    await out.put([line for _, line in batch])
            live.remove(lane)
            if mine and not self._stopping:
                why = lane.ended_early or f"{lane.name} ended"
                await out.put([_lost(job, f"{why} while this target was in flight")
                               for job in mine.values()])
            mine.clear()
            credit.set()

        dealer = asyncio.create_task(deal())
        collectors = [asyncio.create_task(collect(lane)) for lane in self._lanes]

        async def close() -> None:
            ended = await asyncio.gather(dealer, *collectors, return_exceptions=True)
            await out.put(None)
            for result in ended:
                if isinstance(result, BaseException):
                    raise result

        closer = asyncio.create_task(close())
        tasks = (dealer, *collectors, closer)
        try:
            ended = False
            while not ended and (first := await out.get()) is not None:
                ready, ended = take_ready(out, first)  # what else is ready: one batch
                yield [line for lines in ready for line in lines]
            await closer  # an input that failed is raised here, after its records
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for lane in self._lanes:
                lane.kill()


def _lost(job: Job, why: str) -> Line:
    """The record of a job its lane lost: our failure, not the server's."""
    assert isinstance(job.item, Target)
    error = Failure(ErrorType.INTERNAL, Stage.SCAN, why)
    return Line.of(error_record(job.item, error, now=datetime.now(UTC)))


def share_of(config: ScanConfig, loops: int) -> ScanConfig:
    """The settings of one of `loops` event loops sharing a scan: its part of the
    concurrency, and of the rate (--rate is the whole scan's, whatever --workers is)."""
    return dataclasses.replace(
        config, concurrency=max(config.concurrency // loops, 1),
        rate=None if config.rate is None else config.rate / loops)


async def open_lanes(share: ScanConfig, store: TrustStore | None,
                     workers: Sequence[Worker]) -> list[Lane]:
    """This process's lane first, then one for each forked worker."""
    lanes: list[Lane] = [LocalLane(share, store)]
    for worker in workers:
        lane = ProcessLane(worker)
        await lane.open()
        lanes.append(lane)
    return lanes


def fork_workers(count: int, share: ScanConfig, store: TrustStore | None, *,
                 close_in_child: int = -1) -> list[Worker]:
    """Start `count` workers, each running the engine with `share`. Call before any event
    loop or thread exists in this process: a fork copies the imported modules and the
    loaded trust store for free (a fresh interpreter would spend ~0.3 s of CPU importing
    them again), and forking is only safe while this process is single-threaded.
    `close_in_child`: a descriptor of the parent's (its output) that workers must not hold.
    """
    parent = os.getpid()
    _settle(share)
    # Move everything imported so far out of the collector's reach: a collection in a
    # worker would otherwise write to every object's header and copy the parent's pages
    # one by one (the gc module docs' advice for pre-fork servers).
    gc.freeze()
    workers: list[Worker] = []
    pipe_size = _pipe_max_size()
    for index in range(1, count + 1):  # 0 is the parent's own loop
        targets_r, targets_w = os.pipe()
        records_r, records_w = os.pipe()
        _widen(targets_w, pipe_size)
        _widen(records_w, pipe_size)
        pid = os.fork()
        if pid == 0:  # the child: never returns into the parent's code
            code = 1
            try:
                for fd in (targets_w, records_r):
                    os.close(fd)
                if close_in_child >= 0:
                    os.close(close_in_child)
                for worker in workers:  # the earlier workers' pipes are not ours
                    os.close(worker.targets_fd)
                    os.close(worker.records_fd)
                _die_with_parent(parent)
                run_with_loop(share.loop, _serve(share, store, targets_r, records_w))
                code = 0
            finally:
                os._exit(code)
        os.close(targets_r)
        os.close(records_w)
        workers.append(Worker(index, pid, targets_w, records_r))
    return workers


async def _serve(config: ScanConfig, store: TrustStore | None, targets_fd: int,
                 records_fd: int) -> None:
    """A worker: the engine over the target frames from the parent, record frames back,
    until EOF or a stop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 os.fdopen(targets_fd, "rb", 0))

    async def jobs() -> AsyncIterator[Job]:
        while frame := await reader.readline():
            yield Job(*read_target(frame))

    scan = Scan(jobs(), config, store=store)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, scan.stop)
    # Records go back through the same non-blocking Output as the parent's own: those
    # finished in one turn of the loop as one piece (one hand-over to its thread, one
    # write(2)); a parent that stops reading stalls the records, never this loop.
    out = Output("worker", fd=records_fd)
    batch: list[bytes] = []

    def flush() -> None:
        if batch:
            with contextlib.suppress(OutputError):  # raised again by room() or drain()
                out.put(b"".join(batch))
            batch.clear()

    try:
        async with contextlib.aclosing(scan.batches()) as results:
            async for ready in results:
                if not batch:
                    loop.call_soon(flush)
                    await out.room()
                batch.extend(record_frame(tag, Line.of(record)) for tag, record in ready)
        flush()
        await out.drain()
    finally:
        out.close()


def _settle(share: ScanConfig) -> None:
    """What each event loop would otherwise do for itself as it starts, done once here,
    before the fork, for the workers to inherit: importing the loop (uvloop) and, for an
    engine that may use rustls, rtls with its check (engines.rustls_missing, cached: it
    makes a ClientHello, which seeds aws-lc's generator and runs hooks' rustls self-test).
    Each worker would otherwise spend ~50 ms of CPU on them again (it still reseeds aws-lc's
    generator after the fork, ~14 ms). An ImportError of --loop uvloop is left to be
    reported where it was: by the parent's run_with_loop."""
    with contextlib.suppress(ImportError):
        loop_factory(share.loop)
    if share.engine != "openssl":
        engines.rustls_missing()  # cached: each process's Scan asks it again, for free


def _pipe_max_size() -> int | None:
    """The most room an unprivileged process may give a pipe (None: unknown, or not Linux)."""
    if getattr(fcntl, "F_SETPIPE_SZ", None) is None:  # Linux only
        return None
    try:
        with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return None


def _widen(pipe: int, size: int | None) -> None:
    """Give a pipe `size` bytes of room, the most an unprivileged process may
    (_pipe_max_size: 1 MiB by default, not 64 KiB).

    A worker's writer thread blocks on a full pipe, and its records then wait (its loop
    does not); the parent, scanning its own share, reads only between handshakes. A wide
    pipe lets the worker run ahead by hundreds of records meanwhile, and takes a whole deal
    of targets (a thousand at concurrency 2000) in one write, so that the worker starts
    them all at once instead of as the busy parent finds time to write.
    """
    if size is None:
        return
    with contextlib.suppress(OSError):  # the default size still works, with less slack
        fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, size)


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive its parent: after a kill -9 of certscan, nobody would
    read its records, and it would go on probing until its deadlines ran out."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us with the parent
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
