"""The handshake gate: a bound that holds, adapts to CPU cost, and survives cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from scanner.gate import HandshakeGate


async def _through(gate: HandshakeGate, active: list[int], peak: list[int],
                   burn: float = 0.0) -> None:
    async with gate:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        end = time.process_time() + burn
        while time.process_time() < end:  # CPU work, as a handshake's key exchange
            pass
        await asyncio.sleep(0.001)
        active[0] -= 1


async def test_a_fixed_gate_never_exceeds_its_limit() -> None:
    gate = HandshakeGate(7, budget=1.0, fixed=True)
    active, peak = [0], [0]
    await asyncio.gather(*(_through(gate, active, peak) for _ in range(200)))
    assert peak[0] == 7
    assert gate.limit == 7


@pytest.mark.slow  # burns ~1.6 s of CPU
async def test_the_limit_shrinks_when_handshakes_cost_cpu() -> None:
    gate = HandshakeGate(1000, budget=0.2)
    assert gate.limit == 50  # the prior, 4 ms per handshake, before any measurement
    active, peak = [0], [0]
    # 8 ms of CPU per handshake against a 200 ms budget: about 25 slots are right.
    await asyncio.gather(*(_through(gate, active, peak, burn=0.008) for _ in range(200)))
    assert 16 <= gate.limit < 50


async def test_the_limit_grows_when_handshakes_are_cheap() -> None:
    gate = HandshakeGate(5000, budget=2.0)
    start = gate.limit
    active, peak = [0], [0]
    deadline = time.monotonic() + 0.6  # a few retune windows of nearly free handshakes
    while time.monotonic() < deadline:
        await asyncio.gather(*(_through(gate, active, peak) for _ in range(200)))
    assert gate.limit > start


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    gate = HandshakeGate(1, budget=1.0, fixed=True)
    release = asyncio.Event()

    async def hold() -> None:
        async with gate:
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(_through(gate, [0], [0])) for _ in range(3)]
    await asyncio.sleep(0.01)
    waiters[0].cancel()
    release.set()
    await holder
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [None, None]
    active, peak = [0], [0]
    await asyncio.gather(*(_through(gate, active, peak) for _ in range(5)))
    assert peak[0] == 1


async def test_slots_are_handed_out_a_few_per_turn_of_the_loop() -> None:
    # A handshake's CPU work runs in one task step; granting hundreds of slots in one turn
    # would make that turn take seconds and every deadline timer wait for it.
    gate = HandshakeGate(1000, budget=10.0)  # 1000 slots: only the pacing limits a turn
    loop = asyncio.get_running_loop()
    turn = [0]
    stop = False

    def tick() -> None:  # counts turns of the loop: one call_soon chain, one link a turn
        turn[0] += 1
        if not stop:
            loop.call_soon(tick)

    loop.call_soon(tick)
    entered: list[int] = []

    async def one() -> None:
        async with gate:
            entered.append(turn[0])

    await asyncio.gather(*(one() for _ in range(300)))
    stop = True
    per_turn = max(entered.count(t) for t in set(entered))
    assert len(entered) == 300
    assert per_turn <= 12  # 50 ms of turn at the 4 ms prior; none measured yet
    assert len(set(entered)) >= 300 // 12


async def test_try_acquire_takes_only_a_free_slot_and_never_jumps_the_queue() -> None:
    gate = HandshakeGate(2, budget=1.0, fixed=True)
    assert gate.try_acquire() and gate.try_acquire()
    assert not gate.try_acquire()  # both slots held
    waiter = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # the slot goes to the waiter, not to a later try_acquire
    assert not gate.try_acquire()
    await waiter
    gate.release()
    gate.release()
    await asyncio.sleep(0)  # a new turn of the loop: its per-turn grants start again
    assert gate.try_acquire()
