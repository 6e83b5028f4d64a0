"""Compacted topics read into memory, on the real Kafka: nobody acts on a topic read halfway."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import NewTopic

from adapters.compacted import CompactedView
from adapters.kafka import new_admin, new_producer, running
from engine.settings import KafkaSettings
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

#: more than one fetch (1 MiB per partition by default) holds, so the view is filled over several polls
VALUES = 150
PADDING = b"." * 16_384


async def _write(kafka: KafkaSettings, topic: str, writes: list[tuple[bytes, bytes | None]]) -> None:
    async with running(new_admin(kafka, "test")) as admin:
        rf = kafka.replication_factor
        await admin.create_topics([NewTopic(topic, 1, rf, topic_configs={"cleanup.policy": "compact"})])
    async with running(new_producer(kafka, "test", max_request_size=4 * 1024 * 1024)) as producer:
        for key, value in writes:
            await producer.send(topic, value, key=key)
        await producer.flush()


async def test_a_waiter_is_only_asked_about_the_topic_read_to_its_end(live: Stack) -> None:
    # A replica defined, deleted and defined again (another bucket), each definition rewritten many times before
    # compaction: a replicator that acted on the first one it read would copy into the old bucket.
    topic = live.unique("georep.test-compacted")
    old = [(b"r", f"old-{i}".encode() + PADDING) for i in range(VALUES)]
    new = [(b"r", f"new-{i}".encode() + PADDING) for i in range(VALUES)]
    await _write(live.kafka(), topic, [*old, (b"r", None), *new, (b"gone", b"x"), (b"gone", None)])

    view = CompactedView(live.kafka(), topic, lambda v: v.split(b".")[0], "t")
    seen: list[tuple[bytes | None, bool]] = []

    def ready(values: dict[str, bytes]) -> bool:
        seen.append((values.get("r"), "gone" in values))
        return "r" in values

    stop = asyncio.Event()
    following = asyncio.create_task(view.run(stop))
    try:
        assert await view.wait_for(ready, stop)
    finally:
        stop.set()
        await following
    assert seen == [(f"new-{VALUES - 1}".encode(), False)], "asked once, about the latest value of every key"
    assert view.loaded
