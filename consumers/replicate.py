"""Replicate one event into one region: fetch, plan, then write phase by phase."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import structlog

from adapters.registry import RegistryClient
from adapters.store import RegionStore
from consumers.blobcopy import copy_blob
from consumers.budget import ByteBudget
from engine.digest import Digest
from engine.errors import InvalidEvent, InvalidInput, InvalidManifest, OverCap, task_group
from engine.events import Action, ReplicationEvent, Status, utcnow
from engine.layout import KeyKind, Layout, link_body
from engine.manifests import Manifest
from engine.names import Repository, Tag
from engine.plan import Mode, Phase, TagState, Write, build_plan, child_digests, steps, tag_writes
from engine.recent import RecentKeys
from engine.replicas import ReplicaDefinition
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
        replica: Callable[[], ReplicaDefinition | None] = lambda: None,
        *,
        manifest_budget: ByteBudget | None = None,
        manifest_slots: asyncio.Semaphore | None = None,
        max_clock_skew_s: float = 5.0,
    ) -> None:
        self.layout = layout
        # Read per event, so that a filter or the deletes switch changed in the catalog applies at once;
        # None: a region pinned in the config file, which takes everything.
        self.replica = replica
        self.store = store
        self.primary = primary
        self.tuning = tuning
        # Shared by all partitions of the process: bounds memory and connections, not per-event work.
        self._blob_slots = blob_slots
        self._budget = budget
        self._manifest_budget = manifest_budget or ByteBudget(tuning.manifest_buffer_bytes)
        self._manifest_slots = manifest_slots or asyncio.Semaphore(tuning.manifest_fetches)
        self.max_clock_skew = timedelta(seconds=max_clock_skew_s)
        #: revision links found in the region lately: a second tag of a manifest, or a replay, skips the HEAD.
        #: Forgotten on the delete of that manifest (which runs in this lane, in order) and when partitions
        #: move (another process may have deleted it meanwhile); repairs never trust it.
        self.whole = RecentKeys(tuning.whole_manifests, tuning.whole_manifests_ttl_s)
        #: tag notes known to exist: their tag's next push reads the note instead of trying to claim it.
        self.noted = RecentKeys(tuning.whole_manifests, tuning.whole_manifests_ttl_s)

    async def replicate(self, event: ReplicationEvent) -> Outcome:
        replica = self.replica()
        if replica is not None and (why := replica.excluded(event.repository, event.tag)):
            return Outcome(Status.SKIPPED, note=why)
        if event.action is Action.DELETE:
            if replica is not None and not replica.deletes:
                return Outcome(Status.SKIPPED, note="deletes are off for this replica: the region keeps the content")
            return await self._delete(event)
        if event.digest is None:
            raise InvalidEvent("a push event without a digest")
        tag_state = TagState(event.digest, self._when(event), event.id) if event.tag else None
        revision = self.layout.revision_link(event.repository, event.digest)
        if not event.repair and (revision in self.whole or await self.store.exists(revision)):
            # Its revision link is written after all of a manifest's content: the content is whole.
            # What is left is the tag, if any (a second tag, a replay): no manifest fetch, no blob check.
            self.whole.add(revision)
            writes = tag_writes(self.layout, event.repository, event.digest, event.tag, tag_state) if event.tag else []
            note = await self._apply(event, writes, tag_state)
            return Outcome(Status.SUCCEEDED, note=note or "content already in the region")

        root = await self._fetch(event.repository, event.digest)
        held = [0]  # manifest bytes this event holds room for, given back once its plan is written
        try:
            manifests = await self._children(event.repository, root, held)
            plan = build_plan(self.layout, event.repository, root, manifests, event.tag, tag_state, repair=event.repair)
            copied: list[int] = []
            note = await self._apply(event, list(plan.writes), tag_state, copied)
        finally:
            if held[0]:
                self._manifest_budget.release(held[0])
        self.whole.add(revision)  # the revision link comes before the tag's writes: it is there either way
        return Outcome(
            Status.SUCCEEDED,
            blobs_total=len(plan.blobs),
            blobs_copied=sum(1 for n in copied if n > 0),
            bytes_copied=sum(copied),
            manifests_total=1 + len(plan.children),
            note=note,
        )

    def _when(self, event: ReplicationEvent) -> datetime:
        """When the event happened, but never further ahead of this clock than the allowed skew: an event dated in
        the future (a forged one, a primary whose clock runs fast) must not win its tag for good."""
        return min(event.occurred_at, utcnow() + self.max_clock_skew)

    async def _fetch(self, repository: Repository, digest: Digest, declared: int | None = None) -> Manifest:
        async with self._manifest_slots:
            manifest = await self.primary.manifest(repository, digest)
        if declared is not None and len(manifest.raw) != declared:
            raise InvalidManifest(f"manifest {digest.short} is {len(manifest.raw)} bytes; its index says {declared}")
        return manifest

    async def _children(self, repository: Repository, root: Manifest, held: list[int]) -> dict[Digest, Manifest]:
        """Every manifest under an index, a level at a time, within the caps a pusher cannot make georep exceed:
        how many, how many bytes in all (checked from the sizes the index declares, before fetching), and the
        process's room for manifests (taken before the bytes arrive, given back by the caller)."""
        caps = self.tuning
        manifests: dict[Digest, Manifest] = {}
        total = len(root.raw)
        while missing := child_digests(root, manifests):
            if len(manifests) + len(missing) > caps.max_index_children:
                raise OverCap(
                    f"index {root.digest.short} has more than {caps.max_index_children} manifests under it "
                    f"(replicator.max_index_children)"
                )
            size = sum(d.size for d in missing)
            total += size
            if total > caps.max_manifest_bytes:
                raise OverCap(
                    f"index {root.digest.short} needs more than {caps.max_manifest_bytes} bytes of manifests "
                    f"(replicator.max_manifest_bytes)"
                )
            await self._manifest_budget.take(size)
            held[0] += size
            fetched = await _all(self._fetch(repository, d.digest, d.size) for d in missing)
            manifests.update((m.digest, m) for m in fetched)
        return manifests

    async def _apply(
        self, event: ReplicationEvent, writes: list[Write], tag_state: TagState | None, copied: list[int] | None = None
    ) -> str | None:
        """Write step by step; stop before the tag if a newer push set it. Returns a note, if any."""
        for step in steps(writes):
            todo = step
            if event.tag is not None and tag_state is not None and any(w.phase is Phase.TAG_STATE for w in step):
                claimed = await self._claim_tag(event, event.tag, tag_state, step)
                if isinstance(claimed, str):
                    return claimed
                todo = claimed
            results = await _all(self._write(event, write) for write in todo)
            if copied is not None:
                copied += [n for write, n in zip(todo, results, strict=True) if write.phase is Phase.BLOB_DATA]
        return None

    async def _claim_tag(
        self, event: ReplicationEvent, tag: Tag, mine: TagState, step: list[Write]
    ) -> list[Write] | str:
        """Make sure no newer push holds `tag` before this event moves it. Returns what is left of the tag's
        step to write, or why the tag stays where it is.

        A tag's first push claims its note with a conditional PUT, alongside the rest of the step: no read,
        so a new tag costs two rounds of writes. A note that exists (the claim fails, or it is known from
        before) is read and compared, and overwritten only if this push is the newer.
        """
        note = next(w for w in step if w.phase is Phase.TAG_STATE)
        if note.key not in self.noted:
            rest = [self._write(event, w) for w in step if w is not note]
            claimed, *_ = await _all([self.store.put(note.key, note.body, if_absent=True), *rest])
            self.noted.add(note.key)
            if claimed:
                return []
            step = [note]
        newer = await self._newer_push(event.repository, tag, mine)
        if newer is not None:
            return f"tag {tag} left {_shown(newer)}: set by a newer event ({newer.event_id})"
        return step

    async def _delete(self, event: ReplicationEvent) -> Outcome:
        """Remove what the primary removed: a tag's links, a manifest's revision link; never blob data.

        Blobs and `_layers` links stay, as they do on the primary, so content
        another tag or repository still uses keeps being served (the registry's
        garbage collector owns blob data). A digest that is not a manifest here
        (distribution reports blob deletes the same way) changes nothing.
        """
        notes = []
        if event.digest is not None:
            revision = self.layout.revision_link(event.repository, event.digest)
            self.whole.discard(revision)
            if await self.store.exists(revision):
                await self.store.delete(revision)
                notes.append(f"manifest {event.digest.short} deleted")
            else:
                notes.append(f"{event.digest.short} is not a manifest of {event.repository} here: nothing to delete")
            # No tag may point at a deleted manifest. distribution says so with a delete per tag afterwards;
            # Harbor's artifact delete does not, so the tags on the digest go here (a newer push keeps its tag).
            notes += [
                await self._delete_tag(event.repository, tag, event)
                for tag in await self._tags_on(event.repository, event.digest)
                if tag != event.tag
            ]
        if event.tag is not None:
            notes.append(await self._delete_tag(event.repository, event.tag, event))
        return Outcome(Status.SUCCEEDED, note="; ".join(notes))

    async def _tags_on(self, repository: Repository, digest: Digest) -> list[Tag]:
        """Tags of `repository` whose current link in the region names `digest`."""
        once: set[Tag] = set()
        async for key in self.store.keys(self.layout.tags_root(repository)):
            try:
                parsed = self.layout.parse(key)
            except InvalidInput:
                continue  # not a key of the layout: nothing a registry reads
            # A tag that has pointed at the digest has an index link for it: only those can point at it now.
            if parsed.kind is KeyKind.TAG_INDEX_LINK and parsed.digest == digest and parsed.tag is not None:
                once.add(parsed.tag)
        link = link_body(digest)
        return [t for t in sorted(once) if await self.store.get(self.layout.tag_current_link(repository, t)) == link]

    async def _delete_tag(self, repository: Repository, tag: Tag, event: ReplicationEvent) -> str:
        mine = TagState(None, self._when(event), event.id)
        newer = await self._newer_push(repository, tag, mine)
        if newer is not None:
            return f"tag {tag} kept {_shown(newer)}: set by a newer event ({newer.event_id})"
        # The note first: a replayed older push that reads it will not bring the tag back.
        note = self.layout.tag_state(repository, tag)
        await self.store.put(note, mine.to_json(), if_absent=False)
        self.noted.add(note)
        current = self.layout.tag_current_link(repository, tag)
        await self.store.delete(current)  # the tag stops serving now; the rest is its history
        others = [key async for key in self.store.keys(self.layout.tag_root(repository, tag)) if key != current]
        await _all(self.store.delete(key) for key in others)
        return f"tag {tag} deleted"

    async def _write(self, event: ReplicationEvent, write: Write) -> int:
        if write.mode in (Mode.COPY_BLOB, Mode.REPAIR_BLOB):
            assert write.blob is not None
            replace = False
            if write.mode is Mode.REPAIR_BLOB:
                # A repair reads the blob back: one of the right size is left alone, unless its bytes were
                # found wrong (rehash); any other is replaced.
                if write.blob.digest not in event.recopy and await self.store.size(write.key) == write.blob.size:
                    return 0
                replace = True
            async with self._blob_slots:
                return await copy_blob(
                    self.primary, self.store, event.repository, write.blob, write.key, self.tuning, self._budget,
                    replace=replace,
                )  # fmt: skip
        if write.mode is Mode.REPAIR:
            if await self.store.get(write.key) != write.body:
                await self.store.put(write.key, write.body, if_absent=False)
            return 0
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
        if current.occurred_at > utcnow() + self.max_clock_skew:
            # No push happens in the future: a note dated there came from a poisoned clock or a forged event,
            # and trusting it would freeze the tag for good.
            log.warning("replicate.tag_state_from_the_future", key=key, occurred_at=current.occurred_at.isoformat())
            return None
        return current if current.supersedes(mine) else None


def _shown(state: TagState) -> str:
    return "deleted" if state.digest is None else f"on {state.digest.short}"


async def _all(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest and raise that failure itself."""
    coros = list(coros)
    if len(coros) == 1:
        # Most steps of an image are one write: a task and a group for it cost more than the write's own call.
        return [await coros[0]]
    async with task_group() as group:
        tasks = [group.create_task(coro) for coro in coros]
    return [task.result() for task in tasks]
