"""CNCF distribution notification envelopes: 2.8.x (events v1 media type) and 3.x (v2), one event per envelope.

What each line sends, measured (tests/fixtures/notifications/ holds the captured envelopes):

    registry action                      event                                          georep
    image push                           blob `push` per blob, then manifest `push`     the manifest push
                                         with the tag and `references`
    multi-arch push                      untagged child manifest pushes, then the       each one (children
                                         tagged index push                              untagged)
    cross-repository mount               blob `mount` (`fromRepository`); the manifest  the manifest push
                                         is a plain `push`
    pull, HEAD                           `pull`                                         skipped
    delete by digest                     `delete` {digest}; then `delete` {tag} per     each one
                                         tag that pointed at it (both lines)
    delete by tag (3.x; 2.8.2: 400)      `delete` {tag, digest: "", mediaType: ""}      a tag delete
    blob delete                          `delete` {digest}: the same as a manifest's    a digest delete (a
                                                                                        region finds no such
                                                                                        manifest: no-op)

3.x writes empty strings where 2.8.2 leaves a field out (`digest`, `mediaType`, `size: 0`); both mean "absent".
See `producers.notifications` for what is refused and what is skipped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import orjson

from engine.errors import InvalidEvent
from engine.events import Action, Source
from engine.manifests import DOCKER_SCHEMA1, MANIFEST_TYPES
from producers.notifications import Fields, Parsed, Skipped, build_event, safe_id, timestamp

MEDIA_TYPES: Final = frozenset(
    {
        "application/vnd.docker.distribution.events.v1+json",
        "application/vnd.docker.distribution.events.v2+json",
        "application/json",
    }
)
#: the media type distribution gives every uploaded blob: an endpoint that ignores it gets one event per push,
#: not one per blob besides (blob events need no replication: the manifest's push copies its blobs)
BLOB_MEDIA_TYPE: Final = "application/octet-stream"
#: one event per envelope in practice; more than this many is not a registry's envelope but an oversized body
MAX_EVENTS: Final = 1000


class TooManyEvents(InvalidEvent):
    reason = "body-too-large"


def parse_envelope(body: bytes, received_at: datetime) -> Parsed:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"body is not JSON: {exc}") from None
    events = doc.get("events") if isinstance(doc, dict) else None
    if not isinstance(events, list):
        return Parsed(skipped=[Skipped(0, "not a notification envelope: no list of events", kind="shape")])
    if len(events) > MAX_EVENTS:
        raise TooManyEvents(f"body.events holds {len(events)} events; the limit is {MAX_EVENTS}")
    parsed = Parsed()
    for index, raw in enumerate(events):
        _event(parsed, index, Fields(raw), received_at)
    return parsed


def _event(parsed: Parsed, index: int, event: Fields, received_at: datetime) -> None:
    where = f"events[{index}]"
    target = event.child("target")
    action = event.text("action") or ""
    skip = _skip_reason(action, target, event.present)
    if skip is None and target.text("repository") is None:
        skip = ("shape", "the event names no repository")
    if skip is None and action in ("push", "mount") and target.text("digest") is None:
        skip = ("shape", "a manifest push without a digest")
    if skip is None and action == "delete" and target.text("digest") is None and target.text("tag") is None:
        skip = ("repository-delete", "a delete of a whole repository (no digest, no tag): regions keep its content")
    if skip is not None:
        kind, reason = skip
        parsed.skipped.append(Skipped(index, reason, event.text("id"), kind))
        return
    # What is replicated becomes storage keys: a name, tag or digest outside the grammar refuses the envelope.
    repository = target.repository("repository", f"{where}.target")
    digest = target.digest("digest", f"{where}.target")
    tag = target.tag("tag", f"{where}.target")
    event_id = safe_id(event.text("id"), action, repository, digest, tag, event.text("timestamp"))
    media_type = target.text("mediaType")
    size = target.number("size")
    parsed.events.append(
        build_event(
            where,
            {
                "id": event_id,
                "source": Source.DISTRIBUTION,
                "action": Action.DELETE if action == "delete" else Action.PUSH,
                "repository": repository,
                "digest": digest,
                "media_type": media_type if media_type and len(media_type) <= 255 else None,
                "size": int(size) if size is not None and size > 0 else None,
                "tag": tag,
                "occurred_at": timestamp(event.text("timestamp"), received_at),
                "received_at": received_at,
            },
        )
    )


def _skip_reason(action: str, target: Fields, present: bool) -> tuple[str, str] | None:
    """(kind, reason) for an event georep does not replicate; None for one it does."""
    if not present:
        return "shape", "the event is not a JSON object"
    if not target.present:
        return "shape", "the event has no target"
    if action == "pull":
        return "pull", "pull events are not replicated"
    if action == "delete":
        # Manifest and blob deletes look alike; the replicator tells them apart by what the region holds.
        return None
    if action not in ("push", "mount"):
        return "action", f"action {action[:40]!r} is not replicated" if action else "the event has no action"
    media_type = target.text("mediaType")
    if media_type in DOCKER_SCHEMA1:
        return "schema1", "Docker schema 1 manifests cannot be replicated"
    url = target.text("url") or ""
    if media_type not in MANIFEST_TYPES and "/manifests/" not in url:
        return "blob", "blob events need no replication: the manifest push that follows copies its blobs"
    return None
