"""The control plane, run by the georep API process: replicas, their backfills, status.

Replica definitions and backfill checkpoints live in Kafka (compacted
topics); this process holds the lock that orders replica changes, runs each
new replica's backfill (resuming any left `running` when it starts), and
answers status from Kafka and the log store.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import structlog

from adapters.compacted import CompactedView, replica_view
from adapters.health import Health, Supervisor
from adapters.kafka import KAFKA_ERRORS, Publisher
from adapters.registry import RegistryClient
from adapters.runtime import unless_stopped
from consumers.logstore.store import LogStore
from engine import topics
from engine.digest import Digest
from engine.errors import CatalogUnavailable, GeorepError, KafkaUnavailable, NotFoundUpstream, NotLeader
from engine.events import ReconcilePass
from engine.names import Repository, Tag
from engine.replicas import ReplicaDefinition
from engine.settings import Settings
from georep.api.leader import Leadership
from georep.api.status import EventsLag, RegionLag, backfill_status, image_records, image_status, region_status
from producers.backfill import Backfill, Checkpoint, checkpoint_view, current_checkpoint
from producers.replicas import ReplicaAdmin

log = structlog.get_logger(__name__)

BACKFILL_RETRY_S: Final = (1.0, 30.0)
#: what a status refresh can fail with, short of a bug
_STATUS_ERRORS: tuple[type[BaseException], ...] = (*KAFKA_ERRORS, GeorepError)
#: how often the status gauges (lag, oldest event, latency) are refreshed for Prometheus
GAUGE_REFRESH_S: Final = 15.0
CHECKPOINT_TIMEOUT_S: Final = 15.0


class Control:
    def __init__(
        self,
        settings: Settings,
        store: LogStore,
        primary: RegistryClient,
        load_timeout_s: float = 15.0,
        *,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.health = health or Health("api")
        self.load_timeout_s = load_timeout_s
        self.store = store
        self.primary = primary
        kafka = settings.kafka
        self.replicas = replica_view(kafka, "api", settings.replicas.verifier())
        self.checkpoints = checkpoint_view(kafka, "api")
        #: each region's last reconciliation pass per partition
        self.passes: CompactedView[ReconcilePass] = CompactedView(
            kafka, kafka.reconcile_topic, ReconcilePass.from_json, "api"
        )
        self.publisher = Publisher(kafka, "api")
        self.admin = ReplicaAdmin(kafka, self.replicas, self.publisher, settings.rules, settings.replicas.signing_key)
        self.lag = EventsLag(kafka)
        self.leadership = Leadership(
            kafka, settings.logstore.advertise_url or settings.logstore.url, self.publisher,
            self._lead, self._step_down, self._pause,
        )  # fmt: skip
        self._backfills: dict[str, asyncio.Task[None]] = {}
        self._leader_tasks: list[asyncio.Task[None]] = []
        #: held by each replica change from start to end: stepping down waits for it
        self._changing = asyncio.Lock()
        self._stop = asyncio.Event()
        self._tasks: Supervisor | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the compacted topics, run backfills and refresh the status gauges, until `stop`."""
        self._stop = stop
        try:
            async with Supervisor(self.health, stop).running() as tasks:
                self._tasks = tasks
                tasks.spawn("replicas-topic", self.replicas.run(stop))
                tasks.spawn("backfill-topic", self.checkpoints.run(stop))
                tasks.spawn("reconcile-topic", self.passes.run(stop))
                tasks.spawn("leadership", self.leadership.run(stop))
                while not stop.is_set():
                    # Stop-aware: until Kafka answers, a refresh waits for the catalog (load_timeout_s).
                    await unless_stopped(self._refresh_gauges(), stop)
                    await unless_stopped(asyncio.sleep(GAUGE_REFRESH_S), stop)
        finally:
            self._tasks = None
            await self.lag.close()
            await self.publisher.close()

    @property
    def leading(self) -> bool:
        return self.leadership.leading

    async def _lead(self) -> None:
        """Now the leader: resume unfinished backfills, restore overwritten definitions (started, not awaited:
        this runs inside Kafka's rebalance)."""
        if self._tasks is None:
            return
        self._leader_tasks = [
            self._tasks.spawn("resume-backfills", self._resume_backfills(self._stop), until_stopped=False)
        ]
        if self.settings.replicas.signing_key is not None:
            self._leader_tasks.append(
                self._tasks.spawn("replicas-guard", self._guard_replicas(self._stop), until_stopped=False)
            )

    async def _pause(self) -> None:
        async with self._changing:
            pass  # the change under way is done; new ones see `leading` false and are forwarded or wait

    async def _step_down(self) -> None:
        """No longer the leader: a change under way finishes, and what only the leader runs stops, before
        another process may lead (this runs inside Kafka's rebalance, which waits for it)."""
        async with self._changing:
            running = [*self._leader_tasks, *self._backfills.values()]
            self._leader_tasks, self._backfills = [], {}
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _guard_replicas(self, stop: asyncio.Event) -> None:
        """Restore each region whose definition an ignored value was written over (see ReplicaCatalog)."""
        while await self.replicas.wait_for(lambda _: bool(self.replicas.overwritten), stop):
            try:
                await self.admin.restore()
            except (KafkaUnavailable, CatalogUnavailable) as exc:
                log.warning("control.restore_failed", error=str(exc))
                await unless_stopped(asyncio.sleep(5.0), stop)

    async def _refresh_gauges(self) -> None:
        """Status for Prometheus; a failure is logged and shown on /healthz until a refresh works again."""
        try:
            await self.status()
        except _STATUS_ERRORS as exc:
            log.warning("control.status_failed", error=str(exc) or type(exc).__name__)
            self.health.report("gauges", "status", f"refresh failed: {type(exc).__name__}: {exc}")
        else:
            self.health.clear("gauges", "status")

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
            running = self._backfills.get(region)
            if checkpoint is not None and checkpoint.unfinished and (running is None or running.done()):
                self.start_backfill(region)

    # -- replicas -----------------------------------------------------------------------------

    async def replica_list(self) -> list[ReplicaDefinition]:
        await self.load()
        return [definition for _, definition in sorted(self.replicas.values.items())]

    async def replica(self, region: str) -> ReplicaDefinition | None:
        await self.load()
        return self.replicas.values.get(region)

    def _must_lead(self) -> None:
        if not self.leading:
            raise NotLeader(f"this georep API process does not lead (the group {topics.API_GROUP} elects one)")

    async def create(self, definition: ReplicaDefinition, *, backfill: bool) -> ReplicaDefinition:
        async with self._changing:
            self._must_lead()
            created = await self.admin.create(definition)
            if backfill:
                await self._begin_backfill(created.region)
            return created

    async def delete(self, region: str) -> ReplicaDefinition:
        async with self._changing:
            self._must_lead()
            task = self._backfills.pop(region, None)
            if task is not None:
                task.cancel()
            return await self.admin.delete(region)

    async def backfill_again(self, region: str) -> bool:
        """Run the region's backfill again (or resume it); False if one is running here already."""
        async with self._changing:
            self._must_lead()
            return await self._begin_backfill(region)

    async def _begin_backfill(self, region: str) -> bool:
        """Leave a `running` checkpoint first (unless one is unfinished), so that whichever process leads next
        resumes this backfill even if this one stops before its first repository; then run it here."""
        running = self._backfills.get(region)
        if running is not None and not running.done():
            return False
        current = self.checkpoint(region)
        if current is None or not current.unfinished:
            begun = Checkpoint(region=region)
            await self.publisher.publish(
                self.settings.kafka.backfill_topic, [(region.encode(), begun.to_json())], CHECKPOINT_TIMEOUT_S
            )
        self.start_backfill(region)
        return True

    def start_backfill(self, region: str) -> None:
        """Run (resume) the region's backfill from its checkpoint in this process, the leader."""
        self._must_lead()
        if self._tasks is None:
            raise KafkaUnavailable("the control plane is not running yet")
        self._backfills[region] = self._tasks.spawn(f"backfill-{region}", self._backfill(region), until_stopped=False)

    async def _backfill(self, region: str) -> None:
        """Run until done, resuming from the checkpoint after each failure; stop if the replica goes.

        Any failure, expected or not, leaves a `failed` checkpoint, a log line and a health problem naming the
        backfill until a later attempt gets further; nothing ends it quietly.
        """
        delay, most = BACKFILL_RETRY_S
        try:
            while not self._stop.is_set() and (replica := self.replicas.values.get(region)) is not None:
                try:
                    await self.checkpoints.caught_up()
                    resume = self.checkpoint(region)
                    await Backfill(self.settings.kafka, self.primary, self.publisher, region, replica).run(resume)
                    return
                except Exception as exc:
                    expected = isinstance(exc, GeorepError)
                    (log.warning if expected else log.exception)(
                        "backfill.failed", region=region, error=str(exc), retry_in_s=delay
                    )
                    self.health.report(
                        "backfill", region, f"failed, retrying in {delay:g}s: {type(exc).__name__}: {exc}"
                    )
                    await unless_stopped(asyncio.sleep(delay), self._stop)
                    delay = min(delay * 2, most)
        finally:
            self.health.clear("backfill", region)

    # -- status -------------------------------------------------------------------------------

    def regions(self) -> list[str]:
        return sorted({*self.replicas.values, *self.settings.regions})

    async def status(self) -> dict[str, Any]:
        await self.load()
        names = self.regions()
        try:
            lags: dict[str, RegionLag] = await self.lag.regions(names)
        except KAFKA_ERRORS as exc:
            log.warning("status.kafka_unavailable", regions=names, error=str(exc))
            lags = {}
        passes = self.passes.values.values()
        regions = [
            await region_status(region, self.store, lags.get(region), self.checkpoint(region), passes)
            for region in names
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
