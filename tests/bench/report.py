"""Turn results.json into the Markdown table and the PNG plot."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

#: tag-only events/s per region before the lean request path (bench of 2026-11-28 on this machine, the
#: reference of the 5x target: a figure of the past cannot be measured in the same run)
TAG_ONLY_BEFORE_EVENTS_S = 28.0


def summary(values: list[float]) -> dict[str, float]:
    """Median and spread (min, max) of repeated runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def latency_stats(samples: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(samples, 50),
        "p95": percentile(samples, 95),
        "p99": percentile(samples, 99),
        "max": max(samples),
        "count": len(samples),
    }


def _spread(s: dict[str, float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])}, {int(s['runs'])} runs)"


def markdown(results: dict[str, Any]) -> str:
    c = results["ceilings"]
    bulk = results["bulk"]
    lines = [
        f"Machine: {results['machine']}. Date: {results['date']}.",
        "",
        "| scenario | georep | peer / ceiling | ratio |",
        "| --- | --- | --- | --- |",
        f"| bulk, {bulk['gib']:.2f} GiB to {bulk['regions']} regions: wall time (s) | {_spread(bulk['georep_s'])} | "
        f"skopeo sync {_spread(bulk['skopeo_s'])} | georep {bulk['speedup_vs_skopeo']:.2f}× faster |",
        f"| bulk throughput (MB/s, all regions) | {_spread(bulk['georep_mb_s'])} | "
        f"S3 write ceiling {_spread(c['s3_write_mb_s'])} | {bulk['fraction_of_s3_ceiling']:.0%} of ceiling |",
        *_cores_rows(bulk.get("cores"), bulk["georep_mb_s"]["median"], c["s3_write_mb_s"]["median"]),
    ]
    for key in ("latency_low", "latency"):
        for region, stats in results[key]["per_region"].items():
            lines.append(
                f"| push → pullable at {results[key]['rate']:g} images/s, {region} (s): p50 / p95 / p99 / max | "
                f"{stats['p50']:.3f} / {stats['p95']:.3f} / {stats['p99']:.3f} / {stats['max']:.3f} | "
                f"{int(stats['count'])} images | target p99 < 1 s |"
            )
    for case, peak in results["memory"]["peak_rss_mb"].items():
        lines.append(f"| peak RSS, one replicator, {case} (MB) | {peak:.0f} | target < 200 | |")
    scale = results["scale_out"]
    lines.append(
        f"| scale-out: bulk MB/s with 1 / 2 replicators per region | {scale['one']['median']:.1f} / "
        f"{scale['two']['median']:.1f} | | 2 procs {scale['two']['median'] / scale['one']['median']:.2f}× of 1 |"
    )
    hot = results["hot_path"]
    lines.append(
        f"| hot path (tag-only pushes): events/s | webhook {_spread(hot['webhook_events_s'], '{:.0f}')}; "
        f"replicated per region {_spread(hot['replicated_events_s'], '{:.0f}')} | | |"
    )
    lines += _hot_cpu_rows(hot)
    lines += _cost_rows(results, hot)
    lines += _reconcile_rows(results)
    lines += [
        f"| ceiling: sha256, one core (MB/s) | | {_spread(c['sha256_mb_s'], '{:.0f}')} | |",
        f"| ceiling: primary registry read (MB/s) | | {_spread(c['primary_read_mb_s'], '{:.0f}')} | |",
    ]
    return "\n".join(lines) + "\n"


def _cost_rows(results: dict[str, Any], hot: dict[str, Any]) -> list[str]:
    costs = results.get("costs")
    if costs is None:
        return []
    cpu, webhook = costs["cpu_per_image"], costs["webhook"]
    ingest, queries = costs["logstore_ingest"], costs["logstore_queries"]
    tag_only = hot["replicated_events_s"]["median"]
    return [
        f"| CPU per new small image and region (ms), restarted replicators: replicator | "
        f"{_spread(cpu['replicator_ms'])}; idle {cpu['replicator_idle_ms_s']['median']:.1f} ms/s | "
        f"its S3 server {_spread(cpu['s3_ms'])} | {cpu['ratio']['median']:.2f}× (target ≤ 0.4×) |",
        *_client_row(costs),
        f"| tag-only events/s per region | {tag_only:.0f} | before: {TAG_ONLY_BEFORE_EVENTS_S:.0f} | "
        f"{tag_only / TAG_ONLY_BEFORE_EVENTS_S:.1f}× (target ≥ 5×) |",
        f"| webhook, one event per request, acked by Kafka: events/s | {_spread(webhook['events_s'], '{:.0f}')} | "
        f"target 2000 | {webhook['events_s']['median'] / 2000:.1f}× of target |",
        f"| log store ingest: records/s | {ingest['records_s']:.0f} | target 5000 | "
        f"{ingest['records_s'] / 5000:.1f}× of target |",
        f"| `GET /status`, {queries['records']:,} records (ms): median / max | "
        f"{queries['status_ms']['median']:.0f} / {queries['status_ms']['max']:.0f} | target < 200 | "
        f"{queries['status_ms']['max'] / 200:.2f}× of limit |",
        f"| `GET /logs?repository=…&limit=50`, {queries['records']:,} records (ms): median / max | "
        f"{queries['logs_by_repository_ms']['median']:.0f} / {queries['logs_by_repository_ms']['max']:.0f} | "
        f"target < 200 | {queries['logs_by_repository_ms']['max'] / 200:.2f}× of limit |",
    ]


