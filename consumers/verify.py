"""`georep verify --region R`: compare one region's bucket with the primary, and repair what differs.

The comparison is `consumers.drift`, the one the reconciliation loop runs too: for every repository
of the primary's catalog matching the pattern, and every tag of it, each key of the plan the replicator
writes is read back. Each key is read once per run and each difference reported once.

`--repair` publishes one push event per tag with a finding, addressed to this region alone and marked
`repair`, so the replicator reads every key of the image back and rewrites what differs (blobs found
corrupt by `--rehash` are copied again). The event is dated when verify read the tag on the primary:
a push made after that read is newer, and the repair never moves the tag back. A tag or manifest the
region has and the primary no longer does is reported; `georep reconcile` deletes it where the replica
applies deletes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import structlog

from adapters.kafka import Publisher
from adapters.registry import RegistryClient
from adapters.store import RegionStore
from consumers.drift import HASH_CONCURRENCY, STORE_CONCURRENCY, Checked, Comparer, Finding, Skipped
from consumers.reconcile import matching
from consumers.regions import lookup_region
from engine.errors import GeorepError, leaves
from engine.events import ReplicationEvent
from engine.names import Repository
from engine.settings import Settings

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT_S: Final = 30.0


@dataclass
class Report:
    region: str
    repositories: int = 0
    blobs: int = 0
    checked: list[Checked] = field(default_factory=list)
    #: findings that belong to no primary tag (tag-extra, manifest-extra)
    extra: list[Finding] = field(default_factory=list)
    #: what could not be checked, and why (a tag deleted on the primary meanwhile, ...)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for c in self.checked for f in c.findings] + self.extra

    @property
    def damaged(self) -> list[Checked]:
        return [c for c in self.checked if c.damaged]


async def check_repository(comparer: Comparer, repository: Repository, report: Report) -> None:
    """Every tag of `repository` this region should have, in full; the tags the region has beyond them."""
    comparer = comparer.for_repository()
    tags = await comparer.tags(repository, report.skipped)
    if tags is None:
        report.skipped.append(Skipped(str(repository), "the primary has no such repository"))
        return
    report.repositories += 1
    checked = await comparer.images(repository, tags, report.skipped)
    report.checked += checked
    report.blobs += sum(c.blobs for c in checked)
    report.extra += await comparer.extra_tags(repository, set(tags))


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
        comparer = Comparer(region_settings.layout, store, primary, rehash=rehash, replica=replica)
        try:
            for repository in await matching(settings, primary, pattern):
                await check_repository(comparer, repository, report)
        except BaseExceptionGroup as group:
            raise first_failure(group) from None
    log.info("verify.done", region=region, tags=len(report.checked), findings=len(report.findings))
    return report


def first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from nested task groups: a georep error (the store is down, ...) if any."""
    failures = leaves(group)
    return next((e for e in failures if isinstance(e, GeorepError)), failures[0])


async def publish_events(settings: Settings, events: list[ReplicationEvent], role: str) -> None:
    """Put region-addressed events (repairs, deletes) on the events topic; returns once Kafka acknowledged them."""
    publisher = Publisher(settings.kafka, role)
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
    lines += [f"skipped {s.what}: {s.why}" for s in report.skipped]
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
        "skipped": [{"what": s.what, "why": s.why} for s in report.skipped],
        "repairs": [e.model_dump(mode="json", by_alias=True) for e in repairs],
    }
    return orjson.dumps(doc).decode()
