"""Replication status: per region (lag, oldest pending event, totals, latency, backfill), and per image.

Lag comes from Kafka itself: the region's consumer group's committed offsets
against the end of `georep.events`. The age of the oldest event not yet
replicated is read from the event at each lagging partition's committed
offset. Totals and latency come from the log store.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import Gauge

from adapters.kafka import KAFKA_ERRORS, new_admin, start_reader, started
from consumers.logstore.query import LogQuery
from consumers.logstore.store import LogStore
from engine import topics
from engine.digest import Digest
from engine.errors import InvalidEvent
from engine.events import Action, ReconcilePass, ReplicationEvent, ReplicationRecord, Source, Status, utcnow
from engine.names import Repository, Tag
from engine.replicas import ReplicaDefinition
from engine.settings import KafkaSettings
from producers.backfill import Checkpoint

log = structlog.get_logger(__name__)

#: the window of the push-to-pullable percentiles
LATENCY_WINDOW: Final = timedelta(minutes=5)

LAG = Gauge(
    "georep_region_lag_events", "Events on the events topic that the region's group has not committed", ["region"]
)
REPLICATORS = Gauge("georep_region_replicators", "Consumers in the region's replicator group", ["region"])
OLDEST = Gauge("georep_region_oldest_pending_seconds", "Age of the oldest event not yet replicated", ["region"])
LATENCY = Gauge("georep_region_latency_seconds", "Push-to-pullable over the last 5 minutes", ["region", "quantile"])
BACKFILL_TAGS = Gauge("georep_backfill_tags_published", "Tags a region's backfill has published", ["region"])
BACKFILL_DONE = Gauge("georep_backfill_repositories_done", "Repositories a region's backfill has walked", ["region"])


def percentile(sorted_values: Sequence[int], q: float) -> int | None:
    """The nearest-rank percentile (q in 0..100) of an ascending sequence; None if it is empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class RegionLag:
    #: events on the events topic the region's group has not committed
    events: int
    #: age in seconds of the oldest of them
    oldest_s: float | None
    #: consumers in the region's replicator group now (0: nothing replicates the region)
    replicators: int


