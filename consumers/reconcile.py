"""Reconciliation: the level-triggered loop behind the events, so that every region converges on the primary.

Events are the fast path. An event can still be lost (a primary restarted with
notifications queued in memory, a webhook that gave up, retention that ran out
while a region was down) and a bucket can be damaged behind georep's back. So
each replicator, on a schedule, compares the repositories of the partitions it
owns with the primary and publishes repair events for what differs:

    primary                               region                                 result
    tags, and the digest of each (HEAD)   georep/v1/.../<repo>/_reconciled       unchanged: one read of the region
                                          (the tag -> digest map last found       changed: only the tags that moved
                                          equal)                                 are compared, key by key
    every tag, every key (full check,     blobs (HEAD: size), links, manifests    differences -> repair events
    at least every full_every_s)          (GET), tags and manifests the region    tags/manifests gone on the primary
                                          has beyond the primary's               -> delete events (deletes on)

Repairs are events like any other: region-addressed (`region`), `source:
reconcile`, keyed by repository on `georep.events`, dated when the primary
was read. They travel the same path as live events, in the same order per
repository, and a newer push still wins the tag. A repository is compared
only once the live events already on its partition are done, and its repairs
are held back if an event of it arrived meanwhile: a live event in flight is
never "repaired" from under it.

Ownership follows the consumer group: a repository hashes to a partition
exactly as its events do, and the replicator that owns the partition
reconciles it, so passes scale out with the group and move on rebalance, with
no leader. Cost is bounded by a request rate to each side and visible in
metrics, in a record per repair, and in a ReconcilePass per partition on the
compacted `georep.reconcile` topic, which `georep status` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Final, Protocol

import orjson
import structlog
from aiokafka import TopicPartition

from adapters.kafka import KAFKA_ERRORS, Publisher, partition_for
from adapters.meter import Meter
from adapters.registry import RegistryClient
from adapters.store import RegionStore
from consumers import metrics
from consumers.drift import Comparer, Finding, Skipped, delete_events, repair_events
from consumers.regions import lookup_region
from engine.digest import Digest
from engine.errors import GeorepError, InvalidInput, KafkaUnavailable, UpstreamUnavailable, task_group
from engine.events import ReconcilePass, ReplicationEvent, Source, utcnow
from engine.layout import Layout
from engine.names import Repository, Tag
from engine.replicas import ReplicaDefinition
from engine.settings import ReconcileSettings, Settings

log = structlog.get_logger(__name__)

#: primary HEADs of one repository's tags in flight at once
HEAD_CONCURRENCY: Final = 8
PUBLISH_TIMEOUT_S: Final = 30.0


class CatalogClosed(GeorepError):
    """The primary will not list its repositories to georep: another source is needed."""

    reason = "catalog-closed"


async def list_repositories(settings: ReconcileSettings, primary: RegistryClient) -> list[Repository]:
    """The primary's repositories, from where `reconcile.repositories` says; sorted."""
    if settings.repositories == "list":
        return sorted(Repository.parse(name) for name in settings.repository_list)
    try:
        if settings.repositories == "harbor":
            found = [r async for r in primary.harbor_repositories()]
        else:
            found = [r async for r in primary.catalog()]
    except UpstreamUnavailable as exc:
        status = exc.context.get("status")
        if status not in (401, 403):
            raise
        where = "Harbor's API (projects, repositories)" if settings.repositories == "harbor" else "/v2/_catalog"
        raise CatalogClosed(
            f"the primary refuses to list its repositories through {where} (HTTP {status}): give georep's account "
            'the right to, or set reconcile.repositories = "harbor" (a Harbor primary) or "list" with '
            "reconcile.repository_list"
        ) from exc
    return sorted(set(found))


# -- one repository -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What comparing one repository found, and what to publish and remember for it."""

    repository: Repository
    full: bool
    unchanged: bool = False
    #: the primary's tag -> digest now: what `_reconciled` holds once the region is found equal
    current: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    events: list[ReplicationEvent] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


