"""Push images to a registry over the OCI distribution API, fast, for benchmarks.

skopeo is how users push, and the tests use it; a benchmark that pushes 600
images in a minute or a 2 GiB layer needs something lighter: one aiohttp
session, monolithic uploads for small blobs, chunked (PATCH) uploads for
large ones, so the bytes are generated as they are sent and never held whole.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CHUNK = 64 * 1024 * 1024


def random_chunks(size: int, seed: str, chunk: int = CHUNK) -> Iterator[bytes]:
    """`size` incompressible bytes, repeatable from `seed`, produced `chunk` bytes at a time."""
    rng = random.Random(seed)
    left = size
    while left:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


def digest_of(size: int, seed: str) -> str:
    hasher = hashlib.sha256()
    for part in random_chunks(size, seed):
        hasher.update(part)
    return "sha256:" + hasher.hexdigest()


@dataclass(frozen=True, slots=True)
class Layer:
    size: int
    seed: str
    digest: str

    @classmethod
    def make(cls, size: int, seed: str) -> Layer:
        return cls(size, seed, digest_of(size, seed))


class Pusher:
    def __init__(self, session: aiohttp.ClientSession, registry: str) -> None:
        self._session = session
        self._base = f"http://{registry}"

    async def blob(self, repository: str, layer: Layer) -> None:
        async with self._session.post(f"{self._base}/v2/{repository}/blobs/uploads/") as started:
            _ok(started, 202)
            location = self._absolute(started.headers["Location"])
        if layer.size <= CHUNK:
            body = next(random_chunks(layer.size, layer.seed))
            async with self._session.put(_with_digest(location, layer.digest), data=body) as done:
                _ok(done, 201)
            return
        offset = 0
        for part in random_chunks(layer.size, layer.seed):
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(part) - 1}",
            }
            async with self._session.patch(location, data=part, headers=headers) as patched:
                _ok(patched, 202)
                location = self._absolute(patched.headers["Location"])
            offset += len(part)
        async with self._session.put(_with_digest(location, layer.digest)) as done:
            _ok(done, 201)

    async def raw_blob(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        async with self._session.post(f"{self._base}/v2/{repository}/blobs/uploads/") as started:
            _ok(started, 202)
            location = self._absolute(started.headers["Location"])
        async with self._session.put(_with_digest(location, digest), data=data) as done:
            _ok(done, 201)
        return digest

    async def manifest(self, repository: str, reference: str, layers: list[Layer], config_digest: str,
                       config_size: int) -> str:  # fmt: skip
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": LAYER, "digest": layer.digest, "size": layer.size} for layer in layers],
        }
        raw = json.dumps(doc, separators=(",", ":")).encode()
        url = f"{self._base}/v2/{repository}/manifests/{reference}"
        async with self._session.put(url, data=raw, headers={"Content-Type": OCI_MANIFEST}) as put:
            _ok(put, 201)
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    async def image(self, repository: str, tag: str, layers: list[Layer], *, label: str = "") -> str:
        """Push every layer, a config and the manifest under `tag`; returns the manifest digest."""
        for layer in layers:
            await self.blob(repository, layer)
        config = json.dumps({"architecture": "amd64", "os": "linux", "label": label or repository}).encode()
        config_digest = await self.raw_blob(repository, config)
        return await self.manifest(repository, tag, layers, config_digest, len(config))

    async def retag(self, repository: str, digest: str, tag: str) -> None:
        """Put the manifest `digest` under another tag too (what `skopeo copy` of a tag within a repository does)."""
        url = f"{self._base}/v2/{repository}/manifests"
        async with self._session.get(f"{url}/{digest}", headers={"Accept": OCI_MANIFEST}) as got:
            _ok(got, 200)
            raw = await got.read()
            media_type = got.headers["Content-Type"]
        async with self._session.put(f"{url}/{tag}", data=raw, headers={"Content-Type": media_type}) as put:
            _ok(put, 201)

    def _absolute(self, location: str) -> str:
        return location if location.startswith("http") else self._base + location


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


def _ok(response: aiohttp.ClientResponse, status: int) -> None:
    if response.status != status:
        raise RuntimeError(f"{response.method} {response.url.path} answered {response.status}, expected {status}")
