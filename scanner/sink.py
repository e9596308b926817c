"""The one writer: JSON lines to a file or stdout, and what `--resume` needs from that file.

Records go out in single `write(2)` calls of whole lines (a batch of them at a time), so a
scan stopped at any moment, even by SIGKILL, leaves whole lines only, except for a write
cut short by the kernel (disk full, a kill inside the call), which `--resume` repairs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from .targets import BadLine, Target


def record_key(target: str, host: str | None, port: int | None) -> int:
    """What identifies a record's target across runs, in 8 bytes (a million fit in ~100 MB)."""
    text = json.dumps([target, host, port], ensure_ascii=True)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def item_key(item: Target | BadLine) -> int:
    if isinstance(item, BadLine):
        return record_key(item.text, None, None)
    return record_key(item.text, item.host, item.port)


class Output:
    """Where records go: a file, "-" for standard output (no resume there), or, with `fd`,
    a descriptor we own (a worker's pipe to its parent)."""

    def __init__(self, path: str, *, append: bool = False, fd: int | None = None) -> None:
        self.path = path
        if fd is not None:
            self._fd = fd
        elif path == "-":
            self._fd = os.dup(1)  # our own descriptor: closing it leaves stdout alone
        else:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
            self._fd = os.open(path, flags, 0o644)

    def write(self, data: bytes | str) -> None:
        """Whole lines, in one write(2) when the kernel takes them at once."""
        view = memoryview(data.encode("utf-8") if isinstance(data, str) else data)
        while view:  # a pipe may take part of a large write; finish it
            sent = os.write(self._fd, view)
            view = view[sent:]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def repair_and_index(path: str) -> Counter[int]:
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
            key = _line_key(raw)
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


def _line_key(raw: bytes) -> int | None:
    try:
        record = json.loads(raw)
        return record_key(record["target"], record["host"], record["port"])
    except (ValueError, KeyError, TypeError):
        return None


async def skip_done(
    items: AsyncIterable[Target | BadLine], done: Counter[int]
) -> AsyncIterator[Target | BadLine]:
    """The items that still need a record: each recorded one is skipped once."""
    async for item in items:
        if done:
            key = item_key(item)
            if done[key] > 0:
                done[key] -= 1
                if not done[key]:
                    del done[key]
                continue
        yield item
