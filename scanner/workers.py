"""Running a scan: in this process, or shared out among worker processes (`--workers N`).

One event loop drives one core; the client's OpenSSL work is what costs, so a scan uses
every core by running N loops in N processes. The parent reads the targets, deals them
out to the worker with the fewest in flight, and is the one writer of the output:

    parent: targets --(stdin, one JSON line per target)--> worker 1..N
    worker: Scan --(stdout, "tag status error_type record-json")--> parent --> Output

The guarantees hold across processes: every target dealt out comes back as exactly one
record (a worker that dies costs its in-flight targets an `internal` record each); a stop
(signal) reaches every worker, which finishes or drops its in-flight targets within the
grace period; `--resume` works on the single output file the parent writes.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from .config import ScanConfig
from .errors import ErrorType, ProbeError, Stage
from .pool import Scan
from .record import Record, bad_line_record, encode, error_record
from .runtime import run_with_loop
from .sink import Output
from .targets import BadLine, Target
from .verify import TrustStore

# Records can be large (a 300 KB chain is ~0.5 MB of JSON); a line must fit the reader.
_LINE_LIMIT = 64 << 20


@dataclass(frozen=True, slots=True)
class Line:
    """One encoded record, with what the progress display needs to know of it."""

    text: str  # the JSON line, newline included
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

    async def lines(self) -> AsyncIterator[Line]:
        async for record in self._scan.records():
            yield Line.of(record)


def _config_json(config: ScanConfig) -> str:
    return json.dumps(dataclasses.asdict(config))


def _config_from_json(text: str) -> ScanConfig:
    fields = json.loads(text)
    fields["ports"] = tuple(fields["ports"])
    fields["alpn"] = tuple(fields["alpn"])
    fields["nameservers"] = tuple(fields["nameservers"])
    return ScanConfig(**fields)


def _target_json(tag: int, t: Target) -> bytes:
    fields = [tag, t.text, t.host, t.port, t.sni, t.ip, t.source, t.line]
    return (json.dumps(fields) + "\n").encode()


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    pending: dict[int, Target] = dataclasses.field(default_factory=dict)


class WorkerRun:
    """The scan shared out among `count` worker processes, each with its own event loop."""

    def __init__(self, items: AsyncIterable[Target | BadLine], config: ScanConfig,
                 count: int) -> None:
        self._items = items
        self._count = count
        per_worker = max(config.concurrency // count, 1)
        self._worker_config = dataclasses.replace(config, concurrency=per_worker)
        self._cap = per_worker * 2  # targets dealt to a worker and not yet answered
        self._stopping = False
        self._workers: list[_Worker] = []

    def stop(self) -> None:
        self._stopping = True
        for worker in self._workers:
            if worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)

    async def lines(self) -> AsyncIterator[Line]:
        out: asyncio.Queue[Line | None] = asyncio.Queue(maxsize=self._count * self._cap)
        credit = asyncio.Event()
        config_arg = _config_json(self._worker_config)
        for index in range(self._count):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "scanner.workers", config_arg, str(os.getpid()),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                limit=_LINE_LIMIT,
            )
            self._workers.append(_Worker(index, process))

        async def deal() -> None:
            tag = 0
            try:
                async for item in self._items:
                    if self._stopping:
                        break
                    if isinstance(item, BadLine):
                        await out.put(Line.of(bad_line_record(item, now=datetime.now(UTC))))
                        continue
                    while True:
                        worker = min(self._workers, key=lambda w: len(w.pending))
                        if len(worker.pending) < self._cap or self._stopping:
                            break
                        credit.clear()
                        await credit.wait()
                    if self._stopping:
                        break
                    tag += 1
                    worker.pending[tag] = item
                    stdin = worker.process.stdin
                    assert stdin is not None
                    stdin.write(_target_json(tag, item))
                    await stdin.drain()
            finally:
                for worker in self._workers:
                    if worker.process.stdin is not None:
                        worker.process.stdin.close()

        async def collect(worker: _Worker) -> None:
            stdout = worker.process.stdout
            assert stdout is not None
            while raw := await stdout.readline():
                tag_text, status, error_type, text = raw.decode().split("\t", 3)
                worker.pending.pop(int(tag_text), None)
                credit.set()
                await out.put(Line(text, status, None if error_type == "-" else error_type))
            code = await worker.process.wait()
            if worker.pending and not self._stopping:
                # A worker that died (killed, a crash in C code): its targets still each
                # get their one record, labelled as our failure, not the server's.
                error = ProbeError(ErrorType.INTERNAL, Stage.SCAN,
                                   f"worker process {worker.index} exited with status {code} "
                                   "while this target was in flight")
                for target in worker.pending.values():
                    await out.put(Line.of(error_record(target, error, now=datetime.now(UTC))))
            worker.pending.clear()
            credit.set()

        dealer = asyncio.create_task(deal())
        collectors = [asyncio.create_task(collect(w)) for w in self._workers]

        async def close() -> None:
            await asyncio.gather(dealer, *collectors)
            await out.put(None)

        closer = asyncio.create_task(close())
        try:
            while (line := await out.get()) is not None:
                yield line
            await closer  # re-raise a failure of the input, as the local run does
            dealer.result()
        finally:
            for task in (dealer, *collectors, closer):
                task.cancel()
            await asyncio.gather(dealer, *collectors, closer, return_exceptions=True)
            for worker in self._workers:
                if worker.process.returncode is None:
                    worker.process.kill()
                    await worker.process.wait()


async def _serve(config: ScanConfig) -> None:
    """A worker: targets from stdin, tagged records to stdout, until stdin ends or a stop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tags: dict[int, tuple[Target, int]] = {}

    async def targets() -> AsyncIterator[Target | BadLine]:
        while raw := await reader.readline():
            tag, text, host, port, sni, ip, source, line = json.loads(raw)
            target = Target(text, host, port, sni, ip, source, line)
            tags[id(target)] = (target, tag)
            yield target

    store = TrustStore.load(config.ca_bundle) if config.ca_bundle else None
    scan = Scan(targets(), config, store=store)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, scan.stop)
    # Plain blocking writes of whole lines: the parent reads as fast as we write, and a full
    # pipe is exactly the back-pressure we want; nothing is left in a buffer at exit.
    with Output("-") as out:
        async for item, record in scan.results():
            _, tag = tags.pop(id(item))
            error = record["error"]
            out.write(f"{tag}\t{record['status']}\t{error['type'] if error else '-'}\t"
                      f"{encode(record)}")


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive its parent: after a kill -9 of certscan, nobody would
    read its records, and it would go on probing until its deadlines ran out."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us with the parent
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def main() -> None:
    config = _config_from_json(sys.argv[1])
    _die_with_parent(int(sys.argv[2]))
    run_with_loop(config.loop, _serve(config))


if __name__ == "__main__":
    main()
