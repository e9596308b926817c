"""Process set-up a scan needs: the event loop, enough file descriptors, and standard
descriptors that are really open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

# Descriptors the process needs besides one socket per target in flight: stdio, the
# output, resolver threads' sockets, the event loop's own (epoll, self-pipe).
_RESERVED_FDS = 64


@dataclass(frozen=True, slots=True)
class FdLimit:
    soft: int
    hard: int
    clamped_to: int | None  # the concurrency that fits, when the one asked for does not

    @property
    def message(self) -> str:
        return (
            f"--concurrency lowered to {self.clamped_to}: the open-file limit is {self.soft} "
            f"(hard limit {self.hard}); raise it with `ulimit -n` to go higher"
        )


def raise_nofile_limit(concurrency: int) -> FdLimit:
    """Raise the soft RLIMIT_NOFILE toward the hard limit; say if concurrency still exceeds it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = concurrency + _RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the old limit; the clamp below makes it safe
    if soft != resource.RLIM_INFINITY and soft < wanted:
        return FdLimit(soft, hard, max(soft - _RESERVED_FDS, 1))
    return FdLimit(soft, hard, None)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop for "uvloop" and for "auto" where it is installed; the stdlib loop otherwise."""
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_with_loop(name: str, main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)


def reserve_standard_fds() -> frozenset[int]:
    """Put /dev/null on each standard descriptor (0, 1, 2) that is closed; return which were.

    cron, daemons and `>&-` can start us with one closed. The first descriptor opened
    afterwards (a socket, a pipe, the output file) would then take its number, and libuv
    aborts the process when it closes a descriptor numbered 0 to 2; records written to "fd
    1" would land in whatever took it. The caller learns which were closed, so that a scan
    told to read stdin or write stdout can refuse instead of using /dev/null.
    """
    closed: list[int] = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:  # lowest first: os.open takes the lowest free number
        got = os.open(os.devnull, os.O_RDWR)
        if got != fd:
            os.dup2(got, fd)
            os.close(got)
    return frozenset(closed)


def say(message: str, *, bare: bool = False) -> None:
    """One line on stderr, "certscan: MESSAGE" (just MESSAGE when `bare`, for a line a
    machine reads). stderr may be /dev/null, if it was closed, or fail: a message is never
    worth a crash."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        print(message if bare else f"certscan: {message}", file=sys.stderr, flush=True)


def os_reason(exc: OSError) -> str:
    """"no such file or directory": an OSError's words, to follow a colon."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]
