"""The log consumer: the replication-log topic into the log store, plus its HTTP side.

Per batch: decode, write in one SQLite transaction, then commit the Kafka
offsets. A crash between the two replays the batch, which the store's upsert
absorbs. A value that is not a ReplicationRecord is logged, counted and
skipped (its offset is committed with the rest): one bad message must not
stall a partition. The HTTP side serves from the start, even while Kafka is
still unreachable.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from typing import Final

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from consumers.control import Control
from consumers.control_api import add_control_routes
from consumers.logstore.api import build_app
from consumers.logstore.store import LogStore
from consumers.logstore.wire import decode_record
from consumers.registry import RegistryClient
from engine.errors import InvalidEvent
from engine.events import ReplicationRecord
from engine.settings import KafkaSettings, Settings
from georep.runtime import retry_until_stopped, start_http, unless_stopped
from producers.kafka import ensure_topics, start_consumer

log = structlog.get_logger(__name__)

GROUP_ID: Final = "georep.logstore"
BATCH_MAX_RECORDS: Final = 1000
_POLL_MS: Final = 1000

MESSAGES = Counter(
    "georep_logstore_messages_total",
    "Replication-log messages read, by outcome (stored, unchanged: a duplicate or older attempt, invalid)",
    ["outcome"],
)
for _outcome in ("stored", "unchanged", "invalid"):
    MESSAGES.labels(_outcome)  # export zeros from the start, so rates and alerts have a series
CONSUMING = Gauge("georep_logstore_consuming", "1 once the log consumer has joined Kafka; 0 while it is still trying")

Batch = dict[TopicPartition, list[ConsumerRecord]]


async def serve_logstore(settings: Settings, stop: asyncio.Event) -> None:
    """Run the georep API until `stop` is set: HTTP at once, Kafka as soon as it answers.

    Besides the log store it serves the control plane (replicas, backfills, status).
    """
    async with LogStore(settings.logstore.path) as store, RegistryClient.session(settings.primary) as session:
        control = Control(settings, store, RegistryClient(settings.primary, session))
        app = build_app(store)
        add_control_routes(app, control, settings.logstore.api_token)
        runner = await start_http(app, settings.logstore.host, settings.logstore.port)
        try:
            await asyncio.gather(consume(settings.kafka, store, stop), control.run(stop))
        finally:
            # HTTP goes first, so that no request reaches a closed database.
            await runner.cleanup()
    log.info("logstore.stopped")


async def consume(kafka: KafkaSettings, store: LogStore, stop: asyncio.Event) -> None:
    guard = _DrainOnRevoke()
    consumer = await _connect(kafka, guard, stop)
    if consumer is None:
        return
    CONSUMING.set(1)
    log.info("logstore.consuming", topic=kafka.log_topic, group=GROUP_ID)
    try:
        while not stop.is_set():
            batch = await unless_stopped(consumer.getmany(timeout_ms=_POLL_MS, max_records=BATCH_MAX_RECORDS), stop)
            if not batch:
                continue
            async with guard.lock:
                if not await _store_batch(store, batch, stop):
                    break
                await _commit(consumer, batch)
    finally:
        CONSUMING.set(0)
        await consumer.stop()


class _DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Holds a rebalance until the batch in hand is written and committed, so the next owner starts after it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self.lock:
            log.info("logstore.partitions_revoked", partitions=sorted(str(tp) for tp in revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info("logstore.partitions_assigned", partitions=sorted(str(tp) for tp in assigned))


async def _connect(kafka: KafkaSettings, guard: _DrainOnRevoke, stop: asyncio.Event) -> AIOKafkaConsumer | None:
    """A started, subscribed consumer, retrying with backoff while Kafka is unreachable; None if stopped first."""

    async def attempt() -> AIOKafkaConsumer:
        # Create the topic with its configured partitions rather than let the broker auto-create one.
        await ensure_topics(kafka)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-logstore",
            group_id=GROUP_ID,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=kafka.request_timeout_ms,
        )
        # Subscribed before start, so that start waits for the new topic's partitions: a group
        # joined before they are known is assigned nothing until the next metadata refresh.
        consumer.subscribe([kafka.log_topic], listener=guard)
        return await start_consumer(consumer)

    return await retry_until_stopped(attempt, (KafkaError, OSError, TimeoutError), stop, "logstore.kafka_unavailable")


async def _store_batch(store: LogStore, batch: Batch, stop: asyncio.Event) -> bool:
    """Write the batch's valid records; False if `stop` came while the database kept failing."""
    records = list(_decode(batch))

    async def write() -> int:
        return await store.put_many(records)

    changed = await retry_until_stopped(write, (sqlite3.OperationalError,), stop, "logstore.write_failed")
    if changed is None:
        return False
    MESSAGES.labels("stored").inc(changed)
    MESSAGES.labels("unchanged").inc(len(records) - changed)
    return True


def _decode(batch: Batch) -> Iterable[ReplicationRecord]:
    for tp, messages in batch.items():
        for message in messages:
            try:
                yield decode_record(message.value)
            except InvalidEvent as exc:
                MESSAGES.labels("invalid").inc()
                log.warning(
                    "logstore.invalid_record",
                    reason=str(exc),
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=message.offset,
                )


async def _commit(consumer: AIOKafkaConsumer, batch: Batch) -> None:
    offsets = {tp: messages[-1].offset + 1 for tp, messages in batch.items() if messages}
    try:
        await consumer.commit(offsets)
    except KafkaError as exc:
        # The rows are stored. A lost commit only means whoever owns these
        # partitions next reads them again, and the upsert makes that a no-op;
        # the next successful commit covers these offsets anyway.
        log.warning("logstore.commit_failed", error=repr(exc), offsets={str(tp): o for tp, o in offsets.items()})
