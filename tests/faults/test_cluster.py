"""A three-node Kafka cluster under georep, broken the ways clusters break: the leader of the busiest partition
killed mid-burst, a disk lost, a rolling restart, two nodes down at once. Nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiokafka.partitioner import DefaultPartitioner

from deploy.local import images, stack
from tests.faults.conftest import EVENTS, RECOVERIES, Faults
from tests.integration.test_log_and_webhook import post
from tests.integration.test_ordering_and_dead_letters import V1, manifest_event
from tests.waiting import until

pytestmark = pytest.mark.faults

#: how long the webhooks may refuse notifications while a partition leader moves: an election on loopback
#: takes 2-4 s (broker.session.timeout.ms 2.5 s), and a publish waits webhook.publish_timeout_s (10 s) for it
MOST_REFUSED_S = 12.0


async def push(f: Faults, repo: str, tag: str, seed: str) -> str:
    return await asyncio.to_thread(f.push_image, repo, tag, images.image([images.layer(20_000, seed)], label=seed))


@dataclass
class Prober:
    """Sends every webhook a harmless notification (a delete of a tag nobody has) every `every_s`, and keeps
    each answer: how long the webhooks refused is measured, not guessed."""

    f: Faults
    every_s: float = 0.25
    answers: list[tuple[float, int]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        urls = self.f.info["webhooks"]
        while not stop.is_set():
            body = manifest_event(f"probe-{uuid.uuid4().hex}", "faults/probe", "sha256:" + "b" * 64, "gone", "")
            body["events"][0]["action"] = "delete"
            for status, _ in await asyncio.gather(*(post(self.f, url, body, V1) for url in urls)):
                self.answers.append((time.monotonic(), status))
            # Pacing, not waiting for a condition: the probe measures how long refusals last.
            await asyncio.sleep(self.every_s)

    def longest_refusal(self) -> float:
        """The longest stretch from a first non-2xx answer to the next 2xx one, in seconds."""
        longest, since = 0.0, None
        for at, status in self.answers:
            if status >= 300 and since is None:
                since = at
            elif status < 300 and since is not None:
                longest, since = max(longest, at - since), None
        return longest if since is None else max(longest, self.answers[-1][0] - since)


@asynccontextmanager
async def probing(f: Faults) -> AsyncIterator[Prober]:
    prober, stop = Prober(f), asyncio.Event()
    task = asyncio.create_task(prober.run(stop))
    try:
        yield prober
    finally:
        stop.set()
        await task


async def no_duplicate_success(f: Faults, repos: list[str]) -> None:
    """Each event of these repositories succeeded at most once per region (two webhooks, retries and all)."""
    wanted = set(repos)
    records = [r for r in await f.log_records(status="succeeded") if r["repository"] in wanted]
    twice = [k for k, n in collections.Counter((r["event_id"], r["region"]) for r in records).items() if n > 1]
    assert not twice, f"events that succeeded twice in a region: {twice}"


async def event_ids(f: Faults) -> set[str]:
    return {json.loads(r.value)["id"] for r in await f.topic(EVENTS) if r.value and r.value.startswith(b"{")}


async def all_in_sync(f: Faults, what: str, timeout_s: float = 120) -> None:
    await until(f.fully_replicated, what, timeout_s)


async def test_13_the_leader_of_the_busiest_partition_killed_during_50_pushes_loses_nothing(healthy: Faults) -> None:
    f = healthy
    repos = [f.unique("cluster/burst") for _ in range(10)]
    partitions = sorted(p for topic, p in await f.partitions(EVENTS) if topic == EVENTS)
    choose = DefaultPartitioner()
    busiest, _ = collections.Counter(choose(r.encode(), partitions, partitions) for r in repos).most_common(1)[0]
    leader = (await f.partitions(EVENTS))[(EVENTS, busiest)]["leader"]
    victim = f"kafka-{leader}"
    final: dict[str, str] = {}
    killed = 0.0
    async with probing(f) as prober:
        for round_ in range(5):  # each repository's v1 pushed five times: only the last may stay
            for repo in repos:
                final[repo] = await push(f, repo, "v1", f"{repo}-{round_}")
            if round_ == 1:
                await f.stop(victim, signal.SIGKILL)
                killed = time.monotonic()
        for repo, digest in final.items():
            await f.replicated(repo, "v1", digest)
    RECOVERIES[f"13 {victim} (leads partition {busiest}) SIGKILLed after 20 of 50 pushes: -> all everywhere"] = (
        time.monotonic() - killed
    )
    assert len(prober.answers) >= 20, "the probe must have run through the burst"
    refused = prober.longest_refusal()
    RECOVERIES[f"13 longest stretch the webhooks refused notifications (limit {MOST_REFUSED_S:g} s)"] = refused
    assert refused <= MOST_REFUSED_S
    await no_duplicate_success(f, repos)
    await f.start(victim)
    await all_in_sync(f, f"{victim} back in every partition's in-sync replicas")


async def test_14_a_broker_that_lost_its_disk_rejoins_and_nothing_acknowledged_is_lost(healthy: Faults) -> None:
    f = healthy
    victim, other = "kafka-1", "kafka-2"
    repos = [f.unique("cluster/disk") for _ in range(3)]
    before = {repo: await push(f, repo, "v1", f"{repo}-before") for repo in repos}
    for repo, digest in before.items():
        await f.replicated(repo, "v1", digest)
    acknowledged = await event_ids(f)

    await f.stop(victim, signal.SIGKILL)
    await asyncio.to_thread(stack.wipe_kafka, f.root, victim)
    during = {repo: await push(f, repo, "v2", f"{repo}-during") for repo in repos}
    with f.timed(f"14 {victim}'s disk wiped: start -> back in every partition's in-sync replicas"):
        await f.start(victim)
        await all_in_sync(f, f"{victim}, formatted anew, to catch up with every partition")
    for repo, digest in during.items():
        await f.replicated(repo, "v2", digest)

    # The wiped node now holds everything: with another node gone, every acknowledged event is still there.
    await f.stop(other, signal.SIGKILL)
    try:
        assert acknowledged <= await event_ids(f)
        after = {repo: await push(f, repo, "v3", f"{repo}-after") for repo in repos}
        for repo, digest in after.items():
            await f.replicated(repo, "v3", digest)
    finally:
        await f.start(other)
    await all_in_sync(f, f"{other} back in sync")


async def test_15_a_rolling_restart_of_every_broker_during_pushes_loses_nothing(healthy: Faults) -> None:
    f = healthy
    repos = [f.unique("cluster/rolling") for _ in range(4)]
    pushed: dict[tuple[str, str], str] = {}
    rolled = asyncio.Event()

    async def keep_pushing() -> None:
        while not rolled.is_set():
            repo, tag = repos[len(pushed) % len(repos)], f"v{len(pushed)}"
            pushed[repo, tag] = await push(f, repo, tag, f"{repo}-{tag}")

    pusher = asyncio.create_task(keep_pushing())
    try:
        with f.timed("15 rolling restart of 3 brokers (each back in sync before the next)"):
            for name in f.names("kafka"):
                RECOVERIES[f"15 {name}: SIGTERM -> exited (controlled shutdown)"] = await f.stop(name)
                await f.start(name)
                await all_in_sync(f, f"{name} back in sync after its restart")
    finally:
        rolled.set()
        await pusher
    assert len(pushed) >= 3, "the roll was over before pushes could overlap it"
    with f.timed(f"15 after the roll: last push -> all {len(pushed)} images everywhere"):
        for (repo, tag), digest in pushed.items():
            await f.replicated(repo, tag, digest)
    await no_duplicate_success(f, repos)


async def test_16_two_brokers_down_the_webhook_refuses_and_everything_arrives_after(healthy: Faults) -> None:
    f = healthy
    down = f.names("kafka")[1:]
    for name in down:
        await f.stop(name)
    # Below min.insync.replicas (and without a controller quorum): nothing can be made durable, so nothing is
    # acknowledged; the registry keeps each notification and retries it.
    probe = manifest_event(f"probe-{uuid.uuid4().hex}", "faults/probe", "sha256:" + "c" * 64, "gone", "")
    probe["events"][0]["action"] = "delete"
    for url in f.info["webhooks"]:
        status, answer = await post(f, url, probe, V1)
        assert (status, answer["error"]) == (503, "kafka-unavailable")
    repos = [f.unique("cluster/no-isr") for _ in range(3)]
    pushed = {repo: await push(f, repo, "v1", repo) for repo in repos}
    with f.timed("16 two brokers down during 3 pushes: restart -> all in both regions"):
        await f.start(*down)
        for repo, digest in pushed.items():
            await f.replicated(repo, "v1", digest)
    await all_in_sync(f, "both brokers back in sync")
