"""Both registry lines, as users meet them: a region's registry started from `georep replicas registry-config`
(YAML, path-style S3 for v3), and OCI referrers attached with oras on the primary, discovered in every region.

Neither 2.8.2 nor v3.1.2 serves the referrers API (`GET /v2/<name>/referrers/<digest>` is a 404 on both), so
oras falls back to the tag schema: the artifact goes untagged, and an index under `sha256-<subject hex>` lists
it. Both are ordinary pushes, replicated like any other, and `oras discover` finds them in every region.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from yarl import URL

from deploy.local import images, skopeo, stack
from deploy.registry_config import ACCESS_KEY_ENV, SECRET_KEY_ENV
from tests.integration.conftest import Stack, metric, run_georep
from tests.waiting import until

pytestmark = pytest.mark.integration

ORAS = str(stack.REPO / ".cache" / "go" / "bin" / "oras")
SBOM = "application/vnd.example.sbom.v1+json"


def oras(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([ORAS, *args, "--plain-http"], capture_output=True, text=True, cwd=cwd, check=False)
    if done.returncode != 0:
        raise AssertionError(f"oras {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


async def test_a_region_registry_started_from_the_generated_config_serves_pulls(line: Stack) -> None:
    region = "ap-singapore"
    repo = line.unique("config/app")
    digest = line.push_image(repo, "v1", images.image([images.layer(40_000, repo)]))
    await line.replicated(repo, "v1", digest)
    port = int(line.info["port_base"]) + 69
    config = line.root / f"generated-{region}.yml"
    code, _, err = await run_georep(
        line, "replicas", "registry-config", region, "--listen", f"127.0.0.1:{port}", "--anonymous", "-o", str(config)
    )
    assert code == 0, err
    generated = yaml.safe_load(config.read_text())  # YAML, as registry operators read it
    assert generated["storage"]["s3"]["forcepathstyle"] is True
    assert generated["storage"]["maintenance"]["readonly"] == {"enabled": True}
    keys = {ACCESS_KEY_ENV: line.regions[region]["access_key"], SECRET_KEY_ENV: line.regions[region]["secret_key"]}
    argv = [line.registry, "serve", str(config)]
    log = line.root / "logs" / f"generated-{region}.log"
    proc = stack.join(line.root, f"generated-{region}", {"argv": argv, "env": keys, "log": str(log)})
    try:
        await stack.wait_ready(
            "generated registry", proc, lambda: stack._http_ok(f"http://127.0.0.1:{port}/v2/_catalog?n=1"), log, 60
        )
        assert skopeo.manifest_digest(f"127.0.0.1:{port}/{repo}:v1") == digest
        skopeo.pull(f"127.0.0.1:{port}/{repo}:v1", line.workdir / f"generated-{repo.replace('/', '_')}", "v1")
    finally:
        await asyncio.to_thread(stack.stop_pid, proc.pid, argv, 10)


async def test_a_push_notifies_the_webhook_once_not_once_per_blob(line: Stack) -> None:
    """The registry delivers an endpoint's events one at a time, so every blob event it sends delays the
    pushes queued behind it; the stack's notification config ignores them at the source (both lines give
    uploaded blobs the media type `application/octet-stream`), and the manifest's event still arrives."""
    webhook = str(URL(line.info["webhook"]).origin())

    async def counts() -> dict[str, float]:
        return {
            outcome: await metric(webhook, "georep_webhook_events_total", outcome=outcome)
            for outcome in ("published", "skipped")
        }

    before = await counts()
    repo = line.unique("notify/app")
    digest = line.push_image(repo, "v1", images.image([images.layer(30_000, f"{repo}-{i}") for i in range(3)]))
    await line.replicated(repo, "v1", digest)

    async def counted() -> dict[str, float] | None:
        # The webhook counts an event once Kafka acknowledged it; a region may serve it a moment before.
        now = await counts()
        return now if now["published"] > before["published"] else None

    after = await until(counted, "the webhook to count the manifest's event")
    assert after == {"published": before["published"] + 1, "skipped": before["skipped"]}


async def test_oras_attach_on_the_primary_is_discovered_in_every_region(line: Stack, tmp_path: Path) -> None:
    repo = line.unique("referrers/app")
    digest = line.push_image(repo, "v1", images.image([images.layer(20_000, repo)]))
    await line.replicated(repo, "v1", digest)
    (tmp_path / "sbom.json").write_text(json.dumps({"spdxVersion": "SPDX-2.3", "name": repo}))
    oras("attach", "--artifact-type", SBOM, f"{line.primary}/{repo}:v1", "sbom.json", cwd=tmp_path)
    on_primary = json.loads(oras("discover", "--format", "json", f"{line.primary}/{repo}:v1"))
    (artifact,) = [r for r in on_primary["referrers"] if r["artifactType"] == SBOM]
    for name, region in line.regions.items():

        async def discovered(registry: str = region["registry"]) -> bool:
            try:
                found = json.loads(oras("discover", "--format", "json", f"{registry}/{repo}:v1"))
            except AssertionError:
                return False
            return [r["digest"] for r in found.get("referrers") or []] == [artifact["digest"]]

        await until(discovered, f"oras discover in {name} to find the attached artifact", 60)
        pulled = tmp_path / name
        oras("pull", "-o", str(pulled), f"{region['registry']}/{repo}@{artifact['digest']}")
        assert json.loads((pulled / "sbom.json").read_text())["name"] == repo
