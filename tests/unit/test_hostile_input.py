"""Hostile input at the edge: bad callers, bad bodies and bad names never reach Kafka or an S3 key.

The webhook runs with a Publisher stand-in that records what it would have sent to Kafka, so every
test can say exactly what was published (nothing, for every refusal). The fuzz test at the end throws
arbitrary bodies and headers at the real aiohttp app.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from structlog.testing import capture_logs

from adapters.kafka import Publisher
from engine.digest import Digest
from engine.errors import InvalidDigest, InvalidName, KafkaUnavailable
from engine.events import ReplicationEvent
from engine.layout import Layout
from engine.manifests import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from engine.names import NAME_MAX_LENGTH, TAG_MAX_LENGTH, Repository, Tag
from engine.settings import KafkaSettings, WebhookSettings
from producers.webhook import WebhookApp
from tests.unit.test_notifications import D1, dist_event, envelope, harbor_cloudevent, harbor_default

TOKEN = "hostile-input-token-0123456789"
V1 = "application/vnd.docker.distribution.events.v1+json"
MAX_BODY = 4096
KAFKA = KafkaSettings(security_protocol="PLAINTEXT")
WEBHOOK = WebhookSettings(token=SecretStr(TOKEN), max_body_bytes=MAX_BODY, publish_timeout_s=1.0)
PREFIXES = ["", "mirror", "a/b.c_d-e"]
DISTRIBUTION = "/webhooks/distribution"
HARBOR = "/webhooks/harbor"

Client = TestClient[web.Request, web.Application]


class RecordingPublisher(Publisher):
    """Stands in for Kafka: records every message it acknowledges, or refuses all while `up` is False."""

    def __init__(self, *, up: bool = True) -> None:
        super().__init__(KAFKA, "test")
        self.up = up
        self.messages: list[tuple[str, bytes, bytes]] = []

    @property
    def connected(self) -> bool:
        return self.up

    async def publish(self, topic: str, messages: Sequence[tuple[bytes, bytes | None]], timeout_s: float) -> None:
        if not self.up:
            raise KafkaUnavailable(f"kafka did not acknowledge within {timeout_s:g}s: stand-in is down")
        for key, value in messages:
            assert value is not None, "the webhook never publishes a tombstone"
            self.messages.append((topic, key, value))

    async def close(self) -> None:
        return None


def auth(token: str = TOKEN, content_type: str = V1) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": content_type}


def dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()


def assert_key_is_contained(key: str, prefix: str) -> None:
    """What every S3 key built from request data must look like."""
    assert key.isascii(), key
    assert re.fullmatch(r"[A-Za-z0-9._:/-]+", key), key
    assert not key.startswith("/")
    assert "//" not in key
    assert not key.endswith("/")
    segments = key.split("/")
    assert ".." not in segments
    assert "." not in segments
    if prefix:
        assert key.startswith(prefix + "/")
    assert len(key.encode()) <= 1024  # S3's key limit


def keys_for(layout: Layout, repository: Repository, tag: Tag | None, digest: Digest | None) -> list[str]:
    digest = digest or Digest.parse(D1)
    keys = [layout.blob_data(digest), layout.layer_link(repository, digest), layout.revision_link(repository, digest)]
    if tag is not None:
        keys += [
            layout.tag_index_link(repository, tag, digest),
            layout.tag_current_link(repository, tag),
            layout.tag_state(repository, tag),
        ]
    return keys


def assert_published_events_are_valid(messages: list[tuple[str, bytes, bytes]]) -> list[ReplicationEvent]:
    events = []
    for topic, key, value in messages:
        assert topic == KAFKA.events_topic
        published = ReplicationEvent.from_json(value)
        assert key == published.repository.name.encode()
        assert Repository.parse(published.repository.name) == published.repository
        if published.tag is not None:
            assert Tag.parse(published.tag.name) == published.tag
        if published.digest is not None:
            assert Digest.parse(str(published.digest)) == published.digest
        for prefix in PREFIXES:
            layout = Layout(prefix)
            for s3_key in keys_for(layout, published.repository, published.tag, published.digest):
                assert_key_is_contained(s3_key, prefix)
        events.append(published)
    return events


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
async def client(publisher: RecordingPublisher) -> AsyncIterator[Client]:
    app = WebhookApp(WEBHOOK, KAFKA, publisher).app()
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def refused(response: Any, status: int, error: str | None = None) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    answer: dict[str, Any] = await response.json()
    assert set(answer) == {"error", "reason"}
    assert isinstance(answer["reason"], str)
    assert answer["reason"]
    if error is not None:
        assert answer["error"] == error
    return answer


# --- 1. bad callers and bad bodies: refused with a reason, nothing published --------------------------------


async def test_the_stand_in_publisher_records_what_a_valid_push_publishes(
    client: Client, publisher: RecordingPublisher
) -> None:
    response = await client.post(DISTRIBUTION, data=envelope(dist_event()), headers=auth())
    assert response.status == 200
    [published] = assert_published_events_are_valid(publisher.messages)
    assert (str(published.repository), str(published.tag), str(published.digest)) == ("team/app", "v1", D1)


@pytest.mark.parametrize("path", [DISTRIBUTION, HARBOR])
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        f"Bearer{TOKEN}",
        f"Bearer {TOKEN.upper()}",
        f"Bearer {TOKEN} {TOKEN}",
        f"Bearer bearer {TOKEN}",
    ],
)
async def test_missing_or_wrong_token_gets_401_and_nothing_is_published(
    client: Client, publisher: RecordingPublisher, path: str, authorization: str | None
) -> None:
    body = envelope(dist_event()) if path == DISTRIBUTION else dumps(harbor_default())
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = await client.post(path, data=body, headers=headers)
    answer = await refused(response, 401, "unauthorized")
    assert TOKEN not in answer["reason"]
    assert publisher.messages == []


async def test_401_comes_before_anything_else_is_looked_at(client: Client, publisher: RecordingPublisher) -> None:
    # No token and an oversized, non-JSON body of the wrong type: the caller learns only that it is not authorised.
    response = await client.post(DISTRIBUTION, data=b"x" * (MAX_BODY * 2), headers={"Content-Type": "text/plain"})
    await refused(response, 401, "unauthorized")
    assert publisher.messages == []


async def test_oversized_body_gets_413_and_nothing_is_published(client: Client, publisher: RecordingPublisher) -> None:
    # A valid envelope padded past the limit: refused whole, even though its event is fine.
    body = json.dumps({"events": [dist_event()], "padding": "x" * MAX_BODY}).encode()
    response = await client.post(DISTRIBUTION, data=body, headers=auth())
    answer = await refused(response, 413, "body-too-large")
    assert str(MAX_BODY) in answer["reason"]
    assert publisher.messages == []


async def test_oversized_chunked_body_without_content_length_gets_413(
    client: Client, publisher: RecordingPublisher
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"events": ['
        for _ in range(MAX_BODY // 512 + 2):
            yield b" " * 512
        yield b"]}"

    response = await client.post(HARBOR, data=chunks(), headers=auth(content_type="application/json"))
    await refused(response, 413, "body-too-large")
    assert publisher.messages == []


async def test_a_compression_bomb_gets_413(client: Client, publisher: RecordingPublisher) -> None:
    # Under the limit on the wire, 3 MiB once inflated: the limit applies to what the app would have to hold.
    bomb = gzip.compress(b'{"events": [' + b" " * (3 * 1024 * 1024) + b"]}")
    assert len(bomb) < MAX_BODY
    response = await client.post(DISTRIBUTION, data=bomb, headers={**auth(), "Content-Encoding": "gzip"})
    await refused(response, 413, "body-too-large")
    assert publisher.messages == []


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/octet-stream", "application/x-www-form-urlencoded", "multipart/form-data"],
)
async def test_non_json_content_types_get_415_and_nothing_is_published(
    client: Client, publisher: RecordingPublisher, content_type: str
) -> None:
    response = await client.post(DISTRIBUTION, data=envelope(dist_event()), headers=auth(content_type=content_type))
    await refused(response, 415, "unsupported-media-type")
    assert publisher.messages == []


BAD_DIGESTS = [
    "",
    "sha256:",
    "sha256:" + "A" * 64,
    "sha256:" + "1" * 63,
    "sha256:" + "1" * 65,
    "md5:" + "1" * 32,
    "sha256:" + "1" * 64 + "\n",
    "sha256:" + "1" * 64 + "/../../../x",
    "sha256:../../" + "1" * 58,
    "sha256%3A" + "1" * 64,
    "ｓha256:" + "1" * 64,
    42,
    ["sha256:" + "1" * 64],
    {"sha256": "1" * 64},
]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (DISTRIBUTION, b""),
        (DISTRIBUTION, b"{not json"),
        (DISTRIBUTION, b"\xff\xfe{}"),
        (DISTRIBUTION, b'{"events": [] } trailing'),
        (DISTRIBUTION, b"NaN"),
        (HARBOR, b""),
        (HARBOR, b"{'type': 1}"),
    ],
)
async def test_a_body_that_is_not_json_gets_400_with_a_reason(
    client: Client, publisher: RecordingPublisher, path: str, body: bytes
) -> None:
    with capture_logs() as logs:
        response = await client.post(path, data=body, headers=auth(content_type="application/json"))
    answer = await refused(response, 400, "invalid-event")
    assert "not JSON" in answer["reason"]
    assert any(e["event"] == "webhook.refused" and e["reason"] == answer["reason"] for e in logs)
    assert publisher.messages == []


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        (DISTRIBUTION, b"null", "not a notification envelope"),
        (DISTRIBUTION, b'"events"', "not a notification envelope"),
        (DISTRIBUTION, b"[]", "not a notification envelope"),
        (DISTRIBUTION, b"{}", "not a notification envelope"),
        (DISTRIBUTION, b'{"events": null}', "not a notification envelope"),
        (DISTRIBUTION, b'{"events": "push"}', "not a notification envelope"),
        (DISTRIBUTION, b'{"events": [1]}', "not a JSON object"),
        (DISTRIBUTION, b'{"events": [[]]}', "not a JSON object"),
        (DISTRIBUTION, b'{"events": [{}]}', "no target"),
        (DISTRIBUTION, dumps({"events": [{**dist_event(), "action": ["push"]}]}), "no action"),
        (DISTRIBUTION, dumps({"events": [{**dist_event(), "target": None}]}), "no target"),
        (DISTRIBUTION, dumps({"events": [{**dist_event(), "target": {"digest": D1}}]}), "blob events"),
        (DISTRIBUTION, envelope(dist_event(repository="")), "names no repository"),
        (DISTRIBUTION, envelope(dist_event(digest="")), "push without a digest"),
        (DISTRIBUTION, envelope(dist_event("delete", digest="", tag="")), "whole repository"),
        (HARBOR, b"[1, 2]", "no Harbor event type"),
        (HARBOR, b"{}", "no Harbor event type"),
        (HARBOR, dumps({**harbor_default(), "event_data": []}), "names no repository"),
        (HARBOR, dumps({**harbor_default(), "event_data": {"repository": "library/app"}}), "names no repository"),
        (HARBOR, dumps({**harbor_cloudevent(), "data": None}), "names no repository"),
        (HARBOR, dumps(harbor_default(digest=None)), "no digest"),
    ],
)
async def test_shapes_no_registry_would_send_are_acknowledged_and_skipped_with_a_reason(
    client: Client, publisher: RecordingPublisher, path: str, body: bytes, says: str
) -> None:
    """Refusing them would stall a registry's queue: each is skipped, with its reason, in the answer and the log."""
    with capture_logs() as logs:
        response = await client.post(path, data=body, headers=auth(content_type="application/json"))
    assert response.status == 200, await response.text()
    (skipped,) = (await response.json())["skipped"]
    assert says in skipped["reason"]
    assert any(e["event"] == "webhook.event_skipped" and e["reason"] == skipped["reason"] for e in logs)
    assert publisher.messages == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (DISTRIBUTION, b'{"events": [' + b",".join([b"{}"] * 1001) + b"]}"),
        (
            HARBOR,
            dumps({**harbor_default(), "event_data": {**harbor_default()["event_data"], "resources": [{}] * 1001}}),
        ),
    ],
)
async def test_more_than_a_thousand_events_is_an_oversized_body(client: Client, path: str, body: bytes) -> None:
    response = await client.post(path, data=body, headers=auth(content_type="application/json"))
    reason = (await refused(response, 413, "body-too-large"))["reason"]
    assert "limit is 1000" in reason or f"exceeds {MAX_BODY} bytes" in reason


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (DISTRIBUTION, envelope({**dist_event(), "timestamp": "yesterday"})),
        (DISTRIBUTION, envelope({**dist_event(), "timestamp": 1795824000})),
        (DISTRIBUTION, envelope({**dist_event(), "id": 7})),
        (DISTRIBUTION, envelope(dist_event(size=-1))),
        (HARBOR, dumps({**harbor_default(), "occur_at": True})),
        (HARBOR, dumps({**harbor_default(), "occur_at": -1})),
        (HARBOR, dumps({**harbor_cloudevent(), "time": 1795824000})),
    ],
)
async def test_an_odd_time_size_or_id_still_replicates_the_event(
    client: Client, publisher: RecordingPublisher, path: str, body: bytes
) -> None:
    """What does not become a key is read leniently: the time it was received, no size, an id derived from it."""
    response = await client.post(path, data=body, headers=auth(content_type="application/json"))
    assert response.status == 200, await response.text()
    assert len(assert_published_events_are_valid(publisher.messages)) == 1


