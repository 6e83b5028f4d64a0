"""Kafka plumbing every georep process shares: topics and an idempotent producer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from engine.settings import KafkaSettings

log = structlog.get_logger(__name__)


class KafkaUnavailable(Exception):
    """Kafka did not take a message in time; the caller answers 503 or retries."""


_COMPACTED = {"cleanup.policy": "compact", "retention.ms": "-1"}


def topic_specs(kafka: KafkaSettings) -> list[NewTopic]:
    rf = kafka.replication_factor
    return [
        NewTopic(kafka.events_topic, kafka.events_partitions, rf),
        NewTopic(kafka.log_topic, kafka.log_partitions, rf),
        # Dead letters are kept until someone redrives them.
        NewTopic(kafka.dead_letter_topic, 1, rf, topic_configs={"retention.ms": "-1"}),
        # One value per key, forever: the latest replica definition per region, the latest checkpoint.
        NewTopic(kafka.replicas_topic, 1, rf, topic_configs=_COMPACTED),
        NewTopic(kafka.backfill_topic, 1, rf, topic_configs=_COMPACTED),
    ]


@asynccontextmanager
async def _admin(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-admin",
        request_timeout_ms=kafka.request_timeout_ms,
    )
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


async def ensure_topics(kafka: KafkaSettings) -> None:
    """Create georep's topics if they are missing; existing topics are left as they are."""
    async with _admin(kafka) as admin:
        existing = set(await admin.list_topics())
        missing = [t for t in topic_specs(kafka) if t.name not in existing]
        if missing:
            # Another process may create them between our list and our create.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
            log.info("kafka.topics_created", topics=[t.name for t in missing])


async def partitions(kafka: KafkaSettings, topic: str) -> list[int]:
    """The partition numbers of `topic`; empty if the topic does not exist."""
    async with _admin(kafka) as admin:
        described = await admin.describe_topics([topic])
    return sorted(p["partition"] for t in described if t["topic"] == topic for p in t["partitions"])


async def start_reader(kafka: KafkaSettings, topic: str, role: str) -> AIOKafkaConsumer:
    """A started consumer of every partition of `topic`, from its beginning, in no group: it commits
    nothing and takes no partition from anyone. Subscribed, not assigned (aiokafka 0.14 raises
    CancelledError on stopping a group-less consumer after `assign()`)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-{role}",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=kafka.request_timeout_ms,
    )
    return await start_consumer(consumer)


async def start_consumer(consumer: AIOKafkaConsumer) -> AIOKafkaConsumer:
    """`consumer`, started; stopped again if its start fails, so that a retry does not leak its connections."""
    try:
        await consumer.start()
    except BaseException:
        with contextlib.suppress(KafkaError, OSError):
            await consumer.stop()
        raise
    return consumer


async def start_group_at(kafka: KafkaSettings, group: str, topic: str, since: datetime) -> dict[int, int]:
    """Commit `group`'s offsets on `topic` at the first message at or after `since` (the end if none).

    For a replica about to be created: what came before is its backfill's job.
    Done while nobody is in the group (its replicators wait for the definition).
    """
    parts = [TopicPartition(topic, p) for p in await partitions(kafka, topic)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-admin",
        group_id=group,
        enable_auto_commit=False,
        request_timeout_ms=kafka.request_timeout_ms,
    )
    await consumer.start()
    try:
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in parts})
        starts = {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in parts}
        await consumer.commit(starts)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in starts.items()}


def make_producer(kafka: KafkaSettings, role: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id=f"{kafka.client_id}-{role}",
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=kafka.request_timeout_ms,
    )


class Publisher:
    """An idempotent producer that connects lazily and reconnects on demand.

    The webhook must keep answering (503) while Kafka is down and recover by
    itself when it returns, so the producer is (re)started on first use rather
    than once at process start.
    """

    def __init__(self, kafka: KafkaSettings, role: str) -> None:
        self._kafka = kafka
        self._role = role
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def _ensure(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = make_producer(self._kafka, self._role)
                try:
                    await producer.start()
                    await ensure_topics(self._kafka)
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
                log.info("kafka.producer_started", role=self._role)
            return self._producer

    async def publish(self, topic: str, messages: Sequence[tuple[bytes, bytes | None]], timeout_s: float) -> None:
        """Send (key, value) pairs and return once the broker acknowledged every one (None: a tombstone)."""
        try:
            async with asyncio.timeout(timeout_s):
                producer = await self._ensure()
                futures = [await producer.send(topic, value=value, key=key) for key, value in messages]
                await asyncio.gather(*futures)
        except (TimeoutError, KafkaError, OSError) as exc:
            raise KafkaUnavailable(f"kafka did not acknowledge within {timeout_s:g}s: {type(exc).__name__}") from exc

    async def close(self) -> None:
        async with self._lock:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None
