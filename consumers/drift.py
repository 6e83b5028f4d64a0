"""Where a region differs from the primary: the one comparison `georep verify` and the reconciliation loop share.

What an image needs in a region is not restated here: it is `engine.plan.build_plan`, the very plan
the replicator writes, so verification and replication cannot disagree. Each key of that plan is read
back and compared:

    plan write                   check                                      finding
    blob data                    present (HEAD), size = the descriptor's    blob-missing, blob-size
                                 with rehash: the bytes hash to it          blob-corrupt
    _layers, revision and        present, exactly link_body(digest)         link-missing, link-wrong
    tag index links
    manifest data (root, children) present, byte-equal to the primary's     manifest-missing, manifest-wrong
    tag state                    present (georep's own note: not compared)  state-missing
    tag current link             present, exactly link_body(primary's)      tag-missing, tag-wrong
    (not in any plan)            a tag the region has, the primary not      tag-extra
    (not in any plan)            a manifest the region serves, the primary  manifest-extra
                                 no longer has

Each key is read once per comparer and each difference reported once, however many images share the
key: the first image checked that needs the key owns its finding. `compare` and `extra_tags` are pure;
`Comparer` reads, through metered views of the primary and the store, so that its callers can bound and
count what it costs. `repair_events` and `delete_events` turn findings into region-addressed events.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

import structlog

from adapters.registry import RegistryClient
from adapters.store import RegionStore
from engine.digest import Digest
from engine.errors import DigestMismatch, InvalidInput, NotFoundUpstream, task_group
from engine.events import Action, ReplicationEvent, Source, utcnow
from engine.layout import KeyKind, Layout
from engine.names import Repository, Tag
from engine.plan import Phase, TagState, Write, build_plan
from engine.replicas import ReplicaDefinition

log = structlog.get_logger(__name__)

#: object-store requests (HEAD, GET of links and manifests) in flight at once
STORE_CONCURRENCY: Final = 32
#: blobs streamed back and hashed at once (rehash)
HASH_CONCURRENCY: Final = 4
#: tags whose manifests are read from the primary at once
IMAGE_CONCURRENCY: Final = 8


class Kind(StrEnum):
    TAG_MISSING = "tag-missing"
    TAG_WRONG = "tag-wrong"
    TAG_EXTRA = "tag-extra"
    STATE_MISSING = "state-missing"
    LINK_MISSING = "link-missing"
    LINK_WRONG = "link-wrong"
    MANIFEST_MISSING = "manifest-missing"
    MANIFEST_WRONG = "manifest-wrong"
    BLOB_MISSING = "blob-missing"
    BLOB_SIZE = "blob-size"
    BLOB_CORRUPT = "blob-corrupt"
    MANIFEST_EXTRA = "manifest-extra"

    @property
    def repairable(self) -> bool:
        """A repair (push) event fixes it. What the primary no longer has is fixed by a delete, where deletes apply."""
        return self not in (Kind.TAG_EXTRA, Kind.MANIFEST_EXTRA)


@dataclass(frozen=True, slots=True)
class Finding:
    """One difference between the region and the primary, at one key."""

    kind: Kind
    repository: Repository
    tag: Tag | None
    key: str
    expected: str | None = None
    actual: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {
            "kind": self.kind.value,
            "repository": str(self.repository),
            "tag": None if self.tag is None else str(self.tag),
            "key": self.key,
            "expected": self.expected,
            "actual": self.actual,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Seen:
    """What the region holds at one key: for a blob its size (and digest, with --rehash), else its bytes."""

    present: bool
    size: int | None = None
    digest: Digest | None = None
    body: bytes | None = None


_LINKS: Final = frozenset({Phase.LAYER_LINKS, Phase.CHILD_LINKS, Phase.MANIFEST_LINK, Phase.TAG_INDEX_LINK})
_MANIFESTS: Final = frozenset({Phase.CHILD_DATA, Phase.MANIFEST_DATA})
#: keys shared by every repository: blob data, manifests included
_CONTENT: Final = _MANIFESTS | {Phase.BLOB_DATA}


def compare(write: Write, seen: Seen, repository: Repository, tag: Tag | None) -> Finding | None:
    """The difference between what `write` puts at its key and what the region holds there, if any."""

    def finding(kind: Kind, expected: str | None, actual: str | None = None, detail: str | None = None) -> Finding:
        return Finding(kind, repository, tag, write.key, expected, actual, detail)

    if write.phase is Phase.BLOB_DATA:
        if write.blob is None:
            raise ValueError(f"blob write without a descriptor: {write.key}")
        blob = write.blob
        if not seen.present:
            return finding(Kind.BLOB_MISSING, f"{blob.size} bytes")
        if seen.size is not None and seen.size != blob.size:
            return finding(Kind.BLOB_SIZE, f"{blob.size} bytes", f"{seen.size} bytes")
        if seen.digest is not None and seen.digest != blob.digest:
            return finding(Kind.BLOB_CORRUPT, str(blob.digest), str(seen.digest), "the bytes do not hash to the digest")
        return None
    if write.phase is Phase.TAG_STATE:
        # georep's own note of which push set the tag: rewritten by every push, so only its presence is checked.
        return None if seen.present else finding(Kind.STATE_MISSING, "present", detail="a replay could move the tag")
    if write.phase is Phase.TAG_CURRENT_LINK:
        missing, wrong, show = Kind.TAG_MISSING, Kind.TAG_WRONG, _link
    elif write.phase in _LINKS:
        missing, wrong, show = Kind.LINK_MISSING, Kind.LINK_WRONG, _link
    elif write.phase in _MANIFESTS:
        missing, wrong, show = Kind.MANIFEST_MISSING, Kind.MANIFEST_WRONG, _manifest
    else:
        raise ValueError(f"no check for {write.phase.name} writes")
    if not seen.present or seen.body is None:
        return finding(missing, show(write.body))
    if seen.body != write.body:
        return finding(wrong, show(write.body), show(seen.body))
    return None


def _link(body: bytes) -> str:
    """A link's content as text, with anything odd (a newline, binary) escaped, never very long."""
    shown = repr(body)[2:-1]
    return shown if len(shown) <= 100 else shown[:100] + "…"