def _reconcile_rows(results: dict[str, Any]) -> list[str]:
    passes = results.get("reconcile")
    if passes is None:
        return []
    tags, repositories = passes["tags"], passes["repositories"]
    rows = []
    for key, what in (
        ("first", "first pass after a restart (compares every repository in full)"),
        ("matching", "pass over tags that already match"),
        ("drift", f"pass with 1% drift ({passes['drift']['moved']} tags moved, their events lost)"),
    ):
        p = passes[key]
        rows.append(
            f"| reconcile, {tags:,} tags in {repositories:,} repositories: {what}: s; requests primary / region | "
            f"{p['seconds']:.1f} s; {p['requests_primary']:,} / {p['requests_region']:,} | "
            f"{p['unchanged']:,} unchanged, {p['repairs']} repairs | "
            f"{p['region_requests_per_repository']:.2f} region requests and "
            f"{p.get('cpu_ms_per_repository', float('nan')):.1f} ms of replicator CPU per repository |"
        )
    rows.append(
        f"| reconcile: 1% drift made -> every moved tag served in {passes['region']} (s) | "
        f"{passes['drift']['converged_s']:.1f} | | |"
    )
    return rows


def _client_row(costs: dict[str, Any]) -> list[str]:
    client = costs.get("client")
    if client is None:
        return []
    return [
        f"| S3 client CPU per small request (ms): obstore | {_spread(client['obstore_ms'], '{:.3f}')} | "
        f"aiobotocore {_spread(client['aiobotocore_ms'], '{:.3f}')} | obstore {client['ratio']['median']:.1f}× "
        "cheaper (needed ≥ 2×) |"
    ]


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((lat, bulk), (mem, hot), (cpu, targets)) = plt.subplots(3, 2, figsize=(12, 12))
    for key in ("latency_low", "latency"):
        for region, samples in results[key]["samples"].items():
            ordered = sorted(samples)
            label = f"{region}, {results[key]['rate']:g}/s"
            lat.plot(ordered, [i / len(ordered) for i in range(1, len(ordered) + 1)], label=label)
    lat.set_xscale("log")
    lat.axvline(1.0, color="grey", linestyle=":", label="target p99")
    lat.set(title="push → pullable latency (CDF)", xlabel="seconds", ylabel="fraction of images")
    lat.legend()

    c, b, s = results["ceilings"], results["bulk"], results["scale_out"]
    names = ["S3 write\nceiling", "georep", "georep\n2 procs/region", "skopeo sync"]
    medians = [c["s3_write_mb_s"]["median"], b["georep_mb_s"]["median"], s["two"]["median"], b["skopeo_mb_s"]["median"]]
    errors = [
        [
            m - x["min"]
            for m, x in zip(medians, (c["s3_write_mb_s"], b["georep_mb_s"], s["two"], b["skopeo_mb_s"]), strict=True)
        ],
        [
            x["max"] - m
            for m, x in zip(medians, (c["s3_write_mb_s"], b["georep_mb_s"], s["two"], b["skopeo_mb_s"]), strict=True)
        ],
    ]
    bulk.bar(names, medians, yerr=errors, color=["grey", "tab:blue", "tab:cyan", "tab:orange"])
    bulk.set(title=f"bulk throughput, {b['gib']:.2f} GiB to {b['regions']} regions", ylabel="MB/s")

    cases = list(results["memory"]["peak_rss_mb"])
    mem.barh(cases, [results["memory"]["peak_rss_mb"][k] for k in cases], color="tab:green")
    mem.axvline(200, color="grey", linestyle=":")
    mem.set(title="peak RSS of one replicator", xlabel="MB")

    h = results["hot_path"]
    hot.bar(
        ["webhook", "replicated\n(per region)"],
        [h["webhook_events_s"]["median"], h["replicated_events_s"]["median"]],
        color=["tab:purple", "tab:blue"],
    )
    hot.set(title="hot path: tag-only pushes", ylabel="events/s")
    _plot_costs(results, cpu, targets)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_costs(results: dict[str, Any], cpu: Any, targets: Any) -> None:
    costs = results.get("costs")
    if costs is None:
        return
    c = costs["cpu_per_image"]
    cpu.bar(["replicator", "its S3 server"], [c["replicator_ms"]["median"], c["s3_ms"]["median"]],
            color=["tab:blue", "grey"])  # fmt: skip
    cpu.set(title=f"CPU per new small image and region: {c['ratio']['median']:.2f}× (target ≤ 0.4×)", ylabel="ms")
    # Each figure as a multiple of what its target asks, so that 1 is the bar to clear.
    q = costs["logstore_queries"]
    met = {
        "CPU/image\n(0.4×/ratio)": 0.4 / c["ratio"]["median"],
        "tag-only\n(/5× before)": results["hot_path"]["replicated_events_s"]["median"] / TAG_ONLY_BEFORE_EVENTS_S / 5,
        "webhook\n(/2000/s)": costs["webhook"]["events_s"]["median"] / 2000,
        "log ingest\n(/5000/s)": costs["logstore_ingest"]["records_s"] / 5000,
        "GET /status\n(200ms/max)": 200 / q["status_ms"]["max"],
        "GET /logs\n(200ms/max)": 200 / q["logs_by_repository_ms"]["max"],
    }
    targets.bar(list(met), list(met.values()), color=["tab:green" if v >= 1 else "tab:red" for v in met.values()])
    targets.axhline(1.0, color="grey", linestyle=":")
    targets.set_yscale("log")  # the figures range from a fraction to many times their targets
    targets.set(title="against the targets (≥ 1 is met)", ylabel="× of target (log)")
    targets.tick_params(axis="x", labelsize=7)


