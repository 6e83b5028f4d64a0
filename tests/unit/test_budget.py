"""The byte budget that bounds a replicator's copy buffers."""

from __future__ import annotations

import asyncio

import pytest

from consumers.budget import ByteBudget


async def test_takers_wait_until_enough_bytes_are_given_back() -> None:
    budget = ByteBudget(100)
    await budget.take(60)
    waiting = asyncio.create_task(budget.take(50))
    await asyncio.sleep(0)  # let it reach its wait: it must not get in
    assert not waiting.done()
    assert budget.held == 60
    budget.release(60)
    await waiting
    assert budget.held == 50


async def test_held_bytes_never_exceed_the_limit_under_contention() -> None:
    budget = ByteBudget(64)
    peak = 0

    async def copy(n: int) -> None:
        nonlocal peak
        async with budget.hold(n):
            peak = max(peak, budget.held)
            await asyncio.sleep(0)

    await asyncio.gather(*(copy(n) for n in [16, 32, 64, 8, 40, 24] * 5))
    assert peak <= 64
    assert budget.held == 0


async def test_a_cancelled_holder_gives_its_bytes_back() -> None:
    budget = ByteBudget(10)
    entered = asyncio.Event()

    async def holder() -> None:
        async with budget.hold(10):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(holder())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert budget.held == 0
    await asyncio.wait_for(budget.take(10), 1)


async def test_a_buffer_larger_than_the_budget_is_refused_not_waited_for() -> None:
    with pytest.raises(ValueError, match="never fit"):
        await ByteBudget(10).take(11)
