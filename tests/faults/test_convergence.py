"""Every region converges on the primary, whatever was lost on the way (issue 10), on the fault stack.

    lost notifications   the webhook down, 3 pushes and a delete, the primary restarted (its queue is gone)
    retention gone       a region's replicators stopped until georep.events dropped the events they missed

Nothing is run by hand: the replicators' own reconciliation brings each region to the primary's state. Their
loop runs every PASS_S seconds here (the stack's default keeps it quiet for the other fault tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from adapters.kafka import new_admin, new_consumer, partition_for, running, topic_specs
from deploy.local import images
from deploy.local.probe import served_digest
from engine.manifests import ACCEPT
from tests.faults.conftest import Faults
from tests.waiting import until

pytestmark = pytest.mark.faults

PASS_S = 3
# The pass's request budgets go up too: the fault stack holds 700 and more repositories by the last test, and at
# the default 20 requests/s to the primary one pass over them would take longer than the test waits. Full checks
# stay at a production-like pace: what the tests lose is new to the region, or a tag the primary dropped, and a
# pass finds both without one.
FAST = {
    "GEOREP_RECONCILE__INTERVAL_S": str(PASS_S), "GEOREP_RECONCILE__FULL_EVERY_S": "3600",
    "GEOREP_RECONCILE__PRIMARY_RPS": "400", "GEOREP_RECONCILE__REGION_RPS": "1000",
}  # fmt: skip
#: a pass, the primary's walk and the repairs' replication, with room for a busy 2-core machine
CONVERGE_S = PASS_S + 90


@asynccontextmanager
async def reconciling(f: Faults, regions: list[str]) -> AsyncIterator[None]:
    """The regions' replicators with a fast reconciliation loop; restarted as they were afterwards."""
    for region in regions:
        await f.stop(f"replicator-{region}")
        await f.start(f"replicator-{region}", env=FAST)
    try:
        yield
    finally:
        for region in regions:
            await f.stop(f"replicator-{region}")
            await f.start(f"replicator-{region}")


async def push(f: Faults, repo: str, tag: str, seed: str) -> str:
    image = images.image([images.layer(20_000, seed)], label=seed)
    return await asyncio.to_thread(f.push_image, repo, tag, image)


async def serves(f: Faults, region: str, repo: str, reference: str) -> str | None:
    async with aiohttp.ClientSession() as session:
        return await served_digest(session, f.regions[region]["registry"], repo, reference)


async def test_11_notifications_lost_with_a_restarted_primary_still_reach_every_region(healthy: Faults) -> None:
    f = healthy
    regions = sorted(f.regions)
    async with reconciling(f, regions):
        doomed = f.unique("converge/doomed")
        doomed_digest = await push(f, doomed, "v1", doomed)
        await f.replicated(doomed, "v1", doomed_digest)

        await f.stop_all("webhook")
        lost = {f.unique("converge/lost"): "" for _ in range(3)}
        for repo in lost:
            lost[repo] = await push(f, repo, "v1", repo)
        async with (
            aiohttp.ClientSession() as session,
            session.delete(
                f"http://{f.primary}/v2/{doomed}/manifests/{doomed_digest}", headers={"Accept": ACCEPT}
            ) as r,
        ):
            assert r.status == 202, await r.text()
        # distribution keeps undelivered notifications in memory: a restart drops them for good.
        await f.stop("primary")
        await f.start("primary")
        await f.start_all("webhook")

        with f.timed(f"11 webhook down, 3 pushes + 1 delete, primary restarted: -> every region (pass {PASS_S}s)"):

            async def converged() -> bool:
                for region in regions:
                    for repo, digest in lost.items():
                        if await serves(f, region, repo, "v1") != digest:
                            return False
                    if await serves(f, region, doomed, "v1") or await serves(f, region, doomed, doomed_digest):
                        return False
                return True

            await until(converged, "every region to have the 3 lost pushes and not the deleted manifest", CONVERGE_S)
    records = [r for repo in lost for r in await f.log_records(repository=repo, status="succeeded")]
    assert {r["source"] for r in records} == {"reconcile"}, "nothing but reconciliation carried them"
    for repo, digest in lost.items():
        f.pull_everywhere(repo, "v1", digest)


async def _events_configs(f: Faults, **overrides: str) -> None:
    """Set georep.events' topic configs: georep's own (as created) with `overrides` on top."""
    kafka = f.kafka()
    (events,) = [t for t in topic_specs(kafka) if t.name == kafka.events_topic]
    async with running(new_admin(kafka, "test")) as admin:
        resource = ConfigResource(ConfigResourceType.TOPIC, kafka.events_topic, {**events.topic_configs, **overrides})
        await admin.alter_configs([resource])


async def _log_starts(f: Faults, partitions: set[int]) -> dict[int, int]:
    kafka = f.kafka()
    tps = [TopicPartition(kafka.events_topic, p) for p in partitions]
    async with running(new_consumer(kafka, "test", group=None)) as consumer:
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(tps)
    return {tp.partition: offset for tp, offset in starts.items()}


async def test_12_a_region_down_for_longer_than_the_topics_retention_converges_when_it_is_back(
    healthy: Faults,
) -> None:
    f = healthy
    region = "eu-frankfurt"
    await f.stop(f"replicator-{region}")
    missed = {f.unique("converge/retention"): "" for _ in range(3)}
    for repo in missed:
        missed[repo] = await push(f, repo, "v1", repo)
    ends = await f.end_offsets()  # every event of those pushes lies before these offsets
    partitions = {partition_for(repo.encode(), len(ends)) for repo in missed}
    try:
        await _events_configs(f, **{"retention.ms": "1000", "segment.ms": "500"})

        async def expired() -> bool:
            # A segment rolls on the first append after segment.ms; each partition needs one. Re-pushing a tag is one.
            for repo in missed:
                await push(f, repo, "again", repo)
            starts = await _log_starts(f, partitions)
            return all(starts[p] >= ends[p] for p in partitions)

        await until(expired, "the broker to delete the segments holding the missed events", 120)
    finally:
        await _events_configs(f)
    async with reconciling(f, [region]):
        with f.timed(f"12 {region} down past retention: replicators back -> the 3 missed images there"):

            async def converged() -> bool:
                return all([await serves(f, region, repo, "v1") == digest for repo, digest in missed.items()])

            await until(converged, f"{region} to have every image it missed", CONVERGE_S)
    for repo, digest in missed.items():
        f.pull_everywhere(repo, "v1", digest)
