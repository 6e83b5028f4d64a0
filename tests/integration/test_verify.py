"""`georep verify`: damage one region's bucket by hand, find exactly that damage, repair it, pull again."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from deploy.local import images
from engine.digest import Digest
from engine.layout import Layout, link_body
from engine.names import Repository, Tag
from tests.integration.conftest import REPLICATION_TIMEOUT_S, Stack, run_georep

pytestmark = pytest.mark.integration

REGION = "eu-frankfurt"
TAG = Tag.parse("v1")


async def verify(live: Stack, repo: str, *args: str) -> tuple[int, dict[str, Any]]:
    """`georep verify --json` of REGION for one repository: (exit code, report)."""
    status, out, err = await run_georep(live, "verify", "--region", REGION, "--repository", repo, "--json", *args)
    assert status in (0, 1), err
    assert out.strip(), err  # an exit 1 from a crash prints no report
    report: dict[str, Any] = json.loads(out)
    return status, report


async def until_clean(live: Stack, repo: str, *args: str) -> None:
    """Run verify until it finds no difference: the replicator has applied the repair."""
    deadline = time.monotonic() + REPLICATION_TIMEOUT_S
    while True:
        status, report = await verify(live, repo, *args)
        if status == 0 and report["differences"] == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{REGION} still differs after repair: {report['findings']}")
        await asyncio.sleep(0.5)


def kinds(report: dict[str, Any]) -> list[tuple[str, str, str | None, str | None]]:
    return sorted((f["kind"], f["key"], f["expected"], f["actual"]) for f in report["findings"])


async def push(live: Stack, stem: str) -> tuple[str, images.Image, str]:
    repo = live.unique(stem)
    image = images.image([images.layer(40_000, f"{repo}-0"), images.layer(25_000, f"{repo}-1")], label=repo)
    digest = live.push_image(repo, str(TAG), image)
    await live.replicated(repo, str(TAG), digest)
    return repo, image, digest


async def test_verify_reports_exactly_the_damage_and_repair_fixes_it(live: Stack) -> None:
    repo, image, digest = await push(live, "verify/app")
    status, report = await verify(live, repo)
    assert (status, report["differences"], report["tags"], report["blobs"]) == (0, 0, 1, 3), report

    layout = Layout(live.regions[REGION]["prefix"])
    name = Repository.parse(repo)
    config, first, second = (Digest.parse(b.digest) for b in image.blobs)
    async with live.region_store(REGION) as store:
        await store._s3.delete_object(Bucket=store.bucket, Key=layout.blob_data(first))
        await store.put(layout.layer_link(name, second), link_body(config), if_absent=False)
        await store._s3.delete_object(Bucket=store.bucket, Key=layout.tag_current_link(name, TAG))

    status, report = await verify(live, repo)
    assert status == 1
    assert kinds(report) == sorted(
        [
            ("blob-missing", layout.blob_data(first), f"{len(image.layers[0].data)} bytes", None),
            ("link-wrong", layout.layer_link(name, second), str(second), str(config)),
            ("tag-missing", layout.tag_current_link(name, TAG), digest, None),
        ]
    )
    assert {(f["repository"], f["tag"]) for f in report["findings"]} == {(repo, str(TAG))}
    for other in set(live.regions) - {REGION}:  # untouched; a glob walks the primary's catalog
        status, out, err = await run_georep(live, "verify", "--region", other, "--repository", "verify/app-*")
        assert (status, out.strip()) == (0, f"{other}: no differences in 1 tag (1 repository, 3 blobs checked)"), err

    status, text, _ = await run_georep(live, "verify", "--region", REGION, "--repository", repo)
    assert status == 1
    print(f"\n$ georep verify --region {REGION} --repository {repo}\n{text}")  # the report, for people (pytest -s)
    assert len(text.splitlines()) == 4
    assert text.splitlines()[-1].endswith("; --repair fixes them")

    started = datetime.now(UTC)
    status, repaired = await verify(live, repo, "--repair")
    assert status == 0, "differences were found, and repair events published"
    [event] = repaired["repairs"]
    assert (event["repository"], event["tag"], event["digest"], event["region"]) == (repo, str(TAG), digest, REGION)
    assert (event["repair"], event["source"], event["action"]) == (True, "manual", "push")
    assert event["id"].startswith(f"verify-{REGION}-")
    # Dated when verify read the tag on the primary, not when it published: a later push stays newer.
    read_at, received_at = datetime.fromisoformat(event["occurred_at"]), datetime.fromisoformat(event["received_at"])
    assert started <= read_at < received_at

    await until_clean(live, repo)
    await live.replicated(repo, str(TAG), digest)
    live.pull_everywhere(repo, str(TAG), digest)


async def test_rehash_finds_a_corrupt_blob_of_the_right_size_and_repair_replaces_it(live: Stack) -> None:
    repo, image, digest = await push(live, "verify/rehash")
    layout = Layout(live.regions[REGION]["prefix"])
    layer = image.layers[1]
    key = layout.blob_data(Digest.parse(layer.digest))
    garbage = bytes(len(layer.data))
    async with live.region_store(REGION) as store:
        await store.put(key, garbage, if_absent=False)

    status, report = await verify(live, repo)
    assert (status, report["differences"]) == (0, 0), "a HEAD sees the right size: only --rehash can tell"
    status, report = await verify(live, repo, "--rehash")
    assert status == 1
    assert kinds(report) == [("blob-corrupt", key, layer.digest, str(Digest.of(garbage)))]

    status, repaired = await verify(live, repo, "--rehash", "--repair")
    assert (status, len(repaired["repairs"])) == (0, 1)
    await until_clean(live, repo, "--rehash")
    live.pull_everywhere(repo, str(TAG), digest)
