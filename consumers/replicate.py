"""Replicate one event into one region: fetch, plan, then write phase by phase."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from consumers.blobcopy import copy_blob
from consumers.budget import ByteBudget
from consumers.registry import RegistryClient
from consumers.store import RegionStore
from engine.digest import Digest
from engine.errors import GeorepError, InvalidEvent, leaves
from engine.events import Action, ReplicationEvent, Status
from engine.layout import Layout
from engine.manifests import Manifest
from engine.names import Repository, Tag
from engine.plan import Mode, Phase, TagState, Write, build_plan, child_digests, steps, tag_writes
from engine.settings import ReplicatorSettings

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    blobs_total: int = 0
    blobs_copied: int = 0
    bytes_copied: int = 0
    manifests_total: int = 0
    note: str | None = None


class RegionReplicator:
    def __init__(
        self,
        layout: Layout,
        store: RegionStore,
        primary: RegistryClient,
        tuning: ReplicatorSettings,
        blob_slots: asyncio.Semaphore,
        budget: ByteBudget,
    ) -> None:
        self.layout = layout
        self.store = store
        self.primary = primary
        self.tuning = tuning
        # Shared by all partitions of the process: bounds memory and connections, not per-event work.
        self._blob_slots = blob_slots
        self._budget = budget

    async def replicate(self, event: ReplicationEvent) -> Outcome:
        if event.action is Action.DELETE:
            return Outcome(Status.SKIPPED, note="deletes are not replicated yet: the region keeps the content")
        if event.digest is None:
            raise InvalidEvent("a push event without a digest")
        tag_state = TagState(event.digest, event.occurred_at, event.id) if event.tag else None
        revision = self.layout.revision_link(event.repository, event.digest)
        if not event.repair and await self.store.exists(revision):
            # Its revision link is written after all of a manifest's content: the content is whole.
            # What is left is the tag, if any (a second tag, a replay): no manifest fetch, no blob check.
            writes = tag_writes(self.layout, event.repository, event.digest, event.tag, tag_state) if event.tag else []
            note = await self._apply(event, writes, tag_state)
            return Outcome(Status.SUCCEEDED, note=note or "content already in the region")

        root = await self.primary.manifest(event.repository, event.digest)
        manifests = await self._fetch_children(event.repository, root)
        plan = build_plan(self.layout, event.repository, root, manifests, event.tag, tag_state, repair=event.repair)
        copied: list[int] = []
        note = await self._apply(event, list(plan.writes), tag_state, copied)
        return Outcome(
            Status.SUCCEEDED,
            blobs_total=len(plan.blobs),
            blobs_copied=sum(1 for n in copied if n > 0),
            bytes_copied=sum(copied),
            manifests_total=1 + len(plan.children),
            note=note,
        )

    async def _apply(
        self, event: ReplicationEvent, writes: list[Write], tag_state: TagState | None, copied: list[int] | None = None
    ) -> str | None:
        """Write step by step; stop before the tag if a newer push set it. Returns a note, if any."""
        for step in steps(writes):
            if event.tag is not None and tag_state is not None and any(w.phase is Phase.TAG_STATE for w in step):
                newer = await self._newer_push(event.repository, event.tag, tag_state)
                if newer is not None:
                    return f"tag {event.tag} left on {newer.digest.short}: set by a newer push ({newer.event_id})"
            results = await _all(self._write(event.repository, write) for write in step)
            if copied is not None:
                copied += [n for write, n in zip(step, results, strict=True) if write.phase is Phase.BLOB_DATA]
        return None

    async def _fetch_children(self, repository: Repository, root: Manifest) -> dict[Digest, Manifest]:
        manifests: dict[Digest, Manifest] = {}
        while missing := child_digests(root, manifests):
            fetched = await _all(self.primary.manifest(repository, desc.digest) for desc in missing)
            manifests.update((m.digest, m) for m in fetched)
        return manifests

    async def _write(self, repository: Repository, write: Write) -> int:
        if write.mode in (Mode.COPY_BLOB, Mode.RECOPY_BLOB):
            assert write.blob is not None
            replace = write.mode is Mode.RECOPY_BLOB
            async with self._blob_slots:
                return await copy_blob(
                    self.primary, self.store, repository, write.blob, write.key, self.tuning, self._budget,
                    replace=replace,
                )  # fmt: skip
        await self.store.put(write.key, write.body, if_absent=write.mode is Mode.IF_ABSENT)
        return 0

    async def _newer_push(self, repository: Repository, tag: Tag, mine: TagState) -> TagState | None:
        """The push that set this tag in the region, if it is newer than ours."""
        key = self.layout.tag_state(repository, tag)
        raw = await self.store.get(key)
        if raw is None:
            return None
        try:
            current = TagState.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("replicate.tag_state_unreadable", key=key, error=str(exc))
            return None
        return current if current.supersedes(mine) else None


async def _all(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest and raise that failure itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coro) for coro in coros]
    except BaseExceptionGroup as failures:
        raise _most_telling(failures) from None
    return [task.result() for task in tasks]


def _most_telling(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """A permanent failure says more than a transient one; either says more than a bug's side effects."""
    failures = leaves(group)
    georep = [e for e in failures if isinstance(e, GeorepError)]
    permanent = [e for e in georep if not e.retriable]
    return (permanent or georep or failures)[0]
