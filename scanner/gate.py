"""How many answered TLS handshakes may be worked through at once, adapted to the CPU.

A textbook asyncio scanner at concurrency 2000 returns almost nothing over a slow network:
every handshake's CPU work (key exchange, certificate parsing) interleaves with every
other's, so all of them finish late together and hit their timeouts at once. The probe
sends every ClientHello at once, then takes a slot here only when the server has answered
(a silent server never takes one); the gate bounds the handshakes being worked through so
that the CPU work queued ahead of any one of them stays within a share of the deadline:
`budget / cpu_per_handshake` slots. The cost per
handshake is measured as the scan runs (process CPU time over handshakes finished), so the
limit follows the machine, the certificates and the key exchange actually met.

Waiting at the gate is not on the target's clock (see probe.Clock): the wait is ours, not
the server's.

Slots are also handed out at most `turn / cpu_per_handshake` per turn of the event loop.
A handshake's CPU work runs in one task step, and a loop runs every ready step before it
looks at timers or sockets again: had hundreds of slots been granted at once, one turn would
take a second, and every deadline timer and new connection would wait for it (at
concurrency 2000 the deadlines of silent servers fired up to 1.5 s late). Paced, a turn
stays near `turn` seconds; the CPU is just as busy.
"""

from __future__ import annotations

import asyncio
import collections
import time

_RETUNE_EVERY = 0.25  # seconds of wall time between estimates
_MIN_SAMPLE = 16  # handshakes needed before an estimate is trusted
_FLOOR = 16  # never fewer slots than this: latency must still be hidden
# Before the first measurement, assume this much CPU per handshake: a little more than a
# full handshake plus its record costs on a busy core today (bench/ measures 2.5-3.5 ms).
# Too low a guess lets the first burst overload the loop before the estimate is in.
_PRIOR_CPU = 0.004
_TURN = 0.05  # seconds of handshake CPU work granted per turn of the event loop


class HandshakeGate:
    """An asyncio semaphore whose size is retuned from measured CPU cost per handshake."""

    def __init__(self, ceiling: int, *, budget: float, fixed: bool = False) -> None:
        """ceiling: never more slots than this (the concurrency, or --handshakes).
        budget: seconds of queued CPU work a handshake may find ahead of it.
        fixed: keep `ceiling` slots and never retune (an explicit --handshakes)."""
        self._ceiling = max(ceiling, 1)
        self._budget = budget
        self._fixed = fixed
        self.limit = self._ceiling if fixed else max(min(self._ceiling,
                                                         int(budget / _PRIOR_CPU)), _FLOOR)
        self._active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._per_turn = max(int(_TURN / _PRIOR_CPU), 1)
        self._granted = 0  # slots granted in this turn of the loop
        self._turn_pending = False  # a _next_turn is scheduled
        self._finished = 0
        self._mark_wall = time.monotonic()
        self._mark_cpu = time.process_time()
        self._mark_finished = 0

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def try_acquire(self) -> bool:
        """Take a slot if one is free now, without waiting (False: `acquire` must wait)."""
        if self._active >= self.limit or self._waiters or self._granted >= self._per_turn:
            return False
        self._grant()
        return True

    async def acquire(self) -> None:
        """Wait for a slot. Cancelled while waiting, it holds none."""
        if self.try_acquire():
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._release()  # we were handed a slot as we were cancelled: pass it on
            elif future in self._waiters:  # (_wake may have dropped it, as done)
                self._waiters.remove(future)
            raise

    def release(self) -> None:
        """Give back a slot taken by `acquire` (its handshake is done, or failed)."""
        self._finished += 1
        self._release()
        self._maybe_retune()

    def _release(self) -> None:
        self._active -= 1
        self._wake()

    def _grant(self) -> None:
        self._active += 1
        self._granted += 1
        if not self._turn_pending:  # runs on the loop's next turn, after this one's steps
            self._turn_pending = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_pending = False
        self._granted = 0
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._active < self.limit and self._granted < self._per_turn:
            future = self._waiters.popleft()
            if not future.done():
                self._grant()
                future.set_result(None)

    def _maybe_retune(self) -> None:
        now = time.monotonic()
        if now - self._mark_wall < _RETUNE_EVERY:
            return
        finished = self._finished - self._mark_finished
        if finished < _MIN_SAMPLE:
            return
        cpu_now = time.process_time()
        cpu = cpu_now - self._mark_cpu
        self._mark_wall, self._mark_cpu, self._mark_finished = now, cpu_now, self._finished
        per_handshake = max(cpu / finished, 1e-5)
        self._per_turn = max(int(_TURN / per_handshake), 1)
        if not self._fixed:  # an explicit --handshakes keeps its number of slots
            wanted = int(self._budget / per_handshake)
            # Move halfway toward the estimate: one noisy window must not swing the limit.
            self.limit = max(min((self.limit + wanted) // 2, self._ceiling), _FLOOR)
        self._wake()
