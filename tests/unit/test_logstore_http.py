"""The log store's HTTP API: the real aiohttp app over a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from consumers.logstore import LogStore
from consumers.logstore.api import build_app
from engine.events import ReplicationRecord, Status

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def record(event_id: str, region: str, minutes: int, **fields: Any) -> ReplicationRecord:
    finished = T0 + timedelta(minutes=minutes)
    base: dict[str, Any] = {
        "event_id": event_id,
        "region": region,
        "repository": "library/nginx",
        "tag": "1.0",
        "digest": DIGEST_A,
        "status": "succeeded",
        "attempt": 1,
        "started_at": finished - timedelta(seconds=2),
        "finished_at": finished,
    }
    return ReplicationRecord.model_validate(base | fields)


RECORDS = [
    record("e1", "eu-west", 0, blobs_total=3, blobs_copied=3, bytes_copied=4096, lag_ms=2100),
    record("e1", "us-east", 1, status="failed", attempt=4, error="storage unavailable"),
    record("e2", "eu-west", 2, repository="library/redis", tag="7", digest=DIGEST_B, status="dead-lettered"),
    record("e3", "us-east", 3, tag=None, action="delete", status="skipped"),
]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async with LogStore(tmp_path / "log.sqlite3") as store:
        await store.put_many(RECORDS)
        async with TestClient(TestServer(build_app(store))) as test_client:
            yield test_client


async def get_json(client: TestClient[Any, Any], path: str, params: dict[str, str] | None = None) -> Any:
    response = await client.get(path, params=params)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


def event_keys(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["event_id"], r["region"]) for r in body["records"]]


async def test_logs_returns_every_record_newest_first_in_the_record_schema(client: TestClient[Any, Any]) -> None:
    body = await get_json(client, "/logs")

    assert body == {"records": [r.model_dump(mode="json", by_alias=True) for r in reversed(RECORDS)]}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"repository": "library/redis"}, [("e2", "eu-west")]),
        ({"tag": "1.0"}, [("e1", "us-east"), ("e1", "eu-west")]),
        ({"digest": DIGEST_B}, [("e2", "eu-west")]),
        ({"region": "us-east"}, [("e3", "us-east"), ("e1", "us-east")]),
        ({"status": "dead-lettered"}, [("e2", "eu-west")]),
        ({"event_id": "e1"}, [("e1", "us-east"), ("e1", "eu-west")]),
        ({"since": "2026-03-01T12:02:00Z"}, [("e3", "us-east"), ("e2", "eu-west")]),
        ({"until": "2026-03-01T12:01:00Z"}, [("e1", "eu-west")]),
        # 14:01+02:00 is 12:01Z: the offset is honoured, not dropped.
        (
            {"since": "2026-03-01T14:01:00+02:00", "until": "2026-03-01T12:03:00Z"},
            [("e2", "eu-west"), ("e1", "us-east")],
        ),
        ({"limit": "1"}, [("e3", "us-east")]),
        ({"region": "eu-west", "status": "succeeded"}, [("e1", "eu-west")]),
        ({"repository": "nobody/here"}, []),
    ],
)
async def test_logs_filters(
    client: TestClient[Any, Any], params: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    assert event_keys(await get_json(client, "/logs", params)) == expected


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"digest": "sha256:abc"}, "digest: invalid digest 'sha256:abc'"),
        ({"digest": "md5:" + "0" * 32}, "digest: invalid digest"),
        ({"repository": "../etc"}, "repository: invalid repository name"),
        ({"tag": "-x"}, "tag: invalid tag"),
        ({"region": "Not_A_Region"}, "region: invalid region name"),
        ({"status": "ok"}, "status: Input should be 'succeeded', 'failed', 'dead-lettered' or 'skipped'"),
        ({"since": "yesterday"}, "since: "),
        ({"since": "2026-03-01T12:00:00"}, "since: Input should have timezone info"),
        # An unencoded '+' arrives as a space; the reason says how to write it.
        ({"until": "2026-03-01T12:00:00 02:00"}, "%2B"),
        ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "is after until"),
        ({"limit": "0"}, "limit: Input should be greater than or equal to 1"),
        ({"limit": "10001"}, "limit: Input should be less than or equal to 10000"),
        ({"limit": "ten"}, "limit: Input should be a valid integer"),
        ({"repo": "library/nginx"}, "repo: unknown parameter; known: repository, tag"),
    ],
)
async def test_a_bad_parameter_is_a_400_naming_it(
    client: TestClient[Any, Any], params: dict[str, str], names: str
) -> None:
    response = await client.get("/logs", params=params)

    assert response.status == 400
    body = await response.json()
    assert body["error"] == "invalid-query"
    assert names in body["reason"]


async def test_a_repeated_parameter_is_a_400(client: TestClient[Any, Any]) -> None:
    response = await client.get("/logs", params=[("region", "eu-west"), ("region", "us-east")])

    assert response.status == 400
    assert (await response.json())["reason"] == "region: given more than once"


async def test_every_status_is_accepted(client: TestClient[Any, Any]) -> None:
    for status in Status:
        body = await get_json(client, "/logs", {"status": status.value})
        assert {r["status"] for r in body["records"]} <= {status.value}


async def test_metrics_are_prometheus_text(client: TestClient[Any, Any]) -> None:
    response = await client.get("/metrics")

    assert response.status == 200
    assert response.content_type == "text/plain"
    assert "python_info" in await response.text()
