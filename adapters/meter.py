"""A request meter: counts the requests a job makes, and, with a rate, spaces them out.

The reconciliation loop must stay bounded and visible: it reads the primary
and the region through their own clients' views, each with a meter, so that
a pass makes at most `rate` requests per second to either and reports how
many it made. The spacing is aiolimiter's leaky bucket.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from types import TracebackType
from typing import TypeVar

from aiolimiter import AsyncLimiter

T = TypeVar("T")


class Meter:
    def __init__(self, rate_per_s: float | None = None) -> None:
        # A bucket of one second: a pass may burst to `rate` requests, then keeps to the rate.
        self._limiter = AsyncLimiter(rate_per_s, 1.0) if rate_per_s else None
        self.requests = 0

    async def __aenter__(self) -> None:
        if self._limiter is not None:
            await self._limiter.acquire()
        self.requests += 1

    async def each(self, requests: AsyncIterable[T]) -> AsyncIterator[T]:
        """The items of `requests`, an async iterator that makes one request per item (a listing's pages), each
        counted and spaced like any other request."""
        iterator = aiter(requests)
        while True:
            async with self:
                try:
                    item = await anext(iterator)
                except StopAsyncIteration:
                    return
            yield item

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


#: counts nothing anyone reads, limits nothing: what a client uses unless it is given a meter
UNMETERED = Meter()