@pytest.mark.parametrize("digest", [d for d in BAD_DIGESTS if d and isinstance(d, str)])  # others: absent
async def test_invalid_digests_get_400_from_both_endpoints(
    client: Client, publisher: RecordingPublisher, digest: object
) -> None:
    response = await client.post(DISTRIBUTION, data=envelope(dist_event(digest=digest)), headers=auth())
    assert "digest" in (await refused(response, 400, "invalid-event"))["reason"]
    harbor_body = dumps(harbor_default(digest=digest))
    response = await client.post(HARBOR, data=harbor_body, headers=auth(content_type="application/json"))
    assert "digest" in (await refused(response, 400, "invalid-event"))["reason"]
    assert publisher.messages == []


@pytest.mark.parametrize("digest", BAD_DIGESTS)
def test_invalid_digests_are_refused_by_the_value_type(digest: object) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(digest)


@pytest.mark.parametrize(
    ("encoding", "body", "error"),
    [
        ("deflate", envelope(dist_event()), "invalid-body"),
        ("gzip", envelope(dist_event()), "invalid-body"),
        ("gzip", gzip.compress(envelope(dist_event()))[:-12], "invalid-event"),  # truncated: half an envelope
    ],
)
async def test_a_body_that_does_not_match_its_content_encoding_gets_400_not_500(
    client: Client, publisher: RecordingPublisher, encoding: str, body: bytes, error: str
) -> None:
    response = await client.post(DISTRIBUTION, data=body, headers={**auth(), "Content-Encoding": encoding})
    await refused(response, 400, error)
    assert publisher.messages == []