class EventsLag:
    """Reads consumer-group lag, and the event at a given offset, from `georep.events`."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        # Both made on first use and kept: status is asked every few seconds.
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._lock = asyncio.Lock()

    async def _reader(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            # Every partition paused; read one offset at a time.
            consumer = await start_reader(self._kafka, self._kafka.events_topic, "api")
            consumer.pause(*consumer.assignment())
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(*KAFKA_ERRORS):
                await self._consumer.stop()
            self._consumer = None
        if self._admin is not None:
            with contextlib.suppress(*KAFKA_ERRORS):
                await self._admin.close()
            self._admin = None

    async def regions(self, regions: Sequence[str]) -> dict[str, RegionLag]:
        """Each region's lag, oldest pending event and replicators, from one read of the topic's offsets."""
        async with self._lock:
            consumer = await self._reader()
            if self._admin is None:
                self._admin = await started(new_admin(self._kafka, "api"))
            admin = self._admin
            partitions = sorted(consumer.assignment(), key=lambda tp: tp.partition)
            ends = await consumer.end_offsets(partitions)
            starts = await consumer.beginning_offsets(partitions)
            groups = [topics.replicator_group(region) for region in regions]
            committed = await asyncio.gather(*(self._committed(admin, group) for group in groups))
            # One group per request: aiokafka 0.14 fails to decode the answer about several at once.
            counts = await asyncio.gather(*(self._members(admin, group) for group in groups))
            members = dict(zip(groups, counts, strict=True))
            # Regions that lag at the same offset read its event once.
            events: dict[tuple[TopicPartition, int], ReplicationEvent | None] = {}
            found: dict[str, RegionLag] = {}
            for region, group, done in zip(regions, groups, committed, strict=True):
                lag = 0
                oldest: datetime | None = None
                for tp in partitions:
                    position = max(done.get(tp, starts[tp]), starts[tp])
                    if position >= ends[tp]:
                        continue
                    lag += ends[tp] - position
                    if (tp, position) not in events:
                        events[tp, position] = await self._event_at(consumer, tp, position)
                    event = events[tp, position]
                    if event is not None and (oldest is None or event.received_at < oldest):
                        oldest = event.received_at
                age = None if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
                found[region] = RegionLag(lag, age, members.get(group, 0))
            return found

    @staticmethod
    async def _members(admin: AIOKafkaAdminClient, group: str) -> int:
        answers = await admin.describe_consumer_groups([group])
        # DescribeGroups v0+: groups = [(error_code, group_id, state, protocol_type, protocol, members, ...)]
        return sum(len(described[5]) for answer in answers for described in answer.groups)

    async def _committed(self, admin: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, int]:
        offsets = await admin.list_consumer_group_offsets(group)
        topic = self._kafka.events_topic
        return {tp: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}

    @staticmethod
    async def _event_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> ReplicationEvent | None:
        consumer.seek(tp, offset)
        consumer.resume(tp)
        try:
            batch = await consumer.getmany(tp, timeout_ms=2000, max_records=1)
        finally:
            consumer.pause(tp)
        for record in batch.get(tp, []):
            with contextlib.suppress(InvalidEvent):
                return ReplicationEvent.from_json(record.value)
        return None


def reconcile_status(region: str, passes: Iterable[ReconcilePass]) -> dict[str, Any] | None:
    """The region's last reconciliation: each partition's latest pass, summed (None before the first)."""
    mine = [p for p in passes if p.region == region]
    if not mine:
        return None
    drift: dict[str, int] = {}
    for p in mine:
        for kind, n in p.drift.items():
            drift[kind] = drift.get(kind, 0) + n
    return {
        "ended_at": max(p.finished_at for p in mine).isoformat(),
        # every partition has been reconciled since this time
        "all_partitions_since": min(p.finished_at for p in mine).isoformat(),
        "took_s": round(max(p.duration_s for p in mine), 3),
        "partitions": len(mine),
        "repositories": sum(p.repositories for p in mine),
        "unchanged": sum(p.unchanged for p in mine),
        "deferred": sum(p.deferred for p in mine),
        "drift": drift,
        "drift_found": sum(drift.values()),
        "repaired": sum(p.repairs for p in mine),
        "requests_primary": sum(p.requests_primary for p in mine),
        "requests_region": sum(p.requests_region for p in mine),
        "errors": sorted({p.error for p in mine if p.error}),
    }


async def region_status(
    region: str,
    store: LogStore,
    lag: RegionLag | None,
    checkpoint: Checkpoint | None,
    passes: Iterable[ReconcilePass] = (),
) -> dict[str, Any]:
    """What the log store knows of the region, with its lag (None: Kafka did not say)."""
    pending, oldest_s, replicators = (None, None, None) if lag is None else (lag.events, lag.oldest_s, lag.replicators)
    totals = await store.totals(region)
    lags = await store.lags_ms(region, utcnow() - LATENCY_WINDOW)
    p50, p99 = percentile(lags, 50), percentile(lags, 99)
    status: dict[str, Any] = {
        "region": region,
        "lag_events": pending,
        "oldest_pending_s": None if oldest_s is None else round(oldest_s, 3),
        #: consumers in the region's replicator group: 0 means nothing replicates it (none running, or none
        #: can reach Kafka); None if Kafka did not say
        "replicators": replicators,
        "events_replicated": totals[Status.SUCCEEDED],
        "bytes_replicated": totals.bytes_copied,
        "skipped": totals[Status.SKIPPED],
        "retrying": totals[Status.FAILED],
        "dead_lettered": totals[Status.DEAD_LETTERED],
        "latency_window_s": int(LATENCY_WINDOW.total_seconds()),
        "latency_samples": len(lags),
        "latency_p50_s": None if p50 is None else p50 / 1000,
        "latency_p99_s": None if p99 is None else p99 / 1000,
        "backfill": await backfill_status(region, store, checkpoint),
        "reconcile": reconcile_status(region, passes),
    }
    if replicators is not None:
        REPLICATORS.labels(region).set(replicators)
    if pending is not None:
        LAG.labels(region).set(pending)
        OLDEST.labels(region).set(oldest_s or 0)
    for quantile, value in (("0.5", p50), ("0.99", p99)):
        LATENCY.labels(region, quantile).set((value or 0) / 1000)
    return status


async def backfill_status(region: str, store: LogStore, checkpoint: Checkpoint | None) -> dict[str, Any] | None:
    """The walk's checkpoint, plus how many of the events it published the region has finished."""
    if checkpoint is None:
        return None
    done = await store.totals(region, source=Source.BACKFILL.value, since=checkpoint.started_at)
    BACKFILL_TAGS.labels(region).set(checkpoint.tags_published)
    BACKFILL_DONE.labels(region).set(checkpoint.repositories_done)
    finished = done[Status.SUCCEEDED] + done[Status.SKIPPED] + done[Status.DEAD_LETTERED]
    return {
        **checkpoint.model_dump(mode="json", by_alias=True),
        "replicated": done[Status.SUCCEEDED],
        "replicated_bytes": done.bytes_copied,
        "dead_lettered": done[Status.DEAD_LETTERED],
        "complete": checkpoint.state == "done" and finished >= checkpoint.tags_published,
    }


