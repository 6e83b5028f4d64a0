"""Kafka goes away; replicators are killed, stopped, added and removed mid-stream. Nothing is lost."""

from __future__ import annotations

import asyncio
import collections
import json
import signal

import aiohttp
import pytest

from deploy.local import images, stack
from deploy.local.probe import wait_served
from engine.digest import Digest
from tests.faults.conftest import DRAIN_GRACE_S, EVENTS, RECOVERIES, Faults
from tests.faults.helpers import MiB, bucket, layout, size_of, uploads
from tests.integration.test_log_and_webhook import post
from tests.integration.test_ordering_and_dead_letters import V1, manifest_event
from tests.waiting import until

pytestmark = pytest.mark.faults


async def push(faults: Faults, repo: str, tag: str, size: int, seed: str) -> str:
    return await asyncio.to_thread(faults.push_image, repo, tag, images.image([images.layer(size, seed)]))


async def test_1_images_pushed_while_kafka_is_down_all_arrive(healthy: Faults) -> None:
    f = healthy
    repo = f.unique("faults/kafka-down")
    await f.stop_all("kafka")
    # The webhook cannot hand events to Kafka: it answers 503, so the registry keeps them and retries.
    # (A delete, which replicators skip: a 503 means "retry", yet the producer may still deliver it
    # once Kafka is back, so the registry's retry becomes a harmless duplicate: at least once.)
    probe = manifest_event(f"probe-{repo}", repo, "sha256:" + "a" * 64, "x", "2030-01-01T00:00:00Z")
    probe["events"][0]["action"] = "delete"
    status, answer = await post(f, f.info["webhook"], probe, V1)
    assert (status, answer["error"]) == (503, "kafka-unavailable")
    digests = {f"v{i}": await push(f, repo, f"v{i}", 40_000, f"{repo}-{i}") for i in range(3)}

    with f.timed("1 Kafka stopped during 3 pushes: restart -> all in both regions"):
        await f.start_all("kafka")
        for tag, digest in digests.items():
            await f.replicated(repo, tag, digest)
    for tag, digest in digests.items():
        f.pull_everywhere(repo, tag, digest)


async def test_2_replicator_killed_mid_blob_leaves_nothing_partial_and_the_image_arrives(healthy: Faults) -> None:
    f = healthy
    region = "eu-frankfurt"
    repo = f.unique("faults/sigkill")
    big = images.layer(200 * MiB, repo)
    key = layout(f, region).blob_data(Digest.parse(big.digest))
    name = f.regions[region]["bucket"]
    seen_sizes: list[int] = []
    async with bucket(f, region) as s3:

        async def watch() -> None:
            """Whenever the blob's key is visible, it must be the whole blob."""
            while True:
                size = await size_of(s3, name, key)
                if size is not None:
                    seen_sizes.append(size)
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        try:
            pushing = asyncio.create_task(asyncio.to_thread(f.push_image, repo, "big", images.image([big])))
            await until(lambda: uploads(s3, name, key), "the replicator to start a multipart upload of the blob")
            await f.stop(f"replicator-{region}", signal.SIGKILL)
            assert await size_of(s3, name, key) is None, "a killed copy left a visible object"
            killed = await uploads(s3, name, key)
            assert len(killed) == 1, f"{killed}\n{f.log_tail(f'replicator-{region}')}"  # the killed copy's upload
            digest = await pushing

            with f.timed("2 replicator SIGKILLed mid 200 MiB blob: restart -> image in region"):
                await f.start(f"replicator-{region}")
                await f.replicated(repo, "big", digest)
            # The new copy, once complete, aborted the killed one's upload.
            assert await uploads(s3, name, f.regions[region]["prefix"]) == []
        finally:
            watcher.cancel()
    assert set(seen_sizes) <= {len(big.data)}, f"partial object sizes were visible: {set(seen_sizes)}"
    f.pull_everywhere(repo, "big", digest)


