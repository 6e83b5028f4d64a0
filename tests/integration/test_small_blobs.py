"""Small blobs go straight to a conditional PUT: `copy_blob` on the real primary and a real SeaweedFS bucket,
with the requests it makes of the region counted on the real store."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from adapters.registry import RegistryClient
from adapters.store import RegionStore
from consumers.blobcopy import copy_blob
from consumers.budget import ByteBudget
from deploy.local import images
from engine.digest import Digest
from engine.errors import NotFoundUpstream
from engine.layout import Layout
from engine.manifests import Descriptor
from engine.names import Repository
from engine.settings import KiB, PrimarySettings, ReplicatorSettings
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


class Counted:
    """The real store, noting each request `copy_blob` makes of it."""

    def __init__(self, store: RegionStore) -> None:
        self.store = store
        self.requests: list[str] = []

    async def exists(self, key: str) -> bool:
        self.requests.append("HEAD")
        return await self.store.exists(key)

    async def put(self, key: str, body: bytes | bytearray, *, if_absent: bool) -> bool:
        self.requests.append("PUT if absent" if if_absent else "PUT")
        return await self.store.put(key, body, if_absent=if_absent)


async def copy(live: Stack, store: Counted, repo: str, blob: Descriptor, key: str, tuning: ReplicatorSettings) -> int:
    settings = PrimarySettings(url=f"http://{live.primary}")
    async with RegistryClient.session(settings) as session:
        primary = RegistryClient(settings, session)
        budget = ByteBudget(tuning.buffer_bytes)
        copied = await copy_blob(primary, store, Repository.parse(repo), blob, key, tuning, budget)  # type: ignore[arg-type]
        assert budget.held == 0
        return copied


@pytest.fixture(scope="module")
async def small(live: Stack) -> tuple[str, Descriptor, bytes]:
    """A repository on the primary with a layer of about 4 KiB."""
    repo = live.unique("small-blobs/app")
    layer = images.layer(4 * KiB, repo)
    await asyncio.to_thread(live.push_image, repo, "v1", images.image([layer]))
    return repo, Descriptor(layer.media_type, Digest.parse(layer.digest), len(layer.data)), layer.data


async def test_a_new_small_blob_costs_one_conditional_put_and_a_second_copy_writes_nothing(
    live: Stack, small: tuple[str, Descriptor, bytes]
) -> None:
    repo, blob, data = small
    key = Layout(live.unique("small-new")).blob_data(blob.digest)
    async with live.region_store("ap-singapore") as real:
        store = Counted(real)
        assert await copy(live, store, repo, blob, key, ReplicatorSettings()) == blob.size
        assert store.requests == ["PUT if absent"]
        assert await real.get(key) == data
        # The region has it now: the same request answers "already there" and changes nothing.
        assert await copy(live, store, repo, blob, key, ReplicatorSettings()) == 0
        assert store.requests == ["PUT if absent", "PUT if absent"]
        assert await real.get(key) == data


async def test_a_blob_from_the_probe_size_up_is_looked_for_first_and_not_fetched_if_there(
    live: Stack, small: tuple[str, Descriptor, bytes]
) -> None:
    repo, blob, data = small
    key = Layout(live.unique("small-probed")).blob_data(blob.digest)
    tuning = ReplicatorSettings(probe_blobs_from=blob.size)
    async with live.region_store("ap-singapore") as real:
        store = Counted(real)
        assert await copy(live, store, repo, blob, key, tuning) == blob.size
        assert store.requests == ["HEAD", "PUT if absent"]
        assert await copy(live, store, repo, blob, key, tuning) == 0
        assert store.requests == ["HEAD", "PUT if absent", "HEAD"]
        assert await real.get(key) == data


async def test_a_small_blob_the_primary_lacks_is_no_copy_if_the_region_holds_it_and_an_error_if_not(
    live: Stack, small: tuple[str, Descriptor, bytes]
) -> None:
    repo, _, _ = small
    data = os.urandom(3 * KiB)  # never pushed: the primary answers 404 for it
    blob = Descriptor(LAYER, Digest("sha256", hashlib.sha256(data).hexdigest()), len(data))
    layout = Layout(live.unique("small-lost"))
    key = layout.blob_data(blob.digest)
    async with live.region_store("ap-singapore") as real:
        store = Counted(real)
        with pytest.raises(NotFoundUpstream, match=blob.digest.hex):
            await copy(live, store, repo, blob, key, ReplicatorSettings())
        assert not await real.exists(key)
        await real.put(key, data, if_absent=True)
        assert await copy(live, store, repo, blob, key, ReplicatorSettings()) == 0
        assert await real.get(key) == data
