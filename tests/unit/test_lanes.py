"""Partition lanes: strict order, and `done` never passes an event that did not finish."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from consumers.lanes import Lane
from engine import topics


@dataclass(frozen=True)
class TP:
    topic: str = topics.EVENTS
    partition: int = 0


@dataclass(frozen=True)
class Record:
    offset: int
    partition: int = 0
    key: bytes | None = None


async def until(condition: Callable[[], object], timeout_s: float = 5) -> None:
    """Await a state of the lane, which exposes no event for it; bounded, so a hang fails the test."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the lane's state has no event to wait on
            await asyncio.sleep(0.001)


async def test_events_run_in_offset_order_and_done_follows() -> None:
    seen: list[int] = []

    async def handle(record: Record) -> None:
        await asyncio.sleep(0.001 * (5 - record.offset % 5))  # later offsets finish faster if run at once
        seen.append(record.offset)

    lane = Lane(TP(), handle, buffer=100)
    for offset in range(10, 20):
        lane.put(Record(offset))
    await until(lambda: lane.done == 20)
    assert seen == list(range(10, 20))
    assert lane.uncommitted
    lane.committed = lane.done
    assert not lane.uncommitted
    await lane.stop(grace_s=1)


async def test_stop_lets_the_in_flight_event_finish_and_drops_the_queue() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    handled: list[int] = []

    async def handle(record: Record) -> None:
        started.set()
        await release.wait()
        handled.append(record.offset)

    lane = Lane(TP(), handle, buffer=100)
    for offset in (0, 1, 2):
        lane.put(Record(offset))
    await started.wait()
    stopping = asyncio.create_task(lane.stop(grace_s=5))
    release.set()
    await stopping
    assert handled == [0]
    assert lane.done == 1, "the finished event counts; the queued ones are left for the next owner"


async def test_stop_abandons_an_event_that_outlives_the_grace_period() -> None:
    cancelled = asyncio.Event()

    async def handle(record: Record) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    lane = Lane(TP(), handle, buffer=100)
    lane.put(Record(7))
    await until(lambda: lane._current is not None)
    await lane.stop(grace_s=0.05)
    assert cancelled.is_set()
    assert lane.done is None, "an abandoned event must never be committed"


async def test_a_handler_bug_retries_the_event_and_shows_the_stall_until_it_goes_through() -> None:
    """An unexpected error neither stops the lane for good (issue 15) nor skips the event: the lane stands
    stalled, naming the offset and the error, retries with backoff, and moves on once the event succeeds."""
    handled: list[int] = []
    failures = 3

    async def handle(record: Record) -> None:
        nonlocal failures
        if record.offset == 1 and failures:
            failures -= 1
            raise RuntimeError("bug")
        handled.append(record.offset)

    lane = Lane(TP(), handle, buffer=100, retry_initial_s=0.01, retry_max_s=0.02)
    for offset in (0, 1, 2):
        lane.put(Record(offset))
    await until(lambda: lane.stall is not None and lane.stall.attempts >= 2)
    assert lane.stall is not None
    assert (lane.stall.offset, lane.stall.error) == (1, "RuntimeError: bug")
    assert lane.done == 1, "nothing past the failing event is done"
    await until(lambda: lane.done == 3)
    assert handled == [0, 1, 2]
    assert lane.stall is None
    assert not lane._task.done(), "the lane keeps running"
    await lane.stop(grace_s=0)


async def test_a_stalled_lane_still_stops_when_asked() -> None:
    async def handle(record: Record) -> None:
        raise RuntimeError("always")

    lane = Lane(TP(), handle, buffer=100, retry_initial_s=0.01, retry_max_s=0.01)
    lane.put(Record(5))
    await until(lambda: lane.stall is not None)
    await lane.stop(grace_s=0.1)
    assert lane._task.done()
    assert lane.done is None, "the failing event is never committed"


async def test_full_and_drained_thresholds() -> None:
    gate = asyncio.Event()

    async def handle(record: Record) -> None:
        await gate.wait()

    lane = Lane(TP(), handle, buffer=4)
    for offset in range(6):
        lane.put(Record(offset))
    await until(lambda: lane._current is not None)
    assert lane.full
    assert not lane.drained
    gate.set()
    await until(lambda: lane.done == 6)
    assert lane.drained
    await lane.stop(grace_s=1)


async def test_settled_returns_once_every_event_before_an_offset_is_done_and_keys_are_tracked() -> None:
    gate = asyncio.Event()

    async def handle(record: Record) -> None:
        if record.offset == 12:
            await gate.wait()

    lane = Lane(TP(), handle, buffer=100)
    for offset, key in ((10, b"team/a"), (11, b"team/b"), (12, b"team/a"), (13, None)):
        lane.put(Record(offset, key=key))
    await asyncio.wait_for(lane.settled(12), 5)  # 10 and 11 are done; 12 waits
    waiting = asyncio.create_task(lane.settled(13))
    await asyncio.sleep(0)
    assert not waiting.done(), "offset 12 is not done yet"
    assert lane.last_offset == {b"team/a": 12, b"team/b": 11}
    gate.set()
    await asyncio.wait_for(waiting, 5)
    assert lane.done is not None
    assert lane.done >= 13
    await lane.stop(grace_s=1)
