"""Turn results.json into the Markdown table and the PNG plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


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
    lines += [
        f"| ceiling: sha256, one core (MB/s) | | {_spread(c['sha256_mb_s'], '{:.0f}')} | |",
        f"| ceiling: primary registry read (MB/s) | | {_spread(c['primary_read_mb_s'], '{:.0f}')} | |",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((lat, bulk), (mem, hot)) = plt.subplots(2, 2, figsize=(12, 8))
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