async def compare_repository(
    comparer: Comparer,
    repository: Repository,
    region: str,
    *,
    full: bool,
    stored: dict[str, str] | None,
    deletes: bool,
) -> Outcome:
    """Compare one repository; with `stored` (the map last found equal) and not `full`, only what moved.

    A repository never found equal here (no `stored`: new to the region, or its map lost) is compared in full:
    nothing is known of it, so the manifests the primary deleted are looked for too."""
    full = full or stored is None
    outcome = Outcome(repository, full)
    read_at = utcnow()
    comparer = comparer.for_repository()
    tags = await comparer.tags(repository, outcome.skipped)
    tags = tags or []  # a repository the primary no longer lists has no tags left there
    heads = await _heads(comparer.primary, repository, tags)
    outcome.current = {str(tag): str(digest) for tag, digest in heads.items()}
    if not full and stored == outcome.current:
        outcome.unchanged = True
        return outcome
    moved = [t for t in heads if full or stored is None or stored.get(str(t)) != str(heads[t])]
    checked = await comparer.images(repository, moved, outcome.skipped)
    outcome.findings = [f for c in checked for f in c.findings]
    extra: list[Finding] = []
    if deletes:  # a replica that keeps what the primary deleted has nothing "extra"
        extra = await comparer.extra_tags(repository, set(heads))
        # A tag gone from the primary usually means a manifest went with it: look for those now, not only in full.
        vanished = stored is not None and bool(set(stored) - set(outcome.current))
        if full or vanished:
            extra += await comparer.extra_manifests(repository, {c.digest for c in checked} | set(heads.values()))
    outcome.findings += extra
    outcome.events = repair_events([c for c in checked if c.damaged], region, source=Source.RECONCILE)
    outcome.events += delete_events(extra, region, read_at)
    return outcome


async def _heads(primary: RegistryClient, repository: Repository, tags: Iterable[Tag]) -> dict[Tag, Digest]:
    """tag -> the digest the primary serves for it now (tags deleted meanwhile left out)."""
    slots = asyncio.Semaphore(HEAD_CONCURRENCY)

    async def one(tag: Tag) -> tuple[Tag, Digest | None]:
        async with slots:
            head = await primary.head(repository, str(tag))
        return tag, None if head is None else head.digest

    async with task_group() as group:
        tasks = [group.create_task(one(tag)) for tag in tags]
    return {tag: digest for tag, digest in (task.result() for task in tasks) if digest is not None}


def _encode(current: dict[str, str]) -> bytes:
    return orjson.dumps({"schema": 1, "tags": dict(sorted(current.items()))})


