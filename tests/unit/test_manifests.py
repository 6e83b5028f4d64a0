"""Manifest parsing: every supported kind, and refusals with a reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.digest import Digest
from engine.errors import DigestMismatch, InvalidManifest
from engine.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_manifest,
)


def desc(media_type: str, n: int, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{n:064x}", "size": size, **extra}


def encode(doc: dict[str, Any]) -> tuple[bytes, Digest]:
    raw = json.dumps(doc).encode()
    return raw, Digest.of(raw)


def image_doc(media_type: str = OCI_MANIFEST, **extra: Any) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": desc("application/vnd.oci.image.config.v1+json", 1),
        "layers": [
            desc("application/vnd.oci.image.layer.v1.tar+gzip", 2),
            desc("application/vnd.oci.image.layer.v1.tar+gzip", 3),
        ],
        **extra,
    }


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_image_lists_config_then_layers(media_type: str) -> None:
    raw, digest = encode(image_doc(media_type))
    manifest = parse_manifest(raw, digest)
    assert manifest.media_type == media_type
    assert not manifest.is_index
    assert [d.digest.hex[-1] for d in manifest.blobs] == ["1", "2", "3"]
    assert manifest.children == ()


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_MANIFEST_LIST])
def test_index_lists_children_with_platforms(media_type: str) -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            desc(OCI_MANIFEST, 7, platform={"os": "linux", "architecture": "amd64"}),
            desc(OCI_MANIFEST, 8, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ],
    }
    raw, digest = encode(doc)
    manifest = parse_manifest(raw, digest)
    assert manifest.is_index
    assert [c.platform for c in manifest.children] == ["linux/amd64", "linux/arm64/v8"]
    assert manifest.blobs == ()


def test_artifact_with_subject() -> None:
    doc = image_doc(artifactType="application/vnd.example.sbom", subject=desc(OCI_MANIFEST, 9))
    raw, digest = encode(doc)
    manifest = parse_manifest(raw, digest)
    assert manifest.subject is not None
    assert manifest.subject.digest.hex.endswith("9")


def test_media_type_falls_back_to_content_type_then_shape() -> None:
    doc = image_doc()
    del doc["mediaType"]
    raw, digest = encode(doc)
    assert (
        parse_manifest(raw, digest, "application/vnd.docker.distribution.manifest.v2+json").media_type
        == DOCKER_MANIFEST
    )
    assert parse_manifest(raw, digest, None).media_type == OCI_MANIFEST
    index = {"schemaVersion": 2, "manifests": []}
    raw, digest = encode(index)
    assert parse_manifest(raw, digest).media_type == OCI_INDEX


def test_foreign_layers_are_not_copied() -> None:
    doc = image_doc()
    doc["layers"].append(
        desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", 4, urls=["https://example.com/l"])
    )
    raw, digest = encode(doc)
    assert len(parse_manifest(raw, digest).blobs) == 3


def test_bytes_must_match_the_digest() -> None:
    raw, _ = encode(image_doc())
    with pytest.raises(DigestMismatch):
        parse_manifest(raw, Digest.of(b"something else"))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"schemaVersion": 1, "name": "x", "fsLayers": []}, "schema 1"),
        ({"schemaVersion": 2, "mediaType": "application/vnd.example+json", "layers": []}, "unsupported media type"),
        ({**image_doc(), "layers": "nope"}, "'layers' must be a list"),
        ({**image_doc(), "config": desc("x", 1, size=-1)}, "size must be a non-negative integer"),
        ({**image_doc(), "config": {**desc("x", 1), "digest": "sha256:../../etc"}}, "config.digest"),
        ({**image_doc(), "config": None}, "config must be a descriptor"),
    ],
)
def test_refusals_say_why(doc: dict[str, Any], message: str) -> None:
    raw, digest = encode(doc)
    with pytest.raises(InvalidManifest, match=message):
        parse_manifest(raw, digest)


def test_refuses_non_json_and_oversized() -> None:
    with pytest.raises(InvalidManifest, match="not JSON"):
        parse_manifest(b"{nope", Digest.of(b"{nope"))
    big = b" " * (MAX_MANIFEST_BYTES + 1)
    with pytest.raises(InvalidManifest, match="limit"):
        parse_manifest(big, Digest.of(big))
