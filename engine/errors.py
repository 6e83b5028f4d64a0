"""The one exception tree of georep.

    GeorepError                      retriable=False, max_attempts=1
    ├── InvalidInput                 bad data from outside: a request, an event, a setting
    │   ├── InvalidDigest
    │   ├── InvalidName              repository name or tag outside the OCI grammar
    │   ├── InvalidEvent             an event or notification georep cannot read
    │   └── InvalidManifest          a manifest georep cannot parse or does not support
    ├── NotFoundUpstream             the primary no longer has the manifest or blob
    ├── DigestMismatch               bytes do not hash to their digest (retried a few times)
    ├── UpstreamRefused              the primary refused a request retrying cannot fix (400, 405, ...)
    ├── OverCap                      an image wider or larger than the replicator's caps (dead-lettered)
    ├── UpstreamUnavailable          the primary is unreachable or answers 5xx (retried)
    ├── StorageUnavailable           the region's object store is unreachable or 5xx (retried)
    ├── KafkaUnavailable             Kafka did not answer or acknowledge in time (retried)
    │   ├── CatalogUnavailable       a compacted topic could not be read to its end in time
    │   └── NotLeader                no georep API process leads right now (an election is under way)
    ├── ApiUnavailable               the georep API could not be reached (retried)
    ├── ApiRefused                   the georep API refused a request (its status and reason)
    └── Unhealthy                    a process can no longer do its work: it exits non-zero

`retriable` says whether doing the same thing again may succeed; `max_attempts`
bounds how often (None: until it does). Context lives in fields, not only in
the message, so that logs and replication records can carry it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class GeorepError(Exception):
    retriable: bool = False
    max_attempts: int | None = 1
    #: a short stable word for records, metrics and dead letters
    reason: str = "error"

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:
        return self.message


class InvalidInput(GeorepError, ValueError):
    # A ValueError too, so that pydantic validators report it as a field error.
    reason = "invalid-input"


class InvalidDigest(InvalidInput):
    reason = "invalid-digest"


class InvalidName(InvalidInput):
    reason = "invalid-name"


class InvalidEvent(InvalidInput):
    reason = "invalid-event"


class InvalidManifest(InvalidInput):
    reason = "invalid-manifest"


class NotFoundUpstream(GeorepError):
    reason = "not-found"


class DigestMismatch(GeorepError):
    # A flaky proxy or disk can corrupt one transfer; three in a row is not chance.
    retriable = True
    max_attempts = 3
    reason = "digest-mismatch"


class UpstreamUnavailable(GeorepError):
    retriable = True
    max_attempts = None
    reason = "upstream-unavailable"


class StorageUnavailable(GeorepError):
    retriable = True
    max_attempts = None
    reason = "storage-unavailable"


class UpstreamRefused(GeorepError):
    reason = "upstream-refused"


class OverCap(GeorepError):
    """An image needs more than the configured caps allow (an index too wide, manifests too large)."""

    reason = "over-cap"


class KafkaUnavailable(GeorepError):
    """Kafka did not take or give messages in time; a webhook answers 503, a service retries."""

    retriable = True
    max_attempts = None
    reason = "kafka-unavailable"


class CatalogUnavailable(KafkaUnavailable):
    """A compacted topic (replicas, checkpoints) could not be read to its end in time."""


class NotLeader(KafkaUnavailable):
    """This georep API process does not lead (yet), and no leader answered a forwarded change in time."""

    reason = "no-leader"


class ApiUnavailable(GeorepError):
    """The georep API could not be reached, or answered something that is not georep's."""

    retriable = True
    max_attempts = None
    reason = "api-unavailable"


class ApiRefused(GeorepError):
    """The georep API refused a request; `status` is its HTTP status, `rule` a replica rule's name."""

    reason = "api-refused"

    def __init__(self, message: str, status: int, rule: str | None = None) -> None:
        super().__init__(message, status=status, rule=rule)
        self.status = status
        self.rule = rule


class Unhealthy(GeorepError):
    """A process can no longer do its work (a task it needs died); it exits non-zero to be restarted."""

    reason = "unhealthy"


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, as a flat list."""
    found: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            found.append(exc)
    return found


def most_telling(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure to report from a group: a permanent one says more than a transient one,
    and either says more than a bug's side effects."""
    failures = leaves(group)
    georep = [e for e in failures if isinstance(e, GeorepError)]
    permanent = [e for e in georep if not e.retriable]
    return (permanent or georep or failures)[0]


@asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An asyncio.TaskGroup whose failure reaches the caller as the most telling one (a GeorepError where there
    is one), not as an ExceptionGroup that `except GeorepError` would let through."""
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as failures:
        raise most_telling(failures) from None
