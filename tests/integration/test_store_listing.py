"""Key listings of a region's bucket on a real SeaweedFS server: what reconciliation and tag deletes read.

Listings go through obstore, whose prefixes are folders: these tests pin that a folder lists exactly its own
keys (never a sibling that only shares the start of its name), that a listing longer than one page comes
whole with one metered request per page, and that a prefix which is not a folder is refused, not widened.
"""

from __future__ import annotations

import asyncio

import pytest

from adapters.meter import Meter
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

REGION = "ap-singapore"


async def test_a_folder_lists_its_own_keys_and_not_a_siblings(live: Stack) -> None:
    root = f"listing/{live.unique('folder')}"
    mine = [f"{root}/app/_manifests/tags/v{i}/current/link" for i in range(3)]
    sibling = f"{root}/app-two/_manifests/tags/v0/current/link"  # "app" is the start of its name
    async with live.region_store(REGION) as store:
        for key in [*mine, sibling]:
            assert await store.put(key, b"sha256:" + b"0" * 64, if_absent=False)
        listed = [key async for key in store.keys(f"{root}/app/")]
        details = await store.listing(f"{root}/app/")
        everything = [key async for key in store.keys(f"{root}/")]
    assert sorted(listed) == sorted(mine)
    assert sorted(details) == sorted(mine)
    size, etag, modified = details[mine[0]]
    assert size == 7 + 64
    assert etag
    assert not etag.startswith('"'), "the ETag comes without its quotes"
    assert modified.tzinfo is not None
    assert sorted(everything) == sorted([*mine, sibling])


async def test_a_listing_longer_than_a_page_is_whole_and_metered_per_page(live: Stack) -> None:
    root = f"listing/{live.unique('pages')}/"
    keys = [f"{root}k{i:05d}" for i in range(2100)]
    async with live.region_store(REGION) as store:
        slots = asyncio.Semaphore(32)

        async def put(key: str) -> None:
            async with slots:
                await store.put(key, b"x", if_absent=True)

        await asyncio.gather(*(put(key) for key in keys))
        meter = Meter()
        listed = [key async for key in store.metered(meter).keys(root)]
    assert sorted(listed) == keys
    # Three pages of at most 1,000 keys, and the call that finds the listing over.
    assert 3 <= meter.requests <= 4


async def test_a_prefix_that_is_not_a_folder_is_refused(live: Stack) -> None:
    async with live.region_store(REGION) as store:
        with pytest.raises(ValueError, match="ends in '/'"):
            [key async for key in store.keys("listing/no-slash")]
