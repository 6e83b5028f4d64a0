"""A region's S3 goes away; the primary sends corrupt bytes or loses a manifest; garbage lands on the topic."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import aiohttp
import pytest

from deploy.local import images
from deploy.local.probe import wait_served
from engine import topics
from engine.digest import Digest
from tests.faults.conftest import RECOVERIES, Faults
from tests.faults.helpers import MiB, bucket, layout, size_of, uploads
from tests.waiting import until

pytestmark = pytest.mark.faults

OUTAGE_S = 30


async def push(faults: Faults, repo: str, tag: str, size: int, seed: str) -> str:
    return await asyncio.to_thread(faults.push_image, repo, tag, images.image([images.layer(size, seed)]))


async def georep(faults: Faults, *args: str, env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "georep", "--config", faults.info["config"], *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_3_one_region_s3_down_for_30s_other_region_unaffected_and_it_catches_up(healthy: Faults) -> None:
    f = healthy
    down, up = "eu-frankfurt", "ap-singapore"
    before = await f.end_offsets()
    await f.stop(f"s3-{down}")
    started = time.monotonic()
    pushed: dict[str, str] = {}
    latencies: list[float] = []
    while time.monotonic() - started < OUTAGE_S:
        repo = f.unique("faults/s3-down")
        pushed[repo] = await push(f, repo, "v1", 30_000, repo)
        # The healthy region replicates while the other's storage is gone.
        latencies.append(await wait_served(f.regions[up]["registry"], repo, "v1", pushed[repo], 30))
    # Nothing the stopped region failed was committed: its group is still at or before where the outage began.
    committed = await f.committed(down)
    assert all(committed.get(p, 0) <= offset for p, offset in before.items()), (committed, before)
    RECOVERIES[f"3 {up} push->pullable while {down} S3 was down: max of {len(latencies)}"] = max(latencies)

    with f.timed(f"3 {down} S3 down {OUTAGE_S}s: restart -> all {len(pushed)} images there"):
        await f.start(f"s3-{down}")
        for repo, digest in pushed.items():
            await f.replicated(repo, "v1", digest)
    for repo in list(pushed)[:2]:
        f.pull_everywhere(repo, "v1", pushed[repo])


async def test_4_corrupt_bytes_from_the_primary_are_never_written_and_redrive_repairs(healthy: Faults) -> None:
    f = healthy
    region = "ap-singapore"
    name = f"replicator-{region}"
    repo = f.unique("faults/corrupt")
    bad = images.layer(20 * MiB, repo)  # above the multipart threshold: the upload must be aborted
    img = images.image([images.layer(10_000, f"{repo}-ok"), bad])
    proxy_port = f.info["port_base"] + 90
    proxy = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.faults.proxy", "--listen", f"127.0.0.1:{proxy_port}",
        "--upstream", f"http://{f.primary}", "--corrupt", bad.digest,
    )  # fmt: skip
    try:
        await until(lambda: _answers(f"http://127.0.0.1:{proxy_port}/v2/"), "the corrupting proxy")
        await f.stop(name)
        await f.start(name, env={"GEOREP_PRIMARY__URL": f"http://127.0.0.1:{proxy_port}"})
        digest = await asyncio.to_thread(f.push_image, repo, "v1", img)

        async def dead_letter() -> dict[str, object] | None:
            letters = [
                d
                for d in await f.dead_letters()
                if d["region"] == region and (d["event"] or {}).get("repository") == repo
            ]
            return letters[0] if letters else None

        letter = await until(dead_letter, "the corrupt blob's event in the dead-letter topic")
        assert (letter["reason"], letter["attempts"]) == ("digest-mismatch", 3), letter
        records = await f.log_records(repository=repo, region=region, status="dead-lettered")
        assert len(records) == 1, records
        assert "digest-mismatch" in records[0]["error"]
        async with bucket(f, region) as s3:
            key = layout(f, region).blob_data(Digest.parse(bad.digest))
            assert await size_of(s3, f.regions[region]["bucket"], key) is None, "corrupt bytes were written"
            assert await uploads(s3, f.regions[region]["bucket"], key) == []
        # The other region, reading the primary directly, has it.
        await wait_served(f.regions["eu-frankfurt"]["registry"], repo, "v1", digest, 60)
    finally:
        proxy.terminate()
        await proxy.wait()
        await f.stop(name)
        await f.start(name)  # reading the primary directly again: the cause is fixed
    with f.timed("4 corrupt blob dead-lettered: redrive -> image in region"):
        out = await georep(f, "redrive", "--region", region)
        assert f"{region}: 1 dead letter(s) redriven" in out, out
        await f.replicated(repo, "v1", digest)

    # The region serves the image a moment before its record reaches the log store: wait for the record.
    async def latest() -> list[str] | None:
        statuses = [r["status"] for r in await f.log_records(repository=repo, region=region)]
        return statuses if statuses and statuses[-1] != "dead-lettered" else None

    statuses = await until(latest, "the redriven event's record", 30)
    assert statuses[-1] == "succeeded"
    f.pull_everywhere(repo, "v1", digest)
    # A second redrive finds nothing new: each dead letter is redriven once.
    assert f"{region}: 0 dead letter(s) redriven" in await georep(f, "redrive", "--region", region)


async def test_5_malformed_and_gone_events_are_dead_lettered_and_the_partition_moves_on(healthy: Faults) -> None:
    f = healthy
    repo = f.unique("faults/poison")
    replicators = [f"replicator-{region}" for region in f.regions]
    # The manifest is deleted from the primary before any region got to it.
    await asyncio.gather(*(f.stop(name) for name in replicators))
    gone = await push(f, repo, "v1", 20_000, f"{repo}-gone")
    url = f"http://{f.primary}/v2/{repo}/manifests/{gone}"
    async with aiohttp.ClientSession() as session, session.delete(url) as response:
        assert response.status == 202, await response.text()
    garbage = b'{"schema": 1, "id": "x", "action": "push", "repository": "../../etc", "digest": "sha256:zz"'
    await f.put_raw(repo.encode(), garbage)
    after = await push(f, repo, "v2", 20_000, f"{repo}-after")
    await asyncio.gather(*(f.start(name) for name in replicators))

    with f.timed("5 deleted-manifest + malformed events: replicators back -> next push in both regions"):
        await f.replicated(repo, "v2", after)
    letters = await f.dead_letters()
    for region in f.regions:
        mine = [d for d in letters if d["region"] == region]
        assert any(d["raw"] and d["raw"].startswith(garbage.decode()[:40]) and d["reason"] == "invalid-event"
                   for d in mine), mine  # fmt: skip
        assert any((d["event"] or {}).get("digest") == gone and d["reason"] == "not-found" for d in mine), mine
    records = [r for r in await f.log_records(repository=repo) if r["digest"] == gone and r["tag"] == "v1"]
    assert {(r["region"], r["status"]) for r in records} == {(r, "dead-lettered") for r in f.regions}
    f.pull_everywhere(repo, "v2", after)


async def test_9_no_credential_appears_in_any_log_or_record(faults: Faults) -> None:
    secrets = [faults.info["webhook_token"]]
    for region in faults.regions.values():
        secrets += [region["access_key"], region["secret_key"]]
    # georep's own processes. (distribution itself logs its endpoints' headers, the token included, at start.)
    logs = sorted((faults.root / "logs").glob("*.log"))
    ours = [log for log in logs if log.name.startswith(("webhook", "logstore", "replicator-"))]
    assert len(ours) >= 4
    for log in ours:
        text = log.read_text(errors="replace")
        assert text, f"{log.name} is empty: nothing was checked"
        leaked = [s[:4] + "…" for s in secrets if s in text]
        assert not leaked, f"{log.name} holds credentials {leaked}"
    values = [
        r.value.decode() for topic in (topics.REPLICATION_LOG, topics.DEAD_LETTER) for r in await faults.topic(topic)
    ]
    assert values
    assert not [s for s in secrets if any(s in v for v in values)]


async def _answers(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status < 500
    except aiohttp.ClientError:
        return False


async def _healthz(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as response:
        return response.status, await response.json()


async def _metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


KILLS = 6


async def test_10_a_region_s3_killed_during_multipart_copies_six_times_loses_nothing_and_still_copies(
    healthy: Faults,
) -> None:
    """Issue 15: after four S3 kills mid-upload the replicator froze for good (a part's budget bytes leaked per kill).

    A 128 MiB image (sixteen 8 MiB parts) is pushed; once the region's multipart upload of its layer has begun,
    the region's SeaweedFS is SIGKILLed and restarted. Six times, each interrupting a copy (each image's record
    shows a failed attempt). Then every image is in the region, the budget holds nothing, /healthz is 200, and
    a large image pushed afterwards arrives within three times its usual time.
    """
    f = healthy
    region = "eu-frankfurt"
    replicator = f.regions[region]["replicator"]
    name = f.regions[region]["bucket"]

    async def arrival(repo: str, size: int) -> tuple[str, float]:
        digest = await push(f, repo, "v1", size, repo)
        started = time.monotonic()
        await wait_served(f.regions[region]["registry"], repo, "v1", digest, 120)
        return digest, time.monotonic() - started

    _, usual = await arrival(f.unique("faults/s3-kill-before"), 96 * MiB)
    pushed: dict[str, str] = {}
    async with bucket(f, region) as s3:
        for cycle in range(KILLS):
            repo = f.unique("faults/s3-kill")
            key = layout(f, region).blob_data(Digest.parse(images.layer(128 * MiB, repo).digest))
            pushing = asyncio.create_task(push(f, repo, "v1", 128 * MiB, repo))
            await until(lambda key=key: uploads(s3, name, key), f"cycle {cycle}: the multipart upload to begin")  # type: ignore[misc]
            await f.stop(f"s3-{region}", signal.SIGKILL)
            pushed[repo] = await pushing
            # S3 stays down until the copy has failed for the replicator (not only inside botocore's own retry).
            await until(
                lambda repo=repo: f.log_records(repository=repo, region=region, status="failed"),  # type: ignore[misc]
                f"cycle {cycle}: the replicator to see its copy fail",
            )
            await f.start(f"s3-{region}")
    with f.timed(f"10 {region} S3 SIGKILLed {KILLS}x mid-upload: last restart -> all {KILLS} images there"):
        for repo, digest in pushed.items():
            await wait_served(f.regions[region]["registry"], repo, "v1", digest, 180)

    # Every byte comes back: a copy still running (a reconciliation repair, say) holds its bytes for a moment, a
    # leak would hold them for good.
    async def budget_returned() -> bool:
        return await _metric(replicator, "georep_replicator_budget_held_bytes") == 0

    await until(budget_returned, "every budget byte to be given back", 30)
    status, body = await _healthz(replicator)
    assert status == 200, body

    _, after = await arrival(f.unique("faults/s3-kill-after"), 96 * MiB)
    RECOVERIES[f"10 a 96 MiB image after {KILLS} S3 kills (usual {usual:.1f}s) -> in {region}"] = after
    assert after < 3 * usual + 5, f"a large image took {after:.1f}s after the kills, {usual:.1f}s before"
    f.pull_everywhere(list(pushed)[-1], "v1", pushed[list(pushed)[-1]])
