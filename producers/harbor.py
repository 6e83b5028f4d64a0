"""Harbor webhooks: the Default payload and the CloudEvents (structured) payload.

    Default       {type: PUSH_ARTIFACT | DELETE_ARTIFACT | ..., occur_at: <unix s>, operator,
                   event_data: {resources: [{digest, tag, resource_url}], repository: {repo_full_name, ...}}}
    CloudEvents   {specversion, id, type: harbor.artifact.pushed | harbor.artifact.deleted | ..., time,
                   data: <event_data>, ...}

`resources[].tag` is the artifact's first tag, or its digest when it has none (then: no tag). A
DELETE_ARTIFACT removes the whole artifact, so it is a delete by digest; Harbor sends no webhook for
removing one tag. Every other type (pulls, scans, quotas, replication, retention) is skipped.

Harbor gives no stable event id (the CloudEvents id is a fresh UUID per delivery), so the id is derived
from what the event says: a redelivery of the same push gets the same id and is deduplicated downstream.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Final

import orjson

from engine.errors import InvalidEvent
from engine.events import Action, Source
from producers.notifications import Fields, Parsed, Skipped, build_event, timestamp

_DEFAULT_TYPES: Final = {"PUSH_ARTIFACT": Action.PUSH, "DELETE_ARTIFACT": Action.DELETE}
_CLOUDEVENT_TYPES: Final = {"harbor.artifact.pushed": Action.PUSH, "harbor.artifact.deleted": Action.DELETE}
MAX_RESOURCES: Final = 1000


class TooManyResources(InvalidEvent):
    reason = "body-too-large"


def parse_harbor(body: bytes, received_at: datetime) -> Parsed:
    try:
        doc = Fields(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"body is not JSON: {exc}") from None
    kind = doc.text("type") or ""
    if "specversion" in doc.doc:
        action = _CLOUDEVENT_TYPES.get(kind)
        data = doc.child("data")
        occurred = timestamp(doc.text("time"), received_at)
    else:
        action = _DEFAULT_TYPES.get(kind)
        data = doc.child("event_data")
        occurred = _unix_time(doc.number("occur_at"), received_at)
    if action is None:
        reason = f"Harbor event type {kind[:60]!r} is not replicated" if kind else "no Harbor event type"
        return Parsed(skipped=[Skipped(0, reason, kind="type")])
    repository = data.child("repository").repository("repo_full_name", "body.event_data.repository")
    resources = data.doc.get("resources")
    if repository is None or not isinstance(resources, list) or not resources:
        return Parsed(skipped=[Skipped(0, "the Harbor event names no repository or no artifact", kind="shape")])
    if len(resources) > MAX_RESOURCES:
        raise TooManyResources(f"body.event_data.resources holds {len(resources)} items; the limit is {MAX_RESOURCES}")
    parsed = Parsed()
    for index, raw in enumerate(resources):
        where = f"resources[{index}]"
        resource = Fields(raw)
        digest = resource.digest("digest", where)
        tag_text = resource.text("tag")
        # Harbor repeats the digest as the tag of an untagged artifact.
        tag = None if tag_text is None or tag_text.startswith("sha256:") else resource.tag("tag", where)
        if digest is None:
            parsed.skipped.append(Skipped(index, "the artifact has no digest", kind="shape"))
            continue
        parsed.events.append(
            build_event(
                where,
                {
                    "id": _derived_id(action.value, occurred, str(repository), str(digest), str(tag or "")),
                    "source": Source.HARBOR,
                    "action": action,
                    "repository": repository,
                    "digest": digest,
                    # A delete removes the artifact with all its tags, like a delete by digest.
                    "tag": tag if action is Action.PUSH else None,
                    "occurred_at": occurred,
                    "received_at": received_at,
                },
            )
        )
    return parsed


def _unix_time(value: float | None, default: datetime) -> datetime:
    if value is None or not 0 < value < 2**33:
        return default
    return datetime.fromtimestamp(value, UTC)


def _derived_id(action: str, occurred: datetime, *parts: str | None) -> str:
    material = "\x00".join([action, occurred.isoformat(), *(p or "" for p in parts)])
    return "harbor-" + hashlib.sha256(material.encode()).hexdigest()[:32]