def _decode(raw: bytes | None) -> dict[str, str] | None:
    if raw is None:
        return None
    try:
        tags = orjson.loads(raw)["tags"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None  # unreadable: compare in full, and write it anew
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else None


# -- the loop in a replicator -----------------------------------------------------------------------


class Consumer(Protocol):
    """What the reconciler needs of the replicator's consume loop (ReplicatorService provides it)."""

    @property
    def consumer(self) -> Any: ...

    @property
    def lanes(self) -> dict[Any, Any]: ...


class Reconciler:
    """Runs passes over the repositories of the partitions this replicator owns, every `interval_s`."""

    def __init__(
        self,
        settings: Settings,
        region: str,
        layout: Layout,
        store: RegionStore,
        primary: RegistryClient,
        replica: Callable[[], ReplicaDefinition | None],
        service: Consumer,
        publisher: Publisher,
    ) -> None:
        self.settings = settings
        self.tuning = settings.reconcile
        self.region = region
        self.layout = layout
        self.replica = replica
        self.service = service
        self.publisher = publisher
        self.primary_meter = Meter(self.tuning.primary_rps)
        self.region_meter = Meter(self.tuning.region_rps)
        self.primary = primary.metered(self.primary_meter)
        self.store = store.metered(self.region_meter)
        self.member = f"{socket.gethostname()}/{os.getpid()}"
        #: repository -> time.monotonic() of its last full check (and rehash) in this process
        self._full: dict[Repository, float] = {}
        self._rehash: dict[Repository, float] = {}
        #: the last pass per partition, for /healthz
        self.last: dict[int, ReconcilePass] = {}

    async def run(self, stop: asyncio.Event) -> None:
        # The first pass waits a period too (spread a little, so that replicators started together do not pass
        # together): a process that just started has live events to catch up on first, and a new region has
        # its backfill.
        first = self.tuning.interval_s * random.uniform(1.0, 1.1)  # noqa: S311
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), first)
        while not stop.is_set():
            started = time.monotonic()
            if self.service.consumer is not None and self.service.consumer.assignment():
                try:
                    await self.pass_once(stop)
                except GeorepError as exc:  # Kafka or a store gone mid-pass: the next pass starts over
                    log.warning("reconcile.pass_failed", region=self.region, error=str(exc))
                    metrics.RECONCILE_PASSES.labels(self.region, "failed").inc()
            left = self.tuning.interval_s - (time.monotonic() - started)
            try:
                await asyncio.wait_for(stop.wait(), max(left, 0.0))
            except TimeoutError:
                continue

    async def pass_once(self, stop: asyncio.Event | None = None) -> list[ReconcilePass]:
        """One pass over every repository of the partitions owned now; a ReconcilePass per partition."""
        consumer = self._consumer()
        topic = self.settings.kafka.events_topic
        owned = sorted(tp.partition for tp in consumer.assignment() if tp.topic == topic)
        self.last = {p: s for p, s in self.last.items() if p in owned}
        count = len(consumer.partitions_for_topic(topic) or ()) or self.settings.kafka.events_partitions
        started = utcnow()
        requests = (self.primary_meter.requests, self.region_meter.requests)
        try:
            repositories = await list_repositories(self.tuning, self.primary)
        except GeorepError as exc:
            log.error("reconcile.pass_failed", region=self.region, error=str(exc))
            metrics.RECONCILE_PASSES.labels(self.region, "failed").inc()
            return [await self._summary(p, started, [], requests, str(exc)) for p in owned]
        replica = self.replica()
        mine: dict[int, list[Repository]] = {p: [] for p in owned}
        for repository in repositories:
            partition = partition_for(repository.name.encode(), count)
            if partition in mine and (replica is None or not replica.excluded(repository, None)):
                mine[partition].append(repository)
        passes = []
        for partition, repos in mine.items():
            if stop is not None and stop.is_set():
                break
            tp = TopicPartition(topic, partition)
            if tp not in consumer.assignment():
                continue  # revoked during the pass: its new owner reconciles it
            outcomes = await self._partition(tp, repos, replica)
            passes.append(await self._summary(partition, started, outcomes, requests, None))
            requests = (self.primary_meter.requests, self.region_meter.requests)
        metrics.RECONCILE_PASSES.labels(self.region, "done").inc()
        metrics.RECONCILE_LAST_PASS.labels(self.region).set(time.time())
        return passes

    async def _partition(
        self, tp: TopicPartition, repositories: list[Repository], replica: ReplicaDefinition | None
    ) -> list[Outcome | None]:
        """Compare a partition's repositories once its live events are done; None for one deferred."""
        try:
            end = await self._settle(tp) if tp in self._consumer().assignment() else None
        except KAFKA_ERRORS as exc:  # the partition was revoked meanwhile (a rebalance), or Kafka is away
            log.info("reconcile.partition_left", region=self.region, partition=tp.partition, error=str(exc))
            end = None
        if end is None:
            log.info("reconcile.partition_busy", region=self.region, partition=tp.partition)
            return [None] * len(repositories)
        comparer = Comparer(self.layout, self.store, self.primary, replica=replica)
        deletes = replica is None or replica.deletes
        # Several repositories at once: one at a time, a pass over a large catalog waits on round trips, not on
        # the request budgets (the meters), which still bound what it costs either side.
        slots = asyncio.Semaphore(self.tuning.concurrency)

        async def one(repository: Repository) -> Outcome | None:
            async with slots:
                try:
                    return await self._repository(comparer, tp, repository, end, deletes)
                except (GeorepError, InvalidInput) as exc:
                    log.warning(
                        "reconcile.repository_failed", region=self.region, repository=str(repository), error=str(exc)
                    )
                    return None

        async with task_group() as group:
            tasks = [group.create_task(one(repository)) for repository in repositories]
        return [task.result() for task in tasks]

    async def _repository(
        self, comparer: Comparer, tp: TopicPartition, repository: Repository, end: int, deletes: bool
    ) -> Outcome | None:
        now = time.monotonic()
        # A process that has not checked a repository yet spreads its first full check over one period.
        last = self._full.setdefault(repository, now - random.uniform(0, self.tuning.full_every_s))  # noqa: S311
        full = now - last >= self.tuning.full_every_s
        rehash = False
        if self.tuning.rehash_every_s is not None:
            rehashed = self._rehash.setdefault(repository, now - random.uniform(0, self.tuning.rehash_every_s))  # noqa: S311
            rehash = now - rehashed >= self.tuning.rehash_every_s
        comparer = comparer.for_repository(rehash=rehash)
        key = self.layout.reconciled(repository)
        stored = _decode(await self.store.get(key))
        outcome = await compare_repository(
            comparer, repository, self.region, full=full or rehash, stored=stored, deletes=deletes
        )
        if outcome.full:
            self._full[repository] = now
        if rehash:
            self._rehash[repository] = now
        if outcome.events and await self._racing(tp, repository, end):
            log.info("reconcile.deferred", region=self.region, repository=str(repository), reason="live event")
            return None
        if outcome.events:
            messages: list[tuple[bytes, bytes | None]] = [(e.key, e.to_json()) for e in outcome.events]
            await self.publisher.publish(self.settings.kafka.events_topic, messages, PUBLISH_TIMEOUT_S)
            log.info(
                "reconcile.repaired", region=self.region, repository=str(repository),
                drift=sorted({f.kind.value for f in outcome.findings}), events=len(outcome.events),
            )  # fmt: skip
        elif not _drifted(outcome) and outcome.current != stored:
            # Found equal: remember the map, so the next pass over an unchanged repository costs one read.
            await self.store.put(key, _encode(outcome.current), if_absent=False)
        return outcome

    def _consumer(self) -> Any:
        """The region's consumer now; KafkaUnavailable if it is gone (Kafka away, the service stopping), which
        ends the pass: the next one starts over."""
        consumer = self.service.consumer
        if consumer is None:
            raise KafkaUnavailable(f"region {self.region}'s consumer stopped during a reconciliation pass")
        return consumer

    async def _settle(self, tp: TopicPartition) -> int | None:
        """The partition's end offset, once every event before it is done here; None if that takes too long."""
        consumer = self._consumer()
        end: int = (await consumer.end_offsets([tp]))[tp]
        try:
            async with asyncio.timeout(self.tuning.settle_timeout_s):
                # No lane yet: nothing was read since the partition was assigned. Either nothing is left to
                # read, or the first records are on their way and a lane appears for them.
                while (lane := self.service.lanes.get(tp)) is None:
                    if await consumer.position(tp) >= end:
                        return end
                    await asyncio.sleep(0.1)  # aiokafka announces no fetch; the lane is made on the first one
                await lane.settled(end)
        except TimeoutError:
            return None
        return end

    async def _racing(self, tp: TopicPartition, repository: Repository, end: int) -> bool:
        """True unless it is sure no live event of `repository` reached its partition after `end`."""
        if tp not in self._consumer().assignment():
            return True  # the partition moved to another replicator: its next pass decides
        try:
            return await self._in_flight(tp, repository, end)
        except KAFKA_ERRORS:
            return True

    async def _in_flight(self, tp: TopicPartition, repository: Repository, end: int) -> bool:
        """Did an event of `repository` reach its partition after `end` (it would race the repair)?"""
        now: int = (await self._consumer().end_offsets([tp]))[tp]
        if now == end:
            return False
        lane = self.service.lanes.get(tp)
        if lane is None:
            return True  # events arrived and none was read yet: cannot tell, so wait for the next pass
        try:
            async with asyncio.timeout(self.tuning.settle_timeout_s):
                await lane.received_through(now)
        except TimeoutError:
            return True
        newest: int = lane.last_offset.get(repository.name.encode(), -1)
        return newest >= end

    async def _summary(
        self,
        partition: int,
        started: Any,
        outcomes: list[Outcome | None],
        requests: tuple[int, int],
        error: str | None,
    ) -> ReconcilePass:
        drift: dict[str, int] = {}
        for outcome in outcomes:
            for finding in outcome.findings if outcome else []:
                drift[finding.kind.value] = drift.get(finding.kind.value, 0) + 1
        done = [o for o in outcomes if o is not None]
        summary = ReconcilePass(
            region=self.region,
            partition=partition,
            member=self.member,
            started_at=started,
            finished_at=utcnow(),
            repositories=len(outcomes),
            unchanged=sum(1 for o in done if o.unchanged),
            checked_full=sum(1 for o in done if o.full),
            deferred=len(outcomes) - len(done),
            drift=drift,
            repairs=sum(len(o.events) for o in done),
            requests_primary=self.primary_meter.requests - requests[0],
            requests_region=self.region_meter.requests - requests[1],
            error=error,
        )
        self.last[partition] = summary
        for kind, n in drift.items():
            metrics.RECONCILE_DRIFT.labels(self.region, kind).inc(n)
        metrics.RECONCILE_REPAIRS.labels(self.region).inc(summary.repairs)
        metrics.RECONCILE_REQUESTS.labels(self.region, "primary").inc(summary.requests_primary)
        metrics.RECONCILE_REQUESTS.labels(self.region, "region").inc(summary.requests_region)
        metrics.RECONCILE_REPOSITORIES.labels(self.region, "unchanged").inc(summary.unchanged)
        metrics.RECONCILE_REPOSITORIES.labels(self.region, "compared").inc(len(done) - summary.unchanged)
        metrics.RECONCILE_REPOSITORIES.labels(self.region, "deferred").inc(summary.deferred)
        if summary.repositories or drift:
            log.info("reconcile.partition_done", **summary.model_dump(mode="json", by_alias=True))
        await self.publisher.publish(
            self.settings.kafka.reconcile_topic, [(summary.key, summary.to_json())], PUBLISH_TIMEOUT_S
        )
        return summary


