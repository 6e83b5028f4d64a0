"""`georep verify --region R`: compare one region's bucket with the primary, and repair what differs.

What an image needs in a region is not restated here: it is `engine.plan.build_plan`, the very plan
the replicator writes, so verification and replication cannot disagree. For every repository of the
primary's catalog matching the pattern, and every tag of it, each key of that plan is read back:

    plan write                   check                                      finding
    blob data                    present (HEAD), size = the descriptor's    blob-missing, blob-size
                                 with --rehash: the bytes hash to it        blob-corrupt
    _layers, revision and        present, exactly link_body(digest)         link-missing, link-wrong
    tag index links
    manifest data (root, children) present, byte-equal to the primary's     manifest-missing, manifest-wrong
    tag state                    present (georep's own note: not compared)  state-missing
    tag current link             present, exactly link_body(primary's)      tag-missing, tag-wrong
    (not in any plan)            a tag the region has, the primary not      tag-extra (reported only)

Each key is read once per run and each difference reported once, however many images share the key:
the first image checked that needs the key owns its finding. `--repair` publishes one push event per
tag with a finding, addressed to this region alone and marked `repair`, so the replicator rewrites
every key of the image, blobs included. The event's `occurred_at` is when verify started reading the
tag on the primary: a push made after that read is newer, and the repair never moves the tag back.

The comparison (`compare`, `extra_tags`, `repair_events`) is pure; `Verifier` only reads.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, Final

import orjson
import structlog

from consumers.regions import lookup_region
from consumers.registry import RegistryClient
from consumers.store import RegionStore
from engine.digest import Digest
from engine.errors import DigestMismatch, GeorepError, InvalidInput, NotFoundUpstream, leaves
from engine.events import Action, ReplicationEvent, Source, utcnow
from engine.layout import KeyKind, Layout
from engine.names import Repository, Tag
from engine.plan import Phase, TagState, Write, build_plan
from engine.replicas import ReplicaDefinition
from engine.settings import Settings
from producers.kafka import Publisher

log = structlog.get_logger(__name__)

#: object-store requests (HEAD, GET of links and manifests) in flight at once
STORE_CONCURRENCY: Final = 32
#: blobs streamed back and hashed at once (--rehash)
HASH_CONCURRENCY: Final = 4
#: tags whose manifests are read from the primary at once
IMAGE_CONCURRENCY: Final = 8
PUBLISH_TIMEOUT_S: Final = 30.0


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

    @property
    def repairable(self) -> bool:
        """A repair event fixes it. A tag the primary no longer has waits for replicated deletes."""
        return self is not Kind.TAG_EXTRA


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
    #: when verify started reading the tag on the primary: a repair event's `occurred_at`
    read_at: datetime
    findings: tuple[Finding, ...]

    @property
    def damaged(self) -> bool:
        return any(f.kind.repairable for f in self.findings)


@dataclass
class Report:
    region: str
    repositories: int = 0
    blobs: int = 0
    checked: list[Checked] = field(default_factory=list)
    #: findings that belong to no primary tag (tag-extra)
    extra: list[Finding] = field(default_factory=list)
    #: (what, why) of what could not be checked, e.g. a tag deleted on the primary meanwhile
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for c in self.checked for f in c.findings] + self.extra

    @property
    def damaged(self) -> list[Checked]:
        return [c for c in self.checked if c.damaged]


def repair_events(damaged: Iterable[Checked], region: str, now: datetime | None = None) -> list[ReplicationEvent]:
    """One repair event per damaged tag: the tag's digest as verify read it, for `region` alone."""
    received = now or utcnow()
    return [
        ReplicationEvent(
            id=f"verify-{region}-{secrets.token_hex(8)}",
            source=Source.MANUAL,
            action=Action.PUSH,
            repository=c.repository,
            digest=c.digest,
            media_type=c.media_type,
            size=c.size,
            tag=c.tag,
            # The read time, not now: a push that happened after the read must stay the newer one.
            occurred_at=c.read_at,
            received_at=received,
            region=region,
            repair=True,
        )
        for c in damaged
    ]


# -- reading the primary and the region -----------------------------------------------------------


