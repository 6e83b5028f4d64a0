"""Manifest parsing: which blobs and child manifests a manifest needs.

Supported: Docker v2 schema 2 and manifest lists, OCI image manifests and
indexes, and OCI artifact manifests (an image manifest with an `artifactType`
and/or a `subject`). Docker schema 1 is refused: distribution 2.8 can no
longer accept it on push, so it cannot be replicated faithfully.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from engine.digest import Digest
from engine.errors import InvalidManifest

DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1: Final = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)

IMAGE_TYPES: Final = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES: Final = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
MANIFEST_TYPES: Final = IMAGE_TYPES | INDEX_TYPES
#: what the replicator sends as Accept when it fetches a manifest
ACCEPT: Final = ", ".join(sorted(MANIFEST_TYPES))
#: distribution refuses manifests above 4 MiB; so do we, before parsing
MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024
#: layers that live outside the registry (Windows base layers): never in its blob store
_FOREIGN_LAYER_TYPES: Final = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    platform: str | None = None

    @property
    def foreign(self) -> bool:
        return bool(self.urls) and self.media_type in _FOREIGN_LAYER_TYPES


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: Digest
    media_type: str
    raw: bytes = field(repr=False)
    #: for an image: config then layers, without foreign layers; empty for an index
    blobs: tuple[Descriptor, ...] = ()
    #: for an index: its child manifests; empty for an image
    children: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def parse_manifest(raw: bytes, digest: Digest, content_type: str | None = None) -> Manifest:
    """Verify `raw` against `digest`, then read what it references.

    The media type comes from the manifest's own `mediaType` field, else from
    the Content-Type the registry served it with, else from its shape.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidManifest(f"manifest {digest.short} is {len(raw)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    digest.verify(raw)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidManifest(f"manifest {digest.short} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidManifest(f"manifest {digest.short} is not a JSON object")
    media_type = _media_type(doc, content_type, digest)
    subject = _descriptor(doc["subject"], "subject") if "subject" in doc else None
    if media_type in INDEX_TYPES:
        children = tuple(_descriptor(item, f"manifests[{i}]") for i, item in enumerate(_list(doc, "manifests")))
        return Manifest(digest, media_type, raw, children=children, subject=subject)
    config = _descriptor(doc.get("config"), "config")
    layers = [_descriptor(item, f"layers[{i}]") for i, item in enumerate(_list(doc, "layers"))]
    blobs = tuple(d for d in (config, *layers) if not d.foreign)
    return Manifest(digest, media_type, raw, blobs=blobs, subject=subject)


def _media_type(doc: dict[str, Any], content_type: str | None, digest: Digest) -> str:
    declared = doc.get("mediaType")
    served = content_type.split(";")[0].strip() if content_type else None
    if doc.get("schemaVersion") == 1 or declared in DOCKER_SCHEMA1 or served in DOCKER_SCHEMA1:
        raise InvalidManifest(f"manifest {digest.short} is Docker schema 1, which cannot be replicated")
    if isinstance(declared, str) and declared:
        media_type = declared
    elif served in MANIFEST_TYPES:
        media_type = served
    else:
        # OCI 1.0 made mediaType optional; the shape still tells an index from an image.
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type not in MANIFEST_TYPES:
        raise InvalidManifest(f"manifest {digest.short} has unsupported media type {media_type[:100]!r}")
    return media_type


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise InvalidManifest(f"manifest field {key!r} must be a list")
    return value


def _descriptor(item: object, where: str) -> Descriptor:
    if not isinstance(item, dict):
        raise InvalidManifest(f"manifest field {where} must be a descriptor object")
    media_type, size, urls = item.get("mediaType"), item.get("size"), item.get("urls") or []
    if not isinstance(media_type, str) or not media_type:
        raise InvalidManifest(f"manifest field {where}.mediaType is missing")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidManifest(f"manifest field {where}.size must be a non-negative integer")
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise InvalidManifest(f"manifest field {where}.urls must be a list of strings")
    platform = item.get("platform")
    shown = None
    if isinstance(platform, dict):
        shown = "/".join(str(platform[k]) for k in ("os", "architecture", "variant") if platform.get(k))
    try:
        digest = Digest.parse(item.get("digest"))
    except ValueError as exc:
        raise InvalidManifest(f"manifest field {where}.digest: {exc}") from None
    return Descriptor(media_type, digest, size, tuple(urls), shown)
