"""The real stack for integration tests: started once per session on its own ports, stopped after.

Kafka, two SeaweedFS S3 servers, the primary and two read-only docker-registry
processes, and georep's webhook, log store and replicators: the same processes
`make up` starts, in a temporary directory, so a developer's own stack is untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from consumers.store import RegionStore
from deploy.local import images, skopeo, stack
from deploy.local.probe import wait_served
from engine.settings import RegionSettings

pytestmark = pytest.mark.integration

PORT_BASE = int(os.environ.get("GEOREP_TEST_PORT_BASE", "23000"))
REPLICATION_TIMEOUT_S = 60


@dataclass
class Stack(stack.Running):
    workdir: Path
    _names: itertools.count[int]

    @asynccontextmanager
    async def region_store(self, name: str) -> AsyncIterator[RegionStore]:
        """The region's bucket, opened the way the replicator opens it."""
        region = self.regions[name]
        settings = RegionSettings(
            endpoint=region["s3"], bucket=region["bucket"], prefix=region["prefix"],
            access_key=region["access_key"], secret_key=region["secret_key"],
        )  # fmt: skip
        async with RegionStore.open(settings) as store:
            yield store

    def unique(self, stem: str) -> str:
        """A fresh repository name, so tests never see each other's pushes."""
        return f"{stem}-{next(self._names)}"

    def push(self, repository: str, tag: str, top: images.Blob, blobs: list[images.Blob]) -> str:
        """Push with skopeo as a user would; returns the digest the primary now serves for the tag."""
        layout = self.workdir / f"push-{repository.replace('/', '_')}-{tag}-{time.monotonic_ns()}"
        images.write_layout(layout, tag, top, blobs)
        skopeo.push(layout, tag, f"{self.primary}/{repository}:{tag}")
        return skopeo.manifest_digest(f"{self.primary}/{repository}:{tag}")

    def push_image(self, repository: str, tag: str, image: images.Image) -> str:
        return self.push(repository, tag, image.manifest, list(image.blobs))

    def push_index(self, repository: str, tag: str, platforms: dict[tuple[str, str], images.Image]) -> str:
        blobs = [img.manifest for img in platforms.values()] + [b for img in platforms.values() for b in img.blobs]
        return self.push(repository, tag, images.index(platforms), blobs)

    async def replicated(self, repository: str, reference: str, digest: str) -> dict[str, float]:
        """Wait until every region serves `repository:reference` as `digest`; seconds per region."""
        waits = [
            wait_served(r["registry"], repository, reference, digest, REPLICATION_TIMEOUT_S)
            for r in self.regions.values()
        ]
        return dict(zip(self.regions, await asyncio.gather(*waits), strict=True))

    def pull_everywhere(self, repository: str, reference: str, digest: str) -> None:
        """skopeo pulls every platform and blob from each region (verifying each digest) and compares."""
        for name, region in self.regions.items():
            ref = f"{region['registry']}/{repository}:{reference}"
            assert skopeo.manifest_digest(ref) == digest, f"{name} serves another digest"
            skopeo.pull(ref, self.workdir / f"pull-{name}-{time.monotonic_ns()}", "pulled")

    async def records(self, wanted: Callable[[list[dict[str, Any]]], bool], **filters: str) -> list[dict[str, Any]]:
        """Query GET /logs until `wanted(records)` holds (the log store consumes asynchronously)."""
        deadline = time.monotonic() + REPLICATION_TIMEOUT_S
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.get(f"{self.info['logs']}/logs", params=filters) as response:
                    assert response.status == 200, await response.text()
                    found: list[dict[str, Any]] = (await response.json())["records"]
                if wanted(found):
                    return found
                if time.monotonic() > deadline:
                    raise AssertionError(f"log records for {filters} never satisfied the condition: {found}")
                await asyncio.sleep(0.1)

    async def final_records(self, repository: str, digest: str) -> dict[str, dict[str, Any]]:
        """The succeeded record of the push of `digest` to `repository`, per region."""

        def complete(found: list[dict[str, Any]]) -> bool:
            return {r["region"] for r in found if r["digest"] == digest and r["status"] == "succeeded"} == set(
                self.regions
            )

        found = [r for r in await self.records(complete, repository=repository) if r["digest"] == digest]
        # One record per event and region, and every event of this push in every region.
        pairs = [(r["event_id"], r["region"]) for r in found]
        assert len(pairs) == len(set(pairs)), f"duplicate records: {pairs}"
        for event_id in {r["event_id"] for r in found}:
            assert {r["region"] for r in found if r["event_id"] == event_id} == set(self.regions)
        return {r["region"]: r for r in found if r["status"] == "succeeded"}


async def run_georep(live: Stack, *args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    """Run the real `georep` command against the stack: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "georep", "--config", live.info["config"], *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture(scope="session")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    info = await stack.up(root, PORT_BASE, ["ap-singapore", "eu-frankfurt"])
    try:
        yield Stack(info, root, tmp_path_factory.mktemp("images"), itertools.count(1))
    finally:
        stack.down(root)
