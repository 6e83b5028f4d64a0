"""The real stack for integration tests: started once per session on its own ports, stopped after.

Kafka, two SeaweedFS S3 servers, the primary and two read-only docker-registry
processes, and georep's webhook, log store and replicators: the same processes
`make up` starts, in a temporary directory, so a developer's own stack is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.kafka import new_admin, running
from adapters.store import RegionStore
from deploy.local import images, skopeo, stack
from deploy.local.kafka_security import add_principal
from deploy.local.probe import wait_served
from deploy.registry_config import ACCESS_KEY_ENV, SECRET_KEY_ENV
from engine.settings import RegionSettings

pytestmark = pytest.mark.integration

PORT_BASE = int(os.environ.get("GEOREP_TEST_PORT_BASE", "23000"))
PORT_BASE_V3 = int(os.environ.get("GEOREP_TEST_PORT_BASE_V3", "24000"))
REPLICATION_TIMEOUT_S = 60
QUIET_RECONCILE = {"GEOREP_RECONCILE__INTERVAL_S": "3600"}


@dataclass
class Stack(stack.Running):
    workdir: Path
    _names: itertools.count[int]

    @asynccontextmanager
    async def region_store(self, name: str, bucket: str | None = None) -> AsyncIterator[RegionStore]:
        """The region's bucket (or another `bucket` on its S3 server), opened the way the replicator opens it."""
        region = self.regions[name]
        settings = RegionSettings(
            endpoint=region["s3"], bucket=bucket or region["bucket"], prefix="" if bucket else region["prefix"],
            access_key=region["access_key"], secret_key=region["secret_key"],
        )  # fmt: skip
        async with RegionStore.open(settings) as store:
            yield store

    async def principal(self, role: str) -> dict[str, str]:
        """A Kafka principal for `role` (replicator-<region>), with exactly its ACLs: the environment it runs with."""
        password = secrets.token_urlsafe(24)
        async with running(new_admin(self.kafka(), "test")) as admin:
            await add_principal(admin, self.kafka(), role, password)
        return {"GEOREP_KAFKA__USERNAME": role, "GEOREP_KAFKA__PASSWORD": password}

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
        while True:
            status, body = await self.api("GET", "/logs", **filters)
            assert status == 200, body
            found: list[dict[str, Any]] = body["records"]
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

    @property
    def apis(self) -> list[str]:
        """Every georep API process's URL (one, or several that elected a leader)."""
        return list(self.info.get("apis") or [self.info["logs"]])

    async def api(self, method: str, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
        """Call the georep API as an operator (with the API token): (HTTP status, JSON body). With several API
        processes, the first that answers takes it (a test may have killed one)."""
        headers = {"Authorization": f"Bearer {self.info['api_token']}"}
        refused: aiohttp.ClientConnectionError | None = None
        async with aiohttp.ClientSession() as session:
            for url in self.apis:
                try:
                    async with session.request(
                        method, url + path, json=body, params=params or None, headers=headers
                    ) as r:
                        return r.status, await r.json()
                except aiohttp.ClientConnectionError as exc:
                    refused = exc
        raise AssertionError(f"no georep API process answered {method} {path}: {refused}")

    async def own_bucket(self, bucket: str) -> tuple[str, str]:
        """A new bucket on ap-singapore's S3 server and a key file for it: (endpoint, credentials_ref)."""
        base = self.regions["ap-singapore"]
        async with aioboto3.Session().client(
            "s3", endpoint_url=base["s3"], aws_access_key_id=base["access_key"],
            aws_secret_access_key=base["secret_key"], region_name="us-east-1",
        ) as s3:  # fmt: skip
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):  # made by an earlier test
                await s3.create_bucket(Bucket=bucket)
        keys = self.root / "credentials" / f"{bucket}.json"
        keys.write_text(json.dumps({"access_key": base["access_key"], "secret_key": base["secret_key"]}))
        return base["s3"], f"file:{keys}"

    @asynccontextmanager
    async def extra_region(
        self, name: str, slot: int, *, env: dict[str, str] | None = None, **options: Any
    ) -> AsyncIterator[ExtraRegion]:
        """A replica created during the test, on a bucket of its own (on ap-singapore's S3 server), with its
        replicator (settings in `env` added) and a read-only registry started from `georep replicas
        registry-config`; deleted after. `add_replicator` starts more replicators of the region."""
        base = self.regions["ap-singapore"]
        bucket = f"georep-{name}"
        endpoint, credentials_ref = await self.own_bucket(bucket)
        base_port = int(self.info["port_base"])
        registry = f"127.0.0.1:{base_port + 60 + slot}"
        request = {
            "region": name, "endpoint": endpoint, "bucket": bucket, "registry": registry,
            "credentials_ref": credentials_ref, **options,
        }  # fmt: skip
        status, body = await self.api("POST", "/replicas", request)
        assert status == 201, body
        config = self.root / f"registry-{name}.json"
        code, _, err = await run_georep(
            self, "replicas", "registry-config", name, "--listen", registry, "--anonymous", "--output", str(config)
        )
        assert code == 0, err
        logs = self.root / "logs"
        registry_argv = [self.registry, "serve", str(config)]
        registry_proc = stack.join(self.root, f"registry-{name}", {
            "argv": registry_argv, "log": str(logs / f"registry-{name}.log"),
            "env": {ACCESS_KEY_ENV: base["access_key"], SECRET_KEY_ENV: base["secret_key"]},
        })  # fmt: skip
        health = f"http://127.0.0.1:{base_port + 40 + slot}"
        replicator_argv = [
            sys.executable,
            "-m",
            "georep",
            "--config",
            self.info["config"],
            "replicate",
            "--region",
            name,
        ]
        region: ExtraRegion | None = None
        try:
            # Inside the try: a failure here must still stop the registry started above, and delete the replica.
            env = (env or {}) | await self.principal(f"replicator-{name}")
            replicator = stack.join(self.root, f"replicator-{name}", {
                "argv": replicator_argv, "log": str(logs / f"replicator-{name}.log"),
                "env": env | {"GEOREP_REPLICATOR__PORT": str(base_port + 40 + slot)},
            })  # fmt: skip
            region = ExtraRegion(name, bucket, registry, replicator, replicator_argv, health, logs, env, self.root)
            await stack.wait_ready(f"registry-{name}", registry_proc, lambda: stack._http_ok(f"http://{registry}/v2/"),
                                   logs / f"registry-{name}.log", 60)  # fmt: skip
            await stack.wait_ready(f"replicator-{name}", replicator, lambda: stack._http_ok(f"{health}/readyz"),
                                   logs / f"replicator-{name}.log", 60)  # fmt: skip
            yield region
        finally:
            try:
                await self.api("DELETE", f"/replicas/{name}")
            finally:
                for proc in [region.replicator, *region.more] if region else []:
                    stack.stop_pid(proc.pid, replicator_argv, grace_s=30)
                stack.stop_pid(registry_proc.pid, registry_argv, grace_s=10)


