"""The benchmark scenarios; each returns plain numbers (and raw samples) for results.json."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from adapters.kafka import new_consumer, started
from deploy.local import stack
from engine import topics
from tests.bench.harness import Bench, CpuSplit, peak_rss_mb, succeeded_per_region
from tests.bench.pusher import Layer, Pusher

MB = 1e6
MiB = 1024 * 1024
V1 = "application/vnd.docker.distribution.events.v1+json"


async def _push_all(bench: Bench, images: dict[str, list[Layer]], concurrency: int = 8) -> dict[str, str]:
    """Push repository → layers (tag v1) to the primary; repository → manifest digest."""
    slots = asyncio.Semaphore(concurrency)
    digests: dict[str, str] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:
        pusher = Pusher(session, bench.primary)

        async def one(repository: str, layers: list[Layer]) -> None:
            async with slots:
                digests[repository] = await pusher.image(repository, "v1", layers)

        await asyncio.gather(*(one(repo, layers) for repo, layers in images.items()))
    return digests


def bulk_content(run: str, big: int = 8, big_size: int = 128 * MiB, small: int = 200) -> dict[str, list[Layer]]:
    """One image of `big` large layers, and `small` one-layer images of 1 MiB, each in its own repository."""
    images = {f"bulk-{run}/big": [Layer.make(big_size, f"{run}-big-{i}") for i in range(big)]}
    images |= {f"bulk-{run}/small-{i:03d}": [Layer.make(MiB, f"{run}-small-{i}")] for i in range(small)}
    return images


def _bytes(images: dict[str, list[Layer]]) -> int:
    return sum(layer.size for layers in images.values() for layer in layers)


async def georep_bulk(bench: Bench, images: dict[str, list[Layer]], replicators: int = 1) -> dict[str, Any]:
    """Queue every image while replicators are stopped, then start them: seconds until every region has all."""
    await bench.stop_replicators()
    async with bench.records() as watch:
        await _push_all(bench, images)
        repos = set(images)
        # The primary's notifications are asynchronous: wait until every push is in Kafka.
        await _events_published(bench, repos)
        started = time.monotonic()
        split = CpuSplit(bench)
        await bench.start_replicators()
        base = int(bench.info["port_base"]) + 80
        extra = [
            bench.spawn_replicator(region, base + i * 4 + n)
            for i, region in enumerate(bench.regions)
            for n in range(replicators - 1)
        ]
        done = await watch.until(
            lambda seen: all(succeeded_per_region(seen, repos).get(r, 0) >= len(repos) for r in bench.regions)
        )
        cpu = split.done({f"replicator-extra-{pid}": pid for pid, _ in extra})
    for pid, argv in extra:
        await asyncio.to_thread(stack.stop_pid, pid, argv)
    seconds = done - started
    moved = _bytes(images) * len(bench.regions)
    return {
        "seconds": seconds, "bytes": moved, "mb_s": moved / MB / seconds, "replicators_per_region": replicators,
        "cpu": cpu,
    }  # fmt: skip


async def _events_published(bench: Bench, repositories: set[str], timeout_s: float = 300) -> None:
    consumer = await started(new_consumer(bench.kafka(), "bench", topics.EVENTS, group=None))
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while not repositories <= seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(seen & repositories)} of {len(repositories)} pushes reached Kafka")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen |= {json.loads(r.value)["repository"] for r in records}
    finally:
        await consumer.stop()


async def skopeo_bulk(bench: Bench, images: dict[str, list[Layer]], run: str, attempts: int = 2) -> dict[str, Any]:
    """`skopeo sync` from the primary into a writable registry per region, all regions at once.

    The peer fails now and then (its registry resets a blob upload's connection): that attempt is reported
    and the sync runs again into fresh registries and a fresh prefix, timed on its own."""
    for attempt in range(1, attempts + 1):
        try:
            return await _skopeo_bulk_once(bench, images, f"{run}-{attempt}") | {"attempts": attempt}
        except RuntimeError as exc:
            if attempt == attempts:
                raise
            print(f"[bench] skopeo sync attempt {attempt} failed, once more: {str(exc)[-300:]}", flush=True)
    raise AssertionError("unreachable")


async def _skopeo_bulk_once(bench: Bench, images: dict[str, list[Layer]], run: str) -> dict[str, Any]:
    async with bench.writable_registries(f"skopeo-{run}") as hosts:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "sync.yml"
            source.write_text(
                json.dumps({bench.primary: {"tls-verify": False, "images": {repo: ["v1"] for repo in images}}})
            )
            started = time.monotonic()
            await asyncio.gather(*(_skopeo_sync(source, host) for host in hosts.values()))
            seconds = time.monotonic() - started
    moved = _bytes(images) * len(bench.regions)
    return {"seconds": seconds, "bytes": moved, "mb_s": moved / MB / seconds}


async def _skopeo_sync(source: Path, destination: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "skopeo", "--insecure-policy", "sync", "--src", "yaml", "--dest", "docker", "--dest-tls-verify=false",
        str(source), destination, stdout=subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"skopeo sync failed: {err.decode()[-2000:]}")


async def latency(bench: Bench, run: str, rate: float = 10, seconds: float = 60) -> dict[str, Any]:
    """Small images pushed at `rate`/s; per region, seconds from push done to pullable by digest."""
    count = int(rate * seconds)
    samples: dict[str, list[float]] = {region: [] for region in bench.regions}
    arrived: dict[tuple[str, str], asyncio.Event] = {}

    def event(repo: str, region: str) -> asyncio.Event:
        return arrived.setdefault((repo, region), asyncio.Event())

    async with (
        bench.records() as watch,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
    ):
        pusher = Pusher(session, bench.primary)

        async def follow() -> None:
            def mark(seen: list[dict[str, Any]]) -> bool:
                for record in seen:
                    if record["status"] == "succeeded":
                        event(record["repository"], record["region"]).set()
                seen.clear()
                return False

            await watch.until(mark, timeout_s=seconds + 600)

        async def one(i: int, start: float) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            repo = f"lat-{run}/app-{i:04d}"
            digest = await pusher.image(repo, "v1", [Layer.make(16 * 1024, f"{run}-{i}")])
            pushed = time.monotonic()
            for region, info in bench.regions.items():
                await event(repo, region).wait()
                await _pullable(session, info["registry"], repo, digest)
                samples[region].append(time.monotonic() - pushed)

        follower = asyncio.create_task(follow())
        start = time.monotonic()
        await asyncio.gather(*(one(i, start) for i in range(count)))
        follower.cancel()
    return {"rate": rate, "seconds": seconds, "count": count, "samples": samples}


async def _pullable(session: aiohttp.ClientSession, registry: str, repository: str, digest: str) -> None:
    url = f"http://{registry}/v2/{repository}/manifests/{digest}"
    headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    while True:
        async with session.head(url, headers=headers) as response:
            if response.status == 200:
                return
        await asyncio.sleep(0.005)


async def memory(bench: Bench, run: str, region: str, *, quick: bool = False) -> dict[str, Any]:
    """Peak RSS of one fresh replicator process per case: one blob of each size, then 32 blobs at once."""
    large, many = (512, 8) if quick else (2048, 32)
    cases: dict[str, dict[str, list[Layer]]] = {
        "idle": {},
        "1 blob of 256 MiB": {f"mem-{run}/one-256m": [Layer.make(256 * MiB, f"{run}-m256")]},
        f"1 blob of {large} MiB": {f"mem-{run}/one-large": [Layer.make(large * MiB, f"{run}-mlarge")]},
        f"{many} blobs of 32 MiB at once": {
            f"mem-{run}/many": [Layer.make(32 * MiB, f"{run}-m32-{i}") for i in range(many)]
        },
    }
    peaks: dict[str, float] = {}
    name = f"replicator-{region}"
    for case, images in cases.items():
        await bench.stop(name)
        await bench.start(name)
        if images:
            async with bench.records() as watch:
                await _push_all(bench, images)
                await watch.until(_arrived_in(region, set(images)))
        peaks[case] = peak_rss_mb(bench.pid(name))
    return {"region": region, "peak_rss_mb": peaks}


async def hot_path(bench: Bench, run: str, events: int = 2000, repositories: int = 16) -> dict[str, Any]:
    """Tag-only pushes (every blob already in every region): events/s through the webhook and the replicators."""
    repos = [f"hot-{run}/app-{i:02d}" for i in range(repositories)]
    layer = Layer.make(16 * 1024, f"{run}-hot")
    async with bench.records() as watch:
        digests = await _push_all(bench, {repo: [layer] for repo in repos})
        await watch.until(lambda seen: all(n >= len(repos) for n in _regions(bench, seen, set(repos)).values()))
    token = bench.info["webhook_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": V1}
    slots = asyncio.Semaphore(16)

    async def post(session: aiohttp.ClientSession, i: int) -> None:
        repo = repos[i % len(repos)]
        body = {
            "events": [{
                "id": f"hot-{run}-{i}", "timestamp": "2026-01-01T00:00:00Z", "action": "push",
                "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digests[repo],
                           "size": 1, "repository": repo, "tag": f"t{i}"},
            }]
        }  # fmt: skip
        async with slots, session.post(bench.info["webhook"], data=json.dumps(body), headers=headers) as response:
            if response.status != 200:
                raise RuntimeError(f"webhook answered {response.status}: {await response.text()}")

    ids = {f"hot-{run}-{i}" for i in range(events)}
    async with bench.records() as watch, aiohttp.ClientSession() as session:
        started = time.monotonic()
        split = CpuSplit(bench, {"bench": os.getpid()})
        await asyncio.gather(*(post(session, i) for i in range(events)))
        posted = time.monotonic()

        done: set[tuple[str, str]] = set()

        def all_done(seen: list[dict[str, Any]]) -> bool:
            # Counted as records arrive, not over all of them at each batch: this process shares the cores
            # with what it measures, and a rescan per batch grows with the square of the events.
            done.update(
                (r["event_id"], r["region"]) for r in seen if r["event_id"] in ids and r["status"] == "succeeded"
            )
            seen.clear()
            return len(done) >= events * len(bench.regions)

        finished = await watch.until(all_done)
        # Where the CPU goes, this process (the senders and the record watch) included: they share the cores.
        cpu = split.done()
    return {
        "events": events,
        "webhook_events_s": events / (posted - started),
        "replicated_events_s_per_region": events / (finished - started),
        "cpu": cpu,
    }


def _arrived_in(region: str, repos: set[str]) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda seen: succeeded_per_region(seen, repos).get(region, 0) >= len(repos)


def _regions(bench: Bench, seen: list[dict[str, Any]], repos: set[str]) -> dict[str, int]:
    counts = succeeded_per_region(seen, repos)
    return {region: counts.get(region, 0) for region in bench.regions}
