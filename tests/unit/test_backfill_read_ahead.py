"""The backfill reads repositories ahead of the one it publishes: results come back in catalog order (a
checkpoint must mean "everything up to here is published"), at most `ahead` run at once, and a failure stops
the walk with its own error."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from producers.backfill import _read_ahead


async def test_results_come_in_order_with_at_most_ahead_reads_running() -> None:
    running, most = 0, 0

    async def read(n: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (10 - n))  # later items finish first when they run together
        running -= 1
        return n * n

    got = [pair async for pair in _read_ahead(list(range(10)), read, 3)]
    assert got == [(n, n * n) for n in range(10)]
    assert most == 3


async def test_a_failed_read_is_raised_as_it_is_and_the_reads_ahead_are_cancelled() -> None:
    cancelled: list[int] = []

    async def read(n: int) -> int:
        if n == 1:
            raise LookupError("repository 1 is gone")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    async def walk() -> None:
        async with contextlib.aclosing(_read_ahead([1, 2, 3], read, 3)) as reads:
            async for _ in reads:
                pass

    with pytest.raises(LookupError, match="repository 1 is gone"):
        await walk()
    assert sorted(cancelled) == [2, 3]
