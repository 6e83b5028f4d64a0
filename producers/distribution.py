"""CNCF distribution notification envelopes (events v1 and v2 media types).

distribution sends `{"events": [...]}`, one event per envelope in practice,
and retries a non-2xx answer forever, holding back every later event. So an
envelope is refused (400) only if it is truly malformed or a manifest event in
it names an invalid repository, tag or digest; everything well-formed that
georep does not replicate (pulls, blob pushes and mounts, schema 1) is
skipped with a reason and acknowledged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import orjson

from engine.errors import InvalidEvent
from engine.events import Action, Source
from engine.manifests import DOCKER_SCHEMA1, MANIFEST_TYPES
from producers.notifications import Parsed, Skipped, build_event, obj, text, timestamp

MEDIA_TYPES: Final = frozenset(
    {
        "application/vnd.docker.distribution.events.v1+json",
        "application/vnd.docker.distribution.events.v2+json",
        "application/json",
    }
)
MAX_EVENTS: Final = 1000


def _is_manifest_target(target: dict[str, object]) -> bool:
    media_type = target.get("mediaType")
    url = target.get("url")
    # Only a string can be looked up: a list or object here is hostile input, not a manifest type.
    return (isinstance(media_type, str) and media_type in MANIFEST_TYPES) or (
        isinstance(url, str) and "/manifests/" in url
    )


def parse_envelope(body: bytes, received_at: datetime) -> Parsed:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"body is not JSON: {exc}") from None
    events = obj(doc, "body").get("events")
    if not isinstance(events, list):
        raise InvalidEvent("body.events must be a list")
    if len(events) > MAX_EVENTS:
        raise InvalidEvent(f"body.events holds {len(events)} events; the limit is {MAX_EVENTS}")
    parsed = Parsed()
    for index, raw in enumerate(events):
        where = f"events[{index}]"
        event = obj(raw, where)
        event_id = text(event, "id", where)
        action = text(event, "action", where)
        target = obj(event.get("target"), f"{where}.target")
        skip = _skip_reason(action or "", target)
        if skip:
            parsed.skipped.append(Skipped(index, skip, event_id))
            continue
        occurred = timestamp(text(event, "timestamp", where) or "", f"{where}.timestamp")
        parsed.events.append(
            build_event(
                where,
                {
                    "id": event_id,
                    "source": Source.DISTRIBUTION,
                    "action": Action.DELETE if action == "delete" else Action.PUSH,
                    "repository": target.get("repository"),
                    "digest": target.get("digest"),
                    "media_type": target.get("mediaType") or None,
                    "size": target.get("size"),
                    "tag": target.get("tag") or None,
                    "occurred_at": occurred,
                    "received_at": received_at,
                },
            )
        )
    return parsed


def _skip_reason(action: str, target: dict[str, object]) -> str | None:
    if action == "pull":
        return "pull events are not replicated"
    if action == "delete":
        # distribution 2.8 sends manifest and blob deletes alike (repository + digest);
        # the replicator tells them apart by what the region holds.
        return None
    if action not in ("push", "mount"):
        return f"action {action[:40]!r} is not replicated"
    if target.get("mediaType") in DOCKER_SCHEMA1:
        return "Docker schema 1 manifests cannot be replicated"
    if not _is_manifest_target(target):
        return "blob events need no replication: the manifest push that follows copies its blobs"
    return None
