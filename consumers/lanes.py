"""Per-partition lanes: order within a repository, concurrency across repositories and partitions.

Each assigned partition gets a lane: a queue and a task that starts its events in offset order. Events of
one key (the repository: the events topic's message key) run one after another, in offset order; events of
different keys in the same partition run at once, up to `concurrency`. An event whose key is busy waits,
and so do the ones behind it (in-order start keeps each key's order without bookkeeping per key).

A lane's `done` is the offset of its earliest unfinished event (or the one after the last finished, when
none is in flight): only that is ever committed, so Kafka never holds an offset past an event that is not
durably done, however the events around it finished.

A handler may return a tail: what is left of the event once its work is done (its record on its way to Kafka,
say). The repository's next event starts at once, while the tail still holds the commit back; a tail that
fails is retried on its own, with backoff, never the work before it.

The handler finishes every event itself (replicated, skipped or dead-lettered) and is not meant to raise. If
it does anyway (a bug, a failure nobody mapped), the lane does not skip the event: it retries it with backoff,
and stands as `stalled` (with the offset and the error) until the event goes through, so that health and
metrics name the stuck partition. Events of other keys go on meanwhile; `done` waits at the stalled one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

#: what is left of an event once its key may move on: awaited (and retried) before its offset is done
Tail = Callable[[], Awaitable[None]]
Handler = Callable[[Any], Awaitable[Tail | None]]
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
        concurrency: int = 8,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        spawn: Spawn = _create_task,
    ) -> None:
        self.tp = tp
        self._handle = handle
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.buffer = buffer
        self.concurrency = concurrency
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        #: next offset to commit: the earliest unfinished event's, or the one after the last finished
        self.done: int | None = None
        self.committed: int | None = None
        #: the offset after the last record handed to the lane (done == received: nothing pending)
        self.received: int | None = None
        #: set while an event keeps failing with an unexpected error (the earliest such event)
        self.stall: Stall | None = None
        #: key (repository) -> offset of the last record of it handed to the lane: is a live event in flight?
        self.last_offset: dict[bytes, int] = {}
        self._progress = asyncio.Condition()
        self._arrivals: list[tuple[int, asyncio.Future[None]]] = []
        #: offset -> the task finishing that event; started in offset order
        self._running: dict[int, asyncio.Task[None]] = {}
        self._busy_keys: set[bytes | None] = set()
        self._stalls: dict[int, Stall] = {}
        self._finished_through = -1
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
        return not self._running and self._queue.empty()

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
            # In offset order: an event waits for its key to be free (its repository's earlier event is done)
            # and for a slot; the ones behind it wait with it.
            async with self._progress:
                await self._progress.wait_for(functools.partial(self._may_start, record.key))
            if self._stopping:
                return
            self._busy_keys.add(record.key)
            self._running[record.offset] = asyncio.create_task(self._until_done(record))

    def _may_start(self, key: bytes | None) -> bool:
        return key not in self._busy_keys and len(self._running) < self.concurrency

    async def _until_done(self, record: Any) -> None:
        delay, attempts = self.retry_initial_s, 0
        holds_key = True
        try:
            while not self._stopping:
                # Shielded so that stop() decides whether the in-flight event finishes or is abandoned.
                attempt = asyncio.ensure_future(self._handle(record))
                try:
                    tail = await asyncio.shield(attempt)
                except Exception as exc:
                    attempts += 1
                    delay = await self._back_off("lane.event_failed", record, exc, attempts, delay)
                    continue
                except asyncio.CancelledError:
                    attempt.cancel()  # abandoned by stop(): the event will be redone by whoever reads it next
                    raise
                self._recovered(record, attempts)
                if tail is not None:
                    holds_key = False
                    await self._free(record.key)
                    await self._until_tail_done(record, tail)
                await self._finished(record)
                return
        finally:
            self._running.pop(record.offset, None)
            if holds_key:
                self._busy_keys.discard(record.key)
            async with self._progress:
                self._progress.notify_all()

    async def _free(self, key: bytes | None) -> None:
        """Let the key's next event start (this one's tail still holds the commit back)."""
        self._busy_keys.discard(key)
        async with self._progress:
            self._progress.notify_all()

    async def _until_tail_done(self, record: Any, tail: Tail) -> None:
        delay, attempts = self.retry_initial_s, 0
        while True:
            try:
                await tail()
            except Exception as exc:
                attempts += 1
                delay = await self._back_off("lane.tail_failed", record, exc, attempts, delay)
                continue
            self._recovered(record, attempts)
            return

    async def _back_off(self, event: str, record: Any, exc: Exception, attempts: int, delay: float) -> float:
        """Show the stall, log the failure with its traceback, wait `delay`; the next delay."""
        self._stalled(record, exc, attempts)
        log.exception(event, partition=self.tp.partition, offset=record.offset, attempt=attempts, retry_in_s=delay)
        await asyncio.sleep(delay)
        return min(delay * 2, self.retry_max_s)

    def _stalled(self, record: Any, exc: Exception, attempts: int) -> None:
        since = self._stalls[record.offset].since if record.offset in self._stalls else time.monotonic()
        self._stalls[record.offset] = Stall(record.offset, f"{type(exc).__name__}: {exc}", attempts, since)
        self.stall = self._stalls[min(self._stalls)]

    def _recovered(self, record: Any, attempts: int) -> None:
        if self._stalls.pop(record.offset, None) is not None:
            log.info("lane.recovered", partition=self.tp.partition, offset=record.offset, attempts=attempts + 1)
            self.stall = self._stalls[min(self._stalls)] if self._stalls else None

    async def _finished(self, record: Any) -> None:
        self._running.pop(record.offset, None)
        self._finished_through = max(self._finished_through, record.offset)
        # The earliest event still in flight holds the commit back; with none, everything received so far
        # that was started is done.
        self.done = min(self._running) if self._running else self._finished_through + 1
        async with self._progress:
            self._progress.notify_all()

    async def stop(self, grace_s: float) -> None:
        """Stop taking work; let the in-flight events finish within `grace_s`, else abandon them.

        Queued events are dropped: they were never committed, so whoever owns
        the partition next reads them again from the committed offset.
        """
        self._stopping = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        running = list(self._running.values())
        if running:
            _, late = await asyncio.wait(running, timeout=grace_s)
            if late:
                log.warning("lane.abandoning_event", partition=self.tp.partition, grace_s=grace_s, events=len(late))
                for task in late:
                    task.cancel()
                # Their failure, if any, is the cancellation we asked for; the events will be redone.
                await asyncio.gather(*late, return_exceptions=True)
