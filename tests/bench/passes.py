"""What a reconciliation pass costs (issue "Every region converges"): one pass of a region's replicator over
10,000 tags that already match the region, and one over the same tags with 1% drift.

The tags: `repositories` repositories of `tags` tags each, on the primary and replicated. The region's
replicator is restarted with passes back to back and budgets high enough not to be what is measured; its
passes are read from `georep.reconcile` (one summary per partition: when it started and ended, the requests it
made to each side, what it found and repaired). The first pass after the restart meets repositories it never
found equal and compares them in full, writing the map a later pass reads; the second is the steady state.

Drift: 1% of the tags moved on the primary while the webhook was down and the primary was restarted (the
notifications are gone, as in fault test 11), with the region's replicator stopped. Its first pass once it is
back finds them and publishes their repairs; the drift is over when the region serves every moved tag at its
new digest (timed from the replicator's start).

Each pass also gives the replicator's CPU per repository: its CPU from the end of what came before (its start,
or the previous pass) to the end of the pass, over the repositories the pass went through.

Run first on a fresh stack: a pass walks the whole catalog, and this counts the catalog as these tags alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import aiohttp

from adapters.kafka import new_consumer, running
from deploy.local.probe import served_digest
from engine import topics
from engine.events import ReconcilePass, utcnow
from tests.bench.harness import Bench, cpu_s, succeeded_per_region
from tests.bench.pusher import Layer, Pusher

#: passes back to back; full checks off (they have their own cadence); budgets above what a pass here asks
FAST = {
    "GEOREP_RECONCILE__INTERVAL_S": "1", "GEOREP_RECONCILE__FULL_EVERY_S": "1000000",
    "GEOREP_RECONCILE__PRIMARY_RPS": "5000", "GEOREP_RECONCILE__REGION_RPS": "5000",
}  # fmt: skip


async def reconcile_pass(bench: Bench, run: str, repositories: int = 1000, tags: int = 10) -> dict[str, Any]:
    region = sorted(bench.regions)[0]
    repos = [f"pass-{run}/r{i:04d}" for i in range(repositories)]
    async with bench.records() as watch:
        await _push(bench, repos, tags)
        await watch.until(lambda seen: succeeded_per_region(seen, set(repos)).get(region, 0) >= len(repos) * tags)

    await bench.stop(f"replicator-{region}")
    since = utcnow()
    await bench.start(f"replicator-{region}", FAST)
    cpu = Cpu(bench.pid(f"replicator-{region}"))
    first = await _pass(bench, region, since)
    first_cpu = cpu.lap()
    matching = await _pass(bench, region, max(p.finished_at for p in first))
    matching_cpu = cpu.lap()

    count = repositories * tags // 100  # 1% of the tags: `t0` of every n-th repository
    moved = repos[:: max(1, repositories // count)][:count]
    # The moves are made while the region's replicator is down, so that no pass is caught halfway through them.
    await bench.stop(f"replicator-{region}")
    new = await _lose_moves(bench, moved)
    since, started = utcnow(), time.monotonic()
    await bench.start(f"replicator-{region}", FAST)
    cpu = Cpu(bench.pid(f"replicator-{region}"))
    drift = await _pass(bench, region, since)
    drift_cpu = cpu.lap()
    await _served(bench, region, {(repo, "t0"): digest for repo, digest in new.items()}, 600)
    converged_s = time.monotonic() - started

    await bench.stop(f"replicator-{region}")
    await bench.start(f"replicator-{region}")
    return {
        "region": region,
        "tags": repositories * tags,
        "repositories": repositories,
        "first": _summary(first, first_cpu),
        "matching": _summary(matching, matching_cpu),
        "drift": _summary(drift, drift_cpu) | {"moved": len(moved), "converged_s": converged_s},
    }


async def _push(bench: Bench, repos: list[str], tags: int) -> None:
    """One small image per repository, under `tags` tags."""
    slots = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as session:
        pusher = Pusher(session, bench.primary)

        async def one(repo: str) -> None:
            async with slots:
                digest = await pusher.image(repo, "t0", [Layer.make(1024, repo)], label=repo)
                for t in range(1, tags):
                    await pusher.retag(repo, digest, f"t{t}")

        await asyncio.gather(*(one(repo) for repo in repos))


async def _lose_moves(bench: Bench, repos: list[str]) -> dict[str, str]:
    """Move `t0` of each repository to a new image with the webhook down, then restart the primary, which
    drops the notifications it queued: no event tells any region. repository -> the new digest."""
    await bench.stop("webhook")
    slots = asyncio.Semaphore(16)
    new: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        pusher = Pusher(session, bench.primary)

        async def one(repo: str) -> None:
            async with slots:
                new[repo] = await pusher.image(repo, "t0", [Layer.make(1024, repo)], label=f"{repo}-moved")

        await asyncio.gather(*(one(repo) for repo in repos))
    await bench.stop("primary")
    await bench.start("primary")
    await bench.start("webhook")
    return new


async def _pass(bench: Bench, region: str, after: datetime, timeout_s: float = 900) -> list[ReconcilePass]:
    """The first pass of `region` that started after `after`: its summary for every partition."""
    partitions = bench.kafka().events_partitions
    found: dict[int, ReconcilePass] = {}
    async with running(new_consumer(bench.kafka(), "bench", topics.RECONCILE, group=None)) as consumer:
        async with asyncio.timeout(timeout_s):
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for record in (r for batch in batches.values() for r in batch if r.value is not None):
                    summary = ReconcilePass.model_validate(json.loads(record.value))
                    if summary.region == region and summary.started_at > after:
                        found.setdefault(summary.partition, summary)
                passes = {p.started_at for p in found.values()}
                if len(found) == partitions and len(passes) == 1:
                    return list(found.values())
                if len(passes) > 1:  # a partition's summary from a later pass: keep the earliest pass only
                    earliest = min(passes)
                    found = {k: v for k, v in found.items() if v.started_at == earliest}


async def _served(bench: Bench, region: str, expected: dict[tuple[str, str], str], timeout_s: float) -> None:
    registry = bench.regions[region]["registry"]
    pending = dict(expected)
    slots = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as session, asyncio.timeout(timeout_s):

        async def there(key: tuple[str, str]) -> bool:
            async with slots:
                return await served_digest(session, registry, key[0], key[1]) == pending[key]

        while pending:
            done = await asyncio.gather(*(there(key) for key in pending))
            pending = {k: v for (k, v), ok in zip(pending.items(), done, strict=True) if not ok}
            if pending:
                await asyncio.sleep(1)  # a region catching up: nothing to wait on but its registry


class Cpu:
    """A process's CPU seconds, lap by lap."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.mark = cpu_s(pid)

    def lap(self) -> float:
        now = cpu_s(self.pid)
        spent, self.mark = now - self.mark, now
        return spent


def _summary(passes: list[ReconcilePass], cpu_seconds: float) -> dict[str, Any]:
    started = min(p.started_at for p in passes)
    finished = max(p.finished_at for p in passes)
    repositories = sum(p.repositories for p in passes)
    drift: dict[str, int] = {}
    for p in passes:
        for kind, n in p.drift.items():
            drift[kind] = drift.get(kind, 0) + n
    return {
        "seconds": (finished - started).total_seconds(),
        "repositories": repositories,
        "unchanged": sum(p.unchanged for p in passes),
        "checked_full": sum(p.checked_full for p in passes),
        "deferred": sum(p.deferred for p in passes),
        "requests_primary": sum(p.requests_primary for p in passes),
        "requests_region": sum(p.requests_region for p in passes),
        "region_requests_per_repository": sum(p.requests_region for p in passes) / max(repositories, 1),
        "cpu_ms_per_repository": cpu_seconds * 1000 / max(repositories, 1),
        "drift": drift,
        "repairs": sum(p.repairs for p in passes),
    }
