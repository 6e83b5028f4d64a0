"""A process-wide budget of buffer bytes, so memory stays flat whatever the blobs' sizes and number.

Every buffer the replicator fills from the primary (a small blob, a multipart
part) first takes its size from the budget and gives it back once S3 has the
bytes. Copies wait for room rather than growing the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._room = asyncio.Condition()

    async def take(self, n: int) -> None:
        if n > self.limit:
            raise ValueError(f"a buffer of {n} bytes can never fit a budget of {self.limit}")
        async with self._room:
            await self._room.wait_for(lambda: self.held + n <= self.limit)
            self.held += n

    async def give(self, n: int) -> None:
        async with self._room:
            self.held -= n
            self._room.notify_all()

    @asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        await self.take(n)
        try:
            yield
        finally:
            # Shielded: a cancelled copy must still return its bytes, or the budget shrinks for good.
            await asyncio.shield(self.give(n))
