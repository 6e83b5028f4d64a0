"""Backfill: bring a new replica up to date with everything the primary already holds.

Walks the primary's catalog and every repository's tags (both paginated),
reads what each tag points at, and publishes one push event per tag to
`georep.events`, addressed to the new region only. The region's replicator
copies them beside live events, on the same partitions (keyed by repository),
so a repository's backfill and live events are replicated in order.

A tag never moves backwards: a backfill event carries the time its tag was
read minus `SKEW`, so any push the primary took after that read (or just
before it, not yet visible) is newer and wins, whichever is replicated first.

Progress is a checkpoint in the compacted topic `georep.backfill`, written
after each repository's events are in Kafka: a crashed backfill resumes after
the last repository it finished (that repository's events may go out twice,
which replication absorbs).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import timedelta
from enum import StrEnum
from typing import Final, TypeVar

import structlog
from pydantic import AwareDatetime, BaseModel, Field

from adapters.compacted import CompactedView
from adapters.kafka import Publisher
from adapters.registry import RegistryClient
from engine.digest import Digest
from engine.errors import GeorepError, InvalidInput, KafkaUnavailable, NotFoundUpstream, task_group
from engine.events import Action, Message, ReplicationEvent, Source, utcnow
from engine.manifests import Manifest
from engine.names import Repository, Tag
from engine.replicas import ReplicaDefinition
from engine.settings import KafkaSettings

log = structlog.get_logger(__name__)
K = TypeVar("K")
V = TypeVar("V")

#: how far before its read a backfill event is dated: covers a push whose tag the primary had not written yet
SKEW: Final = timedelta(seconds=2)
#: tags read from the primary at once (across the repositories read ahead)
TAG_CONCURRENCY: Final = 8
#: repositories read from the primary ahead of the one being published: their events and checkpoints still go
#: out in catalog order (a checkpoint says every repository up to it is published), but the walk does not wait
#: on each repository's round trips in turn
READ_AHEAD: Final = 8
PUBLISH_TIMEOUT_S: Final = 30.0


class State(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Checkpoint(Message):
    """How far a region's backfill got; the latest per region lives in `georep.backfill`."""

    region: str
    state: State = State.RUNNING
    started_at: AwareDatetime = Field(default_factory=utcnow)
    updated_at: AwareDatetime = Field(default_factory=utcnow)
    finished_at: AwareDatetime | None = None
    #: the last repository whose events are all published (the catalog is sorted: resume after it)
    after: str | None = None
    repositories_total: int = 0
    repositories_done: int = 0
    tags_published: int = 0
    #: bytes of the blobs those tags reference, each blob counted once per run
    bytes_published: int = 0
    tags_skipped: int = 0
    error: str | None = None

    @property
    def unfinished(self) -> bool:
        """Running (or crashed while running), or failed: the next run resumes it."""
        return self.state is not State.DONE


def current_checkpoint(checkpoint: Checkpoint | None, replica: ReplicaDefinition | None) -> Checkpoint | None:
    """`checkpoint`, unless it was left by an earlier replica of the same region (deleted, then created again)."""
    if checkpoint is None or (replica is not None and checkpoint.started_at < replica.created_at):
        return None
    return checkpoint


def checkpoint_view(kafka: KafkaSettings, role: str) -> CompactedView[Checkpoint]:
    return CompactedView(kafka, kafka.backfill_topic, Checkpoint.from_json, role)


class Planned(BaseModel):
    """One tag a backfill publishes (or, in a dry run, would)."""

    repository: str
    tag: str
    digest: str
    bytes: int


Progress = Callable[[Checkpoint], Awaitable[None] | None]


