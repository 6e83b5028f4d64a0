"""Per-partition lanes: order within a partition, concurrency across partitions.

Each assigned partition gets a lane: a queue and one task that replicates its
events strictly in offset order. A lane's `done` is the offset after the last
event it finished (replicated or dead-lettered); only that is ever committed,
so Kafka never holds an offset past an event that is not durably done.

The handler finishes every event itself (replicated, skipped or dead-lettered)
and is not meant to raise. If it does anyway (a bug, a failure nobody mapped),
the lane does not stop and does not skip the event: it retries the same event
with backoff, and stands as `stalled` (with the offset and the error) until
the event goes through, so that health and metrics name the stuck partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Handler = Callable[[Any], Awaitable[None]]
Spawn = Callable[[str, Any], "asyncio.Task[None]"]


@dataclass(frozen=True, slots=True)
class Stall:
    offset: int
    error: str
    attempts: int
    #: time.monotonic() of the first failure
    since: float


def _create_task(name: str, work: Any) -> asyncio.Task[None]:
    return asyncio.create_task(work, name=name)


class Lane:
    def __init__(
        self,
        tp: Any,
        handle: Handler,
        buffer: int,
        *,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        spawn: Spawn = _create_task,
    ) -> None:
        self.tp = tp
        self._handle = handle
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.buffer = buffer
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        #: next offset to commit: the one after the last finished event
        self.done: int | None = None
        self.committed: int | None = None
        #: the offset after the last record handed to the lane (done == received: nothing pending)
        self.received: int | None = None
        #: set while the event at the head keeps failing with an unexpected error
        self.stall: Stall | None = None
        #: key (repository) -> offset of the last record of it handed to the lane: is a live event in flight?
        self.last_offset: dict[bytes, int] = {}
        self._progress = asyncio.Condition()
        self._arrivals: list[tuple[int, asyncio.Future[None]]] = []
        self._current: asyncio.Task[None] | None = None
        self._stopping = False
        self._task = spawn(f"lane-{tp.topic}-{tp.partition}", self._run())

    @property
    def full(self) -> bool:
        return self._queue.qsize() >= self.buffer

    @property
    def drained(self) -> bool:
        return self._queue.qsize() < self.buffer // 2 + 1

    @property
    def uncommitted(self) -> bool:
        return self.done is not None and self.done != self.committed

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight: every record received is done."""
        return self._current is None and self._queue.empty()

    def put(self, record: Any) -> None:
        self._queue.put_nowait(record)
        self.received = record.offset + 1
        if record.key is not None:
            self.last_offset[record.key] = record.offset
        waiting, self._arrivals = self._arrivals, []
        for offset, future in waiting:
            if offset <= self.received:
                if not future.done():
                    future.set_result(None)
            else:
                self._arrivals.append((offset, future))

    async def received_through(self, offset: int) -> None:
        """Return once every record before `offset` has been handed to the lane (not necessarily done)."""
        if self.received is not None and self.received >= offset:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._arrivals.append((offset, future))
        await future

    async def settled(self, offset: int) -> None:
        """Return once every event before `offset` is done (replicated or dead-lettered)."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.done is not None and self.done >= offset)

    async def _run(self) -> None:
        while not self._stopping:
            record = await self._queue.get()
            await self._until_done(record)

    async def _until_done(self, record: Any) -> None:
        delay, attempts = self.retry_initial_s, 0
        while not self._stopping:
            self._current = asyncio.create_task(self._finish(record))
            try:
                # Shielded so that stop() decides whether the in-flight event finishes or is abandoned.
                await asyncio.shield(self._current)
            except Exception as exc:
                attempts += 1
                since = self.stall.since if self.stall else time.monotonic()
                self.stall = Stall(record.offset, f"{type(exc).__name__}: {exc}", attempts, since)
                log.exception(
                    "lane.event_failed", partition=self.tp.partition, offset=record.offset, attempt=attempts,
                    retry_in_s=delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            finally:
                self._current = None
            if self.stall is not None:
                log.info("lane.recovered", partition=self.tp.partition, offset=record.offset, attempts=attempts + 1)
                self.stall = None
            return

    async def _finish(self, record: Any) -> None:
        await self._handle(record)
        self.done = record.offset + 1
        async with self._progress:
            self._progress.notify_all()

    async def stop(self, grace_s: float) -> None:
        """Stop taking work; let the in-flight event finish within `grace_s`, else abandon it.

        Queued events are dropped: they were never committed, so whoever owns
        the partition next reads them again from the committed offset.
        """
        self._stopping = True
        current = self._current
        if current is not None:
            done, _ = await asyncio.wait([current], timeout=grace_s)
            if not done:
                log.warning("lane.abandoning_event", partition=self.tp.partition, grace_s=grace_s)
                current.cancel()
                # Its failure, if any, is the cancellation we asked for; the event will be redone.
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await current
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
