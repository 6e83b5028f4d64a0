"""The control plane, run by the georep API process: replicas, their backfills, status.

Replica definitions and backfill checkpoints live in Kafka (compacted
topics); this process holds the lock that orders replica changes, runs each
new replica's backfill (resuming any left `running` when it starts), and
answers status from Kafka and the log store.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import structlog
from aiokafka.errors import KafkaError

from consumers.catalog import CatalogUnavailable, replica_view
from consumers.logstore.store import LogStore
from consumers.registry import RegistryClient
from consumers.status import EventsLag, backfill_status, image_records, image_status, region_status
from engine.digest import Digest
from engine.errors import GeorepError, NotFoundUpstream
from engine.names import Repository, Tag
from engine.replicas import ReplicaDefinition
from engine.settings import Settings
from georep.runtime import unless_stopped
from producers.backfill import Backfill, Checkpoint, checkpoint_view, current_checkpoint
from producers.kafka import KafkaUnavailable, Publisher
from producers.replicas import ReplicaAdmin

log = structlog.get_logger(__name__)

BACKFILL_RETRY_S: Final = (1.0, 30.0)
#: how often the status gauges (lag, oldest event, latency) are refreshed for Prometheus
GAUGE_REFRESH_S: Final = 15.0


class Control:
    def __init__(
        self, settings: Settings, store: LogStore, primary: RegistryClient, load_timeout_s: float = 15.0
    ) -> None:
        self.settings = settings
        self.load_timeout_s = load_timeout_s
        self.store = store
        self.primary = primary
        kafka = settings.kafka
        self.replicas = replica_view(kafka, "api")
        self.checkpoints = checkpoint_view(kafka, "api")
        self.publisher = Publisher(kafka, "api")
        self.admin = ReplicaAdmin(kafka, self.replicas, self.publisher, settings.rules)
        self.lag = EventsLag(kafka)
        self._backfills: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        readers = [asyncio.create_task(view.run(stop)) for view in (self.replicas, self.checkpoints)]
        try:
            await self._resume_backfills(stop)
            while not stop.is_set():
                with contextlib.suppress(KafkaError, OSError, GeorepError):
                    await self.status()
                await unless_stopped(asyncio.sleep(GAUGE_REFRESH_S), stop)
        finally:
            for task in self._backfills.values():
                task.cancel()
            await asyncio.gather(*self._backfills.values(), *readers, return_exceptions=True)
            await self.lag.close()
            await self.publisher.close()

    @property
    def loaded(self) -> bool:
        return self.replicas.loaded and self.checkpoints.loaded

    async def load(self) -> None:
        """Wait until replicas and checkpoints have been read to the end once; CatalogUnavailable if not in time.

        Every answer about replicas waits for this: a restarted API that answered
        from a half-read topic would call a replica unknown, or its backfill absent.
        """
        await self.replicas.load(self.load_timeout_s)
        await self.checkpoints.load(self.load_timeout_s)

    async def _resume_backfills(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await unless_stopped(self.load(), stop)
                break
            except CatalogUnavailable as exc:  # Kafka not there yet
                log.warning("control.catalog_unavailable", error=str(exc))
        for region in self.replicas.values:
            checkpoint = self.checkpoint(region)
            if checkpoint is not None and checkpoint.unfinished:
                self.start_backfill(region)

    # -- replicas -----------------------------------------------------------------------------

    async def replica_list(self) -> list[ReplicaDefinition]:
        await self.load()
        return [definition for _, definition in sorted(self.replicas.values.items())]

    async def replica(self, region: str) -> ReplicaDefinition | None:
        await self.load()
        return self.replicas.values.get(region)

    async def create(self, definition: ReplicaDefinition, *, backfill: bool) -> ReplicaDefinition:
        created = await self.admin.create(definition)
        if backfill:
            self.start_backfill(created.region)
        return created

    async def delete(self, region: str) -> ReplicaDefinition:
        task = self._backfills.pop(region, None)
        if task is not None:
            task.cancel()
        return await self.admin.delete(region)

    def start_backfill(self, region: str) -> bool:
        """Start (or resume) the region's backfill here; False if one is running already."""
        running = self._backfills.get(region)
        if running is not None and not running.done():
            return False
        self._backfills[region] = asyncio.create_task(self._backfill(region), name=f"backfill-{region}")
        return True

    async def _backfill(self, region: str) -> None:
        """Run until done, resuming from the checkpoint after each failure; stop if the replica goes."""
        delay, most = BACKFILL_RETRY_S
        while not self._stop.is_set() and (replica := self.replicas.values.get(region)) is not None:
            try:
                await self.checkpoints.caught_up()
                resume = self.checkpoint(region)
                await Backfill(self.settings.kafka, self.primary, self.publisher, region, replica).run(resume)
                return
            except (GeorepError, KafkaUnavailable) as exc:
                log.warning("backfill.failed", region=region, error=str(exc), retry_in_s=delay)
                await unless_stopped(asyncio.sleep(delay), self._stop)
                delay = min(delay * 2, most)

    # -- status -------------------------------------------------------------------------------

    def regions(self) -> list[str]:
        return sorted({*self.replicas.values, *self.settings.regions})

    async def status(self) -> dict[str, Any]:
        await self.load()
        regions = [
            await region_status(region, self.store, self.lag, self.checkpoint(region)) for region in self.regions()
        ]
        return {"regions": regions}

    def checkpoint(self, region: str) -> Checkpoint | None:
        """The backfill checkpoint of the region's current replica; one left by a deleted replica is not."""
        return current_checkpoint(self.checkpoints.values.get(region), self.replicas.values.get(region))

    async def backfill(self, region: str) -> dict[str, Any] | None:
        await self.load()
        return await backfill_status(region, self.store, self.checkpoint(region))

    async def image(self, repository: Repository, tag: Tag | None, digest: Digest | None) -> dict[str, Any]:
        wanted: str | None = None if digest is None else str(digest)
        if tag is not None:
            try:
                wanted = str((await self.primary.tagged(repository, tag)).digest)
            except NotFoundUpstream:
                wanted = None
        await self.load()
        regions = []
        for region in self.regions():
            records = await image_records(self.store, region, repository, tag, digest)
            regions.append(image_status(self.replicas.values.get(region), region, repository, tag, wanted, records))
        shown = f"{repository}:{tag}" if tag is not None else f"{repository}@{digest}"
        return {"image": shown, "digest": wanted, "regions": regions}