def _manifest(body: bytes) -> str:
    return f"{Digest.of(body)} ({len(body)} bytes)"


def extra_tags(
    layout: Layout, repository: Repository, region_keys: Iterable[str], primary_tags: Collection[Tag]
) -> list[Finding]:
    """Tags whose current link is in the region although the primary does not list them."""
    found = []
    for key in region_keys:
        try:
            parsed = layout.parse(key)
        except InvalidInput:
            continue  # not a key of the layout: nothing a registry would serve
        if parsed.kind is not KeyKind.TAG_CURRENT_LINK or parsed.repository != repository or parsed.tag is None:
            continue
        if parsed.tag not in primary_tags:
            detail = "the primary has no such tag (deleted there, or excluded from this replica)"
            found.append(Finding(Kind.TAG_EXTRA, repository, parsed.tag, key, None, "present", detail))
    return found


@dataclass(frozen=True, slots=True)
class Checked:
    """One tag of the primary, checked in the region."""

    repository: Repository
    tag: Tag
    digest: Digest
    media_type: str
    size: int
    #: when the comparison started reading the tag on the primary: a repair event's `occurred_at`
    read_at: datetime
    findings: tuple[Finding, ...]
    #: blob keys this check looked at (the ones other tags had not claimed)
    blobs: int = 0

    @property
    def damaged(self) -> bool:
        return any(f.kind.repairable for f in self.findings)


@dataclass(frozen=True, slots=True)
class Skipped:
    """A tag that could not be compared, and why (deleted on the primary meanwhile, a manifest georep refuses)."""

    what: str
    why: str
    #: left out on purpose by the replica's filters (not a problem)
    excluded: bool = False


