"""Bounded sets of what was seen lately: the ids the webhook and the replicators remember to tell a second
delivery of an event from a new one, and the keys a replicator found in its region lately."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable


class RecentIds:
    """The last `size` ids added; the oldest go first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids: Iterable[str]) -> None:
        for event_id in ids:
            self._ids[event_id] = None
            self._ids.move_to_end(event_id)
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)


class RecentKeys:
    """Keys confirmed lately: the last `size` of them, each for at most `ttl_s` seconds after it was added."""

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self._clock = clock
        self._added: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        added = self._added.get(key)  # type: ignore[call-overload]
        if added is None:
            return False
        if self._clock() - added > self.ttl_s:
            del self._added[key]  # type: ignore[arg-type]
            return False
        return True

    def __len__(self) -> int:
        return len(self._added)

    def add(self, key: str) -> None:
        if self.size <= 0:
            return
        self._added[key] = self._clock()
        self._added.move_to_end(key)
        while len(self._added) > self.size:
            self._added.popitem(last=False)

    def discard(self, key: str) -> None:
        self._added.pop(key, None)

    def clear(self) -> None:
        self._added.clear()
