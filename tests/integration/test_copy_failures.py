"""`copy_blob` on the real primary and a real SeaweedFS bucket, failing on purpose at each step of a multipart
copy: every byte taken from the budget comes back, and once the sweep has run no upload is left open.

The failures are injected into the real client: the upload's parts and its completion go to S3 for real
until the one told to fail (or to hang until the copy is cancelled).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from adapters.registry import RegistryClient
from adapters.store import Multipart, RegionStore
from consumers.blobcopy import copy_blob
from consumers.budget import ByteBudget
from deploy.local import images
from engine.digest import Digest
from engine.errors import StorageUnavailable
from engine.layout import Layout
from engine.manifests import Descriptor
from engine.names import Repository
from engine.settings import PrimarySettings, ReplicatorSettings
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
TUNING = ReplicatorSettings(part_size=5 * MiB, multipart_threshold=5 * MiB, buffer_bytes=10 * MiB)
SIZE = 4 * 5 * MiB + 3000  # five parts


class Faulty:
    """The real store, whose multipart uploads fail at part `fail_part`, hang at `hang_part`, or fail to complete."""

    def __init__(
        self,
        store: RegionStore,
        *,
        fail_part: int | None = None,
        hang_part: int | None = None,
        fail_complete: bool = False,
    ) -> None:
        self.store = store
        self.fail_part, self.hang_part, self.fail_complete = fail_part, hang_part, fail_complete
        self.hanging = asyncio.Event()
        self.bucket = store.bucket

    async def exists(self, key: str) -> bool:
        return await self.store.exists(key)

    async def abort_uploads(self, prefix: str, before: datetime) -> int:
        return await self.store.abort_uploads(prefix, before)

    @asynccontextmanager
    async def multipart(self, key: str) -> AsyncIterator[Multipart]:
        async with self.store.multipart(key) as upload:
            real_part, real_complete = upload.upload_part, upload.complete

            async def upload_part(number: int, data: bytes | bytearray) -> None:
                if number == self.hang_part:
                    self.hanging.set()
                    await asyncio.Event().wait()
                if number == self.fail_part:
                    raise StorageUnavailable(f"injected: part {number} failed", key=key)
                await real_part(number, data)

            async def complete(*, if_absent: bool = True) -> bool:
                if self.fail_complete:
                    raise StorageUnavailable("injected: complete failed", key=key)
                return await real_complete(if_absent=if_absent)

            upload.upload_part = upload_part  # type: ignore[method-assign]
            upload.complete = complete  # type: ignore[method-assign]
            yield upload


@pytest.fixture(scope="module")
async def pushed(live: Stack) -> tuple[str, Descriptor]:
    repo = live.unique("copy-failures/app")
    blob = images.layer(SIZE - 512 * 3, repo)  # a tar's framing brings it near SIZE
    await asyncio.to_thread(live.push_image, repo, "v1", images.image([blob]))
    return repo, Descriptor(blob.media_type, Digest.parse(blob.digest), len(blob.data))


async def copy(live: Stack, store: object, repo: str, blob: Descriptor, key: str, budget: ByteBudget) -> int:
    settings = PrimarySettings(url=f"http://{live.primary}")
    async with RegistryClient.session(settings) as session:
        primary = RegistryClient(settings, session)
        return await copy_blob(primary, store, Repository.parse(repo), blob, key, TUNING, budget)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fault", [{"fail_part": 1}, {"fail_part": 2}, {"fail_part": 4}, {"fail_complete": True}], ids=str
)
async def test_a_failing_part_or_completion_gives_every_byte_back_and_leaves_no_upload(
    live: Stack, pushed: tuple[str, Descriptor], fault: dict[str, object]
) -> None:
    repo, blob = pushed
    layout = Layout(live.unique("copyfail"))
    key = layout.blob_data(blob.digest)
    budget = ByteBudget(TUNING.buffer_bytes)
    async with live.region_store("ap-singapore") as store:
        with pytest.raises(StorageUnavailable, match="injected"):
            await copy(live, Faulty(store, **fault), repo, blob, key, budget)  # type: ignore[arg-type]
        assert budget.held == 0
        assert not await store.exists(key), "a failed copy left a visible object"
        await store.abort_uploads(layout.blobs_root, before=datetime.now(UTC))  # the replicator's sweep
        assert await store.open_uploads(layout.blobs_root) == []
        # The same budget still copies the blob whole afterwards.
        assert await copy(live, store, repo, blob, key, budget) == blob.size
        assert await store.size(key) == blob.size
        assert budget.held == 0


async def test_a_copy_cancelled_mid_part_gives_every_byte_back_and_leaves_no_upload(
    live: Stack, pushed: tuple[str, Descriptor]
) -> None:
    repo, blob = pushed
    layout = Layout(live.unique("copycancel"))
    key = layout.blob_data(blob.digest)
    budget = ByteBudget(TUNING.buffer_bytes)
    async with live.region_store("ap-singapore") as store:
        faulty = Faulty(store, hang_part=3)
        task = asyncio.create_task(copy(live, faulty, repo, blob, key, budget))
        await faulty.hanging.wait()
        assert budget.held > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert budget.held == 0
        await store.abort_uploads(layout.blobs_root, before=datetime.now(UTC))
        assert await store.open_uploads(layout.blobs_root) == []
        assert not await store.exists(key)
