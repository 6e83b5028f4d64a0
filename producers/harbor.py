"""Harbor webhooks: the Default payload and the CloudEvents (structured) payload.

Harbor gives no stable event id (the CloudEvents id is a fresh UUID per
delivery), so the id is derived from what the event says: a redelivery of the
same push gets the same id and is deduplicated downstream.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from engine.errors import InvalidEvent
from engine.events import Action, Source
from producers.notifications import Parsed, Skipped, build_event, obj, text, timestamp

_DEFAULT_TYPES: Final = {"PUSH_ARTIFACT": Action.PUSH, "DELETE_ARTIFACT": Action.DELETE}
_CLOUDEVENT_TYPES: Final = {"harbor.artifact.pushed": Action.PUSH, "harbor.artifact.deleted": Action.DELETE}
MAX_RESOURCES: Final = 1000


def parse_harbor(body: bytes, received_at: datetime) -> Parsed:
    try:
        doc = obj(orjson.loads(body), "body")
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"body is not JSON: {exc}") from None
    if "specversion" in doc:
        kind = text(doc, "type", "body") or ""
        action = _CLOUDEVENT_TYPES.get(kind)
        data = doc.get("data")
        occurred = timestamp(text(doc, "time", "body") or "", "body.time") if action else received_at
    else:
        kind = text(doc, "type", "body") or ""
        action = _DEFAULT_TYPES.get(kind)
        data = doc.get("event_data")
        occurred = _unix_time(doc.get("occur_at")) if action else received_at
    if action is None:
        return Parsed(skipped=[Skipped(0, f"Harbor event type {kind[:60]!r} is not replicated")])

    data = obj(data, "body.event_data")
    repository = text(obj(data.get("repository"), "body.event_data.repository"), "repo_full_name", "repository")
    resources = data.get("resources")
    if not isinstance(resources, list) or not resources:
        raise InvalidEvent("body.event_data.resources must be a non-empty list")
    if len(resources) > MAX_RESOURCES:
        raise InvalidEvent(f"body.event_data.resources holds {len(resources)} items; the limit is {MAX_RESOURCES}")
    parsed = Parsed()
    for index, raw in enumerate(resources):
        where = f"resources[{index}]"
        resource = obj(raw, where)
        digest = text(resource, "digest", where, required=action is Action.PUSH)
        tag = text(resource, "tag", where, required=False)
        if tag is not None and tag == digest:
            tag = None  # Harbor repeats the digest as the tag of an untagged artifact
        event_id = _derived_id(action.value, occurred, repository, digest, tag)
        parsed.events.append(
            build_event(
                where,
                {
                    "id": event_id,
                    "source": Source.HARBOR,
                    "action": action,
                    "repository": repository,
                    "digest": digest,
                    "tag": tag,
                    "occurred_at": occurred,
                    "received_at": received_at,
                },
            )
        )
    return parsed


def _unix_time(value: Any) -> datetime:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 2**33:
        raise InvalidEvent("body.occur_at must be a unix time in seconds")
    return datetime.fromtimestamp(value, UTC)


def _derived_id(action: str, occurred: datetime, *parts: str | None) -> str:
    material = "\x00".join([action, occurred.isoformat(), *(p or "" for p in parts)])
    return "harbor-" + hashlib.sha256(material.encode()).hexdigest()[:32]
