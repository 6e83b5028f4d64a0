"""What a webhook body turns into: events to publish, and events skipped with a reason.

The contract with a registry, whose queue retries a refused notification forever (holding back every later
one), is that a body is refused only when it cannot be from a registry at all:

    refused (4xx)   not JSON; a repository name, tag or digest *string* outside the registry's own grammar
                    (`../x`, an upper-case hex digest): no real registry sends those
    published       a manifest push (tagged or not), a delete by digest, a delete by tag
    skipped (2xx)   everything else a registry may send, each with its reason in the answer, the log and a
                    metric: pulls, blob events, mounts, unknown actions and media types, a delete of a whole
                    repository, an event or envelope whose shape is not one georep knows, a field missing

An absent field and an empty one are the same (v3 sends `"digest": ""` on a tag delete); a field of the
wrong JSON type is treated as absent. `Fields` reads them that way.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar

from pydantic import ValidationError

from engine.digest import Digest
from engine.errors import InvalidEvent, InvalidInput
from engine.events import EVENT_ID, ReplicationEvent, describe
from engine.names import Repository, Tag

V = TypeVar("V")

#: event ids georep keeps as given; any other id is replaced by a hash of it (ids reach logs and terminals)
SAFE_ID: Final = re.compile(EVENT_ID, re.ASCII)


@dataclass(frozen=True, slots=True)
class Skipped:
    index: int
    reason: str
    event_id: str | None = None
    #: a short stable word for the metric (`georep_webhook_skipped_total{kind}`): pull, blob, action, shape, ...
    kind: str = "other"


@dataclass(slots=True)
class Parsed:
    events: list[ReplicationEvent] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class Fields:
    """A JSON object from a notification, read leniently: absent, empty and wrongly typed values are None."""

    def __init__(self, value: object) -> None:
        self.doc: dict[str, Any] = value if isinstance(value, dict) else {}
        self.present = isinstance(value, dict)

    def text(self, key: str) -> str | None:
        value = self.doc.get(key)
        return value if isinstance(value, str) and value else None

    def number(self, key: str) -> int | float | None:
        value = self.doc.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    def child(self, key: str) -> Fields:
        return Fields(self.doc.get(key))

    # The values that become storage keys: present ones must be valid, or the body is refused.

    def repository(self, key: str, where: str) -> Repository | None:
        return _valid(Repository.parse, self.text(key), f"{where}.{key}")

    def tag(self, key: str, where: str) -> Tag | None:
        return _valid(Tag.parse, self.text(key), f"{where}.{key}")

    def digest(self, key: str, where: str) -> Digest | None:
        return _valid(Digest.parse, self.text(key), f"{where}.{key}")


def _valid(parse: Callable[[str], V], value: str | None, where: str) -> V | None:
    if value is None:
        return None
    try:
        return parse(value)
    except InvalidInput as exc:
        raise InvalidEvent(f"{where}: {exc}") from None


def safe_id(value: str | None, *material: object) -> str:
    """The source's event id if it is plain; otherwise (or if there is none) one derived from the event itself,
    so that a redelivery of the same event still gets the same id."""
    if value is not None and len(value) <= 200 and SAFE_ID.fullmatch(value):
        return value
    seed = "\x00".join(str(m) for m in (value, *material))
    return "derived-" + hashlib.sha256(seed.encode()).hexdigest()[:32]


def timestamp(value: str | None, default: datetime) -> datetime:
    """An RFC 3339 time with a zone; `default` (when the webhook received it) for anything else."""
    if value is None:
        return default
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return default
    return parsed if parsed.tzinfo is not None else default


def build_event(where: str, fields: dict[str, Any]) -> ReplicationEvent:
    """Validate an event built from already-valid values (a failure here is georep's bug, said as such)."""
    try:
        return ReplicationEvent.model_validate(fields)
    except ValidationError as exc:
        raise InvalidEvent(f"{where}: {describe(exc)}") from None