async def test_a_gzipped_envelope_is_read_like_any_other(client: Client, publisher: RecordingPublisher) -> None:
    body = gzip.compress(envelope(dist_event()))
    response = await client.post(DISTRIBUTION, data=body, headers={**auth(), "Content-Encoding": "gzip"})
    assert response.status == 200
    assert len(assert_published_events_are_valid(publisher.messages)) == 1


@pytest.mark.parametrize("media_type", [["x"], {"a": 1}, [OCI_MANIFEST], 7, True])
@pytest.mark.parametrize("url_kind", ["manifests", "blobs"])
async def test_a_media_type_that_is_not_a_string_is_read_as_absent_never_a_crash(
    client: Client, publisher: RecordingPublisher, media_type: object, url_kind: str
) -> None:
    # Found by the fuzz test below: a list or object here made the adapter answer 500.
    event = dist_event(mediaType=media_type, url=f"http://127.0.0.1:5000/v2/team/app/{url_kind}/{D1}")
    response = await client.post(DISTRIBUTION, data=envelope(event), headers=auth())
    assert response.status == 200
    if url_kind == "manifests":  # the URL still says it is a manifest
        (published,) = assert_published_events_are_valid(publisher.messages)
        assert published.media_type is None
    else:
        assert "blob events" in (await response.json())["skipped"][0]["reason"]
        assert publisher.messages == []


