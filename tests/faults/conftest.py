"""A stack of its own for fault tests: they stop, kill and corrupt its parts.

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

from adapters.kafka import new_admin, new_consumer, new_producer, running
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

    async def start(self, name: str, env: dict[str, str] | None = None) -> None:
        stack.restart(self.root, name, env)
        self.info = json.loads((self.root / stack.STACK_FILE).read_text())
        await stack.wait_up(self.root, name)
        self.stopped.discard(name)

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
    info = await stack.up(root, PORT_BASE, ["ap-singapore", "eu-frankfurt"], georep_env=env)
    try:
        yield Faults(info, root, tmp_path_factory.mktemp("fault-images"), itertools.count(1))
    finally:
        stack.down(root)


@pytest.fixture
async def healthy(faults: Faults) -> AsyncIterator[Faults]:
    """The fault stack; whatever a test stopped is started again afterwards, even when it failed."""
    yield faults
    for name in sorted(faults.stopped):
        await faults.start(name)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RECOVERIES:
        terminalreporter.section("fault recovery times")
        for name, seconds in RECOVERIES.items():
            terminalreporter.write_line(f"{name:<60} {seconds:6.1f} s")
