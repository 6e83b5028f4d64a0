"""What each part costs per unit of work, as ratios against a reference measured in the same run.

cpu_per_image     a replicator's CPU per new small image and region, against its region's S3 server's
                  CPU for the same writes (both from /proc/<pid>/stat, before and after), on replicators
                  restarted for it, as on a fresh `make up`
webhook_rate      notification events/s one webhook takes, one event per request, acknowledged by Kafka
logstore_ingest   replication records/s the log store takes from the log topic into SQLite
logstore_queries  with 1,000,000 records in a store: GET /status and GET /logs?repository=…&limit=50
client_cost       CPU per small-object request through aiobotocore and through obstore, same server, same run
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from adapters.kafka import Publisher, start_group_at
from adapters.objects import SmallObjects
from adapters.store import RegionStore
from consumers.logstore.store import LogStore
from deploy.local import stack
from engine import topics
from engine.events import ReplicationRecord, Status, utcnow
from engine.settings import RegionSettings
from tests.bench.harness import Bench, cpu_s, succeeded_per_region, until_http
from tests.bench.pusher import Layer, Pusher

V1 = "application/vnd.docker.distribution.events.v1+json"


async def cpu_per_image(bench: Bench, run: str, images: int = 60, quiet_s: float = 5.0) -> dict[str, Any]:
    """`images` new two-layer images of about 100 KiB, pushed one after another, each waited for in every
    region: per region, CPU ms per image of its replicator and of its S3 server, and their ratio.

    The replicators are restarted first, as on a fresh `make up`. By this point of a bench the regions
    hold over a thousand repositories, and a long-running replicator is in the middle of a reconciliation
    pass at its budget (measured: 60 to 90 ms of CPU a second), which is not the cost of these images; a
    restarted one starts its first pass after `reconcile.interval_s`. One image first opens the
    connections; then `quiet_s` without pushes gives each process's background rate (reported, not
    subtracted)."""
    regions = list(bench.regions)
    await bench.stop_replicators()
    await bench.start_replicators()
    procs = {r: (bench.pid(f"replicator-{r}"), bench.pid(f"s3-{r}")) for r in regions}
    async with bench.records() as watch, aiohttp.ClientSession() as session:
        pusher = Pusher(session, bench.primary)

        async def push(i: int, repo: str) -> None:
            layers = [Layer.make(48 * 1024, f"{run}-{i}-a"), Layer.make(48 * 1024, f"{run}-{i}-b")]
            await pusher.image(repo, "v1", layers)
            await watch.until(lambda seen: all(succeeded_per_region(seen, {repo}).get(r, 0) >= 1 for r in regions))

        await push(-1, f"cpu-{run}/warm-up")
        quiet = {r: (cpu_s(a), cpu_s(b)) for r, (a, b) in procs.items()}
        await asyncio.sleep(quiet_s)  # the measure is this interval itself, not a wait for a condition
        before = {r: (cpu_s(a), cpu_s(b)) for r, (a, b) in procs.items()}
        started = time.monotonic()
        for i in range(images):
            await push(i, f"cpu-{run}/app-{i:03d}")
    seconds = time.monotonic() - started
    out: dict[str, Any] = {"images": images, "seconds": seconds, "per_region": {}}
    for region, (replicator, s3) in procs.items():
        spent = (cpu_s(replicator) - before[region][0], cpu_s(s3) - before[region][1])
        out["per_region"][region] = {
            "replicator_ms": spent[0] * 1000 / images,
            "s3_ms": spent[1] * 1000 / images,
            "ratio": spent[0] / spent[1] if spent[1] else float("inf"),
            # CPU ms a second with nothing pushed, just before: part of the figures above, not taken off
            "idle_ms_per_s": {
                "replicator": (before[region][0] - quiet[region][0]) * 1000 / quiet_s,
                "s3": (before[region][1] - quiet[region][1]) * 1000 / quiet_s,
            },
        }
    out["ratio"] = statistics.median(r["ratio"] for r in out["per_region"].values())
    return out


async def webhook_rate(bench: Bench, run: str, events: int = 10000, senders: int = 64) -> dict[str, Any]:
    """One event per request from `senders` concurrent clients, each answered only once Kafka acknowledged it.
    The replicators are stopped meanwhile and skip these events after (their groups are moved past them)."""
    await bench.stop_replicators()
    token = bench.info["webhook_token"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": V1}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(events):
        queue.put_nowait(i)
    webhook = bench.pid("webhook")
    cpu_before = cpu_s(webhook)

    async def sender(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {"events": [{
                "id": f"wh-{run}-{i}", "timestamp": datetime.now(UTC).isoformat(), "action": "delete",
                "target": {"repository": f"webhook-{run}/app-{i % 50:02d}", "tag": f"t{i}"},
            }]}  # fmt: skip
            async with session.post(bench.info["webhook"], data=json.dumps(body), headers=headers) as response:
                if response.status != 200:
                    raise RuntimeError(f"webhook answered {response.status}: {await response.text()}")

    connector = aiohttp.TCPConnector(limit=senders)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        await asyncio.gather(*(sender(session) for _ in range(senders)))
        seconds = time.monotonic() - started
    cpu = cpu_s(webhook) - cpu_before
    kafka = bench.kafka()
    for region in bench.regions:
        await start_group_at(kafka, topics.replicator_group(region), kafka.events_topic, utcnow())
    await bench.start_replicators()
    return {"events": events, "senders": senders, "events_s": events / seconds, "webhook_cpu_ms_per_event":
            cpu * 1000 / events}  # fmt: skip


def _record(i: int, run: str, region: str, at: datetime) -> ReplicationRecord:
    """The i-th of a bench's records, finished at `at`."""
    return ReplicationRecord(
        event_id=f"{run}-{i}", region=region, repository=f"log-{run}/app-{i % 5000:04d}", tag=f"t{i % 7}",
        digest="sha256:" + f"{i:064x}", status=Status.SUCCEEDED, attempt=1, blobs_total=3, blobs_copied=2,
        bytes_copied=100_000, manifests_total=1, started_at=at, finished_at=at + timedelta(milliseconds=300),
        occurred_at=at - timedelta(milliseconds=200), lag_ms=500,
    )  # fmt: skip


