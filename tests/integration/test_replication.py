"""Push once to the primary, pull from every region: skopeo against the real stack, on both registry lines.

Every image case runs on CNCF distribution 2.8.2 (Debian's) and on v3 (`line` is each line's stack in turn):
the primary and every region's read-only registry run that line.
"""

from __future__ import annotations

import aiohttp
import pytest

from deploy.local import images, skopeo
from deploy.local.probe import served_digest
from engine.manifests import ACCEPT
from tests.integration.conftest import Stack
from tests.waiting import until

pytestmark = pytest.mark.integration

KiB = 1024


def sample(seed: str, *sizes: int, arch: str = "amd64") -> images.Image:
    return images.image([images.layer(size, f"{seed}-{i}") for i, size in enumerate(sizes)], arch=arch, label=seed)


async def test_single_platform_image(line: Stack) -> None:
    repo = line.unique("single/app")
    image = sample(repo, 300 * KiB, 40 * KiB)
    digest = line.push_image(repo, "v1", image)
    await line.replicated(repo, "v1", digest)
    line.pull_everywhere(repo, "v1", digest)
    records = await line.final_records(repo, digest)
    for record in records.values():
        assert (record["tag"], record["blobs_total"], record["blobs_copied"]) == ("v1", 3, 3)
        assert record["bytes_copied"] == sum(len(b.data) for b in image.blobs)
        assert record["lag_ms"] >= 0
        assert record["error"] is None


async def test_multi_arch_index_with_two_platforms(line: Stack) -> None:
    repo = line.unique("multi/app")
    shared = images.layer(200 * KiB, f"{repo}-base")
    platforms = {
        ("linux", arch): images.image([shared, images.layer(50 * KiB, f"{repo}-{arch}")], arch=arch)
        for arch in ("amd64", "arm64")
    }
    digest = line.push_index(repo, "v1", platforms)
    await line.replicated(repo, "v1", digest)
    line.pull_everywhere(repo, "v1", digest)  # --all: both platforms, every blob
    children = [img.manifest.digest for img in platforms.values()]
    for child in children:
        await line.replicated(repo, child, child)  # each platform's manifest is served by digest too
    records = await line.final_records(repo, digest)
    for record in records.values():
        # The children were replicated by their own (untagged) events first: the index needs no blob.
        assert (record["tag"], record["manifests_total"], record["blobs_total"]) == ("v1", 3, 5)


async def test_second_tag_on_an_existing_digest_copies_nothing(line: Stack) -> None:
    repo = line.unique("tags/app")
    digest = line.push_image(repo, "v1", sample(repo, 100 * KiB))
    await line.replicated(repo, "v1", digest)
    skopeo.copy(f"{line.primary}/{repo}:v1", f"{line.primary}/{repo}:stable")
    await line.replicated(repo, "stable", digest)
    line.pull_everywhere(repo, "stable", digest)
    tagged = await line.records(
        lambda found: (
            {r["region"] for r in found if r["tag"] == "stable" and r["status"] == "succeeded"} == set(line.regions)
        ),
        repository=repo,
        tag="stable",
    )
    assert all(r["blobs_copied"] == 0 and r["bytes_copied"] == 0 for r in tagged)


async def test_tag_moved_to_a_new_image_is_followed(line: Stack) -> None:
    repo = line.unique("moving/app")
    first = line.push_image(repo, "latest", sample(f"{repo}-1", 60 * KiB))
    await line.replicated(repo, "latest", first)
    second = line.push_image(repo, "latest", sample(f"{repo}-2", 70 * KiB))
    assert second != first
    await line.replicated(repo, "latest", second)
    line.pull_everywhere(repo, "latest", second)
    await line.replicated(repo, first, first)  # the old image stays pullable by digest


async def test_cross_repository_mount(line: Stack) -> None:
    source, target = line.unique("mount/source"), line.unique("mount/target")
    digest = line.push_image(source, "v1", sample(source, 150 * KiB, 20 * KiB))
    await line.replicated(source, "v1", digest)
    # Same registry, blobs already there: skopeo mounts them into the target repository.
    skopeo.copy(f"{line.primary}/{source}:v1", f"{line.primary}/{target}:v1")
    await line.replicated(target, "v1", digest)
    line.pull_everywhere(target, "v1", digest)  # the target repository's own blob links exist
    records = await line.final_records(target, digest)
    assert all(r["blobs_copied"] == 0 and r["blobs_total"] == 3 for r in records.values())


