"""Kafka plumbing every georep process shares: topics and an idempotent producer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from engine.settings import KafkaSettings

log = structlog.get_logger(__name__)


class KafkaUnavailable(Exception):
    """Kafka did not take a message in time; the caller answers 503 or retries."""


def topic_specs(kafka: KafkaSettings) -> list[NewTopic]:
    rf = kafka.replication_factor
    return [
        NewTopic(kafka.events_topic, kafka.events_partitions, rf),
        NewTopic(kafka.log_topic, kafka.log_partitions, rf),
        # Dead letters are kept until someone redrives them.
        NewTopic(kafka.dead_letter_topic, 1, rf, topic_configs={"retention.ms": "-1"}),
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

    async def publish(self, topic: str, messages: Sequence[tuple[bytes, bytes]], timeout_s: float) -> None:
        """Send (key, value) pairs and return once the broker acknowledged every one."""
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
