"""Kafka, the one way every georep process builds and starts its clients.

    new_producer(kafka, role)                   idempotent, acks=all
    new_consumer(kafka, role, *topics, group=)  manual commits only; group=None reads without a group
    new_admin(kafka, role)
    started(client) / running(client)           start, and stop again if the start fails

Every client gets the same connection settings (bootstrap servers, the role's
client id, timeouts, and the SASL/TLS security of `KafkaSettings`), so no
process can reach Kafka differently from the others. Topic names and group
ids come from `engine.topics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any, Final, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, TopicAuthorizationFailedError, for_code
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner

from engine.errors import KafkaUnavailable
from engine.settings import ConfigError, KafkaSettings

log = structlog.get_logger(__name__)

Client = TypeVar("Client", AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient)

#: how long a fetch waits on the broker for records to arrive (aiokafka's default: 500)
IDLE_FETCH_MS: Final = 2000
#: how long aiokafka's fetch routine sleeps when nothing happens (its default: 200). A fetch that returns, a
#: record consumed, a seek, a resumed partition and a rebalance each wake it at once anyway; the timeout only
#: makes an idle consumer wake for nothing, 5 times a second each (measured: an idle replicator with two
#: consumers spent 9 ms of CPU per second at 200, 6.4 at 1000).
FETCH_ROUTINE_WAKE_MS: Final = 1000

#: what a Kafka operation can fail with, short of a bug
KAFKA_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError, TimeoutError, KafkaUnavailable)

_COMPACTED = {"cleanup.policy": "compact", "retention.ms": "-1"}


def _ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    cafile = str(kafka.ca_file) if kafka.ca_file is not None else None
    try:
        context: ssl.SSLContext = create_ssl_context(cafile=cafile)
        return context
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"kafka.ca_file {cafile}: cannot load it: {exc}") from None


def connection_options(kafka: KafkaSettings, role: str) -> dict[str, Any]:
    """The keyword arguments every aiokafka client of `role` is built with."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": f"{kafka.client_id}-{role}",
        "request_timeout_ms": kafka.request_timeout_ms,
        "security_protocol": kafka.security_protocol,
    }
    context = _ssl_context(kafka)
    if context is not None:
        options["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL"):
        if not kafka.username or kafka.password is None:
            raise ConfigError(
                f"kafka.username and kafka.password are required with kafka.security_protocol "
                f"{kafka.security_protocol} (set GEOREP_KAFKA__USERNAME and GEOREP_KAFKA__PASSWORD, or choose "
                'security_protocol = "PLAINTEXT" on purpose)'
            )
        options |= {
            "sasl_mechanism": kafka.sasl_mechanism,
            "sasl_plain_username": kafka.username,
            "sasl_plain_password": kafka.password.get_secret_value(),
        }
    return options