class Verifier:
    def __init__(
        self,
        layout: Layout,
        store: RegionStore,
        primary: RegistryClient,
        *,
        rehash: bool,
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
        #: keys some image already checked (and reported, if they differ): content keys for the whole run,
        #: link keys for the repository being checked (repositories are checked one after another)
        self._claimed_content: set[str] = set()
        self._claimed_links: set[str] = set()

    async def repository(self, repository: Repository, report: Report) -> None:
        try:
            names = [name async for name in self.primary.tags(repository)]
        except NotFoundUpstream:
            report.skipped.append((str(repository), "the primary has no such repository"))
            return
        report.repositories += 1
        self._claimed_links = set()
        tags: list[Tag] = []
        for name in names:
            try:
                tag = Tag.parse(name)
            except InvalidInput as exc:
                report.skipped.append((f"{repository}:{name[:128]}", str(exc)))
                continue
            excluded = self.replica.excluded(repository, tag) if self.replica else None
            if excluded:
                report.skipped.append((f"{repository}:{tag}", f"not replicated to this region: {excluded}"))
            else:
                tags.append(tag)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self.image(repository, tag, report)) for tag in tags]
        report.checked += [checked for task in tasks if (checked := task.result()) is not None]
        region_keys = [key async for key in self.store.keys(self.layout.tags_root(repository))]
        report.extra += extra_tags(self.layout, repository, region_keys, set(tags))

    async def image(self, repository: Repository, tag: Tag, report: Report) -> Checked | None:
        async with self._image_slots:
            read_at = utcnow()
            try:
                root = await self.primary.tagged(repository, tag)
                manifests = await self.primary.children(repository, root)
                state = TagState(root.digest, read_at, "verify")
                plan = build_plan(self.layout, repository, root, manifests, tag, state)
            except NotFoundUpstream:
                report.skipped.append((f"{repository}:{tag}", "deleted on the primary while verify ran"))
                return None
            except (InvalidInput, DigestMismatch) as exc:
                report.skipped.append((f"{repository}:{tag}", str(exc)))
                return None
            writes = [w for w in plan.writes if self._claim(w)]
            report.blobs += sum(1 for w in writes if w.phase is Phase.BLOB_DATA)
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._check(repository, tag, write)) for write in writes]
        findings = tuple(finding for task in tasks if (finding := task.result()) is not None)
        return Checked(repository, tag, root.digest, root.media_type, len(root.raw), read_at, findings)

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


async def verify(settings: Settings, region: str, pattern: str = "*", *, rehash: bool = False) -> Report:
    """Check every tag of every primary repository matching the glob `pattern` in `region`."""
    region_settings, replica = await lookup_region(settings, region, f"verify-{region}")
    connections = STORE_CONCURRENCY + HASH_CONCURRENCY + 8
    report = Report(region)
    async with (
        RegistryClient.session(settings.primary, connections) as session,
        RegionStore.open(region_settings, connections) as store,
    ):
        primary = RegistryClient(settings.primary, session)
        verifier = Verifier(region_settings.layout, store, primary, rehash=rehash, replica=replica)
        try:
            if any(c in pattern for c in "*?["):
                async for repository in primary.catalog():
                    if fnmatchcase(repository.name, pattern):
                        await verifier.repository(repository, report)
            else:
                await verifier.repository(Repository.parse(pattern), report)
        except BaseExceptionGroup as group:
            raise _first_failure(group) from None
    log.info("verify.done", region=region, tags=len(report.checked), findings=len(report.findings))
    return report


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from nested task groups: a georep error (the store is down, ...) if any."""
    failures = leaves(group)
    return next((e for e in failures if isinstance(e, GeorepError)), failures[0])


async def publish_repairs(settings: Settings, events: list[ReplicationEvent], region: str) -> None:
    """Put the repair events on the events topic; returns once Kafka acknowledged them all."""
    publisher = Publisher(settings.kafka, f"verify-{region}")
    try:
        await publisher.publish(settings.kafka.events_topic, [(e.key, e.to_json()) for e in events], PUBLISH_TIMEOUT_S)
    finally:
        await publisher.close()


# -- showing a report --------------------------------------------------------------------------


def render_text(report: Report, repairs: list[ReplicationEvent]) -> str:
    """One line per finding (grep-able), then what was skipped, the repairs and a summary line."""
    lines = []
    width = max((len(f.kind.value) for f in report.findings), default=0)
    for f in report.findings:
        where = f"{f.repository}:{f.tag}" if f.tag is not None else str(f.repository)
        line = f"{f.kind.value:<{width}}  {where}  {f.key}"
        if f.expected is not None or f.actual is not None:
            line += f"  expected {f.expected or 'nothing'}, found {f.actual or 'nothing'}"
        if f.detail:
            line += f"  ({f.detail})"
        lines.append(line)
    lines += [f"skipped {what}: {why}" for what, why in report.skipped]
    lines += [f"published repair {e.id}  {e.repository}:{e.tag}@{e.digest}" for e in repairs]
    lines.append(_summary(report, repairs))
    return "\n".join(lines)


def _summary(report: Report, repairs: list[ReplicationEvent]) -> str:
    tags, damaged, differences = len(report.checked), len(report.damaged), len(report.findings)
    checked = f"{_count(report.repositories, 'repository', 'repositories')}, {_count(report.blobs, 'blob')} checked"
    if not differences:
        return f"{report.region}: no differences in {_count(tags, 'tag')} ({checked})"
    text = f"{report.region}: {_count(differences, 'difference')} in {damaged} of {_count(tags, 'tag')} ({checked})"
    if repairs:
        text += f"; {_count(len(repairs), 'repair event')} published"
    elif damaged:
        text += "; --repair fixes them"
    return text


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def render_json(report: Report, repairs: list[ReplicationEvent]) -> str:
    doc: dict[str, Any] = {
        "region": report.region,
        "repositories": report.repositories,
        "tags": len(report.checked),
        "blobs": report.blobs,
        "differences": len(report.findings),
        "findings": [f.to_dict() for f in report.findings],
        "checked": [
            {"repository": str(c.repository), "tag": str(c.tag), "digest": str(c.digest)} for c in report.checked
        ],
        "skipped": [{"what": what, "why": why} for what, why in report.skipped],
        "repairs": [e.model_dump(mode="json", by_alias=True) for e in repairs],
    }
    return orjson.dumps(doc).decode()