async def test_one_bad_event_refuses_the_envelope_and_publishes_none_of_it(
    client: Client, publisher: RecordingPublisher
) -> None:
    good = dist_event()
    bad = {**dist_event(repository="../../etc"), "id": "second"}
    response = await client.post(DISTRIBUTION, data=envelope(good, bad), headers=auth())
    assert "events[1]" in (await refused(response, 400, "invalid-event"))["reason"]
    assert publisher.messages == []


async def test_kafka_down_gets_503_and_the_event_is_not_remembered_as_published() -> None:
    publisher = RecordingPublisher(up=False)
    async with TestClient(TestServer(WebhookApp(WEBHOOK, KAFKA, publisher).app())) as test_client:
        response = await test_client.post(DISTRIBUTION, data=envelope(dist_event()), headers=auth())
        await refused(response, 503, "kafka-unavailable")
        publisher.up = True
        # The registry retries with the same event id: this time it must be published, not deduplicated.
        response = await test_client.post(DISTRIBUTION, data=envelope(dist_event()), headers=auth())
        assert response.status == 200
        assert (await response.json())["published"] == [dist_event()["id"]]
    assert len(assert_published_events_are_valid(publisher.messages)) == 1


# --- 2. names and tags outside the grammar ---------------------------------------------------------------------

