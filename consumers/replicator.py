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
import time
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta
from typing import Any, Final

import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from adapters.compacted import CompactedView, replica_view
from adapters.health import Health, KafkaMonitor, Problem, Supervisor
from adapters.kafka import (
    KAFKA_ERRORS,
    ClusterProbe,
    Publisher,
    connection_options,
    ensure_topics,
    new_consumer,
    started,
)
from adapters.objects import use_io_threads
from adapters.registry import RegistryClient
from adapters.runtime import retry_until_stopped, start_http
from adapters.store import RegionStore
from consumers import metrics
from consumers.budget import ByteBudget
from consumers.lanes import Lane, Spawn, Tail
from consumers.reconcile import Reconciler
from consumers.regions import region_settings
from consumers.replicate import Outcome, RegionReplicator
from engine import topics
from engine.errors import GeorepError, InvalidEvent, KafkaUnavailable
from engine.events import DeadLetter, ReplicationEvent, ReplicationRecord, Status, utcnow
from engine.logconfig import scrub
from engine.recent import RecentIds
from engine.replicas import ReplicaDefinition
from engine.settings import RegionSettings, Settings

log = structlog.get_logger(__name__)

#: an unexpected exception (a bug, an unmapped library error) is retried this often, then dead-lettered
UNEXPECTED_MAX_ATTEMPTS = 5


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: ReplicatorService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self._service.release(revoked)

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        log.info("replicator.assigned", partitions=sorted(tp.partition for tp in assigned))


