"""Per-partition lanes: order within a partition, concurrency across partitions.

Each assigned partition gets a lane: a queue and one task that replicates its
events strictly in offset order. A lane's `done` is the offset after the last
event it finished (replicated or dead-lettered); only that is ever committed,
so Kafka never holds an offset past an event that is not durably done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Handler = Callable[[Any], Awaitable[None]]


class Lane:
    def __init__(self, tp: Any, handle: Handler, buffer: int) -> None:
        self.tp = tp
        self._handle = handle
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.buffer = buffer
        #: next offset to commit: the one after the last finished event
        self.done: int | None = None
        self.committed: int | None = None
        self._current: asyncio.Task[None] | None = None
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"lane-{tp.topic}-{tp.partition}")

    @property
    def full(self) -> bool:
        return self._queue.qsize() >= self.buffer

    @property
    def drained(self) -> bool:
        return self._queue.qsize() < self.buffer // 2 + 1

    @property
    def uncommitted(self) -> bool:
        return self.done is not None and self.done != self.committed

    def put(self, record: Any) -> None:
        self._queue.put_nowait(record)

    async def _run(self) -> None:
        while not self._stopping:
            record = await self._queue.get()
            self._current = asyncio.create_task(self._finish(record))
            try:
                # Shielded so that stop() decides whether the in-flight event finishes or is abandoned.
                await asyncio.shield(self._current)
            except Exception:
                # The handler dead-letters what it cannot do; reaching here is a bug. The lane
                # stops without passing the event, so nothing is committed past it.
                log.exception("lane.stalled", partition=self.tp.partition, offset=record.offset)
                return
            finally:
                self._current = None

    async def _finish(self, record: Any) -> None:
        await self._handle(record)
        self.done = record.offset + 1

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
