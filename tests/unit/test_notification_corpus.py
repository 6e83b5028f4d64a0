"""The contract with real registries: every notification they were seen to send gets 2xx and the events it should.

The corpus (tests/fixtures/notifications/) was captured from CNCF distribution 2.8.2 and 3.1.2 doing each
thing a user does (push, multi-arch push, second tag, mount, pull, delete by digest with two tags, delete by
tag, blob delete, oras attach and discover), and taken from Harbor's documented Default and CloudEvents
payloads. Each fixture holds the body and headers as received and what georep should make of each event.

A fuzz test adds envelopes shaped like a real registry's with odd values: empty strings, missing fields,
unknown actions and media types. None may get a 4xx or a 5xx: distribution retries a refused notification
forever and holds back every later one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.events import ReplicationEvent
from producers.webhook import WebhookApp
from tests.unit.test_hostile_input import KAFKA, TOKEN, WEBHOOK, RecordingPublisher

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "notifications"
FIXTURES = sorted(CORPUS.glob("*/*.json"))
CASES = {f: json.loads(f.read_text()) for f in FIXTURES}
ENDPOINT = {"harbor": "/webhooks/harbor"}


def _endpoint(fixture: Path) -> str:
    return ENDPOINT.get(fixture.parent.name, "/webhooks/distribution")


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[TestClient[Any, Any], RecordingPublisher]]:
    publisher = RecordingPublisher()
    async with TestClient(TestServer(WebhookApp(WEBHOOK, KAFKA, publisher).app())) as client:
        yield client, publisher


def test_the_corpus_covers_every_line_and_case() -> None:
    lines = {f.parent.name for f in FIXTURES}
    assert lines == {"distribution-2.8.2", "distribution-3.1.2", "harbor"}
    cases = {case["case"] for case in CASES.values()}
    needed = {"push-image", "push-index", "push-index-child-1", "second-tag", "mount-blob-1", "pull-manifest",
              "push-blob-1", "delete-manifest", "delete-manifest-untag-1", "delete-tag", "delete-blob",
              "referrer-push", "referrer-tag-index", "push-default", "delete-cloudevents"}  # fmt: skip
    assert needed <= cases, needed - cases


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f"{f.parent.name}/{f.stem}")
async def test_every_captured_notification_gets_2xx_and_its_events(
    webhook: tuple[TestClient[Any, Any], RecordingPublisher], fixture: Path
) -> None:
    client, publisher = webhook
    case = CASES[fixture]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": case["content_type"]}
    response = await client.post(_endpoint(fixture), data=json.dumps(case["body"]).encode(), headers=headers)
    assert response.status == 200, await response.text()
    answer = await response.json()
    published = [ReplicationEvent.from_json(value) for _, _, value in publisher.messages]
    got = [
        {
            "action": e.action.value,
            "repository": str(e.repository),
            "tag": None if e.tag is None else str(e.tag),
            "digest": None if e.digest is None else str(e.digest),
        }
        for e in published
    ]
    expected = [e for e in case["expect"] if e["action"] != "skip"]
    assert got == expected
    assert len(answer["skipped"]) == len(case["expect"]) - len(expected)
    assert all(s["reason"] for s in answer["skipped"])


def maybe(value: object) -> st.SearchStrategy[object]:
    """The value itself, or empty, absent-as-null, or of another JSON type."""
    return st.one_of(st.just(value), st.just(""), st.none(), st.integers(), st.lists(st.integers()))


def _odd_event(draw: Any) -> dict[str, Any]:
    """A distribution event as 2.8.2 or 3.x shapes it, with any field missing, empty or unexpected."""
    text = st.one_of(st.just(""), st.text(max_size=12), st.sampled_from(["push", "pull", "mount", "delete"]))
    target: dict[str, Any] = {}
    for key, value in (
        ("mediaType", draw(st.sampled_from(["application/vnd.oci.image.manifest.v1+json",
                                            "application/octet-stream", "application/x-unknown", ""]))),
        ("digest", "sha256:" + "a" * 64),
        ("size", 528),
        ("repository", "team/app"),
        ("tag", "v1"),
        ("url", "http://127.0.0.1:5000/v2/team/app/manifests/sha256:" + "a" * 64),
    ):  # fmt: skip
        if draw(st.booleans()):
            target[key] = draw(maybe(value))
    event: dict[str, Any] = {"target": target}
    for key, value in (("id", "01a22eea-334c-7e53-b114-1d69510c2852"), ("timestamp", "2026-12-01T00:03:50Z")):
        if draw(st.booleans()):
            event[key] = draw(maybe(value))
    if draw(st.booleans()):
        event["action"] = draw(text)
    return event


@st.composite
def odd_envelopes(draw: Any) -> dict[str, Any]:
    return {"events": [_odd_event(draw) for _ in range(draw(st.integers(1, 3)))]}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=odd_envelopes())
async def test_odd_values_a_registry_could_send_are_never_refused(
    webhook: tuple[TestClient[Any, Any], RecordingPublisher], body: dict[str, Any]
) -> None:
    client, publisher = webhook
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/vnd.docker.distribution.events.v2+json"}
    response = await client.post("/webhooks/distribution", data=json.dumps(body).encode(), headers=headers)
    assert response.status == 200, (await response.text(), body)
    answer = await response.json()
    assert len(answer["published"]) + len(answer["skipped"]) + len(answer["duplicates"]) == len(body["events"])
    for _, _, value in publisher.messages:
        ReplicationEvent.from_json(value)  # everything published is a valid event
