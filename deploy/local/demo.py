"""`make demo`: push one multi-arch image to the primary and watch it arrive in every region.

Starts a fresh local stack (its own directory and ports, so it runs beside
`make up`), builds a two-platform OCI index, pushes it with skopeo, waits until
each region's read-only registry serves it by the same digest, pulls it back
from each region with skopeo, prints the replication records, and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from deploy.local import configs, images, skopeo, stack
from deploy.local.probe import wait_served

REPOSITORY = "demo/hello"
TAG = "v1"
DEMO_DIR = stack.REPO / ".georep" / "demo"
DEMO_PORT_BASE = 18000


def _sample(workdir: Path) -> str:
    shared = images.layer(2 * 1024 * 1024, "demo-shared-base")
    platforms = {
        ("linux", arch): images.image([shared, images.layer(1024 * 1024, f"demo-app-{arch}")], arch=arch, label=arch)
        for arch in ("amd64", "arm64")
    }
    return images.write_index(workdir, TAG, platforms)


async def _records(logs_url: str, regions: int, timeout_s: float = 30) -> None:
    """Wait until the log store holds a record of the push from every region."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"{logs_url}/logs", params={"repository": REPOSITORY}) as response:
                body: dict[str, Any] = await response.json()
            if len({r["region"] for r in body["records"] if r["status"] == "succeeded"}) >= regions:
                return
            await asyncio.sleep(0.2)
    raise TimeoutError("the log store did not receive a record from every region")


async def run(registry_line: str) -> None:
    line = "distribution 2.8.2" if registry_line == "2" else "distribution v3"
    print(f"starting the local stack (Kafka, SeaweedFS per region, {line} registries, georep) ...")
    started = time.monotonic()
    info = await stack.up(DEMO_DIR, DEMO_PORT_BASE, list(configs.DEFAULT_REGIONS), registry_line=registry_line)
    print(f"stack ready in {time.monotonic() - started:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        layout = Path(tmp) / "layout"
        digest = _sample(layout)
        destination = f"{info['primary']}/{REPOSITORY}:{TAG}"
        print(f"\npushing a linux/amd64 + linux/arm64 index to {destination} with skopeo ...")
        skopeo.push(layout, TAG, destination)
        print(f"pushed {digest}")

        regions = info["regions"]
        # Polling starts the moment skopeo returns, so each wait is that region's push-to-pullable time.
        waited = await asyncio.gather(
            *(wait_served(r["registry"], REPOSITORY, TAG, digest, timeout_s=60) for r in regions.values())
        )
        print("\npush finished → pullable by tag, per region:")
        for (name, region), seconds in zip(regions.items(), waited, strict=True):
            served = skopeo.manifest_digest(f"{region['registry']}/{REPOSITORY}:{TAG}")
            skopeo.pull(f"{region['registry']}/{REPOSITORY}:{TAG}", Path(tmp) / f"pull-{name}", TAG)
            same = "same digest" if served == digest else f"DIFFERENT digest {served}"
            print(f"  {name:<14} {seconds:6.2f}s  {region['registry']}  {same}; skopeo pulled every blob")
            if served != digest:
                raise SystemExit(f"{name} serves {served}, the primary {digest}")

    await _records(info["logs"], len(regions))
    await _georep(info, "replication records", "logs", "--repository", REPOSITORY)
    await _georep(info, "the replica regions", "replicas", "list")
    await _georep(info, "where the image is", "status", f"{REPOSITORY}:{TAG}")


async def _georep(info: dict[str, Any], what: str, *args: str) -> None:
    print(f"\n{what} (georep {' '.join(args)}):")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "georep", "--config", info["config"], *args)
    if await proc.wait() != 0:
        raise SystemExit(f"georep {args[0]} failed")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.demo")
    parser.add_argument("--registry", choices=sorted(stack.REGISTRIES), default="2", help="2: 2.8.2; 3: v3")
    args = parser.parse_args()
    try:
        asyncio.run(run(args.registry))
    except (stack.StackError, skopeo.SkopeoError, TimeoutError) as exc:
        print(f"\ndemo failed: {exc}\nevery component's log: {DEMO_DIR / 'logs'}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        stopped = stack.down(DEMO_DIR)
        print(f"\nstopped the stack ({len(stopped)} processes)")


if __name__ == "__main__":
    main()