@dataclass
class ExtraRegion:
    name: str
    bucket: str
    registry: str
    replicator: stack.Proc
    replicator_argv: list[str]
    #: the replicator's HTTP base URL (/healthz, /metrics)
    health: str
    logs: Path
    env: dict[str, str]
    #: the stack's directory, where processes that join it are recorded
    stack_root: Path
    #: replicators started by `add_replicator`
    more: list[stack.Proc] = field(default_factory=list)

    async def add_replicator(self, port: int) -> str:
        """Start one more replicator of the region (same group); its HTTP base URL once it is ready."""
        log = self.logs / f"replicator-{self.name}-{port}.log"
        proc = stack.join(self.stack_root, f"replicator-{self.name}-{port}", {"argv": self.replicator_argv,
                          "log": str(log), "env": self.env | {"GEOREP_REPLICATOR__PORT": str(port)}})  # fmt: skip
        self.more.append(proc)
        url = f"http://127.0.0.1:{port}"
        await stack.wait_ready(f"replicator-{self.name}-{port}", proc, lambda: stack._http_ok(f"{url}/readyz"), log, 60)
        return url


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
async def live_v3(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """The same stack with distribution v3 as the primary and as every region's registry."""
    root = tmp_path_factory.mktemp("stack-v3")
    info = await stack.up(
        root, PORT_BASE_V3, ["ap-singapore", "eu-frankfurt"], georep_env=QUIET_RECONCILE, registry_line="3"
    )
    try:
        yield Stack(info, root, tmp_path_factory.mktemp("images-v3"), itertools.count(1))
    finally:
        stack.down(root)


@pytest.fixture(scope="session", params=["2.8.2", "3"])
def line(request: pytest.FixtureRequest, live: Stack, live_v3: Stack) -> Stack:
    """Each registry line's stack in turn: image cases run on CNCF distribution 2.8.2 and on v3."""
    return live if request.param == "2.8.2" else live_v3


@pytest.fixture(scope="session")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    # The main regions' reconciliation runs once at start, then stays out of the way of tests that damage a region
    # on purpose (test_verify); tests/integration/test_reconcile.py runs it, fast, on regions of its own.
    info = await stack.up(root, PORT_BASE, ["ap-singapore", "eu-frankfurt"], georep_env=QUIET_RECONCILE)
    try:
        yield Stack(info, root, tmp_path_factory.mktemp("images"), itertools.count(1))
    finally:
        stack.down(root)


async def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` on `url`/metrics whose labels include `labels`."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )
