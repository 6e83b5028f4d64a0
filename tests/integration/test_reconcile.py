"""Reconciliation on the real stack: a region damaged behind georep's back heals by itself, a region that matches
costs no write, a tag moving during passes ends on the final digest, and two replicators split the repositories.

Each test runs on a replica region of its own: its bucket on ap-singapore's SeaweedFS server, and a filter that
takes the test's own repositories only (a region without one would reconcile every repository other tests
pushed, which is a backfill's work). Its replicators reconcile every PASS_S seconds and check every key at least
every FULL_S seconds, so that a heal is seconds away; production defaults are 300 s and 6 h. The main regions
keep their loop quiet (conftest).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from adapters.kafka import partition_for
from adapters.store import RegionStore
from deploy.local import images, skopeo, stack
from deploy.local.probe import served_digest, wait_served
from engine.digest import Digest
from engine.layout import Layout
from engine.names import Repository, Tag
from tests.integration.conftest import PORT_BASE, ExtraRegion, Stack, run_georep
from tests.waiting import until

pytestmark = pytest.mark.integration

PASS_S = 2
FULL_S = 6
FAST = {"GEOREP_RECONCILE__INTERVAL_S": str(PASS_S), "GEOREP_RECONCILE__FULL_EVERY_S": str(FULL_S)}
#: a heal needs at most a full period and a pass, then the repair's replication; the margin is for a busy 2-core box
HEAL_S = FULL_S + PASS_S + 30
LAYOUT = Layout()
V1 = Tag.parse("v1")


@asynccontextmanager
async def bucket(live: Stack, region: ExtraRegion) -> AsyncIterator[RegionStore]:
    async with live.region_store("ap-singapore", region.bucket) as store:
        yield store


async def healthz(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as response:
        body: dict[str, Any] = await response.json()
        return body


async def reconciled_since(url: str, since: datetime) -> dict[str, Any]:
    """partition -> the replicator's last pass over it, for the passes that ended after `since`."""
    passes = (await healthz(url)).get("reconciled", {})
    return {p: s for p, s in passes.items() if datetime.fromisoformat(s["finished_at"]) > since}


async def served(region: ExtraRegion, repo: str, reference: str) -> str | None:
    async with aiohttp.ClientSession() as session:
        return await served_digest(session, region.registry, repo, reference)


async def push(live: Stack, repo: str, tag: str, seed: str) -> tuple[str, images.Image]:
    image = images.image([images.layer(30_000, f"{seed}-0"), images.layer(20_000, f"{seed}-1")], label=seed)
    digest = await asyncio.to_thread(live.push_image, repo, tag, image)
    return digest, image


async def one_pass(url: str, partitions: int = 8) -> dict[str, Any]:
    """Wait until the replicator at `url` has reconciled `partitions` partitions after now; those passes."""
    since = datetime.now(UTC)

    async def done() -> dict[str, Any] | None:
        fresh = await reconciled_since(url, since)
        return fresh if len(fresh) >= partitions else None

    return await until(done, f"a reconciliation pass of {url}", HEAL_S)


async def test_damage_behind_georeps_back_heals_by_itself_and_then_costs_no_write(live: Stack) -> None:
    async with live.extra_region("eu-lyon", 3, env=FAST, backfill=False, include=["heal/*"]) as lyon:
        repos = [live.unique("heal/app") for _ in range(4)]
        pushed = {repo: await push(live, repo, "v1", repo) for repo in repos}
        for repo, (digest, _) in pushed.items():
            await wait_served(lyon.registry, repo, "v1", digest, 60)
        tag_repo, revision_repo, blob_repo, short_repo = repos
        revision = Digest.parse(pushed[revision_repo][0])
        lost, short = pushed[blob_repo][1].blobs[1], pushed[short_repo][1].blobs[1]
        async with bucket(live, lyon) as store:
            await store.delete(LAYOUT.tag_current_link(Repository.parse(tag_repo), V1))
            await store.delete(LAYOUT.revision_link(Repository.parse(revision_repo), revision))
            await store.delete(LAYOUT.blob_data(Digest.parse(lost.digest)))
            await store.put(LAYOUT.blob_data(Digest.parse(short.digest)), short.data[:1000], if_absent=False)
        started = time.monotonic()
        assert await served(lyon, tag_repo, "v1") is None, "the damage is real: the tag is gone"
        assert await served(lyon, revision_repo, str(revision)) is None, "and the manifest"

        async def healed() -> bool:
            async with bucket(live, lyon) as store:
                blobs = [await store.size(LAYOUT.blob_data(Digest.parse(b.digest))) for b in (lost, short)]
            tags = [await served(lyon, tag_repo, "v1"), await served(lyon, revision_repo, str(revision))]
            return blobs == [len(lost.data), len(short.data)] and tags == [pushed[tag_repo][0], str(revision)]

        await until(healed, "eu-lyon to heal a removed tag, revision link and blob, and a truncated blob", HEAL_S)
        took = time.monotonic() - started

        def repairs(found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
            return {r["repository"]: r for r in found if (r.get("note") or "").startswith("repair of")}

        found = repairs(await live.records(lambda rs: set(repairs(rs)) >= set(repos), region="eu-lyon", limit="1000"))
        assert "tag-missing" in found[tag_repo]["note"]
        assert "link-missing" in found[revision_repo]["note"]
        assert "blob-missing" in found[blob_repo]["note"]
        assert "blob-size" in found[short_repo]["note"]
        assert {r["source"] for r in found.values()} == {"reconcile"}
        for repo in repos:
            target = live.workdir / f"heal-{repo.replace('/', '_')}"
            await asyncio.to_thread(skopeo.pull, f"{lyon.registry}/{repo}:v1", target, "v1")
        print(f"\n  eu-lyon healed 4 kinds of damage {took:.1f}s after it was done (pass {PASS_S}s, full {FULL_S}s)")

        # Visible: metrics of the replicator, and `georep status` with the last pass and the drift it repaired.
        metrics = await _metrics(lyon.health)
        for kind in ("tag-missing", "link-missing", "blob-missing", "blob-size"):
            assert metrics.get(f'georep_reconcile_drift_total{{kind="{kind}",region="eu-lyon"}}', 0) >= 1, kind
        assert metrics['georep_reconcile_requests_total{region="eu-lyon",target="primary"}'] > 0
        assert metrics['georep_reconcile_requests_total{region="eu-lyon",target="region"}'] > 0

        async def every_partition_in_status() -> dict[str, Any] | None:
            code, out, err = await run_georep(live, "status", "--json")
            assert code == 0, err
            (status,) = [r for r in json.loads(out)["regions"] if r["region"] == "eu-lyon"]
            last: dict[str, Any] | None = status["reconcile"]
            return last if last and last["partitions"] == 8 else None

        last = await until(every_partition_in_status, "georep status to show a pass over every partition", HEAL_S)
        assert datetime.fromisoformat(last["ended_at"]) > datetime.now(UTC) - timedelta(seconds=HEAL_S)
        assert last["took_s"] >= 0

        # Now the region matches: passes publish nothing and write nothing to it, full checks included.
        await one_pass(lyon.health)  # the repairs' own writes, and the maps of the first clean pass
        await one_pass(lyon.health)
        async with bucket(live, lyon) as store:
            before = await store.listing("")
        records = len(await live.records(lambda rs: True, region="eu-lyon", limit="1000"))
        for _ in range(FULL_S // PASS_S + 1):  # enough passes for every repository to get a full check
            await one_pass(lyon.health)
        async with bucket(live, lyon) as store:
            assert await store.listing("") == before, "a pass over a region that matches wrote to it"
        assert len(await live.records(lambda rs: True, region="eu-lyon", limit="1000")) == records, (
            "a pass over a region that matches published events"
        )


async def test_a_tag_moved_during_passes_ends_on_the_final_digest_and_stays(live: Stack) -> None:
    repo = live.unique("reorder/app")
    async with live.extra_region("eu-nantes", 4, env=FAST, backfill=False, include=["reorder/*"]) as nantes:
        digests = [(await push(live, repo, "t", f"{repo}-{i}"))[0] for i in range(5)]
        final = digests[-1]
        await wait_served(nantes.registry, repo, "t", final, 60)
        await live.replicated(repo, "t", final)
        for _ in range(FULL_S // PASS_S + 1):  # passes (full checks among them) after the last push
            await one_pass(nantes.health)
        assert await served(nantes, repo, "t") == final, "a pass moved the tag back"
        for region in live.regions.values():
            async with aiohttp.ClientSession() as session:
                assert await served_digest(session, region["registry"], repo, "t") == final


async def test_two_replicators_split_the_repositories_and_one_takes_over_when_the_other_dies(live: Stack) -> None:
    async with live.extra_region("eu-lille", 5, env=FAST, backfill=False, include=["failover/*"]) as lille:
        second = await lille.add_replicator(PORT_BASE + 47)

        async def split() -> tuple[set[int], set[int]] | None:
            first, other = await healthz(lille.health), await healthz(second)
            mine, theirs = set(first["partitions"]), set(other["partitions"])
            return (mine, theirs) if mine and theirs else None

        mine, theirs = await until(split, "both replicators to own partitions")
        assert not mine & theirs, (mine, theirs)
        assert mine | theirs == set(range(8)), (mine, theirs)
        # Each reconciles exactly the partitions it owns: so each repository, hashed as its events are, by one.
        passes = await asyncio.gather(one_pass(lille.health, len(mine)), one_pass(second, len(theirs)))
        assert {int(p) for p in passes[0]} == mine
        assert {int(p) for p in passes[1]} == theirs
        assert {s["member"] for s in passes[0].values()}.isdisjoint({s["member"] for s in passes[1].values()})

        # A repository the first replicator reconciles, damaged, then that replicator killed: the other heals it.
        repo = next(r for r in (live.unique("failover/app") for _ in range(64)) if _partition(r) in mine)
        digest, _ = await push(live, repo, "v1", repo)
        await wait_served(lille.registry, repo, "v1", digest, 60)
        async with bucket(live, lille) as store:
            await store.delete(LAYOUT.tag_current_link(Repository.parse(repo), V1))
        await asyncio.to_thread(stack.stop_pid, lille.replicator.pid, lille.replicator_argv, 5, signal.SIGKILL)
        started = time.monotonic()

        async def owns_all() -> bool:
            return set((await healthz(second))["partitions"]) == set(range(8))

        await until(owns_all, "the survivor to own every partition", 60)

        async def healed() -> bool:
            return await served(lille, repo, "v1") == digest

        await until(healed, "the survivor to heal a repository of the killed replicator")
        print(f"\n  failover: a repository of the killed replicator healed {time.monotonic() - started:.1f}s after")


async def _metrics(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("georep_reconcile")
    }


def _partition(repository: str) -> int:
    return partition_for(repository.encode(), 8)


async def test_reconcile_by_hand_prints_the_drift_and_repairs_it(live: Stack) -> None:
    """`georep reconcile --region R`: a pass now, in this process, on a main region (whose loop is quiet)."""
    region = "eu-frankfurt"
    repo = live.unique("byhand/app")
    digest, image = await push(live, repo, "v1", repo)
    await live.replicated(repo, "v1", digest)
    layout = Layout(live.regions[region]["prefix"])
    async with live.region_store(region) as store:
        await store.delete(layout.tag_current_link(Repository.parse(repo), V1))
        await store.delete(layout.blob_data(Digest.parse(image.blobs[1].digest)))

    code, out, err = await run_georep(
        live, "reconcile", "--region", region, "--repository", repo, "--dry-run", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["drift"] == {"blob-missing": 1, "tag-missing": 1}
    assert (len(report["events"]), report["published"]) == (1, False)
    assert report["events"][0]["drift"] == "blob-missing, tag-missing"

    code, out, err = await run_georep(live, "reconcile", "--region", region, "--repository", repo)
    assert code == 0, err
    assert out.splitlines()[-1] == f"{region}: 1 repository compared, 2 differences; 1 repair or delete event published"
    await live.replicated(repo, "v1", digest)
    code, out, _ = await run_georep(live, "reconcile", "--region", region, "--repository", repo, "--dry-run")
    assert out.splitlines()[-1] == f"{region}: 1 repository compared, 0 differences"
