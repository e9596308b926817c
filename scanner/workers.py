"""Running a scan: in this process, or shared out among event loops (`--workers N`).

One event loop drives one core; the client's OpenSSL work is what costs, so a scan uses
every core by running N loops: this process's own and N-1 worker processes, forked before
the parent starts its loop. The parent reads the targets, deals them out to the loop with
the fewest in flight (its own included), and is the one writer of the output:

    parent: targets --> its own Scan, or --(pipe, one JSON line per target)--> worker 1..N-1
    worker: Scan --(pipe, "tag status error_type record-json")--> parent --> Output

The guarantees hold across processes: every target dealt out comes back as exactly one
record (a worker that dies costs its in-flight targets an `internal` record each); a stop
(signal) reaches every loop, which finishes or drops its in-flight targets within the
grace period; `--resume` works on the single output file the parent writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import fcntl
import functools
import gc
import json
import os
import signal
import sys
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from .config import ScanConfig
from .errors import ErrorType, ProbeError, Stage
from .pool import Scan
from .record import Record, bad_line_record, encode, error_record
from .runtime import run_with_loop
from .sink import Output, OutputError
from .targets import BadLine, Target
from .verify import TrustStore

# Records can be large (a 300 KB chain is ~0.5 MB of JSON); a line must fit the reader.
_LINE_LIMIT = 64 << 20
_READ_CHUNK = 1 << 18


@dataclass(frozen=True, slots=True)
class Line:
    """One encoded record, with what the progress display needs to know of it."""

    data: bytes  # the JSON line, newline included
    status: str
    error_type: str | None

    @classmethod
    def of(cls, record: Record) -> Line:
        error = record["error"]
        return cls(encode(record), record["status"], error["type"] if error else None)


class LocalRun:
    """The scan in this process: one event loop."""

    def __init__(self, items: AsyncIterable[Target | BadLine], config: ScanConfig,
                 store: TrustStore | None) -> None:
        self._scan = Scan(items, config, store=store)

    def stop(self) -> None:
        self._scan.stop()

    async def batches(self) -> AsyncGenerator[list[Line], None]:
        async with contextlib.aclosing(self._scan.results()) as results:
            async for _, record in results:
                yield [Line.of(record)]


def _target_json(tag: int, t: Target) -> bytes:
    fields = [tag, t.text, t.host, t.port, t.sni, t.ip, t.source, t.line]
    return (json.dumps(fields) + "\n").encode()


@dataclass
class Worker:
    """A forked worker process and our ends of its two pipes."""

    index: int
    pid: int
    targets_fd: int  # we write targets here
    records_fd: int  # we read tagged records here
    pending: dict[int, Target] = dataclasses.field(default_factory=dict)
    status: int | None = None


def share_of(config: ScanConfig, loops: int) -> ScanConfig:
    """The settings of one of `loops` event loops sharing a scan: its part of the
    concurrency, and of the rate (--rate is the whole scan's, whatever --workers is)."""
    return dataclasses.replace(
        config, concurrency=max(config.concurrency // loops, 1),
        rate=None if config.rate is None else config.rate / loops)


def fork_workers(count: int, share: ScanConfig, store: TrustStore | None, *,
                 close_in_child: int = -1) -> list[Worker]:
    """Start `count` workers, each scanning with `share`. Call before any event loop or
    thread exists in this process: a fork copies the imported modules and the loaded trust
    store for free (a fresh interpreter would spend ~0.3 s of CPU importing them again),
    and forking is only safe while this process is single-threaded. `close_in_child`: a
    descriptor of the parent's (its output) that workers must not hold."""
    parent = os.getpid()
    # Move everything imported so far out of the collector's reach: a collection in a
    # worker would otherwise write to every object's header and copy the parent's pages
    # one by one (the gc module docs' advice for pre-fork servers).
    gc.freeze()
    workers: list[Worker] = []
    for index in range(1, count + 1):  # 0 is the parent's own loop
        targets_r, targets_w = os.pipe()
        records_r, records_w = os.pipe()
        _widen(targets_w)
        _widen(records_w)
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


class WorkerRun:
    """The scan shared out among this process's event loop and forked workers.

    The parent is the first of the loops: it scans a share itself (its targets and records
    cross no pipe) while it deals the others out and writes every record.
    """

    def __init__(self, items: AsyncIterable[Target | BadLine], share: ScanConfig,
                 workers: list[Worker], store: TrustStore | None) -> None:
        self._items = items
        self._share = share
        self._workers = workers
        self._store = store
        self._cap = share.concurrency * 2  # dealt to a loop, not yet answered
        self._stopping = False
        self._local: Scan | None = None

    def stop(self) -> None:
        self._stopping = True
        if self._local is not None:
            self._local.stop()
        for worker in self._workers:
            if worker.status is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)

    async def batches(self) -> AsyncGenerator[list[Line], None]:
        """Records as they come back; what is ready at once goes out as one batch."""
        loop = asyncio.get_running_loop()
        # Unbounded, and it must be: with a bound, a collector waiting to put a worker's
        # batch loses every race for a free slot to the parent's own records (a woken
        # putter re-checks and goes to the back), and that worker starves. Memory stays
        # bounded all the same: records come only from targets dealt, at most `_cap` a loop
        # in flight, and this queue is emptied on every turn of the writer.
        out: asyncio.Queue[list[Line] | None] = asyncio.Queue()
        credit = asyncio.Event()
        writers: list[asyncio.StreamWriter] = []
        readers: list[asyncio.StreamReader] = []
        for worker in self._workers:
            transport, protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, os.fdopen(worker.targets_fd, "wb", 0))
            writers.append(asyncio.StreamWriter(transport, protocol, None, loop))
            reader = asyncio.StreamReader(limit=_LINE_LIMIT)
            await loop.connect_read_pipe(functools.partial(asyncio.StreamReaderProtocol, reader),
                                         os.fdopen(worker.records_fd, "rb", 0))
            readers.append(reader)
        # The parent's own share: a Scan fed from a queue, tags kept by target identity.
        own: asyncio.Queue[Target | None] = asyncio.Queue()
        own_pending: dict[int, Target] = {}
        own_tags: dict[int, int] = {}

        async def own_targets() -> AsyncIterator[Target]:
            while (target := await own.get()) is not None:
                yield target

        self._local = Scan(own_targets(), self._share, store=self._store)
        shares = [own_pending, *(worker.pending for worker in self._workers)]
        dealt: list[list[bytes]] = [[] for _ in self._workers]

        def send() -> None:
            """What was dealt in this turn of the loop: one write per worker."""
            for writer, lines in zip(writers, dealt, strict=True):
                if lines:
                    writer.write(b"".join(lines))
                    lines.clear()

        async def deal() -> None:
            tag = 0
            try:
                async for item in self._items:
                    if self._stopping:
                        break
                    if isinstance(item, BadLine):
                        await out.put([Line.of(bad_line_record(item, now=datetime.now(UTC)))])
                        continue
                    while True:
                        index = min(range(len(shares)), key=lambda i: len(shares[i]))
                        if len(shares[index]) < self._cap or self._stopping:
                            break
                        credit.clear()
                        await credit.wait()
                    if self._stopping:
                        break
                    tag += 1
                    shares[index][tag] = item
                    if index == 0:
                        own_tags[id(item)] = tag
                        own.put_nowait(item)
                        continue
                    if not any(dealt):
                        loop.call_soon(send)
                    dealt[index - 1].append(_target_json(tag, item))
            finally:
                send()
                own.put_nowait(None)
                for writer in writers:
                    writer.close()  # EOF: the worker finishes what it has, then exits

        async def collect_own(scan: Scan) -> None:
            # (Cancelled with the others at the end; the scan's own cleanup then runs.)
            async for item, record in scan.results():
                own_pending.pop(own_tags.pop(id(item)), None)
                credit.set()
                await out.put([Line.of(record)])

        async def collect(worker: Worker, reader: asyncio.StreamReader) -> None:
            pending = bytearray()
            while chunk := await reader.read(_READ_CHUNK):
                pending += chunk
                end = pending.rfind(b"\n") + 1
                if not end:
                    continue  # a large record still arriving
                batch = []
                for raw in bytes(pending[: end - 1]).split(b"\n"):
                    tag, status, error_type, data = raw.split(b"\t", 3)
                    worker.pending.pop(int(tag), None)
                    batch.append(Line(data + b"\n", status.decode(),
                                      None if error_type == b"-" else error_type.decode()))
                del pending[:end]
                credit.set()
                await out.put(batch)
            _, worker.status = await asyncio.to_thread(os.waitpid, worker.pid, 0)
            if worker.pending and not self._stopping:
                # A worker that died (killed, a crash in C code): its targets still each
                # get their one record, labelled as our failure, not the server's.
                error = ProbeError(ErrorType.INTERNAL, Stage.SCAN,
                                   f"worker process {worker.index} exited with status "
                                   f"{worker.status} while this target was in flight")
                now = datetime.now(UTC)
                await out.put([Line.of(error_record(target, error, now=now))
                               for target in worker.pending.values()])
            worker.pending.clear()
            credit.set()

        dealer = asyncio.create_task(deal())
        collectors = [asyncio.create_task(collect_own(self._local))] + [
            asyncio.create_task(collect(w, r)) for w, r in zip(self._workers, readers, strict=True)
        ]

        async def close() -> None:
            # Everything ends before the records do: a failing input (the dealer's error)
            # first lets the workers finish what they were dealt, then ends the scan.
            ended = await asyncio.gather(dealer, *collectors, return_exceptions=True)
            await out.put(None)
            for result in ended:
                if isinstance(result, BaseException):
                    raise result

        closer = asyncio.create_task(close())
        try:
            ended = False
            while not ended and (first := await out.get()) is not None:
                lines = list(first)
                while not out.empty():  # whatever else is ready: one write for all of it
                    more = out.get_nowait()
                    if more is None:
                        ended = True
                        break
                    lines.extend(more)
                yield lines
            await closer  # re-raise a failure of the input, as the local run does
        finally:
            for task in (dealer, *collectors, closer):
                task.cancel()
            await asyncio.gather(dealer, *collectors, closer, return_exceptions=True)
            for worker in self._workers:
                if worker.status is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        # Blocking, but a SIGKILLed child is reaped at once, and this runs
                        # in cleanup, where awaiting a thread could itself be cancelled.
                        os.waitpid(worker.pid, 0)  # noqa: ASYNC222
                    worker.status = -1


