"""Push once to the primary, pull from every region: skopeo against the real stack."""

from __future__ import annotations

import pytest

from deploy.local import images, skopeo
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

KiB = 1024


def sample(seed: str, *sizes: int, arch: str = "amd64") -> images.Image:
    return images.image([images.layer(size, f"{seed}-{i}") for i, size in enumerate(sizes)], arch=arch, label=seed)


async def test_single_platform_image(live: Stack) -> None:
    repo = live.unique("single/app")
    image = sample(repo, 300 * KiB, 40 * KiB)
    digest = live.push_image(repo, "v1", image)
    await live.replicated(repo, "v1", digest)
    live.pull_everywhere(repo, "v1", digest)
    records = await live.final_records(repo, digest)
    for record in records.values():
        assert (record["tag"], record["blobs_total"], record["blobs_copied"]) == ("v1", 3, 3)
        assert record["bytes_copied"] == sum(len(b.data) for b in image.blobs)
        assert record["lag_ms"] >= 0
        assert record["error"] is None


async def test_multi_arch_index_with_two_platforms(live: Stack) -> None:
    repo = live.unique("multi/app")
    shared = images.layer(200 * KiB, f"{repo}-base")
    platforms = {
        ("linux", arch): images.image([shared, images.layer(50 * KiB, f"{repo}-{arch}")], arch=arch)
        for arch in ("amd64", "arm64")
    }
    digest = live.push_index(repo, "v1", platforms)
    await live.replicated(repo, "v1", digest)
    live.pull_everywhere(repo, "v1", digest)  # --all: both platforms, every blob
    children = [img.manifest.digest for img in platforms.values()]
    for child in children:
        await live.replicated(repo, child, child)  # each platform's manifest is served by digest too
    records = await live.final_records(repo, digest)
    for record in records.values():
        # The children were replicated by their own (untagged) events first: the index needs no blob.
        assert (record["tag"], record["manifests_total"], record["blobs_total"]) == ("v1", 3, 5)


async def test_second_tag_on_an_existing_digest_copies_nothing(live: Stack) -> None:
    repo = live.unique("tags/app")
    digest = live.push_image(repo, "v1", sample(repo, 100 * KiB))
    await live.replicated(repo, "v1", digest)
    skopeo.copy(f"{live.primary}/{repo}:v1", f"{live.primary}/{repo}:stable")
    await live.replicated(repo, "stable", digest)
    live.pull_everywhere(repo, "stable", digest)
    tagged = await live.records(
        lambda found: (
            {r["region"] for r in found if r["tag"] == "stable" and r["status"] == "succeeded"} == set(live.regions)
        ),
        repository=repo,
        tag="stable",
    )
    assert all(r["blobs_copied"] == 0 and r["bytes_copied"] == 0 for r in tagged)


async def test_tag_moved_to_a_new_image_is_followed(live: Stack) -> None:
    repo = live.unique("moving/app")
    first = live.push_image(repo, "latest", sample(f"{repo}-1", 60 * KiB))
    await live.replicated(repo, "latest", first)
    second = live.push_image(repo, "latest", sample(f"{repo}-2", 70 * KiB))
    assert second != first
    await live.replicated(repo, "latest", second)
    live.pull_everywhere(repo, "latest", second)
    await live.replicated(repo, first, first)  # the old image stays pullable by digest


async def test_cross_repository_mount(live: Stack) -> None:
    source, target = live.unique("mount/source"), live.unique("mount/target")
    digest = live.push_image(source, "v1", sample(source, 150 * KiB, 20 * KiB))
    await live.replicated(source, "v1", digest)
    # Same registry, blobs already there: skopeo mounts them into the target repository.
    skopeo.copy(f"{live.primary}/{source}:v1", f"{live.primary}/{target}:v1")
    await live.replicated(target, "v1", digest)
    live.pull_everywhere(target, "v1", digest)  # the target repository's own blob links exist
    records = await live.final_records(target, digest)
    assert all(r["blobs_copied"] == 0 and r["blobs_total"] == 3 for r in records.values())


async def test_layers_already_in_the_region_are_not_copied_again(live: Stack) -> None:
    first_repo, second_repo = live.unique("shared/one"), live.unique("shared/two")
    base = [images.layer(400 * KiB, f"{first_repo}-base"), images.layer(100 * KiB, f"{first_repo}-lib")]
    first = images.image(base, label="one")
    second = images.image(base, label="two")  # same layers, another config
    digest_one = live.push_image(first_repo, "v1", first)
    await live.replicated(first_repo, "v1", digest_one)
    digest_two = live.push_image(second_repo, "v1", second)
    await live.replicated(second_repo, "v1", digest_two)
    live.pull_everywhere(second_repo, "v1", digest_two)
    records = await live.final_records(second_repo, digest_two)
    for record in records.values():
        assert (record["blobs_total"], record["blobs_copied"]) == (3, 1), "only the new config may be copied"
        assert record["bytes_copied"] == len(second.config.data)


async def test_a_push_to_a_replica_registry_is_refused(live: Stack) -> None:
    repo = live.unique("readonly/app")
    image = sample(repo, 10 * KiB)
    layout = live.workdir / f"readonly-{repo.replace('/', '_')}"
    images.write_image(layout, "v1", image)
    for region in live.regions.values():
        with pytest.raises(skopeo.SkopeoError, match=r"405|unsupported|read-only|read only"):
            skopeo.push(layout, "v1", f"{region['registry']}/{repo}:v1")
        with pytest.raises(skopeo.SkopeoError):
            skopeo.manifest_digest(f"{region['registry']}/{repo}:v1")


async def test_a_large_layer_streams_through_multipart_and_leaves_no_upload_open(live: Stack) -> None:
    repo = live.unique("large/app")
    image = sample(repo, 40 * 1024 * KiB, 10 * KiB)  # above the 8 MiB multipart threshold: five parts
    digest = live.push_image(repo, "v1", image)
    await live.replicated(repo, "v1", digest)
    live.pull_everywhere(repo, "v1", digest)
    records = await live.final_records(repo, digest)
    assert all(r["bytes_copied"] == sum(len(b.data) for b in image.blobs) for r in records.values())
    for name in live.regions:
        async with live.region_store(name) as store:
            assert await store.open_uploads() == []
