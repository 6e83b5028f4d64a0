"""What a pusher can make georep do, on the real stack: an index as wide and as heavy as the caps allow
replicates within the replicator's memory target, one manifest more is dead-lettered with its reason, and an
event dated in the future cannot keep a later real push from its tag."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deploy.local import images
from deploy.local.probe import wait_served
from engine.events import utcnow
from engine.manifests import OCI_MANIFEST
from engine.settings import Settings
from tests.integration.conftest import REPLICATION_TIMEOUT_S, Stack
from tests.waiting import until

pytestmark = pytest.mark.integration

KiB = 1024
MiB = 1024 * KiB
#: replicator.max_index_children and max_manifest_bytes, at their defaults
CHILDREN_CAP = 256
MANIFEST_BYTES_CAP = 16 * MiB
#: the design's memory target for one replicator process
RSS_TARGET = 200 * 1000 * 1000
#: max_clock_skew_s, at its default (the stack's)
MAX_SKEW = timedelta(seconds=Settings.model_fields["max_clock_skew_s"].default)


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process has ever had, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def wide_index(repo: str, children: int, child_bytes: int) -> dict[tuple[str, str], images.Image]:
    """`children` platform manifests of about `child_bytes` each (padded with an annotation), sharing one layer."""
    shared = images.layer(4 * KiB, f"{repo}-base")
    return {
        ("linux", f"arch{i:03d}"): images.image(
            [shared], arch=f"arch{i:03d}", annotations={"dev.georep.padding": f"{i:03d}" + "x" * child_bytes}
        )
        for i in range(children)
    }


async def test_an_index_at_the_caps_replicates_within_the_memory_target(live: Stack) -> None:
    """256 children totalling just under 16 MiB of manifests (each replicated by its own event too): every
    platform is served by the region, and the replicator's peak RSS stays under 200 MB."""
    async with live.extra_region("eu-bounds", 6, backfill=False, include=["bounds/*"]) as region:
        repo = live.unique("bounds/wide")
        child_bytes = (MANIFEST_BYTES_CAP - 96 * KiB) // CHILDREN_CAP - 600  # 600: the rest of each manifest
        platforms = wide_index(repo, CHILDREN_CAP, child_bytes)
        total = sum(len(p.manifest.data) for p in platforms.values()) + len(images.index(platforms).data)
        assert MANIFEST_BYTES_CAP - 256 * KiB < total <= MANIFEST_BYTES_CAP, total
        digest = live.push_index(repo, "v1", platforms)
        await wait_served(region.registry, repo, "v1", digest, REPLICATION_TIMEOUT_S * 3)
        for image in list(platforms.values())[:: CHILDREN_CAP // 8]:
            await wait_served(region.registry, repo, image.manifest.digest, image.manifest.digest, 30)
        records = await live.records(
            lambda found: any(r["status"] == "succeeded" and r["region"] == "eu-bounds" for r in found),
            repository=repo, tag="v1", region="eu-bounds",
        )  # fmt: skip
        assert records[0]["manifests_total"] == CHILDREN_CAP + 1
        peak = peak_rss(region.replicator.pid)
        print(f"index of {CHILDREN_CAP} children, {total / MiB:.2f} MiB of manifests: peak RSS {peak / 1e6:.0f} MB")
        assert peak < RSS_TARGET


async def test_one_manifest_over_the_cap_is_dead_lettered_with_its_reason(live: Stack) -> None:
    repo = live.unique("bounds/wider")
    digest = live.push_index(repo, "v1", wide_index(repo, CHILDREN_CAP + 1, 0))

    def dead_everywhere(found: list[dict[str, Any]]) -> bool:
        return {r["region"] for r in found if r["digest"] == digest and r["status"] == "dead-lettered"} == set(
            live.regions
        )

    for record in [r for r in await live.records(dead_everywhere, repository=repo) if r["digest"] == digest]:
        if record["status"] == "dead-lettered":
            assert record["error"].startswith("over-cap: "), record["error"]
            assert f"more than {CHILDREN_CAP} manifests" in record["error"]


async def test_an_event_from_the_future_loses_to_the_next_real_push(live: Stack) -> None:
    """An event dated 9999-12-31 (the webhook token, or a primary whose clock runs fast) is taken as dated at
    most max_clock_skew_s after it arrived, so the next real push of the tag wins in every region."""
    repo = live.unique("future/app")
    old = live.push_image(repo, "old", images.image([images.layer(8 * KiB, f"{repo}-old")], label="old"))
    await live.replicated(repo, "old", old)
    size = len(await _manifest(live, repo, old))
    event_id = f"future-{secrets.token_hex(6)}"
    forged = {
        "id": event_id, "timestamp": "9999-12-31T23:59:59Z", "action": "push",
        "target": {"mediaType": OCI_MANIFEST, "size": size, "length": size, "digest": old, "repository": repo,
                   "tag": "v1", "url": f"http://{live.primary}/v2/{repo}/manifests/{old}"},
        "request": {"id": "r1", "addr": "127.0.0.1", "host": live.primary, "method": "PUT", "useragent": "forger"},
        "actor": {}, "source": {"addr": live.primary, "instanceID": "forger"},
    }  # fmt: skip
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            live.info["webhook"],
            data=json.dumps({"events": [forged]}),
            headers={
                "Authorization": f"Bearer {live.info['webhook_token']}",
                "Content-Type": "application/vnd.docker.distribution.events.v1+json",
            },
        ) as response,
    ):
        assert response.status == 200, await response.text()
    await live.replicated(repo, "v1", old)
    [record, *_] = await live.records(lambda found: len(found) == len(live.regions), event_id=event_id)
    dated = datetime.fromisoformat(record["occurred_at"])
    assert dated.year < 9999
    assert dated <= datetime.fromisoformat(record["finished_at"]).astimezone(UTC) + MAX_SKEW

    async def past() -> bool:  # the real push must be later than the clamped date, as any push after it is
        return utcnow() > dated

    await until(past, "the clock to pass the forged event's clamped date", 30)
    new = live.push_image(repo, "v1", images.image([images.layer(8 * KiB, f"{repo}-new")], label="new"))
    assert new != old
    await live.replicated(repo, "v1", new)


async def _manifest(live: Stack, repo: str, digest: str) -> bytes:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://{live.primary}/v2/{repo}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}
        ) as response,
    ):
        assert response.status == 200
        return await response.read()