class Backfill:
    """One region's backfill. `run()` resumes an unfinished checkpoint, or starts afresh."""

    def __init__(
        self,
        kafka: KafkaSettings,
        primary: RegistryClient,
        publisher: Publisher | None,
        region: str,
        replica: ReplicaDefinition | None,
        *,
        page_size: int = 1000,
    ) -> None:
        self._kafka = kafka
        self._primary = primary
        #: None: a dry run, which publishes nothing and writes no checkpoint
        self._publisher = publisher
        #: its filters decide what to publish; None (a region pinned in the config file) takes everything
        self.replica = replica
        self.region = region
        self._page_size = page_size
        self._seen_blobs: set[str] = set()
        self._slots = asyncio.Semaphore(TAG_CONCURRENCY)
        #: what a dry run would publish; a real run keeps nothing per tag (a registry may hold millions)
        self.planned: list[Planned] = []

    async def run(self, resume: Checkpoint | None, progress: Progress | None = None) -> Checkpoint:
        start = resume if resume is not None and resume.unfinished else None
        checkpoint = Checkpoint(region=self.region)
        if start is not None:
            log.info("backfill.resuming", region=self.region, after=start.after, done=start.repositories_done)
            checkpoint = start.model_copy(update={"state": State.RUNNING, "error": None})
        try:
            repositories = [r async for r in self._primary.catalog(self._page_size)]
            repositories.sort(key=lambda r: r.name)
            checkpoint = checkpoint.model_copy(update={"repositories_total": len(repositories)})
            after = checkpoint.after
            todo = [r for r in repositories if after is None or r.name > after]
            async with contextlib.aclosing(_read_ahead(todo, self._repository, READ_AHEAD)) as reads:
                async for repository, (found, skipped) in reads:
                    events = [event for event, _ in found]
                    await self._publish(events)
                    if self._publisher is None:
                        self.planned += [planned for _, planned in found]
                    new_bytes = sum(planned.bytes for _, planned in found)
                    checkpoint = checkpoint.model_copy(
                        update={
                            "after": repository.name,
                            "repositories_done": checkpoint.repositories_done + 1,
                            "tags_published": checkpoint.tags_published + len(events),
                            "bytes_published": checkpoint.bytes_published + new_bytes,
                            "tags_skipped": checkpoint.tags_skipped + skipped,
                            "updated_at": utcnow(),
                        }
                    )
                    await self._save(checkpoint, progress)
        except Exception as exc:
            # Any failure, not only the expected ones: the checkpoint says `failed` and why, never `running`.
            error = str(exc) if isinstance(exc, GeorepError) else f"{type(exc).__name__}: {exc}"
            failed = checkpoint.model_copy(update={"state": State.FAILED, "error": error, "updated_at": utcnow()})
            with contextlib.suppress(KafkaUnavailable):  # Kafka may be why it failed; the resume covers it
                await self._save(failed, progress)
            raise
        done = checkpoint.model_copy(update={"state": State.DONE, "finished_at": utcnow(), "updated_at": utcnow()})
        await self._save(done, progress)
        log.info("backfill.done", region=self.region, tags=done.tags_published, bytes=done.bytes_published)
        return done

    async def _repository(self, repository: Repository) -> tuple[list[tuple[ReplicationEvent, Planned]], int]:
        """The repository's tags as events (each with what it plans), and how many tags were skipped."""
        if self._excluded(repository, None):
            return [], 0
        try:
            names = [name async for name in self._primary.tags(repository, self._page_size)]
        except NotFoundUpstream:
            return [], 0  # deleted since the catalog was read
        tags: list[Tag] = []
        skipped = 0
        for name in names:
            try:
                tag = Tag.parse(name)
            except InvalidInput:
                skipped += 1
                continue
            if self._excluded(repository, tag):
                skipped += 1
            else:
                tags.append(tag)

        async def one(tag: Tag) -> tuple[ReplicationEvent, Planned] | None:
            async with self._slots:
                return await self._event(repository, tag)

        async with task_group() as group:
            tasks = [group.create_task(one(tag)) for tag in tags]
        found = [pair for task in tasks if (pair := task.result()) is not None]
        return found, skipped + len(tags) - len(found)

    def _excluded(self, repository: Repository, tag: Tag | None) -> bool:
        return self.replica is not None and self.replica.excluded(repository, tag) is not None

    async def _event(self, repository: Repository, tag: Tag) -> tuple[ReplicationEvent, Planned] | None:
        read_at = utcnow()
        try:
            root = await self._primary.tagged(repository, tag)
            children = await self._primary.children(repository, root)
        except NotFoundUpstream:
            return None  # deleted meanwhile: its delete event tells the region
        planned = Planned(
            repository=repository.name, tag=tag.name, digest=str(root.digest), bytes=self._new_bytes(root, children)
        )
        event = ReplicationEvent(
            id=f"backfill:{self.region}:{repository}:{tag}:{root.digest.hex[:16]}",
            source=Source.BACKFILL,
            action=Action.PUSH,
            repository=repository,
            digest=root.digest,
            media_type=root.media_type,
            size=len(root.raw),
            tag=tag,
            occurred_at=read_at - SKEW,
            received_at=utcnow(),
            region=self.region,
        )
        return event, planned

    def _new_bytes(self, root: Manifest, children: dict[Digest, Manifest]) -> int:
        total = 0
        for manifest in (root, *children.values()):
            for blob in manifest.blobs:
                if str(blob.digest) not in self._seen_blobs:
                    self._seen_blobs.add(str(blob.digest))
                    total += blob.size
        return total

    async def _publish(self, events: list[ReplicationEvent]) -> None:
        if self._publisher is None or not events:
            return
        messages: list[tuple[bytes, bytes | None]] = [(e.key, e.to_json()) for e in events]
        await self._publisher.publish(self._kafka.events_topic, messages, PUBLISH_TIMEOUT_S)

    async def _save(self, checkpoint: Checkpoint, progress: Progress | None) -> None:
        if self._publisher is not None:
            message: list[tuple[bytes, bytes | None]] = [(self.region.encode(), checkpoint.to_json())]
            await self._publisher.publish(self._kafka.backfill_topic, message, PUBLISH_TIMEOUT_S)
        if progress is not None:
            result = progress(checkpoint)
            if result is not None:
                await result


async def _read_ahead(items: list[K], read: Callable[[K], Awaitable[V]], ahead: int) -> AsyncGenerator[tuple[K, V]]:
    """(item, read(item)) in the order of `items`, with up to `ahead` reads running before they are asked for;
    the first failure is raised as it is, and the reads still running are cancelled."""
    pending: deque[tuple[K, asyncio.Task[V]]] = deque()
    rest = iter(items)
    try:
        while True:
            while len(pending) < ahead and (item := next(rest, None)) is not None:
                pending.append((item, asyncio.ensure_future(read(item))))
            if not pending:
                return
            item, task = pending.popleft()
            yield item, await task
    finally:
        for _, task in pending:
            task.cancel()
        await asyncio.gather(*(task for _, task in pending), return_exceptions=True)