HOSTILE_NAMES = [
    "..",
    "../etc",
    "a/../../etc",
    "a/..",
    "./a",
    "/etc",
    "/etc/passwd",
    "a/",
    "a//b",
    "a%2f..",
    "a%2F%2E%2E",
    "%2e%2e/a",
    "\u0430pp",  # Cyrillic a
    "team/\u0430pp",
    "team\uff0fapp",  # fullwidth solidus
    "team\u2215app",  # division slash
    "team\u2044app",  # fraction slash
    "te\u200dam/app",  # zero-width joiner
    "team/app\u200b",  # zero-width space
    "team/app\ufeff",  # byte order mark
    "te\u0301am",  # combining accent
    "\uff41pp",  # fullwidth a
    "team\x00/app",
    "team/app\x00",
    "team\\app",
    "..\\..\\etc",
    "team/app\n",
    "team/app\r\nX-Injected: 1",
    "team app",
    "team/app:v1",
    "team/app@sha256:" + "1" * 64,
    "team/App",
    "team/_layers",
    "team/_manifests/x",
    "a" * (NAME_MAX_LENGTH + 1),
    "/".join(["ab"] * 86),  # 257 characters of valid components
    "localhost:5000/" + "a" * (NAME_MAX_LENGTH - 14),  # a valid domain, 256 in total
]
HOSTILE_TAGS = [
    "..",
    ".",
    "../x",
    "/etc",
    "a/b",
    "a%2f..",
    "%2e%2e",
    "v\u0430",  # Cyrillic a
    "v1\uff0f",
    "v1\u2215x",
    "v\u200d1",
    "v1\x00",
    "v1\\x",
    "v1\n",
    "-v1",
    ".v1",
    "v1:x",
    "v 1",
    "a" * (TAG_MAX_LENGTH + 1),
]
# The edges of what a registry can send: accepted, or replication would stall.
LONGEST_NAME = "/".join(["abcdefghijklmnopqrstuvwxyz0123456789"] * 7)[:NAME_MAX_LENGTH].rstrip("/")
LONGEST_TAG = "T" * TAG_MAX_LENGTH


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_repository_names_are_invalid(name: str) -> None:
    with pytest.raises(InvalidName):
        Repository.parse(name)


@pytest.mark.parametrize("tag", HOSTILE_TAGS)
def test_hostile_tags_are_invalid(tag: str) -> None:
    with pytest.raises(InvalidName):
        Tag.parse(tag)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_the_webhook_refuses_a_manifest_event_naming_a_hostile_repository(
    client: Client, publisher: RecordingPublisher, name: str
) -> None:
    response = await client.post(DISTRIBUTION, data=envelope(dist_event(repository=name)), headers=auth())
    assert "repository" in (await refused(response, 400, "invalid-event"))["reason"]
    harbor = harbor_default()
    harbor["event_data"]["repository"]["repo_full_name"] = name
    response = await client.post(HARBOR, data=dumps(harbor), headers=auth(content_type="application/json"))
    assert "repository" in (await refused(response, 400, "invalid-event"))["reason"]
    assert publisher.messages == []


@pytest.mark.parametrize("tag", HOSTILE_TAGS)
async def test_the_webhook_refuses_a_manifest_event_naming_a_hostile_tag(
    client: Client, publisher: RecordingPublisher, tag: str
) -> None:
    response = await client.post(DISTRIBUTION, data=envelope(dist_event(tag=tag)), headers=auth())
    assert "tag" in (await refused(response, 400, "invalid-event"))["reason"]
    response = await client.post(HARBOR, data=dumps(harbor_default(tag=tag)), headers=auth(content_type=V1))
    assert "tag" in (await refused(response, 400, "invalid-event"))["reason"]
    assert publisher.messages == []


@pytest.mark.parametrize("name", ["../etc", "/etc", "a%2f..", "\u0430pp", "team\u2215app", "team\x00"])
@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (lambda name: dist_event("pull", repository=name), "pull events"),
        (lambda name: dist_event(media_type="application/octet-stream", repository=name, tag=name), "blob events"),
        (lambda name: dist_event("teleport", repository=name), "not replicated"),
    ],
)
async def test_events_georep_does_not_replicate_are_skipped_with_a_reason_whatever_they_name(
    client: Client, publisher: RecordingPublisher, name: str, event: Callable[[str], dict[str, Any]], reason: str
) -> None:
    # distribution holds back every later event behind a refused one: a well-formed event
    # georep does not replicate is acknowledged and skipped, and its names go nowhere.
    with capture_logs() as logs:
        response = await client.post(DISTRIBUTION, data=envelope(event(name)), headers=auth())
    assert response.status == 200
    answer = await response.json()
    assert answer["published"] == []
    [skipped] = answer["skipped"]
    assert reason in skipped["reason"]
    assert any(e["event"] == "webhook.event_skipped" and e["reason"] == skipped["reason"] for e in logs)
    assert publisher.messages == []


async def test_the_longest_names_and_tags_a_registry_sends_are_accepted(
    client: Client, publisher: RecordingPublisher
) -> None:
    assert len(LONGEST_NAME) == NAME_MAX_LENGTH
    body = envelope(dist_event(media_type=OCI_INDEX, repository=LONGEST_NAME, tag=LONGEST_TAG))
    response = await client.post(DISTRIBUTION, data=body, headers=auth())
    assert response.status == 200, await response.text()
    [published] = assert_published_events_are_valid(publisher.messages)
    assert (published.repository.name, str(published.tag)) == (LONGEST_NAME, LONGEST_TAG)


