"""adapters.runtime.in_slices: a big batch of CPU work on the event loop lets other tasks answer meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from adapters.runtime import in_slices


async def test_in_slices_keeps_every_item_in_order() -> None:
    assert await in_slices(iter(range(1001)), size=250) == list(range(1001))
    assert await in_slices([], size=250) == []


async def test_other_tasks_run_between_slices() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    seen: list[int] = []

    def work() -> Iterator[int]:
        for i in range(1000):
            seen.append(ticks)  # how often the other task has run by the time this item is made
            yield i

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker has started
    try:
        await in_slices(work(), size=250)
    finally:
        task.cancel()
    # Inside a slice nothing else runs; between slices the other task does.
    assert len(set(seen[:250])) == 1
    assert seen[250] > seen[249]
    assert seen[999] > seen[0]
    assert len(set(seen)) == 4
