"""The last hour of each region's lag, sampled from the same status the overview shows.

Lag lives in Kafka (committed offsets against the topic's end), which keeps no history of it: this process
samples it every `every_s` and keeps an hour, in memory. A restarted API process starts a new hour; the
latency chart needs no such memory (it is read from the log store's records).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog

from adapters.kafka import KAFKA_ERRORS
from adapters.runtime import unless_stopped
from engine.errors import GeorepError

log = structlog.get_logger(__name__)

KEEP_S: Final = 3600.0
_EXPECTED: Final[tuple[type[BaseException], ...]] = (GeorepError, *KAFKA_ERRORS)


class LagHistory:
    def __init__(
        self,
        status: Callable[[], Awaitable[dict[str, Any]]],
        every_s: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._status = status
        self.every_s = every_s
        self._clock = clock
        self._samples: dict[str, deque[tuple[float, float]]] = {}
        #: why the last sample failed, shown on the overview until one succeeds
        self.error: str | None = None

    def record(self, status: dict[str, Any]) -> None:
        """Keep each region's lag from a status answer (regions whose lag Kafka did not tell are left out)."""
        now = self._clock()
        for region in status["regions"]:
            if region["lag_events"] is None:
                continue
            kept = self._samples.setdefault(region["region"], deque())
            kept.append((now, float(region["lag_events"])))
            while kept and kept[0][0] < now - KEEP_S:
                kept.popleft()

    def samples(self, region: str) -> list[tuple[float, float]]:
        return list(self._samples.get(region, ()))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                # Status waits for the replicas topic to be read (Kafka may be away): a stop must not wait with it.
                status = await unless_stopped(self._status(), stop)
                if status is None:
                    return
                self.record(status)
                self.error = None
            except _EXPECTED as exc:
                # Shown on the overview and logged; the next sample tries again.
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("console.lag_sample_failed", error=self.error)
            await unless_stopped(asyncio.sleep(self.every_s), stop)
