"""The log consumer: the replication-log topic into this process's log store.

Every API process keeps a whole store of its own, so it reads every partition
of the topic, in no consumer group (a group would split the partitions
between processes). How far it has read is kept in the store itself, written
in the same SQLite transaction as the records it covers: a crash loses both or
neither, and a restart resumes exactly there. A new process, or a store of an
older schema, starts from the beginning of the topic.

A value that is not a ReplicationRecord is logged, counted and skipped: one
bad message must not stall a partition.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from typing import Final

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from prometheus_client import Counter, Gauge

from adapters.health import Health
from adapters.kafka import KAFKA_ERRORS, ensure_topics, new_consumer, started
from adapters.runtime import in_slices, retry_until_stopped, unless_stopped
from consumers.logstore.store import LogStore
from consumers.logstore.wire import decode_record
from engine.errors import InvalidEvent
from engine.events import ReplicationRecord
from engine.settings import KafkaSettings

log = structlog.get_logger(__name__)

#: Records per transaction while catching up. With 5,000, a store of 1,000,000 records that was reading a
#: backlog answered GET /status in up to 260 ms even with the decoding sliced (in_slices); with 1,000 its worst
#: of 40 was 99 ms, and ingest still ran at 7,100 records/s (measured on one machine, in one session).
BATCH_MAX_RECORDS: Final = 1000
_POLL_MS: Final = 500
#: A batch smaller than this waits GATHER_S for more before it is written: under a steady trickle of records
#: (tag-only events at a hundred a second) a transaction per record or two cost the API process 1 ms of CPU
#: per record; gathered, a record costs a fraction of that and shows in the store at most GATHER_S later.
GATHER_RECORDS: Final = 100
GATHER_S: Final = 0.05

MESSAGES = Counter(
    "georep_logstore_messages_total",
    "Replication-log messages read, by outcome (stored, unchanged: a duplicate or older attempt, invalid)",
    ["outcome"],
)
for _outcome in ("stored", "unchanged", "invalid"):
    MESSAGES.labels(_outcome)  # export zeros from the start, so rates and alerts have a series
CONSUMING = Gauge("georep_logstore_consuming", "1 once the log consumer reads Kafka; 0 while it is still trying")

Batch = dict[TopicPartition, list[ConsumerRecord]]


class Ingest:
    """Reads the log topic into `store`; `caught_up` once everything written before it started is stored."""

    def __init__(
        self, kafka: KafkaSettings, store: LogStore, *, health: Health | None = None, role: str = "api"
    ) -> None:
        self.kafka = kafka
        self.store = store
        self.role = role
        self.health = health
        self.consumer: AIOKafkaConsumer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        consumer = await retry_until_stopped(self._connect, KAFKA_ERRORS, stop, "logstore.kafka_unavailable")
        if consumer is None:
            return
        self.consumer = consumer
        CONSUMING.set(1)
        log.info("logstore.consuming", topic=self.kafka.log_topic)
        try:
            while not stop.is_set():
                batch = await unless_stopped(consumer.getmany(timeout_ms=_POLL_MS, max_records=BATCH_MAX_RECORDS), stop)
                if batch and (fetched := _count(batch)) < GATHER_RECORDS and not stop.is_set():
                    await unless_stopped(asyncio.sleep(GATHER_S), stop)
                    # Whatever the fetcher took in meanwhile, without waiting: later offsets of the same partitions.
                    _merge(batch, await consumer.getmany(timeout_ms=0, max_records=BATCH_MAX_RECORDS - fetched))
                if batch:
                    await self._store(batch, stop)
        finally:
            CONSUMING.set(0)
            self.consumer = None
            await consumer.stop()

    async def _connect(self) -> AIOKafkaConsumer:
        # Create the topic with its configured partitions rather than let the broker auto-create one.
        await ensure_topics(self.kafka, self.role)
        consumer = await started(new_consumer(self.kafka, self.role, self.kafka.log_topic, group=None))
        try:
            await self._resume(consumer)
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    async def _resume(self, consumer: AIOKafkaConsumer) -> None:
        """Seek every partition to where the store says it stopped (the beginning if it never read it)."""
        # A group-less consumer subscribed before start has every partition assigned once started.
        stored = await self.store.positions(self.kafka.log_topic)
        for tp in consumer.assignment():
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)

    async def _store(self, batch: Batch, stop: asyncio.Event) -> None:
        """Write the batch's valid records with the positions they reach; retried while the database is busy."""
        records = await in_slices(_decode(batch))
        positions = {(tp.topic, tp.partition): messages[-1].offset + 1 for tp, messages in batch.items() if messages}

        async def write() -> int:
            try:
                changed = await self.store.put_many(records, positions)
            except sqlite3.OperationalError as exc:
                if self.health is not None:
                    self.health.report("database", str(self.store.path), f"cannot write: {exc}")
                raise
            if self.health is not None:
                self.health.clear("database", str(self.store.path))
            return changed

        changed = await retry_until_stopped(write, (sqlite3.OperationalError,), stop, "logstore.write_failed")
        if changed is None:
            return
        MESSAGES.labels("stored").inc(changed)
        MESSAGES.labels("unchanged").inc(len(records) - changed)


def _count(batch: Batch) -> int:
    return sum(len(messages) for messages in batch.values())


def _merge(batch: Batch, more: Batch) -> None:
    for tp, messages in more.items():
        batch.setdefault(tp, []).extend(messages)


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