async def logstore_ingest(bench: Bench, run: str, records: int = 100_000) -> dict[str, Any]:
    """Records written straight to the log topic, as fast as Kafka takes them; records/s until the API's store
    answers for the last of them."""
    kafka = bench.kafka()
    publisher = Publisher(kafka, "bench")
    region = next(iter(bench.regions))
    now = utcnow()
    batch = 2000
    try:
        started = time.monotonic()
        for first in range(0, records, batch):
            chunk = [_record(i, run, region, now) for i in range(first, min(first + batch, records))]
            await publisher.publish(kafka.log_topic, [(r.key, r.to_json()) for r in chunk], 60)
        published = time.monotonic()
    finally:
        await publisher.close()
    last = f"{run}-{records - 1}"
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{bench.info['logs']}/logs", params={"event_id": last}) as response:
                if (await response.json())["records"]:
                    break
            await asyncio.sleep(0.05)
    done = time.monotonic()
    return {"records": records, "publish_s": published - started, "records_s": records / (done - started)}


async def logstore_queries(bench: Bench, run: str, records: int = 1_000_000, tries: int = 20) -> dict[str, Any]:
    """A second API process on a store of `records` records (filled directly, in batches): the time of
    GET /status and of GET /logs?repository=…&limit=50, median and worst of `tries`."""
    path = bench.root / f"big-{run}.sqlite3"
    regions = list(bench.regions)
    now = utcnow()
    filled = time.monotonic()
    # A store this size spans weeks of pushes: the records are spread over the last 30 days, the latest
    # ones inside the status latency window.
    step = timedelta(days=30) / records
    async with LogStore(path) as store:
        for first in range(0, records, 20_000):
            await store.put_many([
                _record(i, run, regions[i % len(regions)], now - (records - i) * step)
                for i in range(first, min(first + 20_000, records))
            ])  # fmt: skip
    fill_s = time.monotonic() - filled
    port = int(bench.info["port_base"]) + 90
    command = bench.info["commands"][next(n for n in bench.info["commands"] if n.startswith("logstore"))]
    env = command["env"] | {
        "GEOREP_LOGSTORE__PATH": str(path), "GEOREP_LOGSTORE__PORT": str(port),
        "GEOREP_LOGSTORE__ADVERTISE_URL": f"http://127.0.0.1:{port}",
    }  # fmt: skip
    proc = stack.spawn({"argv": command["argv"], "env": env, "log": str(bench.root / "logs" / "big-logstore.log")})
    url = f"http://127.0.0.1:{port}"
    timings: dict[str, list[float]] = {"status": [], "logs_by_repository": []}
    try:
        await until_http(f"{url}/readyz", "the big log store", timeout_s=120)
        async with aiohttp.ClientSession() as session:
            while True:  # ready means the topics are read; /status answers once the catalogs are loaded
                async with session.get(f"{url}/status") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.2)
            for i in range(tries):
                for name, path_qs in (
                    ("status", "/status"),
                    ("logs_by_repository", f"/logs?repository=log-{run}/app-{i * 37 % 5000:04d}&limit=50"),
                ):
                    started = time.monotonic()
                    async with session.get(url + path_qs) as response:
                        assert response.status == 200, await response.text()
                        await response.read()
                    timings[name].append(time.monotonic() - started)
    finally:
        await asyncio.to_thread(stack.stop_pid, proc.pid, command["argv"])
        path.unlink(missing_ok=True)
    return {
        "records": records, "fill_s": fill_s,
        **{f"{name}_ms": {"median": statistics.median(t) * 1000, "max": max(t) * 1000} for name, t in timings.items()},
        # Every answer, in order: a slow one is then placed (the first after the load, or one among many).
        "samples_ms": {name: [round(x * 1000, 1) for x in t] for name, t in timings.items()},
    }  # fmt: skip


