"""The control plane's HTTP side: who may change replicas, and how a bad request is answered.

The real app and a real SQLite store; Kafka is never reached: every request
here is answered before it would need Kafka, or is refused because Kafka has
not answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from adapters.health import Health
from adapters.registry import RegistryClient
from consumers.logstore import LogStore
from engine import topics
from engine.settings import KafkaSettings, LogStoreSettings, PrimarySettings, ReplicasSettings, Settings
from engine.signing import new_signing_key, public_key
from georep.api.control import Control
from georep.api.forward import FORWARDED
from georep.api.service import api_app

TOKEN = "operator-token-123456"


async def _client(tmp_path: Path, token: str | None, *, leading: bool = True) -> AsyncIterator[TestClient[Any, Any]]:
    # Nothing listens on port 9: a request that reached Kafka or the primary would fail at once.
    signing_key = new_signing_key()
    settings = Settings(
        replicas=ReplicasSettings(verify_key=public_key(signing_key), signing_key=SecretStr(signing_key)),
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9", request_timeout_ms=1000, security_protocol="PLAINTEXT"),
        primary=PrimarySettings(url="http://127.0.0.1:9", timeout_s=2),
    )
    async with LogStore(tmp_path / "log.sqlite3") as store, RegistryClient.session(settings.primary) as session:
        settings = settings.model_copy(
            update={"logstore": LogStoreSettings(api_token=SecretStr(token) if token else None, forward_wait_s=1.0)}
        )
        health = Health("api")
        control = Control(settings, store, RegistryClient(settings.primary, session), load_timeout_s=0.5, health=health)
        # The election needs Kafka, which is never there here: these tests are about what the leader answers.
        # (tests/integration/test_api_leader.py elects one for real.)
        control.leadership.leading = leading
        app = api_app(settings, store, control, health)
        async with TestClient(TestServer(app)) as client:
            yield client


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async for client in _client(tmp_path, TOKEN):
        yield client


@pytest.fixture
async def follower(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async for client in _client(tmp_path, TOKEN, leading=False):
        yield client


@pytest.fixture
async def tokenless(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async for client in _client(tmp_path, None):
        yield client


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/replicas"), ("DELETE", "/replicas/eu-frankfurt"), ("POST", "/replicas/eu-frankfurt/backfill")],
)
@pytest.mark.parametrize("header", [None, "Bearer wrong-token", TOKEN[:-1], f"Basic {TOKEN}"])
async def test_changes_without_the_token_are_401(
    guarded: TestClient[Any, Any], method: str, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    async with guarded.request(method, path, json={"region": "x"}, headers=headers) as response:
        assert response.status == 401
        body = await response.json()
    assert body == {"error": "unauthorized", "reason": "missing or wrong bearer token (logstore.api_token)"}


async def test_without_a_configured_token_changes_are_off(tokenless: TestClient[Any, Any]) -> None:
    async with tokenless.post("/replicas", json={}, headers={"Authorization": "Bearer anything"}) as response:
        assert response.status == 403
        assert "set logstore.api_token" in (await response.json())["reason"]


@pytest.mark.parametrize("path", ["/replicas", "/replicas/eu-frankfurt", "/replicas/eu-frankfurt/backfill", "/status"])
async def test_nothing_about_replicas_is_answered_before_the_catalog_is_read(
    guarded: TestClient[Any, Any], path: str
) -> None:
    # Kafka never answers here: "no such replica" or "no backfill" would be a guess from an unread topic.
    async with guarded.get(path) as response:
        assert response.status == 503, "reading needs no token, but it does need the catalog"
        body = await response.json()
    assert body["error"] == "kafka-unavailable"
    assert body["reason"].startswith(
        f"replicas not known yet: could not read {topics.REPLICAS} from Kafka at 127.0.0.1:9"
    )
    async with guarded.get("/readyz") as response:
        assert response.status == 503
        assert (await response.json())["waiting_for"] == ["replicas read from Kafka"]


async def test_a_change_no_leader_takes_is_refused_in_time_and_says_why(follower: TestClient[Any, Any]) -> None:
    """A process that does not lead, with no leader announced, answers 503 after logstore.forward_wait_s."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with follower.delete("/replicas/eu-frankfurt", headers=headers) as response:
        assert response.status == 503
        body = await response.json()
    assert body["error"] == "no-leader"
    assert "no georep API process has announced itself as the leader" in body["reason"]
    async with follower.post("/replicas/eu-frankfurt/backfill", headers=headers | {FORWARDED: "1"}) as response:
        assert response.status == 503
        assert (await response.json())["error"] == "not-leader", "a forwarded change is never forwarded again"


