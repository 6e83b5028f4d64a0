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

from adapters.registry import RegistryClient
from adapters.store import Multipart, RegionStore
from consumers.budget import ByteBudget
from engine.digest import Digest
from engine.errors import DigestMismatch, NotFoundUpstream
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
    holds at once (the blob if small, else two parts) come out of `budget`,
    and go back to it on every path: success, failure, cancellation.

    A blob smaller than `probe_blobs_from` is not looked for first: its
    conditional PUT answers "already there" by itself, so a new one costs one
    S3 request instead of two, and one the region has costs a fetch of a few
    KiB from the primary.
    """
    probed = replace or blob.size >= settings.probe_blobs_from
    if probed and not replace and await store.exists(key):
        return 0
    small = blob.size <= settings.multipart_threshold
    first = blob.size if small else min(settings.part_size, blob.size)
    # Room for the first buffer is taken before the primary's response opens: a copy waiting for
    # memory then holds no connection and no socket buffers (measured: about 9 MB per open response).
    await budget.take(first)
    owned = first  # bytes of the budget this frame must give back; 0 once _stream_parts owns them
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
                owned = 0  # handed over: _stream_parts gives the first part's room back with every other part's
                await _stream_parts(response, upload, blob, settings.part_size, budget, held=first)
                written = blob.size if await upload.complete(if_absent=not replace) else 0
    except NotFoundUpstream:
        # Unprobed, the region may hold a blob the primary no longer serves: nothing to copy then.
        if probed or not await store.exists(key):
            raise
        return 0
    finally:
        if owned:
            budget.release(owned)
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

    `held`: room for the first part, taken by the caller and owned here from now on. Each part's room
    is owned by this frame until its upload task exists, and by that task after (see `_send`).
    """
    hasher = blob.digest.hasher()
    pending: asyncio.Task[None] | None = None
    owned = held
    try:
        for number, offset in enumerate(range(0, blob.size, part_size), start=1):
            size = min(part_size, blob.size - offset)
            if number > 1:
                await budget.take(size)
                owned = size
            part = bytearray(size)
            await _fill(response, part, hasher, blob)
            if pending is not None:
                await pending  # part n is in S3 (its room is back) before part n+1 starts
            pending = _send(upload, number, part, budget, owned)
            owned = 0
        if pending is not None:
            await pending
        await _at_end(response, blob)
        _check(blob, Digest(blob.digest.algorithm, hasher.hexdigest()))
    finally:
        if owned:
            budget.release(owned)
        if pending is not None and not pending.done():
            pending.cancel()
            # wait() does not re-raise the part's own error, and still lets our cancellation through.
            await asyncio.wait([pending])


def _send(upload: Multipart, number: int, part: bytearray, budget: ByteBudget, room: int) -> asyncio.Task[None]:
    """Upload one part in a task that owns `room`: given back once, however the task ends.

    The task's own `finally` gives it back as the upload ends, before anyone awaiting the task
    resumes; the done callback covers a task cancelled before it ever ran (its body never starts).
    """
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            budget.release(room)

    async def send() -> None:
        try:
            await upload.upload_part(number, part)
        finally:
            release()

    task = asyncio.create_task(send(), name=f"part-{number}")
    task.add_done_callback(lambda _: release())
    return task
