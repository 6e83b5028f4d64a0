"""The replication log from the CLI and over HTTP, and the webhook's other doors (Harbor, duplicates)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp
import pytest

from deploy.local import images
from tests.integration.conftest import Stack, run_georep

pytestmark = pytest.mark.integration


async def georep(live: Stack, *args: str) -> str:
    """Run the real `georep` command against the stack; returns its stdout."""
    status, out, err = await run_georep(live, *args)
    assert status == 0, err
    return out


async def georep_logs(live: Stack, *args: str) -> list[dict[str, Any]]:
    out = await georep(live, "logs", "--json", *args)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def post(live: Stack, url: str, body: dict[str, Any], content_type: str = "application/json") -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {live.info['webhook_token']}", "Content-Type": content_type}
    async with aiohttp.ClientSession() as session, session.post(url, data=json.dumps(body), headers=headers) as r:
        return r.status, await r.json()


async def test_log_answers_by_repository_region_and_status_from_cli_and_http(live: Stack) -> None:
    repo = live.unique("logs/app")
    digest = live.push_image(repo, "v1", images.image([images.layer(30_000, repo)]))
    await live.replicated(repo, "v1", digest)
    await live.final_records(repo, digest)
    for region in live.regions:
        over_http = await live.records(
            lambda found: len(found) == 1, repository=repo, region=region, status="succeeded"
        )
        from_cli = await georep_logs(live, "--repository", repo, "--region", region, "--status", "succeeded")
        assert [(r["event_id"], r["region"], r["digest"]) for r in from_cli] == [
            (over_http[0]["event_id"], region, digest)
        ]
    assert await live.records(lambda found: True, repository=repo, status="failed") == []
    assert await georep_logs(live, "--repository", repo, "--status", "dead-lettered") == []
    table = await georep(live, "logs", "--repository", repo)
    assert all(region in table for region in live.regions)
    assert "succeeded" in table


async def test_harbor_webhook_and_duplicate_deliveries_replicate_once(live: Stack) -> None:
    repo = live.unique("harbor/app")
    # Harbor's registry speaks the same pull API; the primary stands in for it.
    digest = live.push_image(repo, "v1", images.image([images.layer(20_000, repo)]))
    await live.replicated(repo, "v1", digest)
    payload = {
        "type": "PUSH_ARTIFACT",
        "occur_at": 1_900_000_000,
        "operator": "admin",
        "event_data": {
            "resources": [{"digest": digest, "tag": "from-harbor", "resource_url": f"harbor/{repo}:from-harbor"}],
            "repository": {"name": repo.split("/", 1)[1], "namespace": repo.split("/")[0], "repo_full_name": repo},
        },
    }
    statuses = await asyncio.gather(*(post(live, live.info["harbor_webhook"], payload) for _ in range(3)))
    assert [status for status, _ in statuses] == [200, 200, 200]
    event_ids = {(answer["published"] + answer["duplicates"])[0] for _, answer in statuses}
    assert len(event_ids) == 1, "redeliveries of one Harbor event must carry one id"
    # Once Kafka has taken it, a redelivery is acknowledged and not published again.
    status, again = await post(live, live.info["harbor_webhook"], payload)
    assert (status, again["published"], again["duplicates"]) == (200, [], list(event_ids))
    await live.replicated(repo, "from-harbor", digest)
    found = await live.records(
        lambda rs: {r["region"] for r in rs if r["status"] == "succeeded"} == set(live.regions),
        repository=repo,
        tag="from-harbor",
    )
    assert sorted(r["region"] for r in found) == sorted(live.regions), "one record per event and region"


async def test_distribution_envelope_is_acknowledged_after_kafka(live: Stack) -> None:
    repo = live.unique("envelope/app")
    digest = live.push_image(repo, "v1", images.image([images.layer(10_000, repo)]))
    event_id = f"manual-{repo.replace('/', '-')}"
    event = {
        "id": event_id,
        "timestamp": "2030-01-01T00:00:00.5Z",
        "action": "push",
        "target": {"mediaType": images.OCI_MANIFEST, "digest": digest, "size": 1, "repository": repo, "tag": "again"},
    }
    status, answer = await post(
        live, live.info["webhook"], {"events": [event]}, "application/vnd.docker.distribution.events.v1+json"
    )
    assert (status, answer["published"]) == (200, [event_id])
    await live.replicated(repo, "again", digest)
    found = await live.records(lambda rs: len(rs) == len(live.regions), event_id=event_id)
    assert {r["status"] for r in found} == {"succeeded"}


async def test_logs_follow_tails_the_topic_live(live: Stack) -> None:
    repo = live.unique("follow/app")
    # --from-beginning: the follower sees every record however late it attaches, so the push
    # below need not wait for it; --limit makes it exit once both regions have reported.
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "georep", "--config", live.info["config"], "logs", "--follow", "--from-beginning",
        "--json", "--repository", repo, "--status", "succeeded", "--limit", str(len(live.regions)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        digest = live.push_image(repo, "v1", images.image([images.layer(5_000, repo)]))
        out, err = await asyncio.wait_for(follower.communicate(), 60)
    finally:
        if follower.returncode is None:
            follower.terminate()
            await follower.wait()
    assert follower.returncode == 0, err.decode()
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert sorted(r["region"] for r in records) == sorted(live.regions)
    assert {(r["repository"], r["digest"], r["status"]) for r in records} == {(repo, digest, "succeeded")}