async def test_a_change_by_the_operator_waits_for_kafka_too(guarded: TestClient[Any, Any]) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with guarded.post("/replicas/eu-frankfurt/backfill", headers=headers) as response:
        assert response.status == 503
        assert (await response.json())["error"] == "kafka-unavailable"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "body is not JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"backfill": "yes"}', "backfill must be true or false"),
        (b'{"region": "eu-frankfurt", "endpoint": "ftp://x", "bucket": "abc", "credentials_ref": "env:K"}', "http://"),
        (b'{"region": "eu-frankfurt", "endpoint": "http://x", "bucket": "abc", "credentials_ref": "sk"}', "reference"),
    ],
)
async def test_a_bad_replica_request_is_400_and_says_why(
    guarded: TestClient[Any, Any], body: bytes, reason: str
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with guarded.post("/replicas", data=body, headers=headers) as response:
        assert response.status == 400
        answer = await response.json()
    assert reason in answer["reason"]


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("header", [None, "Bearer wrong-token"])
async def test_image_status_asks_the_primary_so_it_needs_the_token(
    guarded: TestClient[Any, Any], header: str | None
) -> None:
    """Issue 16: answered openly, it told anyone which private images exist and their digests."""
    headers = {"Authorization": header} if header else {}
    async with guarded.get("/status/image", params={"image": "secret-team/payroll:v2"}, headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["error"] == "unauthorized"


@pytest.mark.parametrize("image", ["team/app:-tag", "../etc:v1", "team/app@sha256:short", "Team/App"])
async def test_an_image_that_is_no_image_is_400(guarded: TestClient[Any, Any], image: str) -> None:
    async with guarded.get("/status/image", params={"image": image}, headers=AUTH) as response:
        assert response.status == 400
        assert "expected repo:tag or repo@digest" in (await response.json())["reason"]


async def test_image_status_without_the_primary_is_503_and_says_so(guarded: TestClient[Any, Any]) -> None:
    # Nothing answers at the settings' primary (port 9, discard).
    async with guarded.get("/status/image", params={"image": "team/app:v1"}, headers=AUTH) as response:
        assert response.status == 503
        body = await response.json()
    assert body["error"] == "primary-unavailable"
    assert "primary registry unreachable" in body["reason"]


# -- the console's changes -------------------------------------------------------------------------


async def _signed_in(client: TestClient[Any, Any]) -> str:
    """Sign in through the console's form; returns the CSRF token its pages then carry."""
    async with client.post("/ui/login", data={"token": TOKEN, "next": "/ui/replicas/new"}) as response:
        assert response.status == 200, await response.text()  # followed the redirect to the form
        page = await response.text()
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]


async def test_a_console_change_needs_a_session_and_its_csrf_token(guarded: TestClient[Any, Any]) -> None:
    form = {"region": "ap-tokyo", "endpoint": "http://127.0.0.1:9", "bucket": "b", "credentials_ref": "env:X"}
    async with guarded.post("/ui/replicas", data=form) as anonymous:
        assert anonymous.status == 401
        assert "sign in with the API token" in await anonymous.text()
    async with guarded.post("/ui/login", data={"token": "wrong"}) as wrong:
        assert wrong.status == 401
        assert "wrong API token" in await wrong.text()
    csrf = await _signed_in(guarded)
    assert len(csrf) == 64
    for stale in ("", "0" * 64, csrf[:-1]):
        async with guarded.post("/ui/replicas", data=form | {"csrf": stale}) as refused:
            assert refused.status == 403
            assert "stale or came from elsewhere" in await refused.text()
    foreign = {"Origin": "https://evil.example"}
    async with guarded.post("/ui/replicas", data=form | {"csrf": csrf}, headers=foreign) as cross_site:
        assert cross_site.status == 403
    async with guarded.get("/ui/replicas/new") as page:
        policy = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy
