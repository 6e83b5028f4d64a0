"""Verification: the replication plan's writes against what a region holds → the differences."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from consumers.drift import Checked, Finding, Kind, Seen, Skipped, compare, extra_tags, repair_events
from consumers.verify import Report, render_json, render_text
from engine.digest import Digest
from engine.events import Action, ReplicationEvent, Source
from engine.layout import Layout, link_body
from engine.manifests import OCI_MANIFEST, Manifest
from engine.names import Repository, Tag
from engine.plan import Phase, TagState, Write, build_plan
from tests.unit.manifest_builders import image, index

LAYOUT = Layout("pfx")
REPO = Repository.parse("team/app")
TAG = Tag.parse("v1")
READ_AT = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def writes(root: Manifest, children: Mapping[Digest, Manifest] | None = None) -> list[Write]:
    """The plan the replicator writes for REPO:TAG, with a tag state as verify builds it."""
    plan = build_plan(LAYOUT, REPO, root, children or {}, TAG, TagState(root.digest, READ_AT, "verify"))
    return list(plan.writes)


def replicated(plan: list[Write]) -> dict[str, bytes]:
    """A region into which `plan` was fully written: every key with its bytes (blob bytes stand in by size)."""
    region: dict[str, bytes] = {}
    for write in plan:
        if write.blob is not None:
            region[write.key] = b"x" * write.blob.size
        elif write.phase is Phase.TAG_STATE:
            # Set by some earlier push: georep's own note, whose content verify does not compare.
            region[write.key] = TagState(Digest.of(b"older"), READ_AT - timedelta(days=1), "e0").to_json()
        else:
            region[write.key] = write.body
    return region


def seen(region: Mapping[str, bytes], write: Write, hashes: Mapping[str, Digest] | None = None) -> Seen:
    """What a HEAD / GET (/ a rehash, if `hashes` names the key) of `write.key` in `region` tells."""
    body = region.get(write.key)
    if body is None:
        return Seen(False)
    if write.blob is not None:
        digest = (hashes or {}).get(write.key, write.blob.digest) if hashes is not None else None
        return Seen(True, size=len(body), digest=digest)
    return Seen(True, body=body)


def findings(
    plan: list[Write], region: Mapping[str, bytes], hashes: Mapping[str, Digest] | None = None
) -> list[Finding]:
    return [f for w in plan if (f := compare(w, seen(region, w, hashes), REPO, TAG)) is not None]


def key_of(plan: list[Write], phase: Phase, nth: int = 0) -> Write:
    return [w for w in plan if w.phase is phase][nth]


# -- a whole region ---------------------------------------------------------------------------------


def test_a_fully_replicated_image_has_no_differences() -> None:
    plan = writes(image(1, 2, 3))
    assert findings(plan, replicated(plan)) == []
    assert findings(plan, replicated(plan), hashes={}) == [], "--rehash of intact blobs finds nothing"


def test_a_fully_replicated_index_has_no_differences_and_every_child_is_checked() -> None:
    amd, arm = image(1, 2), image(1, 3)
    root = index(amd, arm)
    plan = writes(root, {amd.digest: amd, arm.digest: arm})
    assert findings(plan, replicated(plan)) == []
    assert findings(plan, {}) != []
    every = {f.key for f in findings(plan, {})}
    for child in (amd, arm):
        assert LAYOUT.blob_data(child.digest) in every
        assert LAYOUT.revision_link(REPO, child.digest) in every


def test_an_empty_region_misses_every_key_once() -> None:
    plan = writes(image(1, 2, 3))
    found = findings(plan, {})
    assert [f.key for f in found] == [w.key for w in plan]
    assert [f.kind for f in found] == [
        Kind.BLOB_MISSING,
        Kind.BLOB_MISSING,
        Kind.BLOB_MISSING,
        Kind.LINK_MISSING,
        Kind.LINK_MISSING,
        Kind.LINK_MISSING,
        Kind.MANIFEST_MISSING,
        Kind.LINK_MISSING,
        Kind.LINK_MISSING,
        Kind.STATE_MISSING,
        Kind.TAG_MISSING,
    ]
    assert all((f.repository, f.tag) == (REPO, TAG) for f in found)


# -- one damaged key at a time --------------------------------------------------------------------


def test_missing_blob() -> None:
    plan = writes(image(1, 2))
    layer = key_of(plan, Phase.BLOB_DATA, 1)
    region = replicated(plan)
    del region[layer.key]
    assert findings(plan, region) == [Finding(Kind.BLOB_MISSING, REPO, TAG, layer.key, "1002 bytes")]


def test_blob_of_the_wrong_size() -> None:
    plan = writes(image(1, 2))
    layer = key_of(plan, Phase.BLOB_DATA, 1)
    region = replicated(plan) | {layer.key: b"short"}
    assert findings(plan, region) == [Finding(Kind.BLOB_SIZE, REPO, TAG, layer.key, "1002 bytes", "5 bytes")]


def test_corrupt_blob_of_the_right_size_is_found_only_by_rehashing() -> None:
    plan = writes(image(1, 2))
    layer = key_of(plan, Phase.BLOB_DATA, 1)
    region = replicated(plan)
    garbage = Digest.of(b"garbage")
    assert findings(plan, region) == [], "a HEAD cannot see it"
    [found] = findings(plan, region, hashes={layer.key: garbage})
    assert (found.kind, found.key, found.expected, found.actual) == (
        Kind.BLOB_CORRUPT,
        layer.key,
        f"sha256:{2:064x}",
        str(garbage),
    )


def test_layer_link_to_another_digest() -> None:
    plan = writes(image(1, 2))
    link = key_of(plan, Phase.LAYER_LINKS, 1)
    other = link_body(Digest.parse(f"sha256:{1:064x}"))
    region = replicated(plan) | {link.key: other}
    assert findings(plan, region) == [
        Finding(Kind.LINK_WRONG, REPO, TAG, link.key, f"sha256:{2:064x}", f"sha256:{1:064x}")
    ]


def test_link_with_a_trailing_newline_is_wrong_and_shown_escaped() -> None:
    # The registry answers 500 for such a link: byte-exact means byte-exact.
    plan = writes(image(1, 2))
    link = key_of(plan, Phase.MANIFEST_LINK)
    region = replicated(plan) | {link.key: link.body + b"\n"}
    [found] = findings(plan, region)
    assert (found.kind, found.actual) == (Kind.LINK_WRONG, link.body.decode() + "\\n")


def test_revision_and_tag_index_links_are_checked() -> None:
    plan = writes(image(1, 2))
    revision, tag_index = key_of(plan, Phase.MANIFEST_LINK), key_of(plan, Phase.TAG_INDEX_LINK)
    region = replicated(plan)
    del region[revision.key], region[tag_index.key]
    assert [(f.kind, f.key) for f in findings(plan, region)] == [
        (Kind.LINK_MISSING, revision.key),
        (Kind.LINK_MISSING, tag_index.key),
    ]


def test_manifest_bytes_that_differ_from_the_primary() -> None:
    root = image(1, 2)
    plan = writes(root)
    data = key_of(plan, Phase.MANIFEST_DATA)
    reformatted = json.dumps(json.loads(root.raw), indent=2).encode()  # same JSON, other bytes, other digest
    [found] = findings(plan, replicated(plan) | {data.key: reformatted})
    assert (found.kind, found.key) == (Kind.MANIFEST_WRONG, data.key)
    assert found.expected == f"{root.digest} ({len(root.raw)} bytes)"
    assert found.actual == f"{Digest.of(reformatted)} ({len(reformatted)} bytes)"


def test_missing_child_manifest_of_an_index() -> None:
    amd, arm = image(1, 2), image(1, 3)
    plan = writes(index(amd, arm), {amd.digest: amd, arm.digest: arm})
    region = replicated(plan)
    del region[LAYOUT.blob_data(arm.digest)]
    assert [(f.kind, f.key) for f in findings(plan, region)] == [(Kind.MANIFEST_MISSING, LAYOUT.blob_data(arm.digest))]


def test_tag_current_link_missing_or_pointing_elsewhere() -> None:
    root, older = image(1, 2), image(1, 3)
    plan = writes(root)
    current = LAYOUT.tag_current_link(REPO, TAG)
    region = replicated(plan)
    del region[current]
    assert findings(plan, region) == [Finding(Kind.TAG_MISSING, REPO, TAG, current, str(root.digest))]
    region[current] = link_body(older.digest)
    assert findings(plan, region) == [Finding(Kind.TAG_WRONG, REPO, TAG, current, str(root.digest), str(older.digest))]


def test_tag_state_is_checked_for_presence_only() -> None:
    plan = writes(image(1, 2))
    state = key_of(plan, Phase.TAG_STATE)
    assert state.body != replicated(plan)[state.key], "the region's note differs from verify's own"
    assert findings(plan, replicated(plan)) == []
    region = replicated(plan)
    del region[state.key]
    assert [(f.kind, f.key) for f in findings(plan, region)] == [(Kind.STATE_MISSING, state.key)]


def test_compare_refuses_a_blob_write_without_its_descriptor() -> None:
    broken = replace(key_of(writes(image(1)), Phase.BLOB_DATA), blob=None)
    with pytest.raises(ValueError, match="descriptor"):
        compare(broken, Seen(True, size=1), REPO, TAG)


# -- tags only the region has -----------------------------------------------------------------------


def test_extra_tags_are_current_links_the_primary_does_not_list() -> None:
    digest = Digest.of(b"m")
    sub = Repository.parse("team/app/sub")
    keys = [
        LAYOUT.tag_current_link(REPO, TAG),
        LAYOUT.tag_index_link(REPO, TAG, digest),
        LAYOUT.tag_current_link(REPO, Tag.parse("old")),
        LAYOUT.tag_index_link(REPO, Tag.parse("gone"), digest),  # history without a current link: not a tag
        LAYOUT.tag_current_link(sub, Tag.parse("elsewhere")),  # another repository
        "pfx/docker/registry/v2/repositories/team/app/_manifests/tags/stray-file",
    ]
    assert extra_tags(LAYOUT, REPO, keys, {TAG}) == [
        Finding(
            Kind.TAG_EXTRA,
            REPO,
            Tag.parse("old"),
            LAYOUT.tag_current_link(REPO, Tag.parse("old")),
            None,
            "present",
            "the primary has no such tag (deleted there, or excluded from this replica)",
        )
    ]
    assert extra_tags(LAYOUT, REPO, keys, {TAG, Tag.parse("old")}) == []


def test_tags_root_lists_exactly_one_repositorys_tags() -> None:
    root = LAYOUT.tags_root(REPO)
    assert LAYOUT.tag_current_link(REPO, TAG).startswith(root)
    assert LAYOUT.tag_index_link(REPO, TAG, Digest.of(b"m")).startswith(root)
    assert not LAYOUT.tag_current_link(Repository.parse("team/app/sub"), TAG).startswith(root)
    assert not LAYOUT.tag_current_link(Repository.parse("team/apps"), TAG).startswith(root)


# -- repair ---------------------------------------------------------------------------------------------


def checked(tag: str, *kinds: Kind) -> Checked:
    root = image(1, 2)
    found = tuple(Finding(kind, REPO, Tag.parse(tag), f"key-{i}") for i, kind in enumerate(kinds))
    return Checked(REPO, Tag.parse(tag), root.digest, root.media_type, len(root.raw), READ_AT, found)


def test_one_repair_event_per_damaged_tag_dated_when_the_tag_was_read() -> None:
    report = Report("ap-singapore", repositories=1, blobs=3)
    report.checked = [
        checked("ok"),
        checked("v1", Kind.BLOB_MISSING, Kind.LINK_WRONG, Kind.TAG_MISSING),
        checked("v2", Kind.BLOB_CORRUPT),
    ]
    now = READ_AT + timedelta(minutes=5)
    events = repair_events(report.damaged, "ap-singapore", now=now)
    assert [(e.repository, e.tag) for e in events] == [(REPO, Tag.parse("v1")), (REPO, Tag.parse("v2"))]
    for event in events:
        assert event.id.startswith("verify-ap-singapore-")
        assert (event.source, event.action, event.region, event.repair) == (
            Source.MANUAL,
            Action.PUSH,
            "ap-singapore",
            True,
        )
        assert (event.digest, event.media_type) == (image(1, 2).digest, OCI_MANIFEST)
        # A push after the read carries a later occurred_at and so stays in place (TagState.supersedes).
        assert (event.occurred_at, event.received_at) == (READ_AT, now)
        assert ReplicationEvent.from_json(event.to_json()) == event
    assert len({e.id for e in events}) == 2


def test_a_tag_only_the_region_has_is_reported_but_not_repaired() -> None:
    report = Report("eu-frankfurt", checked=[checked("v1")])
    report.extra = extra_tags(LAYOUT, REPO, [LAYOUT.tag_current_link(REPO, Tag.parse("old"))], {TAG})
    assert not Kind.TAG_EXTRA.repairable
    assert len(report.findings) == 1
    assert report.damaged == []
    assert repair_events(report.damaged, "eu-frankfurt") == []


def test_text_report_has_one_line_per_finding_and_a_summary() -> None:
    plan = writes(image(1, 2))
    region = replicated(plan)
    del region[LAYOUT.tag_current_link(REPO, TAG)]
    found = tuple(findings(plan, region))
    root = image(1, 2)
    report = Report(
        "ap-singapore",
        repositories=1,
        blobs=3,
        checked=[Checked(REPO, TAG, root.digest, root.media_type, len(root.raw), READ_AT, found)],
    )
    lines = render_text(report, []).splitlines()
    assert lines[0].startswith(f"tag-missing  team/app:v1  {LAYOUT.tag_current_link(REPO, TAG)}  expected sha256:")
    assert lines[-1] == "ap-singapore: 1 difference in 1 of 1 tag (1 repository, 3 blobs checked); --repair fixes them"
    events = repair_events(report.damaged, "ap-singapore")
    lines = render_text(report, events).splitlines()
    assert lines[1] == f"published repair {events[0].id}  team/app:v1@{root.digest}"
    assert lines[-1].endswith("; 1 repair event published")
    assert render_text(Report("ap-singapore", repositories=2, checked=[checked("ok")]), []) == (
        "ap-singapore: no differences in 1 tag (2 repositories, 0 blobs checked)"
    )


def test_json_report_carries_every_finding_and_repair() -> None:
    report = Report("ap-singapore", repositories=1, blobs=2, checked=[checked("v1", Kind.BLOB_MISSING)])
    report.skipped.append(Skipped("team/app:gone", "deleted on the primary while verify ran"))
    events = repair_events(report.damaged, "ap-singapore")
    doc = json.loads(render_json(report, events))
    assert (doc["region"], doc["tags"], doc["blobs"], doc["differences"]) == ("ap-singapore", 1, 2, 1)
    assert doc["findings"] == [
        {
            "kind": "blob-missing",
            "repository": "team/app",
            "tag": "v1",
            "key": "key-0",
            "expected": None,
            "actual": None,
            "detail": None,
        }
    ]
    assert doc["skipped"] == [{"what": "team/app:gone", "why": "deleted on the primary while verify ran"}]
    assert [ReplicationEvent.model_validate(e) for e in doc["repairs"]] == events
