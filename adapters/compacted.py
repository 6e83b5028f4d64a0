"""Compacted topics read into memory: the replica catalog and the backfill checkpoints.

Every process that needs to know which replicas exist reads `georep.replicas`
from the beginning (no consumer group: each process needs all of it) and
keeps following it, so a replica created or deleted anywhere is known
everywhere within a poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final, Generic, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter

from adapters.kafka import KAFKA_ERRORS, ensure_topics, start_reader
from adapters.runtime import retry_until_stopped, unless_stopped
from engine.errors import CatalogUnavailable, InvalidEvent
from engine.replicas import ReplicaDefinition, SignedReplica
from engine.settings import KafkaSettings
from engine.signing import verified

log = structlog.get_logger(__name__)
V = TypeVar("V")
View = TypeVar("View", bound="CompactedView[Any]")
_POLL_MS: Final = 500


class CompactedView(Generic[V]):
    """The latest value per key of a compacted topic, kept current by `run()`.

    A value that cannot be decoded is logged and ignored: a bad write must not
    stop every process from learning about replicas.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, decode: Callable[[bytes], V], role: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self._decode = decode
        self._role = role
        self.values: dict[str, V] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._changed = asyncio.Condition()
        self._positions: dict[TopicPartition, int] = {}
        self.loaded = False

    async def run(self, stop: asyncio.Event) -> None:
        async def connect() -> AIOKafkaConsumer:
            await ensure_topics(self.kafka, self._role)
            return await start_reader(self.kafka, self.topic, self._role)

        consumer = await retry_until_stopped(connect, KAFKA_ERRORS, stop, "catalog.kafka_unavailable")
        if consumer is None:
            return
        self._consumer = consumer
        try:
            while not stop.is_set():
                try:
                    batch = await unless_stopped(consumer.getmany(timeout_ms=_POLL_MS), stop)
                except KafkaError as exc:
                    # The consumer reconnects by itself; keep serving what is known meanwhile.
                    log.warning("catalog.poll_failed", topic=self.topic, error=str(exc))
                    await unless_stopped(asyncio.sleep(1.0), stop)
                    continue
                async with self._changed:
                    for tp, messages in (batch or {}).items():
                        for message in messages:
                            self._apply(message.key, message.value, message.offset)
                        self._positions[tp] = messages[-1].offset + 1 if messages else self._positions.get(tp, 0)
                    for tp in consumer.assignment():
                        self._positions[tp] = max(self._positions.get(tp, 0), await consumer.position(tp))
                    self._changed.notify_all()
        finally:
            self._consumer = None
            with contextlib.suppress(*KAFKA_ERRORS):
                await consumer.stop()

    def _apply(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        if key is None:
            log.warning("catalog.keyless_message", topic=self.topic, offset=offset)
            return
        name = key.decode(errors="replace")
        if value is None:
            self.values.pop(name, None)
            return
        try:
            self.values[name] = self._decode(value)
        except InvalidEvent as exc:
            log.warning("catalog.invalid_value", topic=self.topic, key=name, offset=offset, reason=str(exc))

    async def caught_up(self, timeout_s: float = 15.0) -> None:
        """Return once everything written to the topic before this call has been read."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._consumer is None or not self._consumer.assignment():
                    async with self._changed:
                        await self._changed.wait()
                consumer = self._consumer
                ends = await consumer.end_offsets(list(consumer.assignment()))
                async with self._changed:
                    await self._changed.wait_for(lambda: all(self._positions.get(tp, 0) >= n for tp, n in ends.items()))
        except (TimeoutError, KafkaError) as exc:
            raise CatalogUnavailable(
                f"could not read {self.topic} from Kafka at {self.kafka.bootstrap_servers} within {timeout_s:g}s"
            ) from exc

    async def load(self, timeout_s: float = 15.0) -> None:
        """Return once the topic has been read to its end at least once since start.

        Until then `values` is a partial picture: answering from it would call
        an existing replica unknown, or a running backfill absent.
        """
        if not self.loaded:
            await self.caught_up(timeout_s)
            self.loaded = True

    async def wait_for(self, ready: Callable[[dict[str, V]], bool], stop: asyncio.Event | None = None) -> bool:
        """Wait until `ready(values)` holds; False if `stop` is set first.

        `ready` is only asked once the topic has been read to its end: halfway
        through, `values` may still hold a replica's old definition, before the
        tombstone or the newer definition that follows it.
        """
        while not self.loaded:
            if stop is not None and stop.is_set():
                return False
            try:
                await (self.load() if stop is None else unless_stopped(self.load(), stop))
            except CatalogUnavailable as exc:
                log.warning("catalog.not_loaded", topic=self.topic, error=str(exc))
        while True:
            async with self._changed:
                if ready(self.values):
                    return True
                if stop is not None and stop.is_set():
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 1.0)


IGNORED = Counter(
    "georep_replica_definitions_ignored_total",
    "Values on the replicas topic not followed: unsigned, wrongly signed, for another key, or older than the known",
    ["reason"],
)


class ReplicaCatalog(CompactedView[ReplicaDefinition]):
    """The replicas topic, following only definitions the georep API signed (engine.signing).

    Per region, the newest signed value wins (a signed deletion removes the replica); an older signed value
    replayed later, a Kafka tombstone, or anything unsigned is ignored, logged and counted.

    An ignored value still sits on top of the key, and compaction would keep it alone: a process started
    later would no longer see the region, or would see a replayed older definition. `overwritten` names such
    keys of regions this view knows; the georep API signs their known state again (`ReplicaAdmin.restore`).
    """

    def __init__(self, kafka: KafkaSettings, role: str, verify_key: str) -> None:
        super().__init__(kafka, kafka.replicas_topic, ReplicaDefinition.from_json, role)
        self._verify_key = verify_key
        self._signed_at: dict[str, datetime] = {}
        self.overwritten: set[str] = set()

    def known(self, name: str) -> bool:
        """Whether a signed value (a definition or a deletion) of `name` was ever followed."""
        return name in self._signed_at

    def _ignore(self, name: str, offset: int, reason: str, detail: str) -> None:
        IGNORED.labels(reason).inc()
        log.warning("replicas.definition_ignored", key=name, offset=offset, reason=reason, detail=detail)
        if name in self._signed_at:
            self.overwritten.add(name)

    def _apply(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        name = "" if key is None else key.decode(errors="replace")
        if value is None:
            self._ignore(name, offset, "tombstone", "a deletion must be signed by the georep API")
            return
        try:
            signed = SignedReplica.from_json(verified(value, self._verify_key))
        except InvalidEvent as exc:
            self._ignore(name, offset, exc.reason, str(exc))
            return
        if signed.region != name:
            self._ignore(name, offset, "wrong-key", f"a definition of {signed.region} under key {name!r}")
            return
        known = self._signed_at.get(name)
        if known is not None and signed.signed_at <= known:
            self._ignore(name, offset, "replayed", f"signed at {signed.signed_at}, not after the known {known}")
            return
        self._signed_at[name] = signed.signed_at
        self.overwritten.discard(name)
        if signed.definition is None:
            self.values.pop(name, None)
        else:
            self.values[name] = signed.definition


def replica_view(kafka: KafkaSettings, role: str, verify_key: str) -> ReplicaCatalog:
    return ReplicaCatalog(kafka, role, verify_key)


@asynccontextmanager
async def following(view: View, timeout_s: float | None = None) -> AsyncIterator[View]:
    """`view`, read up to the end of its topic and kept current for the duration of the block.

    CatalogUnavailable unless that happens within `timeout_s` (default: the Kafka request timeout).
    """
    stop = asyncio.Event()
    task = asyncio.create_task(view.run(stop), name=f"follow-{view.topic}")
    try:
        await view.load(timeout_s if timeout_s is not None else view.kafka.request_timeout_ms / 1000)
        yield view
    finally:
        stop.set()
        await task