def image_status(
    replica: ReplicaDefinition | None,
    region: str,
    repository: Repository,
    tag: Tag | None,
    wanted: str | None,
    records: list[ReplicationRecord],
) -> dict[str, Any]:
    """One region's answer for one image: replicated, in progress, failed (with why), or not replicated.

    `wanted` is the digest the primary serves now (None if it has no such image);
    `records` are the region's records for the image, newest first.
    """
    answer: dict[str, Any] = {"region": region}
    excluded = replica.excluded(repository, tag) if replica is not None else None
    if excluded:
        return answer | {"state": "not-replicated", "detail": excluded}
    if wanted is None:
        return answer | {"state": "not-on-primary", "detail": "the primary has no such image"}
    mine = [r for r in records if str(r.digest) == wanted]
    if mine and mine[0].action is Action.DELETE and mine[0].status is Status.SUCCEEDED:
        return answer | {"state": "deleted", "detail": mine[0].note or "deleted in the region"}
    pushes = [r for r in mine if r.action is Action.PUSH]
    done = next((r for r in pushes if r.status is Status.SUCCEEDED), None)
    if done is not None:
        return answer | {
            "state": "replicated",
            "digest": wanted,
            "finished_at": done.finished_at.isoformat(),
            "lag_s": None if done.lag_ms is None else done.lag_ms / 1000,
        }
    latest = pushes[0] if pushes else None
    if latest is None:
        return answer | {"state": "in-progress", "detail": f"{wanted} is waiting to be replicated"}
    if latest.status is Status.DEAD_LETTERED:
        return answer | {"state": "failed", "detail": latest.error, "event_id": latest.event_id}
    if latest.status is Status.FAILED:
        return answer | {"state": "in-progress", "detail": f"retrying after attempt {latest.attempt}: {latest.error}"}
    return answer | {"state": "not-replicated", "detail": latest.note or latest.status.value}


async def image_records(
    store: LogStore, region: str, repository: Repository, tag: Tag | None, digest: Digest | None
) -> list[ReplicationRecord]:
    """A tag's records (any digest it pointed at), or a digest's when asked by digest; newest first."""
    query = LogQuery(repository=repository, region=region, limit=200)
    update = {"tag": tag} if tag is not None else {"digest": digest}
    return await store.query(query.model_copy(update=update))
