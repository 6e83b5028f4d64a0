"""Every byte a copy takes from the budget comes back, on every path: a part that fails, a first part that
fails, a copy cancelled mid-way, a body that ends early or hashes wrong. A leak here shrinks the budget for
good: four of them froze a replicator (issue 15). The real `_stream_parts` runs against a real aiohttp
stream reader; only the upload, which is S3's side, is played by a recorder (the same paths against a real
SeaweedFS and the real primary are in tests/integration/test_copy_failures.py)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
import pytest

from consumers.blobcopy import _stream_parts
from consumers.budget import ByteBudget
from engine.digest import Digest
from engine.errors import DigestMismatch, StorageUnavailable
from engine.manifests import Descriptor

PART = 5 * 1024 * 1024
SIZE = 4 * PART + 1000  # five parts, the last one short


class Upload:
    """S3's side of a multipart upload: records parts; fails or blocks on the part it is told to."""

    def __init__(self, fail_on: int | None = None, block_on: int | None = None) -> None:
        self.fail_on = fail_on
        self.block_on = block_on
        self.parts: list[int] = []
        self.blocked = asyncio.Event()

    async def upload_part(self, number: int, data: bytes | bytearray) -> None:
        await asyncio.sleep(0)  # a real upload yields to the loop
        if number == self.block_on:
            self.blocked.set()
            await asyncio.Event().wait()
        if number == self.fail_on:
            raise StorageUnavailable(f"object store failed on part {number}", key="k")
        self.parts.append(number)


def body(data: bytes, *, short_by: int = 0) -> Any:
    """A real aiohttp StreamReader fed with the blob (a response's `.content`), as the primary would send it."""

    class Protocol:
        _reading_paused = False

        def pause_reading(self, **_: object) -> None: ...

        def resume_reading(self, **_: object) -> None: ...

    reader = aiohttp.StreamReader(Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    reader.feed_data(data[: len(data) - short_by])
    reader.feed_eof()

    class Response:
        content = reader

    return Response()


def blob(data: bytes) -> Descriptor:
    return Descriptor("application/octet-stream", Digest("sha256", hashlib.sha256(data).hexdigest()), len(data))


@pytest.fixture(scope="module")
def data() -> bytes:
    return bytes(range(256)) * (SIZE // 256) + bytes(SIZE % 256)


async def stream(
    data: bytes, upload: Upload, budget: ByteBudget, *, digest_of: bytes | None = None, short_by: int = 0
) -> None:
    # The caller (copy_blob) takes room for the first part and hands it over.
    await budget.take(PART)
    await _stream_parts(body(data, short_by=short_by), upload, blob(digest_of or data), PART, budget, held=PART)  # type: ignore[arg-type]


async def test_every_part_uploaded_gives_every_byte_back(data: bytes) -> None:
    budget, upload = ByteBudget(2 * PART), Upload()
    await stream(data, upload, budget)
    assert upload.parts == [1, 2, 3, 4, 5]
    assert budget.held == 0


@pytest.mark.parametrize("failing", [1, 2, 3, 5])
async def test_a_failing_part_upload_gives_every_byte_back(data: bytes, failing: int) -> None:
    budget = ByteBudget(2 * PART)
    with pytest.raises(StorageUnavailable):
        await stream(data, Upload(fail_on=failing), budget)
    assert budget.held == 0, f"{budget.held} bytes leaked after part {failing} failed"


async def test_a_cancelled_copy_gives_every_byte_back(data: bytes) -> None:
    budget, upload = ByteBudget(2 * PART), Upload(block_on=2)
    copy = asyncio.create_task(stream(data, upload, budget))
    await upload.blocked.wait()
    copy.cancel()
    with pytest.raises(asyncio.CancelledError):
        await copy
    assert budget.held == 0


async def test_a_body_that_ends_early_gives_every_byte_back(data: bytes) -> None:
    budget = ByteBudget(2 * PART)
    with pytest.raises(DigestMismatch, match="ended early"):
        await stream(data, Upload(), budget, short_by=PART + 10)
    assert budget.held == 0


async def test_bytes_that_hash_wrong_give_every_byte_back(data: bytes) -> None:
    budget = ByteBudget(2 * PART)
    with pytest.raises(DigestMismatch, match="hashes to"):
        await stream(data, Upload(), budget, digest_of=data[::-1])
    assert budget.held == 0


async def test_after_many_failures_a_copy_still_gets_its_room(data: bytes) -> None:
    """The issue's freeze: with a leak per failure, the fifth copy waited in take() forever."""
    budget = ByteBudget(2 * PART)
    for _ in range(8):
        with pytest.raises(StorageUnavailable):
            await stream(data, Upload(fail_on=2), budget)
    async with asyncio.timeout(5):
        await stream(data, Upload(), budget)
    assert budget.held == 0
