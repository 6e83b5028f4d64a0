"""Copy one blob from the primary into a region, hashing the bytes as they stream.

Bytes that do not hash to the blob's digest are never made visible: a small
blob is verified before its single PUT, a large one before its multipart
upload is completed (and the upload is aborted instead).
"""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp

from consumers.registry import RegistryClient
from consumers.store import Multipart, RegionStore
from engine.digest import Digest
from engine.errors import DigestMismatch
from engine.manifests import Descriptor
from engine.names import Repository
from engine.settings import ReplicatorSettings

READ_CHUNK: Final = 1024 * 1024


def _mismatch(blob: Descriptor, detail: str) -> DigestMismatch:
    return DigestMismatch(f"blob {blob.digest.short} from the primary {detail}", digest=str(blob.digest))


async def copy_blob(
    primary: RegistryClient,
    store: RegionStore,
    repository: Repository,
    blob: Descriptor,
    key: str,
    settings: ReplicatorSettings,
    *,
    replace: bool = False,
) -> int:
    """Copy `blob` to `key` unless it is there (or, with `replace`, whether or not it is).

    Returns the bytes this call wrote (0 if none).
    """
    if not replace and await store.exists(key):
        return 0
    async with primary.blob(repository, blob.digest) as response:
        if response.content_length is not None and response.content_length != blob.size:
            raise _mismatch(blob, f"is {response.content_length} bytes, the manifest says {blob.size}")
        if blob.size <= settings.multipart_threshold:
            data = bytearray()
            async for chunk in response.content.iter_chunked(READ_CHUNK):
                data += chunk
                if len(data) > blob.size:
                    raise _too_long(blob)
            body = bytes(data)
            _check(blob, len(body), Digest.of(body, blob.digest.algorithm))
            return len(body) if await store.put(key, body, if_absent=not replace) else 0
        async with store.multipart(key) as upload:
            await _stream_parts(response, upload, blob, settings.part_size)
            written = blob.size if await upload.complete(if_absent=not replace) else 0
    # The blob is in place now: any other upload of it is a crashed or losing copy whose parts
    # would otherwise sit in the bucket unseen.
    await store.abort_uploads(key, before=upload.initiated)
    return written


def _too_long(blob: Descriptor) -> DigestMismatch:
    return _mismatch(blob, f"sends more than the {blob.size} bytes the manifest says")


def _check(blob: Descriptor, size: int, actual: Digest) -> None:
    if size != blob.size:
        raise _mismatch(blob, f"ended after {size} bytes, the manifest says {blob.size}")
    if actual != blob.digest:
        raise _mismatch(blob, f"hashes to {actual}")


async def _stream_parts(response: aiohttp.ClientResponse, upload: Multipart, blob: Descriptor, part_size: int) -> None:
    """Upload the body as parts; reading part n+1 overlaps uploading part n, so memory stays at two parts."""
    hasher = blob.digest.hasher()
    chunks: list[bytes] = []
    buffered = total = number = 0
    pending: asyncio.Task[None] | None = None

    async def flush() -> None:
        nonlocal chunks, buffered, number, pending
        data = b"".join(chunks)
        chunks, buffered = [], 0
        if pending is not None:
            await pending
        number += 1
        pending = asyncio.create_task(upload.upload_part(number, data))

    try:
        async for chunk in response.content.iter_chunked(READ_CHUNK):
            total += len(chunk)
            if total > blob.size:
                raise _too_long(blob)
            hasher.update(chunk)
            chunks.append(chunk)
            buffered += len(chunk)
            if buffered >= part_size:
                await flush()
        if chunks or number == 0:
            await flush()
        if pending is not None:
            await pending
        _check(blob, total, Digest(blob.digest.algorithm, hasher.hexdigest()))
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            # wait() does not re-raise the part's own error, and still lets our cancellation through.
            await asyncio.wait([pending])