class Comparer:
    """Reads one region and the primary to find what differs; every request goes through their meters."""

    def __init__(
        self,
        layout: Layout,
        store: RegionStore,
        primary: RegistryClient,
        *,
        rehash: bool = False,
        replica: ReplicaDefinition | None = None,
    ) -> None:
        self.layout = layout
        #: its filters decide which tags the region should have
        self.replica = replica
        self.store = store
        self.primary = primary
        self.rehash = rehash
        self._store_slots = asyncio.Semaphore(STORE_CONCURRENCY)
        self._hash_slots = asyncio.Semaphore(HASH_CONCURRENCY)
        self._image_slots = asyncio.Semaphore(IMAGE_CONCURRENCY)
        #: keys some image already checked (and reported, if they differ): content keys for the comparer's life,
        #: link keys for the repository being compared (`repository()` starts a new one)
        self._claimed_content: set[str] = set()
        self._claimed_links: set[str] = set()

    def excluded(self, repository: Repository, tag: Tag | None) -> str | None:
        return self.replica.excluded(repository, tag) if self.replica is not None else None

    def for_repository(self, *, rehash: bool | None = None) -> Comparer:
        """A comparer for one repository, so that several can be compared at once: its own link keys (none
        claimed yet) and rehash choice; the content keys already checked and the request slots are shared."""
        view = copy.copy(self)
        view._claimed_links = set()
        if rehash is not None:
            view.rehash = rehash
        return view

    async def tags(self, repository: Repository, skipped: list[Skipped]) -> list[Tag] | None:
        """The primary's tags of `repository` this region should have; None if the primary has no such repository."""
        try:
            names = [name async for name in self.primary.tags(repository)]
        except NotFoundUpstream:
            return None
        tags: list[Tag] = []
        for name in names:
            try:
                tag = Tag.parse(name)
            except InvalidInput as exc:
                skipped.append(Skipped(f"{repository}:{name[:128]}", str(exc)))
                continue
            excluded = self.excluded(repository, tag)
            if excluded:
                skipped.append(Skipped(f"{repository}:{tag}", f"not replicated to this region: {excluded}", True))
            else:
                tags.append(tag)
        return tags

    async def images(self, repository: Repository, tags: Iterable[Tag], skipped: list[Skipped]) -> list[Checked]:
        """Every key of each tag's plan, compared (concurrently, bounded)."""
        async with task_group() as group:
            tasks = [group.create_task(self.image(repository, tag, skipped)) for tag in tags]
        return [checked for task in tasks if (checked := task.result()) is not None]

    async def image(self, repository: Repository, tag: Tag, skipped: list[Skipped]) -> Checked | None:
        async with self._image_slots:
            read_at = utcnow()
            try:
                root = await self.primary.tagged(repository, tag)
                manifests = await self.primary.children(repository, root)
                state = TagState(root.digest, read_at, "verify")
                plan = build_plan(self.layout, repository, root, manifests, tag, state)
            except NotFoundUpstream:
                skipped.append(Skipped(f"{repository}:{tag}", "deleted on the primary while it was being compared"))
                return None
            except (InvalidInput, DigestMismatch) as exc:
                skipped.append(Skipped(f"{repository}:{tag}", str(exc)))
                return None
            writes = [w for w in plan.writes if self._claim(w)]
            async with task_group() as group:
                tasks = [group.create_task(self._check(repository, tag, write)) for write in writes]
        findings = tuple(finding for task in tasks if (finding := task.result()) is not None)
        blobs = sum(1 for w in writes if w.phase is Phase.BLOB_DATA)
        return Checked(repository, tag, root.digest, root.media_type, len(root.raw), read_at, findings, blobs)

    async def extra_tags(self, repository: Repository, primary_tags: Collection[Tag]) -> list[Finding]:
        """Tags whose current link is in the region although the primary does not list them."""
        region_keys = [key async for key in self.store.keys(self.layout.tags_root(repository))]
        return extra_tags(self.layout, repository, region_keys, primary_tags)

    async def extra_manifests(self, repository: Repository, wanted: Collection[Digest]) -> list[Finding]:
        """Revision links in the region whose manifest the primary no longer has (a manifest deleted there).

        `wanted`: digests the primary's tags need (checked already); any other revision is asked of the primary,
        since untagged manifests (index children, referrers, pushes by digest) are legitimate.
        """
        root = self.layout.revisions_root(repository)
        found = []
        async for key in self.store.keys(root):
            try:
                parsed = self.layout.parse(key)
            except InvalidInput:
                continue
            if parsed.kind is not KeyKind.REVISION_LINK or parsed.digest is None or parsed.digest in wanted:
                continue
            if await self.primary.head(repository, str(parsed.digest)) is None:
                detail = "the primary no longer has this manifest (deleted there)"
                found.append(Finding(Kind.MANIFEST_EXTRA, repository, None, key, None, str(parsed.digest), detail))
        return found

    def _claim(self, write: Write) -> bool:
        claimed = self._claimed_content if write.phase in _CONTENT else self._claimed_links
        if write.key in claimed:
            return False
        claimed.add(write.key)
        return True

    async def _check(self, repository: Repository, tag: Tag, write: Write) -> Finding | None:
        return compare(write, await self._observe(write), repository, tag)

    async def _observe(self, write: Write) -> Seen:
        if write.phase is Phase.BLOB_DATA and write.blob is not None:
            async with self._store_slots:
                size = await self.store.size(write.key)
            if size is None:
                return Seen(False)
            if not self.rehash or size != write.blob.size:
                return Seen(True, size=size)
            async with self._hash_slots:
                digest = await self.store.digest(write.key, write.blob.digest.algorithm)
            return Seen(digest is not None, size=size, digest=digest)
        async with self._store_slots:
            if write.phase is Phase.TAG_STATE:
                return Seen(await self.store.exists(write.key))
            body = await self.store.get(write.key)
        return Seen(body is not None, body=body)


