"""The registry client reads a manifest whole, by digest or by tag, however the body arrives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.registry import RegistryClient
from engine.digest import Digest
from engine.errors import DigestMismatch
from engine.manifests import OCI_MANIFEST
from engine.names import Repository, Tag
from engine.settings import PrimarySettings

REPO = Repository.parse("team/app")
LAYERS = [{"mediaType": "application/octet-stream", "digest": f"sha256:{n:064x}", "size": n} for n in range(1, 200)]
RAW = json.dumps(
    {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": LAYERS[0], "layers": LAYERS}, indent=2
).encode()
DIGEST = Digest.of(RAW)


async def serve_manifest(request: web.Request) -> web.StreamResponse:
    """Like a registry across a slow link: the body in small pieces, with pauses between them."""
    reference = request.match_info["reference"]
    if reference not in (str(DIGEST), "v1", "lying"):
        raise web.HTTPNotFound
    served = str(Digest.of(b"other")) if reference == "lying" else str(DIGEST)
    response = web.StreamResponse(headers={"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": served})
    response.content_length = len(RAW)
    await response.prepare(request)
    for start in range(0, len(RAW), 1000):
        await response.write(RAW[start : start + 1000])
        await asyncio.sleep(0.005)
    await response.write_eof()
    return response


@pytest.fixture
async def client() -> AsyncIterator[RegistryClient]:
    app = web.Application()
    app.router.add_get("/v2/team/app/manifests/{reference}", serve_manifest)
    async with TestServer(app) as server:
        settings = PrimarySettings(url=str(server.make_url("")).rstrip("/"))
        async with RegistryClient.session(settings) as session:
            yield RegistryClient(settings, session)


async def test_by_digest_read_whole_although_sent_in_pieces(client: RegistryClient) -> None:
    assert len(RAW) > 10 * 1000, "many pieces"
    manifest = await client.manifest(REPO, DIGEST)
    assert (manifest.digest, manifest.raw, len(manifest.blobs)) == (DIGEST, RAW, 200)


async def test_by_tag_verified_against_the_digest_the_registry_names(client: RegistryClient) -> None:
    manifest = await client.tagged(REPO, Tag.parse("v1"))
    assert (manifest.digest, manifest.raw) == (DIGEST, RAW)
    with pytest.raises(DigestMismatch):
        await client.tagged(REPO, Tag.parse("lying"))
