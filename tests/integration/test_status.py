"""`georep status`: lag, oldest pending event, totals, latency and per-image state, against what was pushed."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest

from deploy.local import images, stack
from deploy.local.probe import wait_served
from tests.integration.conftest import Stack, run_georep
from tests.waiting import until

pytestmark = pytest.mark.integration

KiB = 1024


async def _status(live: Stack) -> dict[str, dict[str, Any]]:
    code, out, err = await run_georep(live, "status", "--json")
    assert code == 0, err
    return {r["region"]: r for r in json.loads(out)["regions"]}


async def _image(live: Stack, image: str) -> dict[str, dict[str, Any]]:
    code, out, err = await run_georep(live, "status", image, "--json")
    assert code == 0, err
    return {r["region"]: r for r in json.loads(out)["regions"]}


async def test_status_counts_lag_latency_and_per_image_state_match_what_was_pushed(live: Stack) -> None:
    before = await _status(live)
    assert set(before) == set(live.regions)

    # Three new images: every region counts three more events and exactly their bytes.
    repo = live.unique("status/counted")
    pushed = {f"v{i}": images.image([images.layer(50 * KiB + i, f"{repo}-{i}")], label=f"{repo}-{i}") for i in range(3)}
    for tag, image in pushed.items():
        await live.final_records(repo, live.push_image(repo, tag, image))
    blob_bytes = sum(len(b.data) for image in pushed.values() for b in image.blobs)
    counted = await _status(live)
    for region in live.regions:
        assert counted[region]["events_replicated"] - before[region]["events_replicated"] == 3
        assert counted[region]["bytes_replicated"] - before[region]["bytes_replicated"] == blob_bytes
        assert counted[region]["lag_events"] == 0
        assert counted[region]["oldest_pending_s"] is None
        assert counted[region]["latency_samples"] >= 3
        assert 0 <= counted[region]["latency_p50_s"] <= counted[region]["latency_p99_s"]

    # eu-frankfurt's replicator stops (draining, offsets committed); four pushes wait for it.
    stack.stop(live.root, "replicator-eu-frankfurt")
    waiting = live.unique("status/waiting")
    first_push = time.time()
    digests = {f"w{i}": live.push_image(waiting, f"w{i}", images.image([images.layer(20 * KiB, f"{waiting}-{i}")]))
               for i in range(4)}  # fmt: skip
    # A fifth image whose layer the primary loses before eu-frankfurt gets to it: that one fails, and says why.
    broken = live.unique("status/broken")
    lost = images.layer(30 * KiB, f"{broken}-lost")
    broken_digest = live.push_image(broken, "v1", images.image([lost]))
    for tag, digest in digests.items():
        await _served_in(live, "ap-singapore", waiting, tag, digest)
    await _served_in(live, "ap-singapore", broken, "v1", broken_digest)
    async with (
        aiohttp.ClientSession() as session,
        session.delete(f"http://{live.primary}/v2/{broken}/blobs/{lost.digest}") as deleted,
    ):
        assert deleted.status == 202

    async def lagging() -> dict[str, dict[str, Any]] | None:
        now = await _status(live)
        return now if now["eu-frankfurt"]["lag_events"] == 6 else None  # 5 pushes and the blob delete

    stalled = await until(lagging, "eu-frankfurt's lag to count the six waiting events", 30)
    # Nothing consumes eu-frankfurt's group now, and status says so (its lag alone would look like slowness).
    assert (stalled["eu-frankfurt"]["replicators"], stalled["ap-singapore"]["replicators"]) == (0, 1)
    code, out, err = await run_georep(live, "status")
    assert code == 0, err
    assert "no replicator is running for eu-frankfurt" in err
    assert "none" in next(line for line in out.splitlines() if "eu-frankfurt" in line)
    age = stalled["eu-frankfurt"]["oldest_pending_s"]
    assert 0 < age <= time.time() - first_push + 1
    assert stalled["ap-singapore"]["lag_events"] == 0
    # A full reference, as users copy it from a pull command, names the same image.
    state = await _image(live, f"{live.primary}/{waiting}:w0")
    assert state["ap-singapore"]["state"] == "replicated"
    assert state["eu-frankfurt"]["state"] == "in-progress"
    async with aiohttp.ClientSession() as session, session.get(live.info["logs"] + "/metrics") as response:
        metrics = await response.text()
    assert 'georep_region_lag_events{region="eu-frankfurt"} 6.0' in metrics

    stack.restart(live.root, "replicator-eu-frankfurt")
    await stack.wait_up(live.root, "replicator-eu-frankfurt")
    for tag, digest in digests.items():
        await live.replicated(waiting, tag, digest)

    async def caught_up() -> dict[str, dict[str, Any]] | None:
        now = await _status(live)
        frankfurt = now["eu-frankfurt"]
        done = frankfurt["lag_events"] == 0 and frankfurt["dead_lettered"] > counted["eu-frankfurt"]["dead_lettered"]
        return now if done else None

    after = await until(caught_up, "eu-frankfurt to catch up", 60)
    frankfurt = after["eu-frankfurt"]
    # The four images, and the blob delete (which finds no manifest to delete); the broken image failed.
    assert frankfurt["events_replicated"] - counted["eu-frankfurt"]["events_replicated"] == 5
    assert frankfurt["dead_lettered"] - counted["eu-frankfurt"]["dead_lettered"] == 1
    assert frankfurt["oldest_pending_s"] is None
    state = await _image(live, f"{waiting}:w0")
    assert {r["state"] for r in state.values()} == {"replicated"}
    assert state["eu-frankfurt"]["lag_s"] >= state["ap-singapore"]["lag_s"]
    failed = await _image(live, f"{broken}:v1")
    assert failed["ap-singapore"]["state"] == "replicated"
    assert failed["eu-frankfurt"]["state"] == "failed"
    assert "not-found" in failed["eu-frankfurt"]["detail"]
    assert lost.digest[:19] in failed["eu-frankfurt"]["detail"] or lost.digest in failed["eu-frankfurt"]["detail"]

    code, out, _ = await run_georep(live, "status")
    assert code == 0
    assert "eu-frankfurt" in out
    assert "replication status" in out

    # An image the primary does not have is an answer, but not a success.
    code, out, err = await run_georep(live, "status", f"{waiting}:nope")
    assert code == 1
    assert f"{waiting}:nope is not on the primary" in err
    assert "not-on-primary" in out


async def _served_in(live: Stack, region: str, repo: str, tag: str, digest: str) -> None:
    await wait_served(live.regions[region]["registry"], repo, tag, digest, 60)
