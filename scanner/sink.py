"""The one writer: JSON lines to a file or stdout, and what `--resume` needs from that file.

Records go out in `write(2)` calls of whole lines (a batch of them at a time) on a writer
thread, so the event loop never waits for the consumer, and a scan stopped at any moment,
even by SIGKILL, leaves whole lines only, except for a kill inside that call, which
`--resume` repairs. A write that fails (disk full) has its torn tail cut off at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import queue
import stat
import threading
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from .keys import item_key, record_key
from .targets import BadLine, Target


class OutputError(Exception):
    """The output cannot take records: it could not be opened, a write failed (disk full,
    I/O error), or its reader went away (`broken_pipe`). The message names the output."""

    def __init__(self, message: str, *, broken_pipe: bool = False) -> None:
        super().__init__(message)
        self.broken_pipe = broken_pipe


# Bytes handed to the writer thread and not yet written, past which `write` waits: the
# scan slows to the pace of the consumer instead of buffering without limit.
_HIGH_WATER = 4 << 20
_COALESCE = 1 << 20  # bytes the writer thread joins into one write(2), at most


class Output:
    """Where records go: a file, "-" for standard output, or, with `fd`, a descriptor we own
    (a worker's pipe to its parent).

    Writes never block the event loop: `write` hands whole lines to a writer thread of
    our own, which does the blocking write(2) calls, and waits only when more than
    `_HIGH_WATER` bytes are queued (a consumer that reads slowly slows the scan; one that
    never reads stops it, and a signal still ends the scan, since the loop keeps running).
    A FIFO is opened on that thread too, as it blocks until a reader comes.

    A failed write ends the output: on a regular file, what the failed call left of a
    torn line is cut off, so the file ends at the last whole record; every later `write`
    raises OutputError. The thread is a daemon: a process that must exit while a write is
    stuck (a reader that never reads) is not held by it.
    """

    def __init__(self, path: str, *, append: bool = False, fd: int | None = None) -> None:
        """Opens the output now (OutputError naming it when it cannot be), except a FIFO,
        which the writer thread opens."""
        self.path = path
        self._name = "standard output" if path == "-" else path
        self._fd = -1
        self._deferred: int | None = None  # open flags for a FIFO, opened by the thread
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (
            os.O_APPEND if append else os.O_TRUNC)
        try:
            if fd is not None:
                self._fd = fd
            elif path == "-":
                self._fd = os.dup(1)  # our own descriptor: closing it leaves stdout alone
            elif _is_fifo(path):
                self._deferred = flags
            else:
                if os.path.isdir(path):  # O_WRONLY on a directory says EISDIR; say it plainly
                    raise IsADirectoryError(errno.EISDIR, "is a directory")
                self._fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise OutputError(f"{self._name}: {exc.strerror or exc}") from None
        self._size = 0  # bytes in a regular file, to cut a torn line after a failed write
        self._regular = False
        if self._fd >= 0:
            self._note_kind()
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._queued = 0  # bytes handed over and not yet written (under _lock)
        self._waiting = False  # `write` waits for room: the thread wakes it (under _lock)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._room: asyncio.Event | None = None  # set when _queued falls below the mark
        self._drained: asyncio.Future[None] | None = None
        self.error: OutputError | None = None
        self.lines_written = 0  # whole lines the output took (read it once drained)
        self._thread: threading.Thread | None = None

    def fileno(self) -> int:
        """The output's descriptor (-1 for a FIFO not opened yet): forked workers close it."""
        return self._fd

    def _note_kind(self) -> None:
        info = os.fstat(self._fd)
        self._regular = stat.S_ISREG(info.st_mode)
        self._size = info.st_size if self._regular else 0

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Event()
        self._drained = self._loop.create_future()
        self._thread = threading.Thread(target=self._work, name="certscan-output", daemon=True)
        self._thread.start()

    async def write(self, data: bytes) -> None:
        """Queue whole lines for writing; wait while too much is queued. OutputError once
        the output has failed."""
        if self.put(data):
            await self.room()

    def put(self, data: bytes) -> bool:
        """Queue whole lines for writing, without waiting; True when the caller should now
        wait for `room()`. OutputError once the output has failed."""
        if self._thread is None:
            self._start()
        if self.error is not None:
            raise self.error
        if not data:
            return False
        with self._lock:
            self._queued += len(data)
            full = self._queued > _HIGH_WATER
        self._queue.put(data)
        return full

    async def room(self) -> None:
        """Wait until the writer is below its mark again. OutputError if it failed."""
        if self._room is None:
            return  # nothing was ever queued
        while self.error is None:
            with self._lock:
                full = self._waiting = self._queued > _HIGH_WATER
                if not full:
                    break
                self._room.clear()
            await self._room.wait()
        if self.error is not None:
            raise self.error

    async def drain(self) -> None:
        """Write out everything queued, then close. OutputError when a write failed. Waits
        as long as the consumer does: a stop ends it by cancelling the caller."""
        if self._thread is None:
            self._start()
        assert self._drained is not None
        self._queue.put(None)
        await asyncio.shield(self._drained)
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        """The writer thread: blocking writes of what `write` queued, in order."""
        try:
            if self._deferred is not None:
                try:
                    self._fd = os.open(self.path, self._deferred, 0o644)
                except OSError as exc:
                    raise OutputError(f"{self._name}: {exc.strerror or exc}") from None
                self._note_kind()
            ended = False
            while not ended and (first := self._queue.get()) is not None:
                # Whatever else is queued already goes out in the same write(2).
                parts = [first]
                size = len(first)
                while size < _COALESCE:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        ended = True
                        break
                    parts.append(more)
                    size += len(more)
                self._write_all(parts[0] if len(parts) == 1 else b"".join(parts))
                with self._lock:
                    self._queued -= size
                    wake = self._waiting and self._queued <= _HIGH_WATER // 2
                if wake:
                    self._call(self._set_room)
        except OutputError as exc:
            self.error = exc
            self._call(self._set_room)  # wake a waiting writer: it raises the error
        finally:
            self._close_fd()
            self._call(self._set_drained)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:  # a pipe may take part of a large write; finish it
                sent = os.write(self._fd, view)
                view = view[sent:]
                self._size += sent
        except OSError as exc:
            written = len(data) - len(view)
            whole = data.rfind(b"\n", 0, written) + 1  # what the failed call left whole
            self.lines_written += data.count(b"\n", 0, whole)
            if self._regular and whole < written:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size - written + whole)
            if isinstance(exc, BrokenPipeError):
                raise OutputError(f"{self._name}: the reader went away",
                                  broken_pipe=True) from None
            kept = (f"; it ends at its last whole record ({self.lines_written} written)"
                    if self._regular else "")
            raise OutputError(f"writing {self._name}: {exc.strerror or exc}{kept}") from None
        self.lines_written += data.count(b"\n")

    def _call(self, callback: Callable[[], None]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(callback)

    def _set_room(self) -> None:
        if self._room is not None:
            self._room.set()

    def _set_drained(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """Give up on what is still queued (after `drain`, nothing is)."""
        if self._thread is None:
            self._close_fd()
        else:
            self._queue.put(None)


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def repair_and_index(path: str, *, by_address: bool = False) -> Counter[int]:
    """For `--resume`: cut a torn last line (a crash mid-write), then count the targets done.

    Returns how many records each target key already has. A line that is not a JSON record
    (torn in the middle of the file by an outside hand) is dropped from the count, so its
    target is scanned again, and left in place: we never delete what we did not write.
    """
    done: Counter[int] = Counter()
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return done
    with open(path, "rb+") as stream:
        if size:
            stream.seek(max(size - 1, 0))
            if stream.read(1) != b"\n":
                _truncate_to_last_newline(stream, size)
        stream.seek(0)
        for raw in stream:
            key = _line_key(raw, by_address)
            if key is not None:
                done[key] += 1
    return done


def _truncate_to_last_newline(stream: Any, size: int) -> None:
    block = 1 << 16
    end = size
    while end > 0:
        start = max(end - block, 0)
        stream.seek(start)
        chunk = stream.read(end - start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            stream.truncate(start + cut + 1)
            return
        end = start
    stream.truncate(0)


def _line_key(raw: bytes, by_address: bool) -> int | None:
    try:
        record = json.loads(raw)
        return record_key(record["target"], record["host"], record["port"], record["sni"],
                          record["ip"] if by_address else None)
    except (ValueError, KeyError, TypeError):
        return None


async def skip_done(
    items: AsyncIterable[Target | BadLine], done: Counter[int], *, by_address: bool = False
) -> AsyncIterator[Target | BadLine]:
    """The items that still need a record: each recorded one is skipped once."""
    async for item in items:
        if done:
            key = item_key(item, by_address=by_address)
            if done[key] > 0:
                done[key] -= 1
                if not done[key]:
                    del done[key]
                continue
        yield item