def _drifted(outcome: Outcome) -> bool:
    """Anything that keeps the map from being remembered as equal: a difference, or a tag not compared."""
    return bool(outcome.findings) or any(not s.excluded for s in outcome.skipped)


# -- a pass by hand: `georep reconcile` ------------------------------------------------------------


async def matching(settings: Settings, primary: RegistryClient, pattern: str) -> list[Repository]:
    """The primary's repositories matching the glob `pattern` (a plain name is taken as it is)."""
    if not any(c in pattern for c in "*?["):
        return [Repository.parse(pattern)]
    return [r for r in await list_repositories(settings.reconcile, primary) if fnmatchcase(r.name, pattern)]


@dataclass
class Report:
    region: str
    outcomes: list[Outcome]
    events: list[ReplicationEvent]
    published: bool

    def to_dict(self) -> dict[str, Any]:
        drift: dict[str, int] = {}
        for f in (f for o in self.outcomes for f in o.findings):
            drift[f.kind.value] = drift.get(f.kind.value, 0) + 1
        return {
            "region": self.region,
            "repositories": len(self.outcomes),
            "drift": drift,
            "findings": [f.to_dict() for o in self.outcomes for f in o.findings],
            "skipped": [{"what": s.what, "why": s.why} for o in self.outcomes for s in o.skipped if not s.excluded],
            "events": [e.model_dump(mode="json", by_alias=True) for e in self.events],
            "published": self.published,
        }


