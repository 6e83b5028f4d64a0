"""Webhook bodies → ReplicationEvents: CNCF distribution envelopes and Harbor payloads."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from engine.errors import InvalidEvent
from engine.events import Action, ReplicationEvent, Source
from engine.manifests import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from engine.names import Tag
from producers.distribution import parse_envelope
from producers.harbor import parse_harbor

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def dist_event(action: str = "push", media_type: str = OCI_MANIFEST, **target: Any) -> dict[str, Any]:
    """Shaped like what distribution 2.8.2 posts (fields it always sends included)."""
    url_kind = "manifests" if "manifest" in media_type else "blobs"
    return {
        "id": "8d8c2b1e-95f0-4a3e-9d2b-6a2f0e1c3b4d",
        "timestamp": "2026-11-27T11:59:59.123456789Z",
        "action": action,
        "target": {
            "mediaType": media_type,
            "size": 528,
            "digest": D1,
            "length": 528,
            "repository": "team/app",
            "url": f"http://127.0.0.1:5000/v2/team/app/{url_kind}/{D1}",
            "tag": "v1",
            **target,
        },
        "request": {
            "id": "r1",
            "addr": "127.0.0.1:4242",
            "host": "127.0.0.1:5000",
            "method": "PUT",
            "useragent": "skopeo",
        },
        "actor": {},
        "source": {"addr": "host:5000", "instanceID": "i1"},
    }


def envelope(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


class TestDistribution:
    def test_manifest_push_becomes_an_event(self) -> None:
        parsed = parse_envelope(envelope(dist_event()), NOW)
        assert parsed.skipped == []
        [event] = parsed.events
        assert (event.source, event.action, str(event.repository), str(event.digest), str(event.tag)) == (
            Source.DISTRIBUTION,
            Action.PUSH,
            "team/app",
            D1,
            "v1",
        )
        assert event.id == "8d8c2b1e-95f0-4a3e-9d2b-6a2f0e1c3b4d"
        assert event.occurred_at == datetime(2026, 11, 27, 11, 59, 59, 123456, tzinfo=UTC)
        assert event.received_at == NOW
        assert event.media_type == OCI_MANIFEST
        assert event.size == 528

    @pytest.mark.parametrize("media_type", [DOCKER_MANIFEST, OCI_INDEX])
    def test_untagged_and_other_manifest_types(self, media_type: str) -> None:
        [event] = parse_envelope(envelope(dist_event(media_type=media_type, tag="")), NOW).events
        assert event.tag is None
        assert event.media_type == media_type

    def test_a_manifest_mount_is_a_push(self) -> None:
        [event] = parse_envelope(envelope(dist_event("mount")), NOW).events
        assert event.action is Action.PUSH

    def test_delete_keeps_repository_and_digest(self) -> None:
        delete = dist_event("delete")
        delete["target"] = {"repository": "team/app", "digest": D2}
        [event] = parse_envelope(envelope(delete), NOW).events
        assert (event.action, str(event.digest), event.tag) == (Action.DELETE, D2, None)

    @pytest.mark.parametrize(
        ("event", "reason"),
        [
            (dist_event("pull"), "pull events"),
            (dist_event(media_type="application/octet-stream"), "blob events"),
            (dist_event("mount", media_type="application/vnd.oci.image.layer.v1.tar+gzip", fromRepository="x"), "blob"),
            (dist_event(media_type="application/vnd.docker.distribution.manifest.v1+prettyjws"), "schema 1"),
            (dist_event("teleport"), "not replicated"),
        ],
    )
    def test_well_formed_events_not_replicated_are_skipped_with_a_reason(
        self, event: dict[str, Any], reason: str
    ) -> None:
        parsed = parse_envelope(envelope(event), NOW)
        assert parsed.events == []
        [skipped] = parsed.skipped
        assert reason in skipped.reason
        assert skipped.event_id == event["id"]

    def test_mixed_envelope_keeps_order_and_indexes(self) -> None:
        parsed = parse_envelope(envelope(dist_event("pull"), dist_event(), dist_event("pull")), NOW)
        assert len(parsed.events) == 1
        assert [s.index for s in parsed.skipped] == [0, 2]

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b"not json", "not JSON"),
            (envelope(dist_event(digest="sha256:abc")), "digest"),
            (envelope(dist_event(repository="../../etc")), "repository"),
            (envelope(dist_event(repository="Team/App")), "repository"),
            (envelope(dist_event(tag="../x")), "tag"),
        ],
    )
    def test_what_no_registry_could_send_is_refused_with_a_reason(self, body: bytes, message: str) -> None:
        with pytest.raises(InvalidEvent, match=message):
            parse_envelope(body, NOW)

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b"[]", "not a notification envelope"),
            (b'{"events": {}}', "not a notification envelope"),
            (envelope({"id": "x"}), "no target"),
            (envelope({**dist_event(), "target": "x"}), "no target"),
            (envelope({**dist_event(), "action": ""}), "no action"),
            (envelope(dist_event(digest=None)), "push without a digest"),
            (envelope(dist_event("delete", digest=None, tag=None)), "whole repository"),
        ],
    )
    def test_shapes_no_registry_would_send_are_skipped_with_a_reason(self, body: bytes, reason: str) -> None:
        parsed = parse_envelope(body, NOW)
        assert parsed.events == []
        assert reason in parsed.skipped[0].reason

    def test_an_odd_timestamp_is_the_time_it_was_received(self) -> None:
        for stamp in ("yesterday", "2026-11-27T11:59:59"):
            [event] = parse_envelope(envelope({**dist_event(), "timestamp": stamp}), NOW).events
            assert event.occurred_at == NOW

    def test_v3_tag_delete_with_empty_digest_and_media_type_is_a_tag_delete(self) -> None:
        target = {"mediaType": "", "digest": "", "size": 0, "repository": "team/app", "tag": "v1"}
        [event] = parse_envelope(envelope({**dist_event("delete"), "target": target}), NOW).events
        assert (event.action, event.digest, event.tag, event.media_type, event.size) == (
            Action.DELETE, None, Tag.parse("v1"), None, None,
        )  # fmt: skip

    def test_one_bad_event_refuses_the_whole_envelope(self) -> None:
        with pytest.raises(InvalidEvent, match=r"events\[1\]"):
            parse_envelope(envelope(dist_event(), dist_event(repository="UPPER")), NOW)


def harbor_default(kind: str = "PUSH_ARTIFACT", **resource: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "occur_at": 1795824000,
        "operator": "admin",
        "event_data": {
            "resources": [{"digest": D1, "tag": "v1", "resource_url": "harbor.local/library/app:v1", **resource}],
            "repository": {
                "date_created": 1795800000,
                "name": "app",
                "namespace": "library",
                "repo_full_name": "library/app",
                "repo_type": "private",
            },
        },
    }


def harbor_cloudevent(kind: str = "harbor.artifact.pushed", **resource: Any) -> dict[str, Any]:
    default = harbor_default(**resource)
    return {
        "specversion": "1.0",
        "requestid": "r-1",
        "id": "4b2f89a6-548d-4c12-9993-a1f5790b97d2",
        "source": "/projects/1/webhook/policies/3",
        "type": kind,
        "datacontenttype": "application/json",
        "time": "2026-11-28T00:00:00Z",
        "data": default["event_data"],
        "operator": "admin",
    }


def parse(doc: dict[str, Any]) -> list[ReplicationEvent]:
    return parse_harbor(json.dumps(doc).encode(), NOW).events


class TestHarbor:
    def test_default_push(self) -> None:
        [event] = parse(harbor_default())
        assert (event.source, event.action, str(event.repository), str(event.digest), str(event.tag)) == (
            Source.HARBOR,
            Action.PUSH,
            "library/app",
            D1,
            "v1",
        )
        assert event.occurred_at == datetime.fromtimestamp(1795824000, UTC)

    def test_cloudevents_push_is_the_same_event(self) -> None:
        [default] = parse(harbor_default())
        [cloud] = parse(harbor_cloudevent())
        assert (cloud.repository, cloud.digest, cloud.tag, cloud.occurred_at) == (
            default.repository,
            default.digest,
            default.tag,
            default.occurred_at,
        )
        assert cloud.id == default.id, "the same push must dedupe across formats and redeliveries"

    def test_delete_is_of_the_whole_artifact_and_untagged_means_no_tag(self) -> None:
        [delete] = parse(harbor_default("DELETE_ARTIFACT"))
        assert (delete.action, str(delete.digest), delete.tag) == (Action.DELETE, D1, None)
        [untagged] = parse(harbor_default(tag=D1))  # Harbor repeats the digest as the tag
        assert untagged.tag is None

    def test_several_resources_give_several_events_with_distinct_ids(self) -> None:
        doc = harbor_default()
        doc["event_data"]["resources"].append({"digest": D2, "tag": "v2"})
        events = parse(doc)
        assert [str(e.tag) for e in events] == ["v1", "v2"]
        assert len({e.id for e in events}) == 2

    @pytest.mark.parametrize("doc", [harbor_default("PULL_ARTIFACT"), harbor_cloudevent("harbor.scan.completed")])
    def test_other_event_types_are_skipped(self, doc: dict[str, Any]) -> None:
        parsed = parse_harbor(json.dumps(doc).encode(), NOW)
        assert parsed.events == []
        assert "is not replicated" in parsed.skipped[0].reason

    @pytest.mark.parametrize(
        ("doc", "message"),
        [(harbor_default(digest="sha256:zz"), "digest"), (harbor_default(tag="../x"), "tag")],
    )
    def test_invalid_values_are_refused(self, doc: dict[str, Any], message: str) -> None:
        with pytest.raises(InvalidEvent, match=message):
            parse_harbor(json.dumps(doc).encode(), NOW)

    @pytest.mark.parametrize(
        ("doc", "reason"),
        [
            (  # no artifact
                {**harbor_default(), "event_data": {"resources": [], "repository": {"repo_full_name": "a/b"}}},
                "artifact",
            ),
            ({**harbor_default(), "event_data": {"resources": [{"digest": D1}], "repository": {}}}, "repository"),
            (harbor_default(digest=None), "no digest"),
        ],
    )
    def test_shapes_no_registry_would_send_are_skipped(self, doc: dict[str, Any], reason: str) -> None:
        parsed = parse_harbor(json.dumps(doc).encode(), NOW)
        assert parsed.events == []
        assert reason in parsed.skipped[0].reason

    def test_an_odd_time_is_the_time_it_was_received(self) -> None:
        for doc in ({**harbor_default(), "occur_at": "soon"}, {**harbor_cloudevent(), "time": "later"}):
            [event] = parse(doc)
            assert event.occurred_at == NOW


class TestEventSchema:
    def test_round_trip_and_unknown_fields_ignored(self) -> None:
        [event] = parse_envelope(envelope(dist_event()), NOW).events
        doc = json.loads(event.to_json())
        assert doc["schema"] == 1
        assert doc["digest"] == D1
        assert doc["repository"] == "team/app"
        doc["added_by_a_newer_producer"] = {"x": 1}
        assert ReplicationEvent.from_json(json.dumps(doc)) == event

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"digest": "sha256:00"}, "digest"),
            ({"repository": "a/../b"}, "repository"),
            ({"action": "explode"}, "action"),
            ({"occurred_at": "2026-11-27T11:59:59"}, "occurred_at"),
            ({"schema": 0}, "schema"),
        ],
    )
    def test_invalid_messages_are_refused_with_the_field(self, change: dict[str, Any], message: str) -> None:
        [event] = parse_envelope(envelope(dist_event()), NOW).events
        doc = {**json.loads(event.to_json()), **change}
        with pytest.raises(InvalidEvent, match=message):
            ReplicationEvent.from_json(json.dumps(doc))

    def test_not_json(self) -> None:
        with pytest.raises(InvalidEvent, match="not JSON"):
            ReplicationEvent.from_json(b"\xff")
