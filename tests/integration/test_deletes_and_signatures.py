"""Deletes on the primary reach every region (what is still used stays); signatures and referrers travel along."""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

import aiohttp
import pytest

from deploy.local import images, skopeo
from deploy.local.probe import served_digest
from tests.integration.conftest import Stack
from tests.integration.test_log_and_webhook import post
from tests.waiting import until

pytestmark = pytest.mark.integration

KiB = 1024
COSIGN_LAYER = "application/vnd.dev.cosign.simplesigning.v1+json"
SBOM = "application/spdx+json"
EMPTY = "application/vnd.oci.empty.v1+json"


async def _gone_everywhere(live: Stack, repo: str, reference: str) -> None:
    async with aiohttp.ClientSession() as session:
        for name, region in live.regions.items():

            async def gone(registry: str = region["registry"]) -> bool:
                return await served_digest(session, registry, repo, reference) is None

            await until(gone, f"{name} to stop serving {repo}:{reference}", 60)


async def test_a_harbor_artifact_delete_removes_the_manifest_and_its_tags_and_shared_content_stays(live: Stack) -> None:
    """Harbor's DELETE_ARTIFACT removes an artifact with all its tags and names only its digest and first tag; the
    regions untag every tag on the digest. (Distribution's own deletes, on both lines: test_replication.py.)"""
    repo = live.unique("deletes/app")
    shared = images.layer(120 * KiB, f"{repo}-shared")
    a = images.image([shared, images.layer(30 * KiB, f"{repo}-a")], label="a")
    b = images.image([shared, images.layer(30 * KiB, f"{repo}-b")], label="b")
    digest_a = live.push_image(repo, "a", a)
    skopeo.copy(f"{live.primary}/{repo}:a", f"{live.primary}/{repo}:a2")
    digest_b = live.push_image(repo, "b", b)
    await live.replicated(repo, "a2", digest_a)
    await live.replicated(repo, "b", digest_b)

    payload = {
        "type": "DELETE_ARTIFACT",
        "occur_at": math.ceil(time.time()),  # Harbor's seconds: not before the pushes
        "operator": "admin",
        "event_data": {
            "resources": [{"digest": digest_a, "tag": "a", "resource_url": f"{live.primary}/{repo}:a"}],
            "repository": {"name": repo.split("/", 1)[1], "namespace": repo.split("/")[0], "repo_full_name": repo},
        },
    }
    status, answer = await post(live, live.info["harbor_webhook"], payload)
    assert status == 200, answer
    for reference in ("a", "a2", digest_a):
        await _gone_everywhere(live, repo, reference)
    # b shares a layer with the deleted image: every region still serves all of it, byte for byte.
    await live.replicated(repo, "b", digest_b)
    live.pull_everywhere(repo, "b", digest_b)
    found = await live.records(
        lambda rs: sum(1 for r in rs if r["action"] == "delete" and r["status"] == "succeeded") >= len(live.regions),
        repository=repo,
    )
    notes = {r["note"] for r in found if r["action"] == "delete" and r["region"] == "ap-singapore"}
    (note,) = notes
    assert f"manifest {digest_a[:19]} deleted" in note
    assert "tag a deleted" in note
    assert "tag a2 deleted" in note


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


async def _put_blob(session: aiohttp.ClientSession, registry: str, repo: str, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with session.post(f"http://{registry}/v2/{repo}/blobs/uploads/") as started:
        assert started.status == 202
        location = started.headers["Location"]
    location = location if location.startswith("http") else f"http://{registry}{location}"
    separator = "&" if "?" in location else "?"
    async with session.put(f"{location}{separator}digest={digest}", data=data) as done:
        assert done.status == 201, await done.text()
    return {"digest": digest, "size": len(data)}


async def _put_manifest(session: aiohttp.ClientSession, registry: str, repo: str, reference: str,
                        doc: dict[str, Any]) -> str:  # fmt: skip
    raw = _canonical(doc)
    headers = {"Content-Type": doc["mediaType"]}
    async with session.put(f"http://{registry}/v2/{repo}/manifests/{reference}", data=raw, headers=headers) as put:
        assert put.status == 201, await put.text()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


async def test_signature_and_referrer_pushed_before_their_subject_arrive_with_it_everywhere(live: Stack) -> None:
    """cosign's tag scheme and an OCI 1.1 artifact with `subject`, both pushed before the image they describe."""
    repo = live.unique("signed/app")
    subject = images.image([images.layer(80 * KiB, f"{repo}-layer")], label=repo)
    subject_digest = subject.manifest.digest
    hex_ = subject_digest.removeprefix("sha256:")
    primary = live.primary
    async with aiohttp.ClientSession() as session:
        config = await _put_blob(session, primary, repo, b"{}")
        payload = _canonical({"critical": {"image": {"docker-manifest-digest": subject_digest}, "type": "cosign"}})
        signed = await _put_blob(session, primary, repo, payload)
        signature = await _put_manifest(session, primary, repo, f"sha256-{hex_}.sig", {
            "schemaVersion": 2, "mediaType": images.OCI_MANIFEST,
            "config": {"mediaType": images.OCI_CONFIG, **config},
            "layers": [{"mediaType": COSIGN_LAYER, **signed,
                        "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQDtest"}}],
        })  # fmt: skip
        sbom = await _put_blob(session, primary, repo, _canonical({"spdxVersion": "SPDX-2.3", "name": repo}))
        subject_ref = {"mediaType": images.OCI_MANIFEST, "digest": subject_digest, "size": len(subject.manifest.data)}
        artifact_doc = {
            "schemaVersion": 2, "mediaType": images.OCI_MANIFEST, "artifactType": SBOM,
            "config": {"mediaType": EMPTY, **config}, "layers": [{"mediaType": SBOM, **sbom}], "subject": subject_ref,
        }  # fmt: skip
        by_digest = "sha256:" + hashlib.sha256(_canonical(artifact_doc)).hexdigest()
        artifact = await _put_manifest(session, primary, repo, by_digest, artifact_doc)
        # distribution 2.8 has no referrers API: clients keep the OCI fallback tag `sha256-<subject>` as an index.
        referrers = await _put_manifest(session, primary, repo, f"sha256-{hex_}", {
            "schemaVersion": 2, "mediaType": images.OCI_INDEX,
            "manifests": [{"mediaType": images.OCI_MANIFEST, "digest": artifact,
                           "size": len(_canonical(artifact_doc)), "artifactType": SBOM}],
        })  # fmt: skip
    # Only now the image itself.
    assert live.push_image(repo, "v1", subject) == subject_digest

    await live.replicated(repo, "v1", subject_digest)
    await live.replicated(repo, f"sha256-{hex_}.sig", signature)
    await live.replicated(repo, f"sha256-{hex_}", referrers)
    await live.replicated(repo, artifact, artifact)
    live.pull_everywhere(repo, f"sha256-{hex_}.sig", signature)
    live.pull_everywhere(repo, "v1", subject_digest)
    records = await live.records(
        lambda rs: sum(1 for r in rs if r["status"] == "succeeded") >= 4 * len(live.regions), repository=repo
    )
    for region in live.regions:
        mine = {r["digest"]: r["finished_at"] for r in records if r["region"] == region and r["status"] == "succeeded"}
        assert mine[signature] < mine[subject_digest], f"{region}: the signature was replicated before its subject"
