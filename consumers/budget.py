"""A process-wide budget of buffer bytes, so memory stays flat whatever the blobs' sizes and number.

Every buffer the replicator fills from the primary (a small blob, a multipart
part) first takes its size from the budget and gives it back once S3 has the
bytes. Copies wait for room rather than growing the process; they get it in
the order they asked (a large part is not starved by small blobs).

`release` is synchronous, so a buffer's bytes can be given back from a done
callback, a `finally`, or a cancelled task alike, with no await that could
itself be cancelled on the way. A budget whose room has not moved while
copies wait (a leak, or a copy hung for good) is reported by `stalled`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        #: time.monotonic() of the last take or release: room moving means copies progress
        self.last_moved = time.monotonic()

    @property
    def waiting(self) -> int:
        return sum(1 for _, future in self._waiters if not future.done())

    async def take(self, n: int) -> None:
        if n > self.limit:
            raise ValueError(f"a buffer of {n} bytes can never fit a budget of {self.limit}")
        if not self._waiters and self.held + n <= self.limit:
            self._grant(n)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(n)  # granted just as we were cancelled: the room was ours, give it back
            else:
                self._wake()  # we were at the head of the queue: the next one may fit now
            raise

    def release(self, n: int) -> None:
        if n > self.held:
            raise RuntimeError(f"released {n} bytes, but only {self.held} are held")
        self.held -= n
        self.last_moved = time.monotonic()
        self._wake()

    def _grant(self, n: int) -> None:
        self.held += n
        self.last_moved = time.monotonic()

    def _wake(self) -> None:
        while self._waiters:
            n, future = self._waiters[0]
            if future.done():  # cancelled while waiting
                self._waiters.popleft()
                continue
            if self.held + n > self.limit:
                return
            self._waiters.popleft()
            self._grant(n)
            future.set_result(None)

    def stalled(self, after_s: float) -> float | None:
        """Seconds the room has not moved while copies wait for it, once that exceeds `after_s`; else None."""
        if not self.waiting:
            return None
        still = time.monotonic() - self.last_moved
        return still if still > after_s else None

    @asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        await self.take(n)
        try:
            yield
        finally:
            self.release(n)
