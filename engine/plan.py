"""The replication plan: every write one event needs in a region, in order.

Phases run one after another; the writes inside a phase are independent and
may run concurrently. The order is the one that keeps a pull from ever seeing
a tag whose content is missing:

    1 blob data            layers and configs, copied from the primary
    2 layer links          the repository may serve those blobs
    3 child data           each manifest of an index (deepest first) ...
    4 child links          ... and its revision link
    5 manifest data        the pushed manifest itself ...
    6 manifest link        ... and its revision link
    7 tag index link       the tag's history
    8 tag state            georep's note of which push set the tag
    9 tag current link     the tag moves: last, and only if no newer push set it

Content writes (1-7) are immutable and written only if absent; 8 and 9 overwrite.
Phases that cannot make anything servable before its dependencies run together
in one step (`STEPS`), so an image costs six round trips to the store, not nine.
A manifest's revision link is written after all of its content, so a present
revision link means the content is whole: then only the tag is left to do
(`tag_writes`).
A repair plan (for a region found damaged) reads every key back, blobs
included, and rewrites the ones that differ: a present key may be the damaged
one, and a key that is right is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum, IntEnum

import orjson

from engine.digest import Digest
from engine.errors import InvalidManifest
from engine.layout import Layout, link_body
from engine.manifests import Descriptor, Manifest
from engine.names import Repository, Tag

#: OCI indexes may nest; deeper than this is a loop or an attack
MAX_INDEX_DEPTH = 4


class Phase(IntEnum):
    BLOB_DATA = 1
    LAYER_LINKS = 2
    CHILD_DATA = 3
    CHILD_LINKS = 4
    MANIFEST_DATA = 5
    MANIFEST_LINK = 6
    TAG_INDEX_LINK = 7
    TAG_STATE = 8
    TAG_CURRENT_LINK = 9


#: Phases that run together. Data keys are invisible until a link names them; the tag index link
#: is history (`current` decides what a tag serves), so it goes with the tag's note, after the check
#: that no newer push holds the tag (a tag-only event costs two rounds of writes, not three); every
#: other step waits for the one before.
STEPS: tuple[frozenset[Phase], ...] = (
    frozenset({Phase.BLOB_DATA, Phase.CHILD_DATA, Phase.MANIFEST_DATA}),
    frozenset({Phase.LAYER_LINKS}),
    frozenset({Phase.CHILD_LINKS}),
    frozenset({Phase.MANIFEST_LINK}),
    frozenset({Phase.TAG_INDEX_LINK, Phase.TAG_STATE}),
    frozenset({Phase.TAG_CURRENT_LINK}),
)


def steps(writes: Iterable[Write]) -> Iterator[list[Write]]:
    """The writes grouped by STEPS, and within a step by `height`, in order; empty groups are left out."""
    pending = list(writes)
    for step in STEPS:
        now = [w for w in pending if w.phase in step]
        for height in sorted({w.height for w in now}):
            yield [w for w in now if w.height == height]


class Mode(Enum):
    COPY_BLOB = "copy-blob"  # stream from the primary unless the key exists
    REPAIR_BLOB = "repair-blob"  # copy unless present at the right size (and not known corrupt): a repair
    IF_ABSENT = "if-absent"  # immutable: write `body` unless the key exists
    REPAIR = "repair"  # read back, and write `body` unless the key holds exactly it: a repair
    OVERWRITE = "overwrite"  # mutable: the tag pointers


@dataclass(frozen=True, slots=True)
class Write:
    phase: Phase
    key: str
    mode: Mode
    body: bytes = b""
    blob: Descriptor | None = None
    #: a nested index's revision link waits for its children's (height 0: a manifest that is not an index)
    height: int = 0


@dataclass(frozen=True, slots=True)
class TagState:
    """Which push (or delete: no digest) last set a tag in a region, so that a tag never moves backwards."""

    digest: Digest | None
    occurred_at: datetime
    event_id: str

    def to_json(self) -> bytes:
        digest = None if self.digest is None else str(self.digest)
        return orjson.dumps({"digest": digest, "occurred_at": self.occurred_at.isoformat(), "event_id": self.event_id})

    @classmethod
    def from_json(cls, raw: bytes) -> TagState:
        doc = orjson.loads(raw)
        digest = None if doc["digest"] is None else Digest.parse(doc["digest"])
        return cls(digest, datetime.fromisoformat(doc["occurred_at"]), str(doc["event_id"]))

    def supersedes(self, other: TagState) -> bool:
        """True if this push is strictly newer; a replay of the same push is not."""
        return self.occurred_at > other.occurred_at


@dataclass(frozen=True, slots=True)
class Plan:
    repository: Repository
    tag: Tag | None
    root: Manifest
    #: index children, deepest first, each once
    children: tuple[Manifest, ...]
    #: every blob any image in the plan needs, each once
    blobs: tuple[Descriptor, ...]
    writes: tuple[Write, ...]

    def phases(self) -> Iterator[tuple[Phase, list[Write]]]:
        for phase in Phase:
            writes = [w for w in self.writes if w.phase is phase]
            if writes:
                yield phase, writes


def child_digests(root: Manifest, manifests: Mapping[Digest, Manifest]) -> list[Descriptor]:
    """Children of `root` (at any depth) that are not in `manifests` yet: what to fetch next."""
    missing: dict[Digest, Descriptor] = {}
    for desc in _walk_children(root, manifests, 0, allow_missing=True):
        if desc.digest not in manifests:
            missing.setdefault(desc.digest, desc)
    return list(missing.values())


def _walk_children(
    manifest: Manifest, manifests: Mapping[Digest, Manifest], depth: int, *, allow_missing: bool = False
) -> Iterator[Descriptor]:
    if depth > MAX_INDEX_DEPTH:
        raise InvalidManifest(f"index {manifest.digest.short} nests deeper than {MAX_INDEX_DEPTH} levels")
    for desc in manifest.children:
        child = manifests.get(desc.digest)
        if child is None:
            if not allow_missing:
                raise InvalidManifest(f"index {manifest.digest.short} child {desc.digest.short} was not fetched")
        else:
            yield from _walk_children(child, manifests, depth + 1, allow_missing=allow_missing)
        yield desc


def build_plan(
    layout: Layout,
    repository: Repository,
    root: Manifest,
    manifests: Mapping[Digest, Manifest],
    tag: Tag | None = None,
    tag_state: TagState | None = None,
    *,
    repair: bool = False,
) -> Plan:
    """All writes for `root` (and, for an index, its children from `manifests`)."""
    copy, content = (Mode.REPAIR_BLOB, Mode.REPAIR) if repair else (Mode.COPY_BLOB, Mode.IF_ABSENT)
    children: dict[Digest, Manifest] = {}
    for desc in _walk_children(root, manifests, 0):
        children.setdefault(desc.digest, manifests[desc.digest])
    blobs: dict[Digest, Descriptor] = {}
    for manifest in (*children.values(), root):
        for blob in manifest.blobs:
            blobs.setdefault(blob.digest, blob)

    writes = [Write(Phase.BLOB_DATA, layout.blob_data(b.digest), copy, blob=b) for b in blobs.values()]
    writes += [Write(Phase.LAYER_LINKS, layout.layer_link(repository, d), content, link_body(d)) for d in blobs]
    heights: dict[Digest, int] = {}
    for child in children.values():  # deepest first, so a child's own children are measured already
        heights[child.digest] = max((heights[c.digest] + 1 for c in child.children), default=0)
        writes.append(Write(Phase.CHILD_DATA, layout.blob_data(child.digest), content, child.raw))
        revision = layout.revision_link(repository, child.digest)
        writes.append(
            Write(Phase.CHILD_LINKS, revision, content, link_body(child.digest), height=heights[child.digest])
        )
    link = link_body(root.digest)
    writes.append(Write(Phase.MANIFEST_DATA, layout.blob_data(root.digest), content, root.raw))
    writes.append(Write(Phase.MANIFEST_LINK, layout.revision_link(repository, root.digest), content, link))
    if tag is not None:
        writes += tag_writes(layout, repository, root.digest, tag, tag_state, content)
    return Plan(repository, tag, root, tuple(children.values()), tuple(blobs.values()), tuple(writes))


def tag_writes(
    layout: Layout,
    repository: Repository,
    digest: Digest,
    tag: Tag,
    tag_state: TagState | None,
    content: Mode = Mode.IF_ABSENT,
) -> list[Write]:
    """What pointing `tag` at `digest` writes, once the manifest's content is whole."""
    link = link_body(digest)
    writes = [Write(Phase.TAG_INDEX_LINK, layout.tag_index_link(repository, tag, digest), content, link)]
    if tag_state is not None:
        writes.append(Write(Phase.TAG_STATE, layout.tag_state(repository, tag), Mode.OVERWRITE, tag_state.to_json()))
    writes.append(Write(Phase.TAG_CURRENT_LINK, layout.tag_current_link(repository, tag), Mode.OVERWRITE, link))
    return writes
