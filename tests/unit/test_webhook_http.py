"""The webhook's answers to bad callers, bad bodies, and an unreachable Kafka (no broker needed)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr
from structlog.testing import capture_logs

from adapters.kafka import Publisher
from adapters.runtime import start_http
from engine.errors import InvalidInput
from engine.settings import KafkaSettings, WebhookSettings
from producers.webhook import WebhookApp
from tests.unit.test_notifications import dist_event, envelope, harbor_default

TOKEN = "s3cret-token-for-tests"
V1 = "application/vnd.docker.distribution.events.v1+json"
# Port 1 on loopback: nothing listens, so Kafka is "down" for real.
DOWN = KafkaSettings(bootstrap_servers="127.0.0.1:1", request_timeout_ms=1000, security_protocol="PLAINTEXT")


@pytest.fixture
def webhook() -> WebhookApp:
    settings = WebhookSettings(token=SecretStr(TOKEN), max_body_bytes=4096, publish_timeout_s=1.0)
    return WebhookApp(settings, DOWN, Publisher(DOWN, "test"))


@pytest.fixture
async def client(webhook: WebhookApp) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(webhook.app())) as test_client:
        yield test_client


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": V1}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic " + TOKEN}])
async def test_unauthenticated_callers_get_401(client: TestClient, headers: dict[str, str]) -> None:  # type: ignore[type-arg]
    with capture_logs() as logs:
        response = await client.post("/webhooks/distribution", data=envelope(dist_event()), headers=headers)
    assert response.status == 401
    assert (await response.json())["error"] == "unauthorized"
    assert any(e["event"] == "webhook.refused" and e["status"] == 401 for e in logs)


async def test_harbor_bare_token_is_accepted_as_auth(client: TestClient) -> None:  # type: ignore[type-arg]
    body = json.dumps(harbor_default("PULL_ARTIFACT")).encode()
    response = await client.post(
        "/webhooks/harbor", data=body, headers={"Authorization": TOKEN, "Content-Type": "application/json"}
    )
    assert response.status == 200
    assert (await response.json())["skipped"][0]["reason"].startswith("Harbor event type")


async def test_oversized_body_gets_413(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post("/webhooks/distribution", data=b"{" + b" " * 5000 + b"}", headers=auth())
    assert response.status == 413
    assert "4096" in (await response.json())["reason"]


async def test_non_json_content_type_gets_415(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/webhooks/distribution", data=b"x", headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}
    )
    assert response.status == 415


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "invalid-event"),
        (envelope(dist_event(digest="sha256:1234")), "invalid-event"),
        (envelope(dist_event(repository="../../etc/passwd")), "invalid-event"),
    ],
)
async def test_bad_bodies_get_400_with_a_reason(client: TestClient, body: bytes, error: str) -> None:  # type: ignore[type-arg]
    with capture_logs() as logs:
        response = await client.post("/webhooks/distribution", data=body, headers=auth())
    assert response.status == 400
    answer = await response.json()
    assert answer["error"] == error
    assert answer["reason"]
    assert any(e["event"] == "webhook.refused" and e["reason"] == answer["reason"] for e in logs)


async def test_skipped_only_envelope_is_acknowledged_without_kafka(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post("/webhooks/distribution", data=envelope(dist_event("pull")), headers=auth())
    assert response.status == 200
    assert (await response.json()) == {
        "published": [],
        "duplicates": [],
        "skipped": [{"index": 0, "id": dist_event()["id"], "reason": "pull events are not replicated"}],
    }


async def test_events_the_registry_need_not_send_are_pointed_out_once_each(client: TestClient) -> None:  # type: ignore[type-arg]
    """A registry set up without the ignore entries sends a notification per uploaded blob (and per pull): each is
    acknowledged and skipped, and the first of each kind tells the operator which setting stops them."""
    blob = dist_event(media_type="application/octet-stream")
    with capture_logs() as logs:
        for body in (envelope(blob), envelope(blob, dist_event("pull")), envelope(dist_event("pull"), blob)):
            response = await client.post("/webhooks/distribution", data=body, headers=auth())
            assert response.status == 200
            assert (await response.json())["published"] == []
    advice = {entry["kind"]: entry["advice"] for entry in logs if entry["event"] == "webhook.avoidable_events"}
    assert [entry["kind"] for entry in logs if entry["event"] == "webhook.avoidable_events"] == ["blob", "pull"]
    assert "application/octet-stream" in advice["blob"]
    assert "ignore.mediatypes" in advice["blob"]
    assert "ignore.actions" in advice["pull"]
    assert all(entry["log_level"] == "warning" for entry in logs if entry["event"] == "webhook.avoidable_events")
    assert sum(entry["event"] == "webhook.event_skipped" for entry in logs) == 5


async def test_kafka_down_gets_503_so_the_registry_retries(client: TestClient, webhook: WebhookApp) -> None:  # type: ignore[type-arg]
    response = await client.post("/webhooks/distribution", data=envelope(dist_event()), headers=auth())
    assert response.status == 503
    assert (await response.json())["error"] == "kafka-unavailable"
    # Readiness never trusts a flag: it is the probe's last answer (issue 15: it stayed ready with Kafka gone).
    assert (await client.get("/readyz")).status == 503, "no probe has answered yet"
    assert not await webhook.monitor.check_once()
    for path in ("/readyz", "/healthz"):
        answer = await client.get(path)
        assert answer.status == 503
        (problem,) = (await answer.json())["problems"]
        assert (problem["check"], problem["subject"]) == ("kafka", "127.0.0.1:1")
        assert problem["detail"].startswith("brokers unreachable")


async def test_the_token_never_reaches_the_logs(client: TestClient) -> None:  # type: ignore[type-arg]
    with capture_logs() as logs:
        await client.post("/webhooks/distribution", data=envelope(dist_event()), headers=auth("wrong-" + TOKEN))
        await client.post("/webhooks/distribution", data=b"{", headers=auth())
    assert logs
    assert TOKEN not in repr(logs)


def test_a_webhook_without_a_token_refuses_to_start() -> None:
    with pytest.raises(InvalidInput, match=r"webhook\.token is required"):
        WebhookApp(WebhookSettings(), DOWN, Publisher(DOWN, "test"))


async def _serve(header_timeout_s: float, max_connections: int) -> tuple[Any, int]:
    settings = WebhookSettings(token=SecretStr(TOKEN), max_body_bytes=4096, publish_timeout_s=1.0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    app = WebhookApp(settings, DOWN, Publisher(DOWN, "test")).app()
    runner = await start_http(
        app, "127.0.0.1", port, header_timeout_s=header_timeout_s, max_connections=max_connections
    )
    return runner, port


async def test_a_client_that_sends_its_headers_too_slowly_is_cut_off() -> None:
    runner, port = await _serve(header_timeout_s=0.5, max_connections=10)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /webhooks/distribution HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        await writer.drain()
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b"", "the server closes the half-sent request"
        assert 0.4 < time.monotonic() - started < 3
        writer.close()
    finally:
        await runner.cleanup()


async def test_connections_past_the_limit_are_closed_at_once() -> None:
    runner, port = await _serve(header_timeout_s=30, max_connections=3)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b"", "a fourth connection is refused"
        writer.close()
        _, first = held[0]
        first.close()
        await first.wait_closed()
        async with asyncio.timeout(5):
            while True:  # the freed slot is taken by the next connection once the server saw the close
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = await reader.read()
                writer.close()
                if answer:
                    break
        assert answer.startswith(b"HTTP/1.1 ")
    finally:
        for _, writer in held:
            writer.close()
        await runner.cleanup()
