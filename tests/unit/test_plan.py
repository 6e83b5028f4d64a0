"""The replication plan: what is written, each once, in the order that keeps pulls whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.errors import InvalidManifest
from engine.layout import KeyKind, Layout, link_body
from engine.manifests import Manifest
from engine.names import Repository, Tag
from engine.plan import MAX_INDEX_DEPTH, Mode, Phase, TagState, build_plan, child_digests, steps, tag_writes
from tests.unit.manifest_builders import image, index

LAYOUT = Layout("pfx")
REPO = Repository.parse("team/app")
TAG = Tag.parse("v1")
WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def state(m: Manifest, at: datetime = WHEN, event: str = "e1") -> TagState:
    return TagState(m.digest, at, event)


def assert_write_order(writes: list[Any]) -> None:
    """For every key: blob data before its links, manifest data before its revision, content before tags."""
    position = {w.key: i for i, w in enumerate(writes)}
    for i, write in enumerate(writes):
        parsed = LAYOUT.parse(write.key)
        if parsed.kind in (KeyKind.LAYER_LINK, KeyKind.REVISION_LINK):
            assert parsed.digest is not None
            assert position[LAYOUT.blob_data(parsed.digest)] < i, f"{write.key} before its data"
        if parsed.kind in (KeyKind.TAG_INDEX_LINK, KeyKind.TAG_CURRENT_LINK, KeyKind.TAG_STATE):
            content = [j for j, w in enumerate(writes) if w.phase < Phase.TAG_INDEX_LINK]
            assert max(content) < i, "a tag write precedes content"


def test_single_image_writes_everything_in_order() -> None:
    img = image(1, 2, 3)
    plan = build_plan(LAYOUT, REPO, img, {}, TAG, state(img))
    writes = list(plan.writes)
    assert [w.phase for w in writes] == sorted(w.phase for w in writes)
    assert_write_order(writes)
    assert [w.key for w in writes if w.phase is Phase.BLOB_DATA] == [LAYOUT.blob_data(d.digest) for d in img.blobs]
    assert all(w.mode is Mode.COPY_BLOB for w in writes if w.phase is Phase.BLOB_DATA)
    assert {w.key: w.body for w in writes if w.phase is Phase.LAYER_LINKS} == {
        LAYOUT.layer_link(REPO, d.digest): link_body(d.digest) for d in img.blobs
    }
    last = writes[-1]
    assert (last.phase, last.key, last.mode, last.body) == (
        Phase.TAG_CURRENT_LINK,
        LAYOUT.tag_current_link(REPO, TAG),
        Mode.OVERWRITE,
        link_body(img.digest),
    )
    manifest_data = next(w for w in writes if w.phase is Phase.MANIFEST_DATA)
    assert (manifest_data.key, manifest_data.body) == (LAYOUT.blob_data(img.digest), img.raw)


def test_only_tag_pointers_are_overwritten() -> None:
    img = image(1, 2)
    plan = build_plan(LAYOUT, REPO, img, {}, TAG, state(img))
    overwritten = {w.phase for w in plan.writes if w.mode is Mode.OVERWRITE}
    assert overwritten == {Phase.TAG_STATE, Phase.TAG_CURRENT_LINK}


def test_a_repair_plan_checks_every_key_in_the_same_order() -> None:
    img = image(1, 2)
    normal = build_plan(LAYOUT, REPO, img, {}, TAG, state(img))
    repair = build_plan(LAYOUT, REPO, img, {}, TAG, state(img), repair=True)
    assert [(w.phase, w.key, w.body) for w in repair.writes] == [(w.phase, w.key, w.body) for w in normal.writes]
    assert {w.mode for w in repair.writes if w.phase is Phase.BLOB_DATA} == {Mode.REPAIR_BLOB}
    assert {w.mode for w in repair.writes if w.phase in (Phase.TAG_STATE, Phase.TAG_CURRENT_LINK)} == {Mode.OVERWRITE}
    assert {w.mode for w in repair.writes if w.phase < Phase.TAG_STATE and w.phase is not Phase.BLOB_DATA} == {
        Mode.REPAIR
    }


def test_untagged_push_writes_no_tag() -> None:
    plan = build_plan(LAYOUT, REPO, image(1, 2), {})
    assert max(w.phase for w in plan.writes) is Phase.MANIFEST_LINK


def test_index_children_come_before_the_index_and_shared_blobs_once() -> None:
    amd, arm = image(1, 2, 3), image(4, 2, 5)  # layer 2 is shared
    top = index(amd, arm)
    plan = build_plan(LAYOUT, REPO, top, {amd.digest: amd, arm.digest: arm}, TAG, state(top))
    assert [m.digest for m in plan.children] == [amd.digest, arm.digest]
    assert sorted(int(b.digest.hex, 16) for b in plan.blobs) == [1, 2, 3, 4, 5]
    writes = list(plan.writes)
    assert_write_order(writes)
    order = [w.key for w in writes]
    for child in (amd, arm):
        assert order.index(LAYOUT.revision_link(REPO, child.digest)) < order.index(LAYOUT.blob_data(top.digest))
    assert len(order) == len(set(order)), "a key is written twice"


def test_nested_index_puts_deepest_first() -> None:
    leaf = image(1, 2)
    inner = index(leaf)
    outer = index(inner)
    assert child_digests(outer, {}) == [outer.children[0]]
    assert child_digests(outer, {inner.digest: inner}) == [inner.children[0]]
    plan = build_plan(LAYOUT, REPO, outer, {inner.digest: inner, leaf.digest: leaf})
    assert [m.digest for m in plan.children] == [leaf.digest, inner.digest]


def test_missing_child_or_runaway_nesting_is_refused() -> None:
    leaf = image(1, 2)
    with pytest.raises(InvalidManifest, match="not fetched"):
        build_plan(LAYOUT, REPO, index(leaf), {})
    chain: list[Manifest] = [leaf]
    for _ in range(MAX_INDEX_DEPTH + 2):
        chain.append(index(chain[-1]))
    with pytest.raises(InvalidManifest, match="nests deeper"):
        build_plan(LAYOUT, REPO, chain[-1], {m.digest: m for m in chain[:-1]})


def test_tag_state_orders_pushes_and_survives_a_round_trip() -> None:
    img = image(1, 2)
    older, newer = state(img, WHEN, "a"), state(img, WHEN + timedelta(microseconds=1), "b")
    assert newer.supersedes(older)
    assert not older.supersedes(newer)
    assert not older.supersedes(older), "a replay of the same push must still apply"
    assert TagState.from_json(newer.to_json()) == newer


def test_steps_run_nothing_before_what_it_needs() -> None:
    """Writes of one step run at once: every dependency must sit in a strictly earlier step."""
    leaves = [image(1, 2), image(3, 4)]
    inner = index(*leaves)
    outer = index(inner, image(5))
    manifests = {m.digest: m for m in [*leaves, inner, image(5)]}
    plan = build_plan(LAYOUT, REPO, outer, manifests, TAG, state(outer))
    step_of = {w.key: n for n, step in enumerate(steps(plan.writes)) for w in step}
    assert sorted(step_of) == sorted(w.key for w in plan.writes), "every write is in exactly one step"
    revisions = {LAYOUT.revision_link(REPO, m.digest): m for m in [*manifests.values(), outer]}
    for write in plan.writes:
        parsed = LAYOUT.parse(write.key)
        if parsed.kind in (KeyKind.LAYER_LINK, KeyKind.REVISION_LINK):
            assert parsed.digest is not None
            assert step_of[LAYOUT.blob_data(parsed.digest)] < step_of[write.key], f"{write.key} with its data"
        if write.key in revisions:
            manifest = revisions[write.key]
            needed = [LAYOUT.layer_link(REPO, b.digest) for b in manifest.blobs]
            needed += [LAYOUT.revision_link(REPO, c.digest) for c in manifest.children]
            assert all(step_of[k] < step_of[write.key] for k in needed), f"{write.key} before what it serves"
    current = LAYOUT.tag_current_link(REPO, TAG)
    assert all(step_of[w.key] < step_of[current] for w in plan.writes if w.key != current), "the tag moves last"
    assert step_of[LAYOUT.tag_state(REPO, TAG)] < step_of[current]


def test_a_tag_only_plan_is_the_tail_of_the_full_plan() -> None:
    img = image(1, 2)
    full = build_plan(LAYOUT, REPO, img, {}, TAG, state(img))
    tail = tag_writes(LAYOUT, REPO, img.digest, TAG, state(img))
    assert tail == [w for w in full.writes if w.phase >= Phase.TAG_INDEX_LINK]


def test_a_tag_only_push_writes_in_two_rounds_after_its_manifest_is_whole() -> None:
    """The index link (history) rides with the tag's note, after the newer-push check; `current` alone last."""
    img = image(1, 2)
    rounds = [{w.phase for w in step} for step in steps(tag_writes(LAYOUT, REPO, img.digest, TAG, state(img)))]
    assert rounds == [{Phase.TAG_INDEX_LINK, Phase.TAG_STATE}, {Phase.TAG_CURRENT_LINK}]
    full = [{w.phase for w in step} for step in steps(build_plan(LAYOUT, REPO, img, {}, TAG, state(img)).writes)]
    assert full.index({Phase.MANIFEST_LINK}) < full.index({Phase.TAG_INDEX_LINK, Phase.TAG_STATE})