async def reconcile_now(settings: Settings, region: str, pattern: str = "*", *, dry_run: bool = False) -> Report:
    """Compare every repository matching `pattern` in full now, in this process, and (unless `dry_run`)
    publish the repairs and deletes, exactly as the loop would."""
    region_settings, replica = await lookup_region(settings, region, f"reconcile-{region}")
    deletes = replica is None or replica.deletes
    async with (
        RegistryClient.session(settings.primary) as session,
        RegionStore.open(region_settings) as store,
    ):
        primary = RegistryClient(settings.primary, session)
        comparer = Comparer(region_settings.layout, store, primary, replica=replica)
        outcomes = [
            await compare_repository(comparer, repository, region, full=True, stored=None, deletes=deletes)
            for repository in await matching(settings, primary, pattern)
        ]
    events = [e for o in outcomes for e in o.events]
    if events and not dry_run:
        publisher = Publisher(settings.kafka, f"reconcile-{region}")
        try:
            await publisher.publish(
                settings.kafka.events_topic, [(e.key, e.to_json()) for e in events], PUBLISH_TIMEOUT_S
            )  # fmt: skip
        finally:
            await publisher.close()
    return Report(region, outcomes, events, published=bool(events) and not dry_run)


def render_report(report: Report) -> str:
    """One line per difference (grep-able), one per event, then a summary line."""
    lines = []
    for outcome in report.outcomes:
        for f in outcome.findings:
            where = f"{f.repository}:{f.tag}" if f.tag is not None else str(f.repository)
            lines.append(f"{f.kind.value}  {where}  {f.key}" + (f"  ({f.detail})" if f.detail else ""))
        lines += [f"skipped {s.what}: {s.why}" for s in outcome.skipped if not s.excluded]
    verb = "published" if report.published else "would publish"
    for e in report.events:
        target = f"{e.repository}:{e.tag}" if e.tag else f"{e.repository}@{e.digest}"
        lines.append(f"{verb} {e.action.value} {target}  ({e.drift})")
    found = sum(len(o.findings) for o in report.outcomes)
    summary = f"{report.region}: {_count(len(report.outcomes), 'repository', 'repositories')} compared, "
    summary += _count(found, "difference")
    if report.events:
        summary += f"; {_count(len(report.events), 'repair or delete event')} {verb}"
    lines.append(summary)
    return "\n".join(lines)


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"
