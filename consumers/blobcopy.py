"""Copy one blob from the primary into a region, hashing the bytes as they stream.

Bytes that do not hash to the blob's digest are never made visible: a small
blob is verified before its single PUT, a large one before its multipart
upload is completed (and the upload is aborted instead).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Final

import aiohttp

from consumers.budget import ByteBudget
from consumers.registry import RegistryClient
from consumers.store import Multipart, RegionStore
from engine.digest import Digest
from engine.errors import DigestMismatch
from engine.manifests import Descriptor
from engine.names import Repository
from engine.settings import ReplicatorSettings

READ_CHUNK: Final = 1024 * 1024
#: buffers at least this large are hashed in a worker thread
HASH_OFF_LOOP: Final = 1024 * 1024


def _mismatch(blob: Descriptor, detail: str) -> DigestMismatch:
    return DigestMismatch(f"blob {blob.digest.short} from the primary {detail}", digest=str(blob.digest))


async def copy_blob(
    primary: RegistryClient,
    store: RegionStore,
    repository: Repository,
    blob: Descriptor,
    key: str,
    settings: ReplicatorSettings,
    budget: ByteBudget,
    *,
    replace: bool = False,
) -> int:
    """Copy `blob` to `key` unless it is there (or, with `replace`, whether or not it is).

    Returns the bytes this call wrote (0 if none). Memory: the buffers it
    holds at once (the blob if small, else two parts) come out of `budget`.
    """
    if not replace and await store.exists(key):
        return 0
    small = blob.size <= settings.multipart_threshold
    first = blob.size if small else min(settings.part_size, blob.size)
    # Room for the first buffer is taken before the primary's response opens: a copy waiting for
    # memory then holds no connection and no socket buffers (measured: about 9 MB per open response).
    await budget.take(first)
    handed_over = False
    try:
        async with primary.blob(repository, blob.digest) as response:
            if response.content_length is not None and response.content_length != blob.size:
                raise _mismatch(blob, f"is {response.content_length} bytes, the manifest says {blob.size}")
            if small:
                hasher = blob.digest.hasher()
                body = bytearray(blob.size)
                await _fill(response, body, hasher, blob)
                await _at_end(response, blob)
                _check(blob, Digest(blob.digest.algorithm, hasher.hexdigest()))
                return blob.size if await store.put(key, body, if_absent=not replace) else 0
            async with store.multipart(key) as upload:
                handed_over = True  # _stream_parts gives the first part's room back
                await _stream_parts(response, upload, blob, settings.part_size, budget, held=first)
                written = blob.size if await upload.complete(if_absent=not replace) else 0
    finally:
        if not handed_over:
            await asyncio.shield(budget.give(first))
    # The blob is in place now: any other upload of it is a crashed or losing copy whose parts
    # would otherwise sit in the bucket unseen.
    await store.abort_uploads(key, before=upload.initiated)
    return written


async def _fill(response: aiohttp.ClientResponse, buffer: bytearray, hasher: hashlib._Hash, blob: Descriptor) -> None:
    """Fill `buffer` exactly from the body, then hash it; the body ending first is a mismatch."""
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        chunk = await response.content.read(min(READ_CHUNK, len(buffer) - filled))
        if not chunk:
            raise _mismatch(blob, f"ended early, before the {blob.size} bytes the manifest says")
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    if len(buffer) >= HASH_OFF_LOOP:
        # In a thread (hashlib releases the GIL): the loop keeps streaming other copies meanwhile,
        # and on a machine without SHA extensions hashing is a good part of the CPU a copy costs.
        await asyncio.to_thread(hasher.update, view)
    else:
        hasher.update(view)


async def _at_end(response: aiohttp.ClientResponse, blob: Descriptor) -> None:
    if await response.content.read(1):
        raise _mismatch(blob, f"sends more than the {blob.size} bytes the manifest says")


def _check(blob: Descriptor, actual: Digest) -> None:
    if actual != blob.digest:
        raise _mismatch(blob, f"hashes to {actual}")


async def _stream_parts(
    response: aiohttp.ClientResponse,
    upload: Multipart,
    blob: Descriptor,
    part_size: int,
    budget: ByteBudget,
    held: int,
) -> None:
    """Upload the body as parts; reading part n+1 overlaps uploading part n, so a copy holds two parts at most.

    `held`: room for the first part, taken by the caller; given back here like every part's.
    """
    hasher = blob.digest.hasher()
    pending: asyncio.Task[None] | None = None

    async def send(number: int, part: bytearray) -> None:
        try:
            await upload.upload_part(number, part)
        finally:
            await asyncio.shield(budget.give(len(part)))

    try:
        for number, offset in enumerate(range(0, blob.size, part_size), start=1):
            size = min(part_size, blob.size - offset)
            if number > 1:
                await budget.take(size)
            held = 0
            try:
                part = bytearray(size)
                await _fill(response, part, hasher, blob)
            except BaseException:
                await asyncio.shield(budget.give(size))
                raise
            if pending is not None:
                await pending
            pending = asyncio.create_task(send(number, part))
        if pending is not None:
            await pending
        await _at_end(response, blob)
        _check(blob, Digest(blob.digest.algorithm, hasher.hexdigest()))
    finally:
        if held:  # failed before the first part was read
            await asyncio.shield(budget.give(held))
        if pending is not None and not pending.done():
            pending.cancel()
            # wait() does not re-raise the part's own error, and still lets our cancellation through.
            await asyncio.wait([pending])