def _by_role(split: dict[str, float]) -> str:
    """`1.79 in all: s3 1.05, replicator 0.43, …`, the largest first; roles that spent nothing left out."""
    roles = [(role, n) for role, n in split.items() if role != "total" and round(n, 2) > 0]
    shown = sorted(roles, key=lambda kv: -kv[1])
    return f"{split['total']:.2f} in all: " + ", ".join(f"{role} {n:.2f}" for role, n in shown)


def _hot_cpu_rows(hot: dict[str, Any]) -> list[str]:
    """Where tag-only events spend the machine: cores busy, and CPU per event (the stack and the senders)."""
    if "cores" not in hot:
        return []
    return [
        f"| cores busy during tag-only events (of {os.cpu_count()}) | {_by_role(hot['cores'])} | | |",
        f"| CPU per tag-only event, both regions (ms) | {_by_role(hot['cpu_ms_per_event'])} | | |",
    ]


def bulk_bound(busy: float, mb_s: float, ceiling_mb_s: float, cores: int, target: float = 0.9) -> tuple[float, float]:
    """At the CPU per megabyte a bulk copy cost (`busy` cores for `mb_s`): the cores `target` of the S3 ceiling
    would need, and the most of the ceiling `cores` could reach with every one of them busy copying."""
    per_mb = busy / mb_s  # core-seconds per MB
    return per_mb * target * ceiling_mb_s, cores / per_mb / ceiling_mb_s


def _cores_rows(cores: dict[str, dict[str, float]] | None, mb_s: float, ceiling_mb_s: float) -> list[str]:
    """Rows of the cores each role keeps busy, copying the bulk and writing the ceiling (medians of the runs),
    and what that CPU per megabyte allows on this machine."""
    if not cores:
        return []
    have = os.cpu_count() or 1
    needed, best = bulk_bound(cores["georep"]["total"], mb_s, ceiling_mb_s, have)
    return [
        f"| cores busy while copying the bulk (of {have}) | {_by_role(cores['georep'])} | "
        f"ceiling: {_by_role(cores['ceiling'])} | |",
        f"| bulk at this CPU per MB: cores that 90% of the ceiling needs / most of the ceiling {have} cores reach "
        f"| {needed:.2f} / {best:.0%} | | target ≥ 90% |",
    ]