def new_producer(kafka: KafkaSettings, role: str, **options: Any) -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica (acks=all)."""
    return AIOKafkaProducer(
        **connection_options(kafka, role), enable_idempotence=True, acks="all", linger_ms=kafka.linger_ms,
        **options,
    )  # fmt: skip


def new_consumer(
    kafka: KafkaSettings, role: str, *topics: str, group: str | None, listener: Any = None, **options: Any
) -> AIOKafkaConsumer:
    """A consumer that commits only when told to. With topics it is subscribed before it starts, so that
    start waits for their partitions; without a group it reads from the beginning and takes no partition
    from anyone (subscribed, not assigned: aiokafka 0.14 raises CancelledError stopping a group-less
    consumer after `assign()`)."""
    defaults: dict[str, Any] = {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        # A fetch returns as soon as records arrive; this only bounds how often an idle one is asked again.
        # Every georep process follows a few topics, and each idle fetch costs the brokers a TLS round trip.
        "fetch_max_wait_ms": IDLE_FETCH_MS,
        "consumer_timeout_ms": FETCH_ROUTINE_WAKE_MS,
    }
    consumer = AIOKafkaConsumer(**connection_options(kafka, role), group_id=group, **(defaults | options))
    if topics:
        consumer.subscribe(list(topics), listener=listener)
    return consumer


def new_admin(kafka: KafkaSettings, role: str) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection_options(kafka, role))


async def _stop(client: Any) -> None:
    with contextlib.suppress(*KAFKA_ERRORS):
        await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())


async def started(client: Client) -> Client:
    """`client`, started; stopped again if its start fails, so that a retry leaks no connection."""
    try:
        await client.start()
    except BaseException:
        await _stop(client)
        raise
    return client


@asynccontextmanager
async def running(client: Client) -> AsyncIterator[Client]:
    """`client`, started for the duration of the block and stopped after it, whatever happens."""
    await started(client)
    try:
        yield client
    finally:
        await _stop(client)


# -- topics -------------------------------------------------------------------------------------------


def topic_specs(kafka: KafkaSettings) -> list[NewTopic]:
    rf = kafka.replication_factor
    isr = {"min.insync.replicas": str(kafka.min_insync_replicas)}
    events = {**isr, "retention.ms": str(kafka.events_retention_ms)}
    return [
        NewTopic(kafka.events_topic, kafka.events_partitions, rf, topic_configs=events),
        NewTopic(kafka.log_topic, kafka.log_partitions, rf, topic_configs=isr),
        # Dead letters are kept until someone redrives them.
        NewTopic(kafka.dead_letter_topic, 1, rf, topic_configs={**isr, "retention.ms": "-1"}),
        # One value per key, forever: the latest replica definition per region, the latest checkpoint, ...
        NewTopic(kafka.replicas_topic, 1, rf, topic_configs={**isr, **_COMPACTED}),
        NewTopic(kafka.backfill_topic, 1, rf, topic_configs={**isr, **_COMPACTED}),
        NewTopic(kafka.reconcile_topic, 1, rf, topic_configs={**isr, **_COMPACTED}),
        # One partition: whoever the group georep.api gives it to leads the API processes.
        NewTopic(kafka.leader_topic, 1, rf, topic_configs={**isr, **_COMPACTED}),
    ]


async def ensure_topics(kafka: KafkaSettings, role: str = "admin", *, always: bool = False) -> None:
    """Create georep's topics if they are missing (unless `kafka.create_topics` is off and not `always`);
    existing topics are left as they are."""
    if not (kafka.create_topics or always):
        return
    with unavailable_as(kafka, "create georep's topics"):
        await _create_missing(kafka, role)


async def _create_missing(kafka: KafkaSettings, role: str) -> None:
    async with running(new_admin(kafka, role)) as admin:
        existing = set(await admin.list_topics())
        missing = [t for t in topic_specs(kafka) if t.name not in existing]
        if missing:
            # aiokafka answers with an error code per topic rather than raising: each one is looked at. Another
            # process may have created one between our list and our create (that one is fine).
            answer = await admin.create_topics(missing)
            for name, code, *message in answer.topic_errors:
                if code == TopicAuthorizationFailedError.errno:
                    raise ConfigError(
                        f"{kafka.username or 'this principal'} may not create topic {name}: set kafka.create_topics = "
                        "false and let an administrator create georep's topics (`georep topics`)"
                    )
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise for_code(code)(f"creating topic {name}: {message[0] if message else for_code(code).__name__}")
            log.info("kafka.topics_created", topics=[t.name for t in missing])


async def partitions(kafka: KafkaSettings, topic: str, role: str = "admin") -> list[int]:
    """The partition numbers of `topic`; empty if the topic does not exist."""
    with unavailable_as(kafka, f"describe {topic}"):
        async with running(new_admin(kafka, role)) as admin:
            described = await admin.describe_topics([topic])
    return sorted(p["partition"] for t in described if t["topic"] == topic for p in t["partitions"])


async def start_reader(kafka: KafkaSettings, topic: str, role: str) -> AIOKafkaConsumer:
    """A started consumer of every partition of `topic`, from its beginning, in no group."""
    return await started(new_consumer(kafka, role, topic, group=None))


async def start_group_at(kafka: KafkaSettings, group: str, topic: str, since: datetime) -> dict[int, int]:
    """Commit `group`'s offsets on `topic` at the first message at or after `since` (the end if none).

    For a replica about to be created: what came before is its backfill's job.
    Done while nobody is in the group (its replicators wait for the definition).
    """
    parts = [TopicPartition(topic, p) for p in await partitions(kafka, topic)]
    async with running(new_consumer(kafka, "admin", group=group)) as consumer:
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in parts})
        starts = {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in parts}
        await consumer.commit(starts)
    return {tp.partition: offset for tp, offset in starts.items()}


# -- publishing -----------------------------------------------------------------------------------------


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
                producer = await started(new_producer(self._kafka, self._role))
                try:
                    await ensure_topics(self._kafka, self._role)
                except BaseException:
                    await _stop(producer)
                    raise
                self._producer = producer
                log.info("kafka.producer_started", role=self._role)
            return self._producer

    async def publish(self, topic: str, messages: Sequence[tuple[bytes, bytes | None]], timeout_s: float) -> None:
        """Send (key, value) pairs and return once the broker acknowledged every one (None: a tombstone)."""
        acked = await self.enqueue(topic, messages, timeout_s)
        await acked()

    async def enqueue(
        self, topic: str, messages: Sequence[tuple[bytes, bytes | None]], timeout_s: float
    ) -> Callable[[], Awaitable[None]]:
        """Hand (key, value) pairs to the producer now, in order; the callable returned waits for the broker to
        acknowledge every one (KafkaUnavailable if that takes longer than `timeout_s` from now)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        with self._unavailable(timeout_s):
            async with asyncio.timeout_at(deadline):
                producer = await self._ensure()
                futures = [await producer.send(topic, value=value, key=key) for key, value in messages]

        async def acked() -> None:
            with self._unavailable(timeout_s):
                async with asyncio.timeout_at(deadline):
                    await asyncio.gather(*futures)

        return acked

    @contextmanager
    def _unavailable(self, timeout_s: float) -> Iterator[None]:
        try:
            yield
        except (TimeoutError, KafkaError, OSError) as exc:
            raise KafkaUnavailable(
                f"Kafka at {self._kafka.bootstrap_servers} did not acknowledge within {timeout_s:g}s: "
                f"{type(exc).__name__}{f': {exc}' if str(exc) else ''}"
            ) from exc

    async def probe(self, timeout_s: float) -> None:
        """Ask the brokers for metadata now; KafkaUnavailable unless they answer within `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                producer = await self._ensure()
                if not await producer.client.force_metadata_update():
                    raise KafkaUnavailable(f"Kafka at {self._kafka.bootstrap_servers} does not answer")
        except (TimeoutError, KafkaError, OSError) as exc:
            raise KafkaUnavailable(
                f"Kafka at {self._kafka.bootstrap_servers} did not answer within {timeout_s:g}s: {type(exc).__name__}"
            ) from exc

    async def close(self) -> None:
        async with self._lock:
            if self._producer is not None:
                await _stop(self._producer)
                self._producer = None


class ClusterProbe:
    """Asks the brokers for the cluster's metadata through one admin client, rebuilt after any failure."""

    def __init__(self, kafka: KafkaSettings, role: str) -> None:
        self._kafka = kafka
        self._role = role
        self._admin: AIOKafkaAdminClient | None = None

    async def __call__(self) -> None:
        try:
            if self._admin is None:
                self._admin = await started(new_admin(self._kafka, self._role))
            await self._admin.describe_cluster()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await _stop(admin)


@contextlib.contextmanager
def unavailable_as(kafka: KafkaSettings, doing: str) -> Iterator[None]:
    """Any Kafka failure inside the block becomes KafkaUnavailable saying what was being done, and where."""
    try:
        yield
    except KafkaUnavailable:
        raise
    except (KafkaError, OSError, TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        raise KafkaUnavailable(f"cannot {doing} on Kafka at {kafka.bootstrap_servers}: {detail}") from exc


def partition_for(key: bytes, partitions: int) -> int:
    """The partition a keyed message goes to: the producers' default partitioner (murmur2), so that a
    repository's reconciliation lands where its events do."""
    return DefaultPartitioner()(key, list(range(partitions)), [])  # type: ignore[no-any-return]
