"""`georep redrive --region R`: put a region's dead letters back on `georep.events`.

Run it once the cause is fixed (the manifest is back on the primary, the
corrupting proxy is gone). Each dead letter of region R is re-published as
its original event (same id, same `occurred_at`, so the log store updates
the event's record and a tag still never moves backwards), addressed to R
alone: the other regions did not fail it and skip it.

Which letters were already redriven is kept as the committed offsets of the
consumer group `georep.redrive.<region>`, so a second run redrives only what
failed since. Letters without a readable event (a malformed message) cannot
be redriven; they are listed so that someone fixes them at their source.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from adapters.kafka import KAFKA_ERRORS, Publisher, new_consumer, started, unavailable_as
from adapters.kafka import partitions as kafka_partitions
from engine import topics
from engine.errors import InvalidEvent, KafkaUnavailable
from engine.events import DeadLetter, ReplicationEvent, describe
from engine.settings import KafkaSettings, Settings

log = structlog.get_logger(__name__)

#: how long reading a region's dead letters may go without a record before it is reported as stuck
STUCK_AFTER_S = 15.0


@dataclass
class Redrive:
    """What one run found and did."""

    redriven: list[ReplicationEvent] = field(default_factory=list)
    #: the dead letters behind `redriven`, with why each event was given up on
    letters: list[DeadLetter] = field(default_factory=list)
    #: (offset, why) of letters for this region that cannot be put back
    unredrivable: list[tuple[int, str]] = field(default_factory=list)


async def redrive(
    settings: Settings, region: str, *, dry_run: bool = False, say: Callable[[str], None] = print
) -> Redrive:
    kafka = settings.kafka
    consumer = new_consumer(kafka, f"redrive-{region}", group=topics.redrive_group(region))
    publisher = Publisher(kafka, f"redrive-{region}")
    result = Redrive()
    with unavailable_as(kafka, f"read {kafka.dead_letter_topic}"):
        await started(consumer)
    try:
        with unavailable_as(kafka, f"redrive {region}'s dead letters"):
            await _redrive(consumer, publisher, kafka, region, dry_run, say, result)
    finally:
        with contextlib.suppress(*KAFKA_ERRORS):
            await publisher.close()
        with contextlib.suppress(*KAFKA_ERRORS):
            await consumer.stop()
    for offset, why in result.unredrivable:
        say(f"cannot redrive dead letter at offset {offset}: {why}")
    return result


async def _redrive(
    consumer: AIOKafkaConsumer,
    publisher: Publisher,
    kafka: KafkaSettings,
    region: str,
    dry_run: bool,
    say: Callable[[str], None],
    result: Redrive,
) -> None:
    topic = kafka.dead_letter_topic
    # Assigned, not subscribed (the consumer would not fetch the topic's metadata): ask the cluster.
    partitions = [TopicPartition(topic, p) for p in await kafka_partitions(kafka, topic)]
    if not partitions:
        say(f"no topic {topic} on {kafka.bootstrap_servers}: nothing was ever dead-lettered")
        return
    consumer.assign(partitions)
    ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    found = await _read_until(consumer, ends, STUCK_AFTER_S)
    for tp in partitions:
        events = [redrivable(letter, region, result) for letter in found[tp]]
        todo = [e for e in events if e is not None]
        for event in todo:
            say(f"{'would redrive' if dry_run else 'redrive'} {event.id}  {_target(event)}")
        if dry_run:
            result.redriven += todo
            continue
        if todo:
            await publisher.publish(kafka.events_topic, [(e.key, e.to_json()) for e in todo], 30)
        result.redriven += todo
        # Only now: a crash before this line redrives the same letters again, which is harmless.
        await consumer.commit({tp: ends[tp]})


async def _read_until(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int], stuck_after_s: float
) -> dict[TopicPartition, list[tuple[int, bytes | None]]]:
    """Every (offset, value) of each partition from the group's committed position up to its end.

    All partitions are read in one loop, each paused once it reaches its end: asking for one partition
    at a time leaves the others' prefetched records waiting, and the fetcher with them.
    """
    found: dict[TopicPartition, list[tuple[int, bytes | None]]] = {tp: [] for tp in ends}
    clock = asyncio.get_running_loop().time
    deadline = clock() + stuck_after_s
    todo = set(ends)
    while True:
        for tp in list(todo):
            if await consumer.position(tp) >= ends[tp]:
                todo.discard(tp)
                consumer.pause(tp)
        if not todo:
            return found
        if clock() > deadline:
            behind = [f"{tp.partition} at {await consumer.position(tp)} of {ends[tp]}" for tp in sorted(todo)]
            raise KafkaUnavailable(f"no dead letter read for {stuck_after_s:.0f} s (partition {', '.join(behind)})")
        batch = await consumer.getmany(*todo, timeout_ms=1000)
        if batch:
            deadline = clock() + stuck_after_s
        for tp, records in batch.items():
            found[tp] += [(record.offset, record.value) for record in records if record.offset < ends[tp]]


def redrivable(letter: tuple[int, bytes | None], region: str, result: Redrive) -> ReplicationEvent | None:
    """The event to put back for `region`, or None (another region's letter, or one noted in `result` as stuck)."""
    offset, value = letter
    try:
        dead = DeadLetter.from_json(value or b"")
    except InvalidEvent as exc:
        log.warning("redrive.unreadable_letter", offset=offset, error=str(exc))
        result.unredrivable.append((offset, f"unreadable dead letter: {exc}"))
        return None
    if dead.region != region:
        return None
    if dead.event is None:
        result.unredrivable.append((offset, f"the message was not an event ({dead.reason}: {dead.error})"))
        return None
    try:
        event = ReplicationEvent.model_validate(dead.event)
    except ValidationError as exc:
        result.unredrivable.append((offset, f"the dead letter's event is invalid: {describe(exc)}"))
        return None
    result.letters.append(dead)
    return event.model_copy(update={"region": region})


def _target(event: ReplicationEvent) -> str:
    tag = f":{event.tag}" if event.tag else ""
    digest = f"@{event.digest.short}" if event.digest else ""
    return f"{event.repository}{tag}{digest}"


def as_json(result: Redrive, region: str, dry_run: bool) -> dict[str, Any]:
    """What a run did (or would do), for machines: each letter's event and why it was given up on."""
    return {
        "region": region,
        "dry_run": dry_run,
        "redriven": [
            {"event_id": event.id, "image": _target(event), "reason": letter.reason, "error": letter.error,
             "attempts": letter.attempts, "failed_at": letter.failed_at.isoformat()}
            for event, letter in zip(result.redriven, result.letters, strict=True)
        ],
        "unredrivable": [{"offset": offset, "why": why} for offset, why in result.unredrivable],
    }  # fmt: skip


def summary(result: Redrive, region: str, dry_run: bool) -> str:
    verb = "would be redriven" if dry_run else "redriven"
    return f"{region}: {len(result.redriven)} dead letter(s) {verb}, {len(result.unredrivable)} cannot be redriven"
