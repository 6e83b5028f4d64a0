"""Compacted topics read into memory, on the real Kafka: nobody acts on a topic read halfway."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumers.catalog import CompactedView
from engine.settings import KafkaSettings
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

#: more than one fetch (1 MiB per partition by default) holds, so the view is filled over several polls
VALUES = 150
PADDING = b"." * 16_384


async def _write(bootstrap: str, topic: str, writes: list[tuple[bytes, bytes | None]]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for key, value in writes:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def test_a_waiter_is_only_asked_about_the_topic_read_to_its_end(live: Stack) -> None:
    # A replica defined, deleted and defined again (another bucket), each definition rewritten many times before
    # compaction: a replicator that acted on the first one it read would copy into the old bucket.
    topic = live.unique("georep.test-compacted")
    old = [(b"r", f"old-{i}".encode() + PADDING) for i in range(VALUES)]
    new = [(b"r", f"new-{i}".encode() + PADDING) for i in range(VALUES)]
    await _write(live.info["kafka"], topic, [*old, (b"r", None), *new, (b"gone", b"x"), (b"gone", None)])

    view = CompactedView(KafkaSettings(bootstrap_servers=live.info["kafka"]), topic, lambda v: v.split(b".")[0], "t")
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
