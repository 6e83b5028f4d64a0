"""What a webhook body turns into: events to publish, and events skipped with a reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from engine.errors import InvalidEvent
from engine.events import ReplicationEvent, describe


@dataclass(frozen=True, slots=True)
class Skipped:
    index: int
    reason: str
    event_id: str | None = None


@dataclass(slots=True)
class Parsed:
    events: list[ReplicationEvent] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidEvent(f"{where} must be a JSON object")
    return value


def text(doc: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = doc.get(key)
    if value is None or value == "":
        if required:
            raise InvalidEvent(f"{where}.{key} is missing")
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{where}.{key} must be a string")
    return value


def timestamp(value: str, where: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(f"{where} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise InvalidEvent(f"{where} has no time zone")
    return parsed


def build_event(where: str, fields: dict[str, Any]) -> ReplicationEvent:
    """Validate an event, turning field errors into one InvalidEvent naming `where`."""
    try:
        return ReplicationEvent.model_validate(fields)
    except ValidationError as exc:
        raise InvalidEvent(f"{where}: {describe(exc)}") from None
