"""georep's own processes without a single point of failure: two API processes elect a leader through Kafka,
and two webhooks each get every notification, yet every event is replicated once."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import time
from typing import Any

import aiohttp
import pytest

from deploy.local import images
from deploy.local.probe import wait_served
from tests.faults.conftest import EVENTS, RECOVERIES, Faults
from tests.waiting import until

pytestmark = pytest.mark.faults


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.json()


async def leader(f: Faults) -> tuple[str, str] | None:
    """(process name, URL) of the API process that leads now, if one does."""
    for index, url in enumerate(f.info["apis"]):
        try:
            _, health = await get(f"{url}/healthz")
        except aiohttp.ClientError:
            continue
        if health.get("leading"):
            return f"logstore-{index}", url
    return None


async def backfill(f: Faults, url: str, region: str) -> dict[str, Any]:
    status, body = await get(f"{url}/replicas/{region}/backfill")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def call(f: Faults, url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {f.info['api_token']}"}
    async with aiohttp.ClientSession() as session, session.request(method, url + path, json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_17_the_api_leader_killed_mid_backfill_another_takes_over_and_resumes(healthy: Faults) -> None:
    f = healthy
    repos = [f.unique("ha/app") for _ in range(30)]
    pushed = {r: await asyncio.to_thread(f.push_image, r, "v1", images.image([images.layer(4096, r)])) for r in repos}
    elected = await until(lambda: leader(f), "an API process to lead")
    name, leader_url = elected
    follower_url = next(url for url in f.info["apis"] if url != leader_url)

    async with f.extra_region("ha-tokyo", 7, backfill=False, include=["ha/*"]) as region:
        # Sent to the follower: it forwards the change to the leader.
        status, body = await call(f, follower_url, "POST", "/replicas/ha-tokyo/backfill")
        assert status == 202, body

        async def partway() -> dict[str, Any] | None:
            status, progress = await get(f"{follower_url}/replicas/ha-tokyo/backfill")
            if status == 404:
                return None  # the follower has not read the leader's first checkpoint yet
            assert status == 200, progress
            running = progress["state"] == "running" and progress["repositories_done"] >= 3
            return progress if running else None

        await until(partway, "the leader's backfill to be partway", 60)
        primary = f.info["pids"]["primary"]
        os.kill(primary, signal.SIGSTOP)  # hold the walk where it is, so that the kill lands mid-backfill
        try:
            crashed = await backfill(f, follower_url, "ha-tokyo")
            await f.stop(name, signal.SIGKILL)
            killed = time.monotonic()
        finally:
            os.kill(primary, signal.SIGCONT)
        assert crashed["state"] == "running"

        async def taken_over() -> bool:
            found = await leader(f)
            return found is not None and found[1] == follower_url

        await until(taken_over, "the follower to lead", 60)
        RECOVERIES["17 API leader SIGKILLed mid-backfill: kill -> the other process leads"] = time.monotonic() - killed

        async def resumed() -> dict[str, Any] | None:
            progress = await backfill(f, follower_url, "ha-tokyo")
            return progress if progress["repositories_done"] > crashed["repositories_done"] else None

        await until(resumed, "the new leader to resume the backfill", 60)
        RECOVERIES["17 ... -> the backfill moves on from its checkpoint"] = time.monotonic() - killed

        async def done() -> dict[str, Any] | None:
            progress = await backfill(f, follower_url, "ha-tokyo")
            return progress if progress["state"] == "done" else None

        finished = await until(done, "the resumed backfill to finish", 120)
        assert finished["started_at"] == crashed["started_at"], "resumed from its checkpoint, not started again"
        assert finished["repositories_done"] == finished["repositories_total"]
        for repo, digest in pushed.items():
            await wait_served(region.registry, repo, "v1", digest, 120)


async def test_17b_two_creates_of_one_region_at_two_processes_one_wins(healthy: Faults) -> None:
    f = healthy
    await until(lambda: leader(f), "an API process to lead")
    base = f.regions["ap-singapore"]
    keys = f.root / "credentials" / "ha-race.json"
    keys.write_text(json.dumps({"access_key": base["access_key"], "secret_key": base["secret_key"]}))
    request = {
        "region": "ha-race", "endpoint": base["s3"], "bucket": base["bucket"], "prefix": "ha-race",
        "credentials_ref": f"file:{keys}", "backfill": False, "include": ["nothing/*"],
    }  # fmt: skip
    answers = await asyncio.gather(*(call(f, url, "POST", "/replicas", request) for url in f.info["apis"]))
    try:
        assert sorted(status for status, _ in answers) == [201, 409], answers
        refused = next(body for status, body in answers if status == 409)
        assert refused["rule"] == "exists"
    finally:
        status, body = await call(f, f.info["apis"][0], "DELETE", "/replicas/ha-race")
        assert status == 200, body


async def test_18_two_webhooks_each_get_every_notification_and_each_event_replicates_once(healthy: Faults) -> None:
    f = healthy
    assert len(f.info["webhooks"]) == 2
    repos = [f.unique("ha/twice") for _ in range(5)]
    duplicates_before = {name: await duplicates(r["replicator"]) for name, r in f.regions.items()}
    pushed = {r: await asyncio.to_thread(f.push_image, r, "v1", images.image([images.layer(4096, r)])) for r in repos}
    for repo, digest in pushed.items():
        await f.replicated(repo, "v1", digest)

    events = [json.loads(r.value) for r in await f.topic(EVENTS) if r.key and r.key.decode() in pushed]
    copies = collections.Counter(e["id"] for e in events)
    assert copies, "no event of these pushes on the topic"
    assert set(copies.values()) == {2}, f"each event is published once by each webhook: {copies}"

    async def second_copies_seen() -> bool:
        seen = [await duplicates(r["replicator"]) - duplicates_before[n] for n, r in f.regions.items()]
        return all(n >= len(copies) for n in seen)

    await until(second_copies_seen, "every region's replicator to pass over the second copy of each event")
    records = [
        r for r in await f.log_records(status="succeeded") if r["repository"] in pushed and r["region"] in f.regions
    ]
    per_region = collections.Counter((r["event_id"], r["region"]) for r in records)
    assert set(per_region) == {(event_id, region) for event_id in copies for region in f.regions}
    assert set(per_region.values()) == {1}, "each event succeeded once per region"


async def duplicates(replicator: str) -> float:
    """How many second deliveries the replicator has passed over (its /metrics)."""
    async with aiohttp.ClientSession() as session, session.get(f"{replicator}/metrics") as response:
        text = await response.text()
    lines = [line for line in text.splitlines() if line.startswith("georep_replicator_events_total{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if 'status="duplicate"' in line)
