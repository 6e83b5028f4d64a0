"""Partition lanes: strict order per repository, concurrency across repositories, and `done` never passes an
event that did not finish."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from consumers.lanes import Lane
from consumers.replicator import BUSY_POLL_MS, IDLE_POLL_MS, poll_ms
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
    await until(lambda: bool(lane._running))
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
    await until(lambda: bool(lane._running))
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


async def test_events_of_one_repository_run_in_order_and_of_others_at_once() -> None:
    """Two repositories in one partition: each one's events one after another, in offset order; the two
    repositories' events overlap. `done` waits for the earliest unfinished event, whichever finished first."""
    running: set[bytes] = set()
    overlapped = asyncio.Event()
    order: dict[bytes, list[int]] = {b"team/a": [], b"team/b": []}
    slow_a = asyncio.Event()

    async def handle(record: Record) -> None:
        assert record.key is not None
        assert record.key not in running, "two events of one repository ran at once"
        running.add(record.key)
        if len(running) == 2:
            overlapped.set()
        try:
            if record.offset == 0:
                await slow_a.wait()  # team/a's first event is slow: team/b goes on meanwhile
            else:
                await asyncio.sleep(0.001)
        finally:
            running.discard(record.key)
        order[record.key].append(record.offset)

    lane = Lane(TP(), handle, buffer=100)
    for offset in range(8):
        lane.put(Record(offset, key=b"team/a" if offset % 2 == 0 else b"team/b"))
    await asyncio.wait_for(overlapped.wait(), 5)
    await until(lambda: lane.done == 0)  # team/b's event 1 is done; nothing passes team/a's unfinished 0
    assert order == {b"team/a": [], b"team/b": [1]}
    slow_a.set()
    await until(lambda: lane.done == 8)
    assert order == {b"team/a": [0, 2, 4, 6], b"team/b": [1, 3, 5, 7]}
    await lane.stop(grace_s=1)


async def test_concurrency_is_bounded() -> None:
    running, most = 0, 0
    gate = asyncio.Event()

    async def handle(record: Record) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1

    lane = Lane(TP(), handle, buffer=100, concurrency=3)
    for offset in range(10):
        lane.put(Record(offset, key=f"repo-{offset}".encode()))
    await until(lambda: running == 3)
    for _ in range(20):  # turns of the loop: room for a fourth to start, were the bound not kept
        await asyncio.sleep(0)
    assert most == 3
    gate.set()
    await until(lambda: lane.done == 10)
    await lane.stop(grace_s=1)


async def test_a_tail_frees_the_repository_for_its_next_event_but_holds_the_commit() -> None:
    """The next event of the key runs while the first one's tail (its record on its way) is pending; `done`
    stays at the first event until its tail returns."""
    acked = asyncio.Event()
    ran: list[int] = []

    async def handle(record: Record) -> Callable[[], Awaitable[None]] | None:
        ran.append(record.offset)
        if record.offset == 0:

            async def tail() -> None:
                await acked.wait()

            return tail
        return None

    lane = Lane(TP(), handle, buffer=100)
    lane.put(Record(0, key=b"repo"))
    lane.put(Record(1, key=b"repo"))
    await until(lambda: ran == [0, 1] and lane.idle is False and lane.done == 0)
    assert lane.done == 0, "event 1 is done, but event 0's tail is not: nothing may be committed past 0"
    acked.set()
    await until(lambda: lane.done == 2)
    await lane.stop(grace_s=1)


async def test_a_failing_tail_is_retried_alone_and_shows_the_stall_until_it_goes_through() -> None:
    handled: list[int] = []
    tries = 0

    async def tail() -> None:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise RuntimeError("broker gone")

    async def handle(record: Record) -> Callable[[], Awaitable[None]]:
        handled.append(record.offset)
        return tail

    lane = Lane(TP(), handle, buffer=100, retry_initial_s=0.01, retry_max_s=0.02)
    lane.put(Record(0, key=b"repo"))
    await until(lambda: lane.stall is not None)
    assert "broker gone" in str(lane.stall)
    await until(lambda: lane.done == 1)
    assert (handled, tries) == ([0], 3), "the work ran once; only the tail was retried"
    assert str(lane.stall) == "None", "the stall is gone once the tail went through"
    await lane.stop(grace_s=1)


async def test_the_consume_loop_polls_briefly_only_while_a_lane_has_work_for_it() -> None:
    """While a lane runs an event, holds an uncommitted offset or sits paused, the loop must look again soon
    (to commit, to resume); once every lane is idle and committed it may wait for records much longer."""
    started, release = asyncio.Event(), asyncio.Event()

    async def handle(record: Record) -> None:
        started.set()
        await release.wait()

    lane = Lane(TP(), handle, buffer=100)
    assert poll_ms([lane], set()) == IDLE_POLL_MS  # nothing received yet
    lane.put(Record(7))
    assert poll_ms([lane], set()) == BUSY_POLL_MS  # queued
    await started.wait()
    assert poll_ms([lane], set()) == BUSY_POLL_MS  # running
    release.set()
    await until(lambda: lane.done == 8)
    assert poll_ms([lane], set()) == BUSY_POLL_MS  # done, its offset not committed yet
    lane.committed = lane.done
    assert poll_ms([lane], set()) == IDLE_POLL_MS
    assert poll_ms([lane], {lane.tp}) == BUSY_POLL_MS  # paused: resumed once drained
    assert BUSY_POLL_MS < IDLE_POLL_MS
    await lane.stop(grace_s=1)