async def test_layers_already_in_the_region_are_not_copied_again(line: Stack) -> None:
    first_repo, second_repo = line.unique("shared/one"), line.unique("shared/two")
    base = [images.layer(400 * KiB, f"{first_repo}-base"), images.layer(100 * KiB, f"{first_repo}-lib")]
    first = images.image(base, label="one")
    second = images.image(base, label="two")  # same layers, another config
    digest_one = line.push_image(first_repo, "v1", first)
    await line.replicated(first_repo, "v1", digest_one)
    digest_two = line.push_image(second_repo, "v1", second)
    await line.replicated(second_repo, "v1", digest_two)
    line.pull_everywhere(second_repo, "v1", digest_two)
    records = await line.final_records(second_repo, digest_two)
    for record in records.values():
        assert (record["blobs_total"], record["blobs_copied"]) == (3, 1), "only the new config may be copied"
        assert record["bytes_copied"] == len(second.config.data)


async def test_a_push_to_a_replica_registry_is_refused(line: Stack) -> None:
    repo = line.unique("readonly/app")
    image = sample(repo, 10 * KiB)
    layout = line.workdir / f"readonly-{repo.replace('/', '_')}"
    images.write_image(layout, "v1", image)
    for region in line.regions.values():
        with pytest.raises(skopeo.SkopeoError, match=r"405|unsupported|read-only|read only"):
            skopeo.push(layout, "v1", f"{region['registry']}/{repo}:v1")
        with pytest.raises(skopeo.SkopeoError):
            skopeo.manifest_digest(f"{region['registry']}/{repo}:v1")


async def test_a_large_layer_streams_through_multipart_and_leaves_no_upload_open(line: Stack) -> None:
    repo = line.unique("large/app")
    image = sample(repo, 40 * 1024 * KiB, 10 * KiB)  # above the 8 MiB multipart threshold: five parts
    digest = line.push_image(repo, "v1", image)
    await line.replicated(repo, "v1", digest)
    line.pull_everywhere(repo, "v1", digest)
    records = await line.final_records(repo, digest)
    assert all(r["bytes_copied"] == sum(len(b.data) for b in image.blobs) for r in records.values())
    for name in line.regions:
        async with line.region_store(name) as store:
            assert await store.open_uploads() == []


async def _delete(line: Stack, repo: str, reference: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.delete(f"http://{line.primary}/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT}) as answer,
    ):
        return answer.status


async def _gone(line: Stack, repo: str, reference: str) -> None:
    async with aiohttp.ClientSession() as session:
        for name, region in line.regions.items():

            async def gone(registry: str = region["registry"]) -> bool:
                return await served_digest(session, registry, repo, reference) is None

            await until(gone, f"{name} to stop serving {repo}:{reference}", 60)


async def test_deletes_by_tag_and_by_digest_reach_every_region_and_pushes_go_on_after_each(line: Stack) -> None:
    """v3 deletes by tag (2.8.2 answers 400 to that); both delete by digest, then untag each tag on it."""
    repo = line.unique("deletes/app")
    shared = images.layer(80 * KiB, f"{repo}-shared")
    a = images.image([shared, images.layer(20 * KiB, f"{repo}-a")], label="a")
    b = images.image([shared, images.layer(20 * KiB, f"{repo}-b")], label="b")
    digest_a = line.push_image(repo, "a", a)
    skopeo.copy(f"{line.primary}/{repo}:a", f"{line.primary}/{repo}:a2")
    skopeo.copy(f"{line.primary}/{repo}:a", f"{line.primary}/{repo}:a3")
    digest_b = line.push_image(repo, "b", b)
    for tag in ("a", "a2", "a3"):
        await line.replicated(repo, tag, digest_a)
    await line.replicated(repo, "b", digest_b)

    if line.line == "3":
        assert await _delete(line, repo, "a2") == 202
        await _gone(line, repo, "a2")
        await line.replicated(repo, "a", digest_a)  # the other tags on the digest stay
    else:
        assert await _delete(line, repo, "a2") == 400, "2.8.2 cannot delete by tag"
    after_tag = line.push_image(repo, "c", sample(f"{repo}-c", 15 * KiB))
    await line.replicated(repo, "c", after_tag)

    assert await _delete(line, repo, digest_a) == 202  # the registry also untags a (and a2, a3) and says so
    for reference in ("a", "a2", "a3", digest_a):
        await _gone(line, repo, reference)
    after_digest = line.push_image(repo, "d", sample(f"{repo}-d", 15 * KiB))
    await line.replicated(repo, "d", after_digest)
    # The deleted manifest pushed again: each region writes it anew (a replicator forgets that it had the
    # manifest when it deletes it), so the new tag serves.
    assert line.push_image(repo, "again", a) == digest_a
    await line.replicated(repo, "again", digest_a)
    line.pull_everywhere(repo, "again", digest_a)
    # b shares a layer with the deleted image: every region still serves all of it.
    await line.replicated(repo, "b", digest_b)
    line.pull_everywhere(repo, "b", digest_b)