class ReplicatorService:
    def __init__(
        self, settings: Settings, region: str, replicator: RegionReplicator, spawn: Spawn | None = None
    ) -> None:
        self.settings = settings
        self.region = region
        self.replicator = replicator
        self.tuning = settings.replicator
        self.publisher = Publisher(settings.kafka, f"replicator-{region}")
        self.lanes: dict[Any, Lane] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.log = log.bind(region=region)
        self._spawn = spawn
        #: the reconciliation loop of this definition, if it runs (it reads `consumer` and `lanes`)
        self.reconciler: Reconciler | None = None
        #: ids of events finished here lately (replicated, skipped or dead-lettered): with two webhooks, every
        #: event arrives twice
        self._finished = RecentIds(settings.replicator.dedupe_window)
        self._committed_at = 0.0

    def problems(self) -> list[Problem]:
        return lane_problems(self.region, list(self.lanes.values()))

    # -- the consume loop -------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        consumer = await self._connect(stop)
        if consumer is None:
            return
        self.consumer = consumer
        paused: set[Any] = set()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=poll_ms(self.lanes.values(), paused), max_records=500)
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
                # Every commit is a Kafka request: under load, at most one per interval (a crash replays a little
                # more, which is harmless); once the lanes are idle, at once, so that lag reads 0 when all is done.
                # Releasing partitions and stopping commit at once too.
                idle = all(lane.idle for lane in self.lanes.values())
                if idle or time.monotonic() - self._committed_at >= self.tuning.commit_interval_s:
                    await self._commit(consumer)
        finally:
            await self.release(set(self.lanes))
            with contextlib.suppress(*KAFKA_ERRORS):
                await consumer.stop()
            await self.publisher.close()
            self.consumer = None

    def _consumer(self) -> AIOKafkaConsumer:
        kafka = self.settings.kafka
        return new_consumer(
            kafka, f"replicator-{self.region}", kafka.events_topic, group=topics.replicator_group(self.region),
            listener=_Rebalance(self),
            # A region outage stalls lanes, not the poll loop; this only bounds a hung process.
            max_poll_interval_ms=600_000,
            # aiokafka's default, not the idle readers' longer wait: a partition resumed after back-pressure
            # is fetched again within this.
            fetch_max_wait_ms=500,
        )  # fmt: skip

    async def _connect(self, stop: asyncio.Event) -> AIOKafkaConsumer | None:
        """A started consumer, however long Kafka takes to answer; None if told to stop first."""

        async def attempt() -> AIOKafkaConsumer:
            # A consumer whose start failed is not reused: a fresh one per attempt.
            await ensure_topics(self.settings.kafka, f"replicator-{self.region}")
            return await started(self._consumer())

        consumer = await retry_until_stopped(
            attempt, KAFKA_ERRORS, stop, "replicator.kafka_unavailable",
            initial_s=self.tuning.retry_initial_s, max_s=self.tuning.retry_max_s,
        )  # fmt: skip
        if consumer is None:
            return None
        self.log.info("replicator.started", group=topics.replicator_group(self.region))
        # Start the record producer now, not on the first event: it costs hundreds of milliseconds.
        with contextlib.suppress(KafkaUnavailable):
            await self.publisher.publish(self.settings.kafka.log_topic, [], self.tuning.retry_max_s)
        return consumer

    async def sweep_uploads(self, stop: asyncio.Event) -> None:
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
        lane = Lane(
            tp, self.handle, self.tuning.partition_buffer, concurrency=self.tuning.lane_concurrency,
            retry_initial_s=self.tuning.retry_initial_s, retry_max_s=self.tuning.retry_max_s,
            **({} if self._spawn is None else {"spawn": self._spawn}),
        )  # fmt: skip
        self.lanes[tp] = lane
        return lane

    async def release(self, partitions: set[Any]) -> None:
        """Finish (within the grace period) or abandon in-flight work, then commit what is done."""
        lanes = [self.lanes.pop(tp) for tp in partitions if tp in self.lanes]
        self.replicator.whole.clear()  # their next owner may delete manifests this process thinks whole
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
        self._committed_at = time.monotonic()
        try:
            await consumer.commit(offsets)
        except KAFKA_ERRORS as exc:
            # Not fatal: the events are done; a later commit (or a replay, which is harmless) covers them.
            self.log.warning("replicator.commit_failed", error=str(exc))
            return
        for lane in pending.values():
            lane.committed = offsets[lane.tp]

    # -- one event --------------------------------------------------------

    async def handle(self, record: Any) -> Tail | None:
        """Replicate one Kafka record to the end: succeeded, skipped or dead-lettered. Never raises.

        A replicated event returns with its record handed to the producer, in order; the tail returned waits
        until Kafka took it (the lane holds the commit back until then, not the repository's next event)."""
        try:
            event = ReplicationEvent.from_json(record.value)
        except InvalidEvent as exc:
            await self._dead_letter(record, None, exc, attempts=1)
            return None
        if event.region is not None and event.region != self.region:
            return None  # a redrive or repair for another region: not ours, and no record of ours either
        if event.region is None and event.id in self._finished:
            # A second delivery (two webhooks each publish every event): done already, and recorded. Events
            # addressed to this region (a redrive keeps its event's id) are asked for on purpose: never skipped.
            metrics.EVENTS.labels(self.region, "duplicate").inc()
            self.log.info("replicate.duplicate", event_id=event.id, partition=record.partition, offset=record.offset)
            return None
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
            self._finished.add([event.id])
            return None
        finally:
            metrics.IN_FLIGHT.labels(self.region).dec()
        tail = await self._record(event, outcome.status, attempts, started, outcome=outcome, wait=False)
        self._finished.add([event.id])
        bound.info(
            "replicate.done",
            status=outcome.status.value,
            blobs_total=outcome.blobs_total,
            blobs_copied=outcome.blobs_copied,
            bytes_copied=outcome.bytes_copied,
            note=outcome.note,
        )
        return tail

    async def _record(
        self,
        event: ReplicationEvent,
        status: Status,
        attempt: int,
        started: datetime,
        *,
        outcome: Outcome | None = None,
        error: str | None = None,
        wait: bool = True,
    ) -> Tail | None:
        """Publish the event's replication record; with `wait` False, return once it is handed to the producer,
        with a tail that waits until Kafka took it."""
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
            note=_note(event, done.note),
        )
        tail = await self._send(self.settings.kafka.log_topic, record.key, record.to_json())
        if wait and tail is not None:
            await tail()
            tail = None
        if status is not Status.FAILED:
            metrics.EVENTS.labels(self.region, status.value).inc()
        if status is Status.SUCCEEDED:
            metrics.BLOBS_COPIED.labels(self.region).inc(done.blobs_copied)
            metrics.BYTES_COPIED.labels(self.region).inc(done.bytes_copied)
            metrics.LAG.labels(self.region).observe(lag.total_seconds())
        return tail

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

    async def _send(self, topic: str, key: bytes, value: bytes) -> Tail | None:
        """Hand a record to the producer now; a tail that returns once Kafka took it (sent again until it does).
        None if Kafka is away: then this waits, here, until it takes the record."""
        try:
            acked = await self.publisher.enqueue(topic, [(key, value)], self.settings.kafka.request_timeout_ms / 1000)
        except KafkaUnavailable as exc:
            self.log.warning("replicator.publish_failed", topic=topic, error=str(exc))
            await self._publish(topic, key, value)
            return None

        async def tail() -> None:
            try:
                await acked()
            except KafkaUnavailable as exc:
                self.log.warning("replicator.publish_failed", topic=topic, error=str(exc))
                await self._publish(topic, key, value)

        return tail

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

    def facts(self) -> dict[str, Any]:
        consumer = self.consumer
        return {
            "region": self.region,
            "group": topics.replicator_group(self.region),
            # where this process writes: a replica redefined in place shows here once it is served anew
            "bucket": self.replicator.store.bucket,
            "prefix": self.replicator.layout.prefix,
            "consuming": consumer is not None,
            "partitions": sorted(tp.partition for tp in consumer.assignment()) if consumer else [],
            # the last reconciliation pass over each partition this process owned
            "reconciled": {
                str(p): {
                    "finished_at": s.finished_at.isoformat(), "repositories": s.repositories, "drift": s.drift,
                    "repairs": s.repairs, "member": s.member,
                }
                for p, s in sorted((self.reconciler.last if self.reconciler else {}).items())
            },
        }  # fmt: skip


