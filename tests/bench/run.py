"""`make bench`: start a stack, run every scenario several times, write bench/results.{json,md} and bench/plot.png.

    python -m tests.bench.run [--runs 3] [--out bench] [--port-base 27000] [--quick]

--quick shrinks every scenario (smaller bulk, shorter latency run, one run)
to check the harness itself; its numbers are not the published ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.local import stack
from tests.bench import ceilings, costs, passes, scenarios
from tests.bench.harness import Bench, CpuSplit
from tests.bench.report import latency_stats, markdown, plot, summary

REPO = Path(__file__).resolve().parents[2]


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory_gib:.0f} GiB RAM, {platform.system()} {platform.release()}"


async def run_all(bench: Bench, runs: int, quick: bool) -> dict[str, Any]:
    big, big_size, small = (2, 64 * ceilings.MiB, 20) if quick else (8, 128 * ceilings.MiB, 200)
    # First, on the fresh stack: a pass walks the whole catalog, which is then these tags alone.
    reconcile = await passes.reconcile_pass(bench, "pass", repositories=100 if quick else 1000)
    _say(f"reconciliation passes: {reconcile}")
    raw: dict[str, list[Any]] = {
        k: []
        for k in (
            "sha",
            "read",
            "s3",
            "georep",
            "skopeo",
            "two",
            "hot",
            "latency",
            "latency_low",
            "cpu",
            "webhook",
            "client",
            "s3_cpu",
        )
    }
    for run in range(1, runs + 1):
        tag = f"r{run}-{int(time.time())}"
        images = scenarios.bulk_content(tag, big, big_size, small)
        raw["sha"].append(ceilings.sha256_mb_s())
        split = CpuSplit(bench)
        raw["s3"].append(await ceilings.s3_write_mb_s(bench))
        raw["s3_cpu"].append(split.done())
        _say(f"run {run}: ceilings sha256 {raw['sha'][-1]:.0f} MB/s, S3 write {raw['s3'][-1]:.0f} MB/s")
        raw["georep"].append(await scenarios.georep_bulk(bench, images))
        _say(f"run {run}: georep bulk {raw['georep'][-1]['seconds']:.1f} s ({raw['georep'][-1]['mb_s']:.0f} MB/s)")
        blobs = [(repo, layer.digest, layer.size) for repo, layers in images.items() for layer in layers]
        raw["read"].append(await ceilings.primary_read_mb_s(bench, blobs))
        raw["skopeo"].append(await scenarios.skopeo_bulk(bench, images, tag))
        _say(f"run {run}: skopeo sync {raw['skopeo'][-1]['seconds']:.1f} s ({raw['skopeo'][-1]['mb_s']:.0f} MB/s)")
        two = scenarios.bulk_content(f"{tag}-x2", big, big_size, small)
        raw["two"].append(await scenarios.georep_bulk(bench, two, replicators=2))
        _say(f"run {run}: georep bulk, 2 replicators/region: {raw['two'][-1]['mb_s']:.0f} MB/s")
        raw["hot"].append(await scenarios.hot_path(bench, tag, events=400 if quick else 1000))
        _say(f"run {run}: hot path {raw['hot'][-1]}")
        raw["cpu"].append(await costs.cpu_per_image(bench, tag, images=20 if quick else 60))
        _say(f"run {run}: CPU per new small image, replicator / S3 server: {raw['cpu'][-1]['ratio']:.2f}")
        raw["client"].append(await costs.client_cost(bench, tag, requests=200 if quick else 1000))
        _say(f"run {run}: S3 client CPU per request, aiobotocore / obstore: {raw['client'][-1]['ratio']:.2f}")
        raw["webhook"].append(await costs.webhook_rate(bench, tag, events=2000 if quick else 10000))
        _say(f"run {run}: webhook {raw['webhook'][-1]['events_s']:.0f} events/s, one event per request")
        raw["latency"].append(await scenarios.latency(bench, tag, seconds=10 if quick else 60))
        p99 = {r: latency_stats(s)["p99"] for r, s in raw["latency"][-1]["samples"].items()}
        _say(f"run {run}: latency at 10/s p99 {p99}")
        raw["latency_low"].append(await scenarios.latency(bench, f"{tag}-low", rate=2, seconds=10 if quick else 30))
        p99 = {r: latency_stats(s)["p99"] for r, s in raw["latency_low"][-1]["samples"].items()}
        _say(f"run {run}: latency at 2/s p99 {p99}")
    memory = await scenarios.memory(bench, "mem", next(iter(bench.regions)), quick=quick)
    _say(f"memory: {memory}")
    ingest = await costs.logstore_ingest(bench, "ingest", records=20_000 if quick else 100_000)
    _say(f"log store ingest: {ingest['records_s']:.0f} records/s")
    queries = await costs.logstore_queries(bench, "queries", records=100_000 if quick else 1_000_000)
    _say(f"log store queries: {queries}")

    gib = raw["georep"][0]["bytes"] / len(bench.regions) / 2**30
    georep_s = summary([r["seconds"] for r in raw["georep"]])
    skopeo_s = summary([r["seconds"] for r in raw["skopeo"]])
    georep_mb_s = summary([r["mb_s"] for r in raw["georep"]])
    s3 = summary(raw["s3"])
    samples = {region: [x for run in raw["latency"] for x in run["samples"][region]] for region in bench.regions}
    low = {region: [x for run in raw["latency_low"] for x in run["samples"][region]] for region in bench.regions}
    return {
        "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": quick,
        "ceilings": {
            "sha256_mb_s": summary(raw["sha"]),
            "primary_read_mb_s": summary(raw["read"]),
            "s3_write_mb_s": s3,
        },
        "bulk": {
            "gib": gib,
            "regions": len(bench.regions),
            "georep_s": georep_s,
            "skopeo_s": skopeo_s,
            "georep_mb_s": georep_mb_s,
            "skopeo_mb_s": summary([r["mb_s"] for r in raw["skopeo"]]),
            "speedup_vs_skopeo": statistics.median(
                s["seconds"] / g["seconds"] for s, g in zip(raw["skopeo"], raw["georep"], strict=True)
            ),
            "fraction_of_s3_ceiling": statistics.median(
                g["mb_s"] / c for g, c in zip(raw["georep"], raw["s3"], strict=True)
            ),
            # Where the time goes: cores each role keeps busy, writing the ceiling and copying the bulk.
            "cores": {"ceiling": _cores(raw["s3_cpu"]), "georep": _cores([r["cpu"] for r in raw["georep"]])},
        },
        "scale_out": {"one": georep_mb_s, "two": summary([r["mb_s"] for r in raw["two"]])},
        "hot_path": {
            "webhook_events_s": summary([r["webhook_events_s"] for r in raw["hot"]]),
            "replicated_events_s": summary([r["replicated_events_s_per_region"] for r in raw["hot"]]),
            # The stack is CPU-bound here: the cores each role keeps busy, and its CPU per event (all regions).
            "cores": _cores([r["cpu"] for r in raw["hot"]]),
            "cpu_ms_per_event": _per_event([r["cpu"] for r in raw["hot"]], [r["events"] for r in raw["hot"]]),
        },
        "latency": {
            "rate": raw["latency"][0]["rate"],
            "per_region": {region: latency_stats(s) for region, s in samples.items()},
            "samples": samples,
        },
        "latency_low": {
            "rate": raw["latency_low"][0]["rate"],
            "per_region": {region: latency_stats(s) for region, s in low.items()},
            "samples": low,
        },
        "memory": memory,
        "reconcile": reconcile,
        "costs": {
            "cpu_per_image": {
                "ratio": summary([r["ratio"] for r in raw["cpu"]]),
                "replicator_ms": summary([statistics.median(x["replicator_ms"] for x in r["per_region"].values())
                                          for r in raw["cpu"]]),
                "s3_ms": summary([statistics.median(x["s3_ms"] for x in r["per_region"].values())
                                  for r in raw["cpu"]]),
                "replicator_idle_ms_s": summary([
                    statistics.median(x["idle_ms_per_s"]["replicator"] for x in r["per_region"].values())
                    for r in raw["cpu"]
                ]),
                "runs": raw["cpu"],
            },
            "client": {
                "ratio": summary([r["ratio"] for r in raw["client"]]),
                "aiobotocore_ms": summary([r["aiobotocore_ms_per_request"] for r in raw["client"]]),
                "obstore_ms": summary([r["obstore_ms_per_request"] for r in raw["client"]]),
            },
            "webhook": {
                "events_s": summary([r["events_s"] for r in raw["webhook"]]),
                "cpu_ms_per_event": summary([r["webhook_cpu_ms_per_event"] for r in raw["webhook"]]),
            },
            "logstore_ingest": ingest,
            "logstore_queries": queries,
        },
    }  # fmt: skip


def _cores(splits: list[dict[str, Any]]) -> dict[str, float]:
    """Median over runs of the cores each role kept busy (CpuSplit.done), and of all of them together."""
    roles = {role for split in splits for role in split["cores"]}
    out = {role: statistics.median(split["cores"].get(role, 0.0) for split in splits) for role in sorted(roles)}
    return out | {"total": statistics.median(split["cores_total"] for split in splits)}


def _per_event(splits: list[dict[str, Any]], events: list[int]) -> dict[str, float]:
    """Median over runs of each role's CPU milliseconds per event, and of all of them together."""
    per_run = [
        {role: 1000 * cpu / n for role, cpu in split["cpu_s"].items()} for split, n in zip(splits, events, strict=True)
    ]
    roles = sorted({role for run in per_run for role in run})
    out = {role: statistics.median(run.get(role, 0.0) for run in per_run) for role in roles}
    return out | {"total": statistics.median(sum(run.values()) for run in per_run)}


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    root = Path(tempfile.mkdtemp(prefix="georep-bench-"))
    _say(f"starting the stack in {root} (ports {args.port_base}+)")
    info = await stack.up(root, args.port_base, ["ap-singapore", "eu-frankfurt"])
    try:
        return await run_all(Bench(info, root), args.runs, args.quick)
    finally:
        stack.down(root)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    parser.add_argument("--port-base", type=int, default=27000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    results = asyncio.run(main_async(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    plot(results, args.out / "plot.png")
    print(markdown(results))
    print(f"wrote {args.out}/results.json, results.md, plot.png")


if __name__ == "__main__":
    main()