async def test_6_a_second_replicator_joins_then_the_first_leaves_and_every_image_arrives(healthy: Faults) -> None:
    f = healthy
    region = "ap-singapore"
    name = f"replicator-{region}"
    command = f.info["commands"][name]
    port = f.info["port_base"] + 95
    second = {
        "argv": command["argv"],
        "env": command["env"] | {"GEOREP_REPLICATOR__PORT": str(port)},
        "log": str(f.root / "logs" / f"{name}-2.log"),
    }
    repos = [f.unique("faults/scale") for _ in range(12)]
    pushed: dict[str, str] = {}

    async def assigned() -> list[int] | None:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    partitions: list[int] = (await response.json())["partitions"]
            except aiohttp.ClientError:
                return None
        return partitions

    for repo in repos[:4]:
        pushed[repo] = await push(f, repo, "v1", 20_000, repo)
    extra = stack.join(f.root, name, second)
    try:
        for repo in repos[4:8]:  # while the group rebalances onto two members
            pushed[repo] = await push(f, repo, "v1", 20_000, repo)
        await until(assigned, "the second replicator to be assigned partitions")
        await f.stop(name)  # the first leaves (SIGTERM: it drains and commits)
        for repo in repos[8:]:  # while the group rebalances back onto one
            pushed[repo] = await push(f, repo, "v1", 20_000, repo)
        with f.timed("6 scale 1 -> 2 -> 1 replicators: last push -> all 12 images in both regions"):
            for repo, digest in pushed.items():
                await f.replicated(repo, "v1", digest)

        async def owns_all() -> bool:
            return len(await assigned() or []) == 8

        await until(owns_all, "the remaining replicator to own every partition")
    finally:
        await asyncio.to_thread(stack.stop_pid, extra.pid, second["argv"])
    for repo in repos[:3] + repos[-3:]:
        f.pull_everywhere(repo, "v1", pushed[repo])


async def test_7_a_tag_moved_three_times_while_a_large_image_replicates_ends_on_the_final_digest(
    healthy: Faults,
) -> None:
    f = healthy
    repo = f.unique("faults/retag")
    digests = [await push(f, repo, "t", 120 * MiB, f"{repo}-large")]
    digests += [await push(f, repo, "t", 10_000, f"{repo}-{i}") for i in range(3)]
    final = digests[-1]

    async def all_done() -> bool:
        done = collections.Counter(r["region"] for r in await f.log_records(repository=repo, status="succeeded"))
        return all(done[region] >= len(digests) for region in f.regions)

    with f.timed("7 tag moved 3x during a 120 MiB copy: last push -> final digest everywhere"):
        await until(all_done, "every push of the tag to be replicated in every region")
    for region in f.regions.values():
        assert await wait_served(region["registry"], repo, "t", final, 1) >= 0
    f.pull_everywhere(repo, "t", final)


def _id(value: bytes | None) -> str:
    """An event's id; for a malformed message (another test puts some), its raw text."""
    try:
        return str(json.loads(value or b"")["id"])
    except (ValueError, KeyError, TypeError):
        return repr(value)


async def test_8_sigterm_drains_within_the_grace_period_and_nothing_done_is_redone(healthy: Faults) -> None:
    f = healthy
    region = "ap-singapore"
    name = f"replicator-{region}"
    small = [f.unique("faults/drain") for _ in range(3)]
    for repo in small:
        await f.replicated(repo, "v1", await push(f, repo, "v1", 20_000, repo))
    large = f.unique("faults/drain-large")
    key = layout(f, region).blob_data(Digest.parse(images.layer(150 * MiB, large).digest))
    async with bucket(f, region) as s3:
        pushing = asyncio.create_task(push(f, large, "v1", 150 * MiB, large))
        await until(lambda: uploads(s3, f.regions[region]["bucket"], key), "the large copy to start")
        took = await f.stop(name, signal.SIGTERM)
    digest = await pushing
    assert took < DRAIN_GRACE_S + 5, f"the replicator took {took:.1f}s to stop (grace {DRAIN_GRACE_S}s)"
    # Everything it finished is committed: past the group's offsets there is at most the second copy of an event
    # done before them (two webhooks publish each event; a copy may land after the consumer stopped reading).
    committed = await f.committed(region)
    records = await f.topic(EVENTS)
    done_ids = {_id(r.value) for r in records if r.offset < committed.get(r.partition, 0)}
    left = [_id(r.value) for r in records if r.offset >= committed.get(r.partition, 0)]
    assert set(left) <= done_ids, f"the drained replicator did not commit what it finished: {left}"

    await f.start(name)
    await f.replicated(large, "v1", digest)
    log = [r for repo in [*small, large] for r in await f.log_records(repository=repo, region=region)]
    # Nothing done is redone: no event's bytes are copied twice (a second copy of an event writes its tag only).
    copied = collections.Counter(r["event_id"] for r in log if r["status"] == "succeeded" and r["bytes_copied"])
    assert set(copied.values()) <= {1}, f"events whose bytes were copied twice after the restart: {copied}"
    RECOVERIES["8 SIGTERM during a 150 MiB copy: signal -> process exited, work committed"] = took
    f.pull_everywhere(large, "v1", digest)
