"""Work run at once reports its failure as one error a caller handles: several HEADs of a reconciliation pass
failing together (the primary restarting) once surfaced as an ExceptionGroup that `except GeorepError` let
through, and the pass's task, then the replicator, died of it."""

from __future__ import annotations

import asyncio

import pytest

from engine.errors import GeorepError, NotFoundUpstream, UpstreamUnavailable, task_group


async def fails(exc: Exception) -> None:
    await asyncio.sleep(0)
    raise exc


async def test_failures_together_reach_the_caller_as_the_most_telling_georep_error() -> None:
    async def run() -> None:
        async with task_group() as group:
            for n in range(4):
                group.create_task(fails(UpstreamUnavailable(f"primary registry unreachable ({n})")))
            group.create_task(fails(NotFoundUpstream("manifest gone")))

    with pytest.raises(GeorepError) as caught:
        await run()
    assert isinstance(caught.value, NotFoundUpstream), "a permanent failure says more than a transient one"


async def test_a_bug_is_raised_as_itself() -> None:
    async def run() -> None:
        async with task_group() as group:
            group.create_task(fails(KeyError("tags")))

    with pytest.raises(KeyError):
        await run()


async def test_results_come_back_when_nothing_fails() -> None:
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return 2 * n

    async with task_group() as group:
        tasks = [group.create_task(double(n)) for n in range(3)]
    assert [t.result() for t in tasks] == [0, 2, 4]