def _note(event: ReplicationEvent, note: str | None) -> str | None:
    """A repair's record says what drift it fixed, before whatever the replication itself noted."""
    if event.drift is None:
        return note
    return f"repair of {event.drift}" + (f"; {note}" if note else "")


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
    Health, metrics and the Kafka probe live as long as the process; a task
    that dies ends it with Unhealthy (exit code 1).
    """
    role = f"replicator-{region}"
    connection_options(settings.kafka, role)  # refuse at start settings that could never connect
    use_io_threads(settings.replicator.io_threads)
    health = Health(role)
    # One budget for the life of the process: a redefinition must not reset a leak's evidence.
    budget = ByteBudget(settings.replicator.buffer_bytes)
    running: list[ReplicatorService] = []
    health.watch(lambda: [p for service in running for p in service.problems()])
    health.watch(lambda: budget_problems(region, budget, settings.replicator.budget_stall_s))
    health.facts = lambda: running[0].facts() if running else {"region": region, "consuming": False, "partitions": []}
    health.needs("consuming", lambda: bool(running) and running[0].consumer is not None)
    app = web.Application()
    health.add_routes(app)
    runner = await start_http(app, settings.replicator.host, settings.replicator.port)
    probe = ClusterProbe(settings.kafka, role)
    try:
        async with Supervisor(health, stop).running() as tasks:
            tasks.spawn("kafka-probe", KafkaMonitor(health, settings.kafka.bootstrap_servers, probe).run(stop))
            serve = _Serve(settings, region, budget, health, running)
            tasks.spawn("replicate", serve.follow(stop, tasks), until_stopped=False)
    finally:
        await runner.cleanup()
        await probe.close()


#: how long the consume loop waits for records while it has work of its own: a commit due, or a paused
#: partition to resume once its lane drains (lanes do not wake the loop)
BUSY_POLL_MS: Final = 200
#: ... and while every lane is idle, committed and unpaused: records arriving end the wait at once, so
#: this only bounds how often an idle loop wakes for nothing, and how long a stop takes to be seen
IDLE_POLL_MS: Final = 1000


def poll_ms(lanes: Iterable[Lane], paused: Collection[Any]) -> int:
    """How long the consume loop may wait for records before it must look at its lanes again."""
    if paused or any(not lane.idle or lane.uncommitted for lane in lanes):
        return BUSY_POLL_MS
    return IDLE_POLL_MS


def lane_problems(region: str, lanes: list[Lane]) -> list[Problem]:
    """Partitions whose head event keeps failing with an unexpected error: named, and in a gauge."""
    found = []
    for lane in lanes:
        stalled = lane.stall
        metrics.LANE_STALLED.labels(region, str(lane.tp.partition)).set(1 if stalled else 0)
        if stalled is not None:
            detail = f"event at offset {stalled.offset} failed {stalled.attempts} times: {stalled.error}"
            found.append(Problem("lane", f"{lane.tp.topic}/{lane.tp.partition}", detail, stalled.since))
    return found


def budget_problems(region: str, budget: ByteBudget, stall_s: float) -> list[Problem]:
    metrics.BUDGET_HELD.labels(region).set(budget.held)
    metrics.BUDGET_WAITING.labels(region).set(budget.waiting)
    still = budget.stalled(stall_s)
    if still is None:
        return []
    detail = (
        f"{budget.held} of {budget.limit} bytes held with {budget.waiting} copies waiting, "
        f"none given back for {still:.0f}s (more than replicator.budget_stall_s = {stall_s:g}s)"
    )
    return [Problem("budget", "copy-buffers", detail, time.monotonic() - still)]


class _Serve:
    """The replica's definitions, one after another, each served by a ReplicatorService of its own."""

    def __init__(
        self, settings: Settings, region: str, budget: ByteBudget, health: Health, running: list[ReplicatorService]
    ) -> None:
        self.settings = settings
        self.region = region
        self.budget = budget
        self.health = health
        self.running = running
        # For the life of the process, like the copy buffers: manifests in memory, and fetches at once.
        self.manifest_budget = ByteBudget(settings.replicator.manifest_buffer_bytes)
        self.manifest_slots = asyncio.Semaphore(settings.replicator.manifest_fetches)

    async def follow(self, stop: asyncio.Event, tasks: Supervisor) -> None:
        try:
            if self.region in self.settings.regions:
                await self.serve(self.settings.region(self.region), lambda: None, stop)
                return
            catalog = replica_view(self.settings.kafka, f"replicator-{self.region}", self.settings.replicas.verifier())
            tasks.spawn("replica-catalog", catalog.run(stop))
            log.info("replicator.waiting_for_replica", region=self.region, topic=self.settings.kafka.replicas_topic)
            if not await catalog.wait_for(lambda replicas: self.region in replicas, stop):
                return
            while (definition := catalog.values.get(self.region)) is not None and not stop.is_set():
                changed = asyncio.Event()
                watcher = asyncio.create_task(_until_changed(catalog, self.region, definition, stop, changed))
                try:
                    await self.serve(
                        region_settings(definition, self.settings.replicator.credentials_dir),
                        lambda: catalog.values.get(self.region),
                        changed,
                    )
                finally:
                    watcher.cancel()
                if not stop.is_set():
                    gone = self.region not in catalog.values
                    event = "replicator.replica_deleted" if gone else "replicator.replica_redefined"
                    log.info(event, region=self.region)
        finally:
            stop.set()  # the process ends either way (SIGTERM, or its replica deleted)

    async def serve(
        self, region_settings: RegionSettings, replica: Callable[[], ReplicaDefinition | None], stop: asyncio.Event
    ) -> None:
        """Serve one definition until `stop`: its consume loop and upload sweep, in a task group of their own."""
        tuning = self.settings.replicator
        blob_slots = asyncio.Semaphore(tuning.blob_concurrency)
        connections = tuning.blob_concurrency * 2 + 8
        async with (
            RegistryClient.session(self.settings.primary, connections) as session,
            RegionStore.open(region_settings, connections) as store,
            Supervisor(self.health, stop).running() as tasks,
        ):
            primary = RegistryClient(self.settings.primary, session)
            replicator = RegionReplicator(
                region_settings.layout, store, primary, tuning, blob_slots, self.budget, replica,
                manifest_budget=self.manifest_budget, manifest_slots=self.manifest_slots,
                max_clock_skew_s=self.settings.max_clock_skew_s,
            )  # fmt: skip
            lanes: Spawn = lambda name, work: tasks.spawn(name, work, until_stopped=False)  # noqa: E731
            service = ReplicatorService(self.settings, self.region, replicator, lanes)
            self.running[:] = [service]
            try:
                tasks.spawn("sweep-uploads", service.sweep_uploads(stop))
                if self.settings.reconcile.enabled:
                    service.reconciler = Reconciler(
                        self.settings, self.region, region_settings.layout, store, primary, replica, service,
                        service.publisher,
                    )  # fmt: skip
                    tasks.spawn("reconcile", service.reconciler.run(stop))
                await service.run(stop)
            finally:
                self.running.clear()


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
