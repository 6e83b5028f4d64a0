"""A stack of its own for fault tests: they stop, kill and corrupt its parts. It has the production shape:
three Kafka nodes, two georep API processes and two webhooks.

Every test leaves the stack whole again (each component it stopped is
restarted and answering) so that the next test starts from a healthy stack.
Backoffs are shortened (retry_max_s) so that recoveries take seconds, not the
production default's half minute; everything else runs as deployed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition

from adapters.kafka import new_admin, new_consumer, new_producer, running, topic_specs
from deploy.local import stack
from engine import topics
from tests.integration.conftest import Stack

pytestmark = pytest.mark.faults

PORT_BASE = int(os.environ.get("GEOREP_FAULT_PORT_BASE", "25000"))
RETRY_MAX_S = 2.0
DRAIN_GRACE_S = 20.0
EVENTS = topics.EVENTS
LOG = topics.REPLICATION_LOG
DEAD_LETTER = topics.DEAD_LETTER

#: name → seconds, for each measured recovery; printed at the end of the run
RECOVERIES: dict[str, float] = {}


@dataclass
class Faults(Stack):
    """The stack, plus ways to break it and to look inside Kafka."""

    stopped: set[str] = field(default_factory=set)

    async def stop(self, name: str, sig: signal.Signals = signal.SIGTERM) -> float:
        """Signal a component and wait (off the event loop) until it exited; seconds it took."""
        self.stopped.add(name)
        return await asyncio.to_thread(stack.stop, self.root, name, sig)

    def names(self, kind: str) -> list[str]:
        """The stack's processes of one kind: `kafka` gives kafka-0, kafka-1, kafka-2 on the 3-node cluster."""
        return sorted(
            n for n in self.info["pids"] if n == kind or (n.startswith(f"{kind}-") and n[len(kind) + 1 :].isdigit())
        )

    async def stop_all(self, kind: str, sig: signal.Signals = signal.SIGTERM) -> None:
        await asyncio.gather(*(self.stop(name, sig) for name in self.names(kind)))

    async def start_all(self, kind: str) -> None:
        await self.start(*self.names(kind))

    async def start(self, *names: str, env: dict[str, str] | None = None) -> None:
        """Start stopped components together, then wait until each answers (a Kafka node is ready only once
        it sees every other node, so nodes stopped together must start together)."""
        for name in names:
            stack.restart(self.root, name, env)
        self.info = json.loads((self.root / stack.STACK_FILE).read_text())
        await asyncio.gather(*(stack.wait_up(self.root, name) for name in names))
        self.stopped.difference_update(names)

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The end of a component's log, for assertion messages."""
        text = (self.root / "logs" / f"{name}.log").read_text(errors="replace")
        return "\n".join(line for line in text.splitlines() if "aiokafka" not in line)[-lines * 200 :]

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        RECOVERIES[name] = time.monotonic() - started

    async def topic(self, topic: str) -> list[Any]:
        """Every record now in `topic`, in partition and offset order."""
        async with running(new_consumer(self.kafka(), "test", topic, group=None)) as consumer:
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            ends = await consumer.end_offsets(partitions)
            found: list[Any] = []
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=1000)
                found += [
                    r
                    for records in batch.values()
                    for r in records
                    if r.offset < ends[TopicPartition(r.topic, r.partition)]
                ]
            return sorted(found, key=lambda r: (r.partition, r.offset))

    async def log_records(self, **match: Any) -> list[dict[str, Any]]:
        """Replication records straight from the log topic (every attempt, not the store's latest)."""
        values = [json.loads(r.value) for r in await self.topic(LOG)]
        return [v for v in values if all(v.get(k) == want for k, want in match.items())]

    async def dead_letters(self) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in await self.topic(DEAD_LETTER)]

    async def end_offsets(self, topic: str = EVENTS) -> dict[int, int]:
        async with running(new_consumer(self.kafka(), "test", topic, group=None)) as consumer:
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            return {tp.partition: offset for tp, offset in (await consumer.end_offsets(partitions)).items()}

    async def committed(self, region: str) -> dict[int, int]:
        """The offsets region `region`'s consumer group has committed on georep.events."""
        async with running(new_admin(self.kafka(), "test")) as admin:
            offsets = await admin.list_consumer_group_offsets(topics.replicator_group(region))
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == EVENTS}

    async def partitions(self, *topic_names: str) -> dict[tuple[str, int], dict[str, Any]]:
        """(topic, partition) -> its leader, replicas and in-sync replicas, as the cluster's metadata says."""
        async with running(new_admin(self.kafka(), "test")) as admin:
            described = await admin.describe_topics(list(topic_names))
        return {(t["topic"], p["partition"]): p for t in described for p in t["partitions"]}

    async def fully_replicated(self) -> bool:
        """Every partition of georep's topics has all its replicas in sync (and a leader)."""
        kafka = self.kafka()
        names = [t.name for t in topic_specs(kafka)]
        return all(
            p["leader"] >= 0 and sorted(p["isr"]) == sorted(p["replicas"])
            for p in (await self.partitions(*names)).values()
        )

    async def put_raw(self, key: bytes, value: bytes) -> None:
        async with running(new_producer(self.kafka(), "test")) as producer:
            await producer.send_and_wait(EVENTS, value=value, key=key)


@pytest.fixture(scope="session")
async def faults(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Faults]:
    root = tmp_path_factory.mktemp("fault-stack")
    env = {
        "GEOREP_REPLICATOR__RETRY_MAX_S": str(RETRY_MAX_S),
        "GEOREP_REPLICATOR__DRAIN_GRACE_S": str(DRAIN_GRACE_S),
        # Fault tests that are about reconciliation turn it up themselves (test_convergence.py).
        "GEOREP_RECONCILE__INTERVAL_S": "3600",
    }
    # The production shape: a 3-node Kafka cluster (RF 3, min ISR 2), two API processes electing a leader,
    # and two webhooks, each a notification endpoint of the primary.
    info = await stack.up(
        root, PORT_BASE, ["ap-singapore", "eu-frankfurt"], georep_env=env, kafka_brokers=3, api_processes=2,
        webhook_processes=2, timeout_s=180,
    )  # fmt: skip
    try:
        yield Faults(info, root, tmp_path_factory.mktemp("fault-images"), itertools.count(1))
    finally:
        stack.down(root)


@pytest.fixture
async def healthy(faults: Faults) -> AsyncIterator[Faults]:
    """The fault stack; whatever a test stopped is started again afterwards, even when it failed."""
    yield faults
    if faults.stopped:
        await faults.start(*sorted(faults.stopped))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RECOVERIES:
        terminalreporter.section("fault recovery times")
        for name, seconds in RECOVERIES.items():
            terminalreporter.write_line(f"{name:<60} {seconds:6.1f} s")