async def client_cost(bench: Bench, run: str, requests: int = 1000) -> dict[str, Any]:
    """CPU of this process per small-object request (PUT of 4 KiB, then HEAD), through aiobotocore and through
    obstore, against the same S3 server in the same run: the measure that lets obstore carry the hot path."""
    region = next(iter(bench.regions.values()))
    settings = RegionSettings(
        endpoint=region["s3"], bucket=region["bucket"], access_key=region["access_key"],
        secret_key=region["secret_key"],
    )  # fmt: skip
    body = os.urandom(4096)
    out: dict[str, Any] = {"requests": requests}
    async with RegionStore.open(settings) as store:
        s3 = store._s3
        objects = SmallObjects.for_region(settings, 16)

        async def botocore_pair(key: str) -> None:
            await s3.put_object(Bucket=settings.bucket, Key=key, Body=body)
            await s3.head_object(Bucket=settings.bucket, Key=key)

        async def obstore_pair(key: str) -> None:
            await objects.put(key, body, if_absent=False)
            await objects.size(key)

        for name, pair in (("aiobotocore", botocore_pair), ("obstore", obstore_pair)):
            await pair(f"bench-{run}/{name}/warm-up")
            started = time.process_time()
            for i in range(requests // 2):
                await pair(f"bench-{run}/{name}/{i}")
            out[f"{name}_ms_per_request"] = (time.process_time() - started) * 1000 / requests
    out["ratio"] = out["aiobotocore_ms_per_request"] / out["obstore_ms_per_request"]
    return out