def _insert(value: str, piece: str, at: int) -> str:
    at = at % (len(value) + 1)
    return value[:at] + piece + value[at:]


def _insert_all(value: str, pieces: list[tuple[str, int]]) -> str:
    for piece, at in pieces:
        value = _insert(value, piece, at)
    return value


HOSTILE_PIECES = [
    "..",
    ".",
    "/",
    "//",
    "/..",
    "../",
    "%2f",
    "%2e",
    "%00",
    "\\",
    "\x00",
    "\n",
    " ",
    ":",
    "@",
    "#",
    "?",
    "_",
    "-",
    "A",
    "\u0430",
    "\uff0f",
    "\u2215",
    "\u2044",
    "\u200d",
    "\u200b",
    "\ufeff",
    "\u0131",  # dotless i: upper-cases to I
    "\u017f",  # long s: upper-cases to S
    "\u212a",  # Kelvin sign: lower-cases to k
    "\U0001d41a",  # mathematical bold a
]
alnum = st.text("abcxyz0189", min_size=1, max_size=12)
components = st.builds(
    lambda first, rest: first + "".join(sep + run for sep, run in rest),
    alnum,
    st.lists(st.tuples(st.sampled_from([".", "_", "__", "-", "--", "---"]), alnum), max_size=2),
)
# Up to 30 components: from short names to well past the 255-character limit.
valid_names = st.builds(
    lambda domain, parts: domain + "/".join(parts),
    st.sampled_from(["", "", "localhost:5000/", "Registry.Example.com/", "10.0.0.1:443/"]),
    st.lists(components, min_size=1, max_size=30),
)
valid_tags = st.builds(
    str.__add__,
    st.sampled_from(list("aZ09_")),
    st.text("abcXYZ0189_.-", max_size=TAG_MAX_LENGTH + 12),
)
grammar_alphabet = st.sampled_from(list("ab09.-_/:A%\\") + HOSTILE_PIECES)


