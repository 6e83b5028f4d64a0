"""Small manifests and indexes for tests of pure logic: blob n has digest n (as hex) and size 1000 + n."""

from __future__ import annotations

import json
from typing import Any

from engine.digest import Digest
from engine.manifests import OCI_INDEX, OCI_MANIFEST, Manifest, parse_manifest


def blob(n: int) -> dict[str, Any]:
    return {"mediaType": "application/octet-stream", "digest": f"sha256:{n:064x}", "size": 1000 + n}


def manifest(doc: dict[str, Any]) -> Manifest:
    raw = json.dumps(doc).encode()
    return parse_manifest(raw, Digest.of(raw))


def image(*blob_ids: int) -> Manifest:
    config, *layers = blob_ids
    return manifest(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": blob(config), "layers": [blob(n) for n in layers]}
    )


def index(*children: Manifest) -> Manifest:
    entries = [{"mediaType": c.media_type, "digest": str(c.digest), "size": len(c.raw)} for c in children]
    return manifest({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
