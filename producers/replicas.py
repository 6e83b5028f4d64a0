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
from prometheus_client import Counter
from pydantic import SecretStr

from adapters.compacted import ReplicaCatalog
from adapters.kafka import KAFKA_ERRORS, Publisher, start_group_at
from engine import topics
from engine.errors import KafkaUnavailable
from engine.events import utcnow
from engine.replicas import ReplicaDefinition, Rules, SignedReplica
from engine.settings import ConfigError, KafkaSettings
from engine.signing import sign

log = structlog.get_logger(__name__)

#: a new replica's group starts this far back on georep.events: covers events of pushes the primary
#: had not finished writing (its tag) when the backfill's walk read them
REPLAY = timedelta(seconds=30)

RESTORED = Counter(
    "georep_replica_definitions_restored_total",
    "Replica definitions signed again because an ignored value had been written over them",
)


class ReplicaAdmin:
    def __init__(
        self,
        kafka: KafkaSettings,
        catalog: ReplicaCatalog,
        publisher: Publisher,
        rules: Rules,
        signing_key: SecretStr | None,
    ) -> None:
        self._kafka = kafka
        self._signing_key = signing_key
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
            await self._write(SignedReplica(region=definition.region, signed_at=utcnow(), definition=definition))
            await self.catalog.wait_for(lambda values: definition.region in values)
        log.info("replicas.created", region=definition.region, bucket=definition.bucket, deletes=definition.deletes)
        return definition

    async def delete(self, region: str) -> ReplicaDefinition:
        async with self._lock:
            await self.catalog.caught_up()
            gone = self.rules.check_delete(region, self.catalog.values)
            await self._write(SignedReplica(region=region, signed_at=utcnow(), definition=None))
            await self.catalog.wait_for(lambda values: region not in values)
        log.info("replicas.deleted", region=region)
        return gone

    async def restore(self) -> list[str]:
        """Sign again the known state of each region whose newest record on the topic was ignored (unsigned,
        forged or replayed), so that compaction keeps a value every process follows; the regions restored."""
        async with self._lock:
            await self.catalog.caught_up()
            names = sorted(self.catalog.overwritten)
            for name in names:
                definition = self.catalog.values.get(name)
                await self._write(SignedReplica(region=name, signed_at=utcnow(), definition=definition))
                RESTORED.inc()
                log.warning("replicas.definition_restored", region=name, deleted=definition is None)
            await self.catalog.wait_for(lambda _: not self.catalog.overwritten.intersection(names))
        return names

    async def _write(self, change: SignedReplica) -> None:
        """Sign the change with the API's key (every process verifies it) and write it, keyed by region."""
        if self._signing_key is None:
            raise ConfigError(
                "replicas.signing_key is required to change replicas: the georep API signs every definition "
                "(GEOREP_REPLICAS__SIGNING_KEY)"
            )
        value = sign(change.to_json(), self._signing_key.get_secret_value())
        await self._publisher.publish(
            self._kafka.replicas_topic, [(change.region.encode(), value)], self._kafka.request_timeout_ms / 1000
        )