async def _serve(config: ScanConfig, store: TrustStore | None, targets_fd: int,
                 records_fd: int) -> None:
    """A worker: targets from the parent, tagged records back, until EOF or a stop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 os.fdopen(targets_fd, "rb", 0))
    tags: dict[int, int] = {}

    async def targets() -> AsyncIterator[Target | BadLine]:
        while raw := await reader.readline():
            tag, text, host, port, sni, ip, source, line = json.loads(raw)
            target = Target(text, host, port, sni, ip, source, line)
            tags[id(target)] = tag  # the Scan holds the target until its record is out
            yield target

    scan = Scan(targets(), config, store=store)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, scan.stop)
    # Records go to the parent through the same non-blocking Output as the parent's own:
    # its thread joins whatever is queued into one write(2), and a parent that stops
    # reading stalls this loop's records, never the loop (a stop still works).
    # The records finished in one turn of the loop go to the thread as one piece, at the
    # end of that turn (one hand-over, one write(2), not one per record).
    out = Output("worker", fd=records_fd)
    batch: list[bytes] = []

    def flush() -> None:
        if batch:
            with contextlib.suppress(OutputError):  # raised again by room() or drain()
                out.put(b"".join(batch))
            batch.clear()

    try:
        async with contextlib.aclosing(scan.results()) as results:
            async for item, record in results:
                line = Line.of(record)
                head = f"{tags.pop(id(item))}\t{line.status}\t{line.error_type or '-'}\t"
                if not batch:
                    loop.call_soon(flush)
                    await out.room()
                batch.append(head.encode() + line.data)
        flush()
        await out.drain()
    finally:
        out.close()


def _widen(pipe: int) -> None:
    """Give a pipe the most room an unprivileged process may (1 MiB by default, not 64 KiB).

    A worker's writer thread blocks on a full pipe, and its records then wait (its loop
    does not); the parent, scanning its own share, reads only between handshakes. A wide
    pipe lets the worker run ahead by hundreds of records meanwhile, and
    takes a whole deal of targets (a thousand at concurrency 2000) in one write, so that
    the worker starts them all at once instead of as the busy parent finds time to write.
    """
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if setpipe is None:
        return
    try:
        with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as limit:
            size = int(limit.read())
        fcntl.fcntl(pipe, setpipe, size)
    except (OSError, ValueError):
        pass  # the default size still works, only with less slack


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive its parent: after a kill -9 of certscan, nobody would
    read its records, and it would go on probing until its deadlines ran out."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us with the parent
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
