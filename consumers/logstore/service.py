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
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type, wait_exponential_jitter

from consumers.logstore.aio import unless_stopped
from consumers.logstore.api import build_app
from consumers.logstore.store import LogStore
from consumers.logstore.wire import decode_record
from engine.errors import InvalidEvent
from engine.events import ReplicationRecord
from engine.settings import KafkaSettings, Settings
from georep.runtime import start_http
from producers.kafka import ensure_topics

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

T = TypeVar("T")
Batch = dict[TopicPartition, list[ConsumerRecord]]


async def serve_logstore(settings: Settings, stop: asyncio.Event) -> None:
    """Run the log store until `stop` is set: HTTP at once, Kafka as soon as it answers."""
    async with LogStore(settings.logstore.path) as store:
        runner = await start_http(build_app(store), settings.logstore.host, settings.logstore.port)
        try:
            await consume(settings.kafka, store, stop)
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
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    try:
        return await unless_stopped(
            _retrying(attempt, (KafkaError, OSError, TimeoutError), stop, "logstore.kafka_unavailable"), stop
        )
    except RetryError:
        return None


async def _store_batch(store: LogStore, batch: Batch, stop: asyncio.Event) -> bool:
    """Write the batch's valid records; False if `stop` came while the database kept failing."""
    records = list(_decode(batch))

    async def write() -> int:
        return await store.put_many(records)

    try:
        changed = await _retrying(write, (sqlite3.OperationalError,), stop, "logstore.write_failed")
    except RetryError:
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


async def _retrying(
    work: Callable[[], Coroutine[Any, Any, T]],
    errors: tuple[type[BaseException], ...],
    stop: asyncio.Event,
    event: str,
) -> T:
    """`work()`, retried with jittered backoff on `errors` until it succeeds; RetryError once `stop` is set.

    `work` must be declared `async def`: tenacity awaits only what it recognises as a
    coroutine function (a lambda returning a coroutine would go unawaited).
    """

    async def sleep(seconds: float) -> None:
        await unless_stopped(asyncio.sleep(seconds), stop)

    def warn(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(event, attempt=state.attempt_number, error=repr(error), retry_in_s=round(state.upcoming_sleep, 2))

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_exponential_jitter(multiplier=0.5, max=30),
        stop=lambda _: stop.is_set(),
        sleep=sleep,
        before_sleep=warn,
    )
    result: T = await retrying(work)
    return result
