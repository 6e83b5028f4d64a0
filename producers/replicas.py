"""Creating and deleting replicas: the rules, then one write to the replicas topic.

One process (the georep API) takes these requests; a lock orders them, and the
catalog is read up to the end of the topic before a rule is checked, so two
creates of one region cannot both pass. A new replica's consumer group starts
near the end of `georep.events` (`REPLAY` back): what came before is its
backfill's job.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from adapters.compacted import CompactedView
from adapters.kafka import KAFKA_ERRORS, Publisher, start_group_at
from engine import topics
from engine.errors import KafkaUnavailable
from engine.events import utcnow
from engine.replicas import ReplicaDefinition, Rules
from engine.settings import KafkaSettings

log = structlog.get_logger(__name__)

#: a new replica's group starts this far back on georep.events: covers events of pushes the primary
#: had not finished writing (its tag) when the backfill's walk read them
REPLAY = timedelta(seconds=30)


class ReplicaAdmin:
    def __init__(
        self, kafka: KafkaSettings, catalog: CompactedView[ReplicaDefinition], publisher: Publisher, rules: Rules
    ) -> None:
        self._kafka = kafka
        self.catalog = catalog
        self._publisher = publisher
        self.rules = rules
        self._lock = asyncio.Lock()

    async def create(self, definition: ReplicaDefinition) -> ReplicaDefinition:
        """Write `definition` if every rule allows it; a ReplicaRefused says which rule did not."""
        async with self._lock:
            await self.catalog.caught_up()
            self.rules.check_create(definition, self.catalog.values)
            # Before the definition exists, so that no replicator of the region is in the group yet. A little
            # history is replayed: a push whose event came just before this may not show in the backfill's walk.
            group = topics.replicator_group(definition.region)
            try:
                await start_group_at(self._kafka, group, self._kafka.events_topic, utcnow() - REPLAY)
            except KAFKA_ERRORS as exc:
                raise KafkaUnavailable(f"could not set the offsets of {group}: {exc}") from exc
            await self._write(definition.region, definition.to_json())
            await self.catalog.wait_for(lambda values: definition.region in values)
        log.info("replicas.created", region=definition.region, bucket=definition.bucket, deletes=definition.deletes)
        return definition

    async def delete(self, region: str) -> ReplicaDefinition:
        async with self._lock:
            await self.catalog.caught_up()
            gone = self.rules.check_delete(region, self.catalog.values)
            await self._write(region, None)
            await self.catalog.wait_for(lambda values: region not in values)
        log.info("replicas.deleted", region=region)
        return gone

    async def _write(self, region: str, value: bytes | None) -> None:
        await self._publisher.publish(
            self._kafka.replicas_topic, [(region.encode(), value)], self._kafka.request_timeout_ms / 1000
        )
