"""The per-region replicator service: `georep replicate --region R`.

One Kafka consumer group per region (`georep.replicator.<region>`), any number
of processes per group. Each event is replicated with retries (exponential
backoff with jitter), then its ReplicationRecord is published, and only then
is its offset eligible for commit. Permanent failures go to the dead-letter
topic with their reason and get a `dead-lettered` record; the partition moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from consumers import metrics
from consumers.budget import ByteBudget
from consumers.catalog import CompactedView, replica_view
from consumers.lanes import Lane
from consumers.regions import region_settings
from consumers.registry import RegistryClient
from consumers.replicate import Outcome, RegionReplicator
from consumers.store import RegionStore
from engine.errors import GeorepError, InvalidEvent
from engine.events import DeadLetter, ReplicationEvent, ReplicationRecord, Status, utcnow
from engine.logconfig import scrub
from engine.replicas import ReplicaDefinition
from engine.settings import RegionSettings, Settings
from georep.runtime import metrics_handler, retry_until_stopped, start_http
from producers.kafka import KafkaUnavailable, Publisher, ensure_topics, start_consumer

log = structlog.get_logger(__name__)

#: an unexpected exception (a bug, an unmapped library error) is retried this often, then dead-lettered
UNEXPECTED_MAX_ATTEMPTS = 5


def group_id(region: str) -> str:
    return f"georep.replicator.{region}"


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: ReplicatorService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self._service.release(revoked)

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        log.info("replicator.assigned", partitions=sorted(tp.partition for tp in assigned))


class ReplicatorService:
    def __init__(self, settings: Settings, region: str, replicator: RegionReplicator) -> None:
        self.settings = settings
        self.region = region
        self.replicator = replicator
        self.tuning = settings.replicator
        self.publisher = Publisher(settings.kafka, f"replicator-{region}")
        self.lanes: dict[Any, Lane] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.log = log.bind(region=region)

    # -- the consume loop -------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        consumer = await self._connect(stop)
        if consumer is None:
            return
        self.consumer = consumer
        paused: set[Any] = set()
        sweeper = asyncio.create_task(self._sweep_uploads(stop), name="sweep-uploads")
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                assignment = consumer.assignment()
                for tp, records in batches.items():
                    if tp not in assignment:
                        continue  # fetched just before a rebalance took the partition away
                    lane = self.lanes.get(tp) or self._open_lane(tp)
                    for record in records:
                        lane.put(record)
                    if lane.full:
                        consumer.pause(tp)
                        paused.add(tp)
                for tp in [tp for tp in paused if tp not in self.lanes or self.lanes[tp].drained]:
                    paused.discard(tp)
                    if tp in consumer.assignment():
                        consumer.resume(tp)
                await self._commit(consumer)
        finally:
            sweeper.cancel()
            await self.release(set(self.lanes))
            with contextlib.suppress(KafkaError):
                await consumer.stop()
            await self.publisher.close()
            self.consumer = None

    def _consumer(self) -> AIOKafkaConsumer:
        kafka = self.settings.kafka
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-replicator-{self.region}",
            group_id=group_id(self.region),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=kafka.request_timeout_ms,
            # A region outage stalls lanes, not the poll loop; this only bounds a hung process.
            max_poll_interval_ms=600_000,
        )
        # Subscribed before start, so that start waits for the topic's partitions.
        consumer.subscribe([kafka.events_topic], listener=_Rebalance(self))
        return consumer

    async def _connect(self, stop: asyncio.Event) -> AIOKafkaConsumer | None:
        """A started consumer, however long Kafka takes to answer; None if told to stop first."""

        async def attempt() -> AIOKafkaConsumer:
            # A consumer whose start failed is not reused: a fresh one per attempt.
            await ensure_topics(self.settings.kafka)
            return await start_consumer(self._consumer())

        consumer = await retry_until_stopped(
            attempt, (KafkaError, OSError), stop, "replicator.kafka_unavailable",
            initial_s=self.tuning.retry_initial_s, max_s=self.tuning.retry_max_s,
        )  # fmt: skip
        if consumer is None:
            return None
        self.log.info("replicator.started", group=group_id(self.region))
        # Start the record producer now, not on the first event: it costs hundreds of milliseconds.
        with contextlib.suppress(KafkaUnavailable):
            await self.publisher.publish(self.settings.kafka.log_topic, [], self.tuning.retry_max_s)
        return consumer

    async def _sweep_uploads(self, stop: asyncio.Event) -> None:
        """Abort multipart uploads abandoned by a copier that died (kill -9, OOM, lost node).

        A finished copy aborts the older uploads of its own blob at once; this
        catches the rest (a blob nobody copied again), once they are too old
        to belong to a live copy.
        """
        every = self.tuning.stale_upload_s / 4
        while not stop.is_set():
            cutoff = utcnow() - timedelta(seconds=self.tuning.stale_upload_s)
            try:
                aborted = await self.replicator.store.abort_uploads(self.replicator.layout.blobs_root, before=cutoff)
            except GeorepError as exc:
                self.log.warning("replicator.sweep_failed", error=str(exc))
            else:
                if aborted:
                    self.log.info("replicator.swept_uploads", aborted=aborted)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    def _open_lane(self, tp: Any) -> Lane:
        lane = Lane(tp, self.handle, self.tuning.partition_buffer)
        self.lanes[tp] = lane
        return lane

    async def release(self, partitions: set[Any]) -> None:
        """Finish (within the grace period) or abandon in-flight work, then commit what is done."""
        lanes = [self.lanes.pop(tp) for tp in partitions if tp in self.lanes]
        if not lanes:
            return
        await asyncio.gather(*(lane.stop(self.tuning.drain_grace_s) for lane in lanes))
        if self.consumer is not None:
            await self._commit(self.consumer, lanes)
        self.log.info("replicator.released", partitions=sorted(lane.tp.partition for lane in lanes))

    async def _commit(self, consumer: AIOKafkaConsumer, lanes: list[Lane] | None = None) -> None:
        pending = {lane.tp: lane for lane in (lanes if lanes is not None else self.lanes.values()) if lane.uncommitted}
        if not pending:
            return
        offsets = {tp: lane.done for tp, lane in pending.items()}
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # Not fatal: the events are done; a later commit (or a replay, which is harmless) covers them.
            self.log.warning("replicator.commit_failed", error=str(exc))
            return
        for lane in pending.values():
            lane.committed = offsets[lane.tp]

    # -- one event --------------------------------------------------------

    async def handle(self, record: Any) -> None:
        """Replicate one Kafka record to the end: succeeded, skipped or dead-lettered. Never raises."""
        try:
            event = ReplicationEvent.from_json(record.value)
        except InvalidEvent as exc:
            await self._dead_letter(record, None, exc, attempts=1)
            return
        if event.region is not None and event.region != self.region:
            return  # a redrive or repair for another region: not ours, and no record of ours either
        bound = self.log.bind(
            event_id=event.id,
            repository=str(event.repository),
            digest=event.digest and event.digest.short,
            tag=event.tag and str(event.tag),
            partition=record.partition,
            offset=record.offset,
        )
        started = utcnow()
        attempts = 0

        async def on_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            reason = exc.reason if isinstance(exc, GeorepError) else "internal-error"
            metrics.ATTEMPTS_FAILED.labels(self.region, reason).inc()
            bound.warning("replicate.attempt_failed", attempt=state.attempt_number, reason=reason, error=str(exc))
            await self._record(event, Status.FAILED, state.attempt_number, started, error=f"{reason}: {exc}")

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            stop=_give_up,
            wait=wait_exponential_jitter(multiplier=self.tuning.retry_initial_s, max=self.tuning.retry_max_s),
            before_sleep=on_retry,
            reraise=True,
        )
        metrics.IN_FLIGHT.labels(self.region).inc()
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    outcome = await self.replicator.replicate(event)
        except Exception as exc:
            reason = exc.reason if isinstance(exc, GeorepError) else "internal-error"
            bound.error("replicate.dead_lettered", attempts=attempts, reason=reason, error=str(exc))
            await self._dead_letter(record, event, exc, attempts)
            await self._record(event, Status.DEAD_LETTERED, attempts, started, error=f"{reason}: {exc}")
            return
        finally:
            metrics.IN_FLIGHT.labels(self.region).dec()
        await self._record(event, outcome.status, attempts, started, outcome=outcome)
        bound.info(
            "replicate.done",
            status=outcome.status.value,
            blobs_total=outcome.blobs_total,
            blobs_copied=outcome.blobs_copied,
            bytes_copied=outcome.bytes_copied,
            note=outcome.note,
        )

    async def _record(
        self,
        event: ReplicationEvent,
        status: Status,
        attempt: int,
        started: datetime,
        *,
        outcome: Outcome | None = None,
        error: str | None = None,
    ) -> None:
        finished = utcnow()
        lag = finished - event.occurred_at
        done = outcome or Outcome(status)
        record = ReplicationRecord(
            event_id=event.id,
            region=self.region,
            repository=event.repository,
            tag=event.tag,
            digest=event.digest,
            action=event.action,
            source=event.source,
            status=status,
            attempt=max(attempt, 1),
            blobs_total=done.blobs_total,
            blobs_copied=done.blobs_copied,
            bytes_copied=done.bytes_copied,
            manifests_total=done.manifests_total,
            started_at=started,
            finished_at=finished,
            occurred_at=event.occurred_at,
            lag_ms=max(0, lag // timedelta(milliseconds=1)),
            # Records leave the process (Kafka, the log store, `georep logs`): no credential may ride along.
            error=scrub(error) if error else None,
            note=done.note,
        )
        await self._publish(self.settings.kafka.log_topic, record.key, record.to_json())
        if status is not Status.FAILED:
            metrics.EVENTS.labels(self.region, status.value).inc()
        if status is Status.SUCCEEDED:
            metrics.BLOBS_COPIED.labels(self.region).inc(done.blobs_copied)
            metrics.BYTES_COPIED.labels(self.region).inc(done.bytes_copied)
            metrics.LAG.labels(self.region).observe(lag.total_seconds())

    async def _dead_letter(
        self, record: Any, event: ReplicationEvent | None, exc: BaseException, attempts: int
    ) -> None:
        reason = exc.reason if isinstance(exc, GeorepError) else "internal-error"
        letter = DeadLetter(
            region=self.region,
            reason=reason,
            error=scrub(str(exc)),
            attempts=attempts,
            failed_at=utcnow(),
            event=event.model_dump(mode="json", by_alias=True) if event else None,
            raw=None if event else bytes(record.value or b"").decode("utf-8", "replace")[:65536],
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        if event is None:
            self.log.error("replicate.dead_lettered", reason=reason, error=str(exc), offset=record.offset)
        await self._publish(self.settings.kafka.dead_letter_topic, letter.key, letter.to_json())
        if event is None:
            # An unreadable event gets no replication record (it names no repository), so count it here.
            metrics.EVENTS.labels(self.region, Status.DEAD_LETTERED.value).inc()

    async def _publish(self, topic: str, key: bytes, value: bytes) -> None:
        """Publish until Kafka takes it: the offset is not committed before its record is out."""
        delay = self.tuning.retry_initial_s
        while True:
            try:
                await self.publisher.publish(topic, [(key, value)], self.settings.kafka.request_timeout_ms / 1000)
            except KafkaUnavailable as exc:
                self.log.warning("replicator.publish_failed", topic=topic, error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.tuning.retry_max_s)
            else:
                return

    # -- health -----------------------------------------------------------

    def health_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", metrics_handler)
        return app

    async def _healthz(self, _: web.Request) -> web.Response:
        consumer = self.consumer
        assigned = sorted(tp.partition for tp in consumer.assignment()) if consumer else []
        body = {
            "region": self.region,
            "group": group_id(self.region),
            # where this process writes: a replica redefined in place shows here once it is served anew
            "bucket": self.replicator.store.bucket,
            "prefix": self.replicator.layout.prefix,
            "consuming": consumer is not None,
            "partitions": assigned,
        }
        return web.json_response(body, status=200 if consumer is not None else 503)


def _give_up(state: RetryCallState) -> bool:
    exc = state.outcome.exception() if state.outcome else None
    if not isinstance(exc, GeorepError):
        return state.attempt_number >= UNEXPECTED_MAX_ATTEMPTS
    if not exc.retriable:
        return True
    return exc.max_attempts is not None and state.attempt_number >= exc.max_attempts


async def serve_replicator(settings: Settings, region: str, stop: asyncio.Event) -> None:
    """Replicate into `region` until `stop` is set or the replica is deleted.

    A region that is not pinned in the config file is waited for in the
    replicas topic, so a replicator may be deployed before its replica is
    created; deleting the replica stops it (after draining, offsets committed),
    and a definition rewritten in place (another bucket, say) is served anew.
    """
    if region in settings.regions:
        await _serve(settings, region, settings.region(region), lambda: None, stop)
        return
    catalog = replica_view(settings.kafka, f"replicator-{region}")
    following = asyncio.create_task(catalog.run(stop), name="replica-catalog")
    try:
        log.info("replicator.waiting_for_replica", region=region, topic=settings.kafka.replicas_topic)
        if not await catalog.wait_for(lambda replicas: region in replicas, stop):
            return
        while (definition := catalog.values.get(region)) is not None and not stop.is_set():
            changed = asyncio.Event()
            watcher = asyncio.create_task(_until_changed(catalog, region, definition, stop, changed), name="watch")
            try:
                await _serve(settings, region, region_settings(definition), lambda: catalog.values.get(region), changed)
            finally:
                watcher.cancel()
            if not stop.is_set():
                gone = region not in catalog.values
                log.info("replicator.replica_deleted" if gone else "replicator.replica_redefined", region=region)
    finally:
        stop.set()  # the process ends either way (SIGTERM, or its replica deleted): stop following the catalog
        await following


async def _until_changed(
    catalog: CompactedView[ReplicaDefinition],
    region: str,
    definition: ReplicaDefinition,
    stop: asyncio.Event,
    changed: asyncio.Event,
) -> None:
    """Set `changed` once the region's definition is no longer `definition` (deleted or rewritten), or on stop."""
    await catalog.wait_for(lambda replicas: replicas.get(region) != definition or stop.is_set(), stop)
    changed.set()


async def _serve(
    settings: Settings,
    region: str,
    region_settings: RegionSettings,
    replica: Callable[[], ReplicaDefinition | None],
    stop: asyncio.Event,
) -> None:
    blob_slots = asyncio.Semaphore(settings.replicator.blob_concurrency)
    budget = ByteBudget(settings.replicator.buffer_bytes)
    connections = settings.replicator.blob_concurrency * 2 + 8
    async with (
        RegistryClient.session(settings.primary, connections) as session,
        RegionStore.open(region_settings, connections) as store,
    ):
        primary = RegistryClient(settings.primary, session)
        replicator = RegionReplicator(
            region_settings.layout, store, primary, settings.replicator, blob_slots, budget, replica
        )
        service = ReplicatorService(settings, region, replicator)
        runner = await start_http(service.health_app(), settings.replicator.host, settings.replicator.port)
        try:
            await service.run(stop)
        finally:
            await runner.cleanup()
