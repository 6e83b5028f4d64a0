"""Reading one value off the replication-log topic, defensively: it may be anything."""

from __future__ import annotations

from engine.errors import InvalidEvent
from engine.events import ReplicationRecord


def decode_record(value: bytes | None) -> ReplicationRecord:
    """The record in a Kafka message value, or InvalidEvent saying why there is none."""
    if value is None:
        raise InvalidEvent("the value is empty (a tombstone)")
    return ReplicationRecord.from_json(value)