def drift_summary(findings: Iterable[Finding]) -> str:
    """What a repair fixes, for its replication record: each kind once, with how often (`blob-size x2, tag-missing`)."""
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.kind.value] = counts.get(finding.kind.value, 0) + 1
    return ", ".join(f"{kind} x{n}" if n > 1 else kind for kind, n in sorted(counts.items()))


def repair_events(
    damaged: Iterable[Checked], region: str, *, source: Source = Source.MANUAL, now: datetime | None = None
) -> list[ReplicationEvent]:
    """One repair event per damaged tag: the tag's digest as it was read, for `region` alone.

    Dated when the tag was read on the primary, not now: a push that happened after the read stays the
    newer one, so a repair never moves a tag back. Blobs found corrupt at the right size are re-copied.
    """
    received = now or utcnow()
    return [
        ReplicationEvent(
            id=f"{'verify' if source is Source.MANUAL else source.value}-{region}-{secrets.token_hex(8)}",
            source=source,
            action=Action.PUSH,
            repository=c.repository,
            digest=c.digest,
            media_type=c.media_type,
            size=c.size,
            tag=c.tag,
            occurred_at=c.read_at,
            received_at=received,
            region=region,
            repair=True,
            recopy=tuple(Digest.parse(f.expected) for f in c.findings if f.kind is Kind.BLOB_CORRUPT and f.expected),
            drift=drift_summary(c.findings),
        )
        for c in damaged
    ]


def delete_events(
    extra: Iterable[Finding], region: str, read_at: datetime, *, source: Source = Source.RECONCILE
) -> list[ReplicationEvent]:
    """A delete per tag or manifest the region has and the primary no longer does, dated when the primary was read
    (a push after that read is newer and keeps its tag)."""
    events = []
    for finding in extra:
        if finding.kind is Kind.TAG_EXTRA and finding.tag is not None:
            target: dict[str, object] = {"tag": finding.tag}
        elif finding.kind is Kind.MANIFEST_EXTRA and finding.actual is not None:
            target = {"digest": Digest.parse(finding.actual)}
        else:
            continue
        events.append(
            ReplicationEvent.model_validate(
                {
                    "id": f"{source.value}-{region}-{secrets.token_hex(8)}",
                    "source": source,
                    "action": Action.DELETE,
                    "repository": finding.repository,
                    "occurred_at": read_at,
                    "received_at": utcnow(),
                    "region": region,
                    "drift": finding.kind.value,
                    **target,
                }
            )
        )
    return events