def hostile(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Valid values, valid values with hostile pieces inserted, near-grammar noise, and any text at all."""
    mutated = st.builds(
        _insert_all, valid, st.lists(st.tuples(st.sampled_from(HOSTILE_PIECES), st.integers(0, 400)), max_size=3)
    )
    return st.one_of(valid, mutated, st.lists(grammar_alphabet, max_size=80).map("".join), st.text(max_size=300))


@settings(max_examples=400, deadline=None)
@given(hostile(valid_names), st.sampled_from(PREFIXES))
def test_a_repository_name_is_invalid_or_every_key_built_from_it_stays_in_its_prefix(text: str, prefix: str) -> None:
    try:
        repository = Repository.parse(text)
    except InvalidName:
        event("invalid")
        return
    event("accepted")
    assert len(repository.name) <= NAME_MAX_LENGTH
    layout = Layout(prefix)
    for tag in (None, Tag.parse("v1")):
        for key in keys_for(layout, repository, tag, None):
            assert_key_is_contained(key, prefix)
            if key != layout.blob_data(Digest.parse(D1)):
                assert layout.parse(key).repository == repository  # the key names exactly this repository


@settings(max_examples=400, deadline=None)
@given(hostile(valid_tags), st.sampled_from(PREFIXES))
def test_a_tag_is_invalid_or_every_key_built_from_it_stays_in_its_prefix(text: str, prefix: str) -> None:
    try:
        tag = Tag.parse(text)
    except InvalidName:
        event("invalid")
        return
    event("accepted")
    assert len(text) <= TAG_MAX_LENGTH
    layout = Layout(prefix)
    repository = Repository.parse("team/app")
    for key in keys_for(layout, repository, tag, None)[3:]:
        assert_key_is_contained(key, prefix)
        assert layout.parse(key).tag == tag


valid_digests = st.sampled_from([("sha256", 64), ("sha384", 96), ("sha512", 128)]).flatmap(
    lambda alg: st.text("0123456789abcdef", min_size=alg[1], max_size=alg[1]).map(lambda hex_: f"{alg[0]}:{hex_}")
)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        valid_digests,
        st.builds(_insert, valid_digests, st.sampled_from(HOSTILE_PIECES), st.integers(0, 140)),
        st.builds(str.__add__, st.sampled_from(["sha256:", "sha384:", "sha512:", "md5:"]), st.text(max_size=140)),
        st.text(max_size=140),
    ),
    st.sampled_from(PREFIXES),
)
def test_a_digest_is_invalid_or_its_keys_stay_in_their_prefix(text: str, prefix: str) -> None:
    try:
        digest = Digest.parse(text)
    except InvalidDigest:
        event("invalid")
        return
    event("accepted")
    layout = Layout(prefix)
    for key in keys_for(layout, Repository.parse("team/app"), Tag.parse("v1"), digest):
        assert_key_is_contained(key, prefix)
    assert layout.parse(layout.blob_data(digest)).digest == digest


# --- 3. fuzzing the whole adapter ---------------------------------------------------------------------------

INTERESTING_STRINGS = [
    "",
    "push",
    "pull",
    "mount",
    "delete",
    "PUSH_ARTIFACT",
    "DELETE_ARTIFACT",
    "harbor.artifact.pushed",
    "harbor.artifact.deleted",
    "1.0",
    D1,
    "sha256:" + "2" * 64,
    "sha512:" + "3" * 128,
    "sha256:" + "A" * 64,
    "sha256:abc",
    "team/app",
    "library/app",
    "v1",
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/octet-stream",
    "http://127.0.0.1:5000/v2/team/app/manifests/v1",
    "2026-11-27T11:59:59.123456789Z",
    "2026-11-27T11:59:59+14:00",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "2026-11-27T11:59:59",
    "2026-13-45T99:99:99Z",
    *HOSTILE_NAMES[:20],
    *HOSTILE_TAGS[:10],
    LONGEST_NAME,
    LONGEST_TAG,
]
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=40),
    st.sampled_from(INTERESTING_STRINGS),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
DIST_PATHS: list[tuple[str | int, ...]] = [
    ("id",),
    ("action",),
    ("timestamp",),
    ("target",),
    ("target", "mediaType"),
    ("target", "digest"),
    ("target", "repository"),
    ("target", "tag"),
    ("target", "size"),
    ("target", "url"),
    ("target", "length"),
    ("request",),
    ("source",),
]
HARBOR_PATHS: list[tuple[str | int, ...]] = [
    ("type",),
    ("occur_at",),
    ("time",),
    ("specversion",),
    ("event_data",),
    ("data",),
    ("event_data", "resources"),
    ("event_data", "resources", 0),
    ("event_data", "resources", 0, "digest"),
    ("event_data", "resources", 0, "tag"),
    ("event_data", "repository"),
    ("event_data", "repository", "repo_full_name"),
    ("data", "resources", 0, "digest"),
    ("data", "resources", 0, "tag"),
    ("data", "repository", "repo_full_name"),
]
_DELETE = object()
Edit = tuple[tuple[str | int, ...], object]


def _has(parent: Any, step: str | int) -> bool:
    if isinstance(parent, dict):
        return isinstance(step, str) and step in parent
    return isinstance(parent, list) and isinstance(step, int) and step < len(parent)


def _mutate(doc: Any, edits: list[Edit]) -> Any:
    """Replace (or delete) the value at each path; a path through something no longer a container is skipped."""
    doc = json.loads(json.dumps(doc))
    for path, value in edits:
        parent = doc
        for step in path[:-1]:
            if not _has(parent, step):
                break
            parent = parent[step]
        else:
            last = path[-1]
            if isinstance(parent, dict) and isinstance(last, str):
                if value is _DELETE:
                    parent.pop(last, None)
                else:
                    parent[last] = value
            elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
                if value is _DELETE:
                    del parent[last]
                else:
                    parent[last] = value
    return doc


def edits(paths: list[tuple[str | int, ...]]) -> st.SearchStrategy[list[Edit]]:
    return st.lists(st.tuples(st.sampled_from(paths), st.one_of(json_values, st.just(_DELETE))), max_size=3)


def _encode(doc: object, ensure_ascii: bool) -> bytes:
    return json.dumps(doc, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


mutated_envelopes = st.builds(
    lambda events, ensure_ascii: _encode({"events": events}, ensure_ascii),
    st.lists(st.builds(_mutate, st.just(dist_event()), edits(DIST_PATHS)), min_size=1, max_size=3),
    st.booleans(),
)
mutated_harbor = st.builds(
    _encode,
    st.builds(_mutate, st.sampled_from([harbor_default(), harbor_cloudevent()]), edits(HARBOR_PATHS)),
    st.booleans(),
)
bodies = st.one_of(
    mutated_envelopes,
    mutated_harbor,
    json_values.map(lambda doc: _encode(doc, True)),
    st.dictionaries(st.sampled_from(["events", "type", "event_data", "specversion", "data"]), json_values).map(
        lambda doc: _encode(doc, False)
    ),
    st.binary(max_size=300),
    st.binary(min_size=MAX_BODY + 1, max_size=MAX_BODY + 64),
)
GOOD_AUTH = [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} ", TOKEN]
BAD_AUTH = [None, "", "Bearer", f"Basic {TOKEN}", f"Bearer {TOKEN}0", TOKEN[1:]]
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
authorizations = st.one_of(
    st.sampled_from(GOOD_AUTH), st.sampled_from(GOOD_AUTH), st.sampled_from(BAD_AUTH), header_text
)
JSON_TYPES = [V1, "application/vnd.docker.distribution.events.v2+json", "application/json"]
content_types = st.one_of(
    st.sampled_from(JSON_TYPES),
    st.sampled_from([f"{t}; charset=utf-8" for t in JSON_TYPES] + ["application/cloudevents+json", "APPLICATION/JSON"]),
    st.sampled_from([None, "", "text/plain", "application/octet-stream", "multipart/form-data; boundary=x"]),
    header_text,
)
encodings = st.sampled_from([None, None, None, "identity", "gzip", "deflate", "br", "x-unknown"])


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str], bool]:
    """Mostly well-addressed requests (so that bodies get parsed), sometimes anything at all."""
    shape = draw(st.integers(0, 5))
    if shape <= 2:
        path, body = DISTRIBUTION, draw(mutated_envelopes)
    elif shape <= 4:
        path, body = HARBOR, draw(mutated_harbor)
    else:
        path, body = draw(st.sampled_from([DISTRIBUTION, HARBOR])), draw(bodies)
    if draw(st.integers(0, 3)) > 0:
        headers = {"Authorization": draw(st.sampled_from(GOOD_AUTH)), "Content-Type": draw(st.sampled_from(JSON_TYPES))}
        return path, body, headers, draw(st.integers(0, 3)) > 0
    headers = {}
    authorization = draw(authorizations)
    if authorization is not None:
        headers["Authorization"] = authorization
    content_type = draw(content_types)
    if content_type is not None:
        headers["Content-Type"] = content_type
    encoding = draw(encodings)
    if encoding is not None:
        headers["Content-Encoding"] = encoding
        if encoding == "gzip" and draw(st.booleans()):
            body = gzip.compress(body)
    return path, body, headers, draw(st.booleans())


def _answered_by_the_http_parser(status: int, content_type: str) -> bool:
    """aiohttp answers a request it cannot parse as HTTP (e.g. a Content-Encoding it cannot decode at all,
    or a deflate body broken in its first bytes) itself, before the app runs: 400 in plain text."""
    return status == 400 and content_type == "text/plain"


async def _post(
    path: str, body: bytes, headers: dict[str, str], kafka_up: bool
) -> tuple[int, str, bytes, list[tuple[str, bytes, bytes]]]:
    publisher = RecordingPublisher(up=kafka_up)
    async with TestClient(TestServer(WebhookApp(WEBHOOK, KAFKA, publisher).app())) as test_client:
        response = await test_client.post(path, data=body, headers=headers, skip_auto_headers={"Content-Type"})
        return response.status, response.content_type, await response.read(), publisher.messages


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(requests())
def test_the_adapter_survives_anything_and_publishes_only_valid_events(
    case: tuple[str, bytes, dict[str, str], bool],
) -> None:
    path, body, headers, kafka_up = case
    with capture_logs() as logs:
        status, content_type, raw, messages = asyncio.run(_post(path, body, headers, kafka_up))

    assert status in {200, 400, 401, 413, 415, 503}, (status, raw)
    event(f"status {status}" + (" with events published" if messages else ""))
    if _answered_by_the_http_parser(status, content_type):
        assert not any(e["event"].startswith("webhook.") for e in logs)
        assert messages == []
        return
    assert content_type == "application/json", raw
    answer = orjson.loads(raw)
    if headers.get("Authorization") in GOOD_AUTH:
        assert status != 401
    elif headers.get("Authorization") in BAD_AUTH:
        assert status == 401
    if status != 200:
        assert isinstance(answer["error"], str)
        assert answer["error"]
        assert isinstance(answer["reason"], str)
        assert answer["reason"]
        assert any(e["event"] in {"webhook.refused", "webhook.kafka_unavailable"} for e in logs)
        assert messages == [], "a refused request published something"
        if status == 503:
            assert answer["error"] == "kafka-unavailable"
            assert not kafka_up
        return
    events = assert_published_events_are_valid(messages)
    assert answer["published"] == [event.id for event in events]
    assert kafka_up or not events
    skipped_logged = [e for e in logs if e["event"] == "webhook.event_skipped"]
    assert len(skipped_logged) == len(answer["skipped"])
    assert all(s["reason"] for s in answer["skipped"])
