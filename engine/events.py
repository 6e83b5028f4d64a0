"""What travels on Kafka: replication events, replication records, dead letters.

Each value is JSON with a `schema` version. Readers ignore fields they do not
know, so an old consumer survives a newer producer.

| topic                    | key                    | value            |
| georep.events            | <repository>           | ReplicationEvent |
| georep.replication-log   | <region>/<repository>  | ReplicationRecord|
| georep.dead-letter       | <region>/<repository>  | DeadLetter       |
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Self

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    model_validator,
)

from engine.digest import Digest
from engine.errors import InvalidEvent
from engine.names import Repository, Tag, parse_region

SCHEMA_VERSION = 1

DigestField = Annotated[Digest, PlainValidator(Digest.parse), PlainSerializer(str, return_type=str)]
RepositoryField = Annotated[Repository, PlainValidator(Repository.parse), PlainSerializer(str, return_type=str)]
TagField = Annotated[Tag, PlainValidator(Tag.parse), PlainSerializer(str, return_type=str)]
RegionField = Annotated[str, PlainValidator(lambda v: parse_region(str(v)))]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Source(StrEnum):
    DISTRIBUTION = "distribution"
    HARBOR = "harbor"
    BACKFILL = "backfill"
    RECONCILE = "reconcile"
    MANUAL = "manual"


class Action(StrEnum):
    PUSH = "push"
    DELETE = "delete"


class Status(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead-lettered"
    SKIPPED = "skipped"


class Message(BaseModel):
    """A value georep puts on Kafka: JSON with a `schema` version; fields it does not know are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    schema_version: int = Field(SCHEMA_VERSION, alias="schema", ge=1)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Self:
        try:
            return cls.model_validate(orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent(f"{cls.__name__} is not JSON: {exc}") from None
        except ValidationError as exc:
            raise InvalidEvent(f"invalid {cls.__name__}: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """A one-line, input-free summary of a validation error (inputs may be hostile or secret)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "value"
        # Our own validators raise InvalidInput with a complete sentence: show it without pydantic's prefix.
        original = (err.get("ctx") or {}).get("error")
        parts.append(f"{where}: {original if isinstance(original, Exception) else err['msg']}")
    return "; ".join(parts)


EVENT_ID: Final = r"^[A-Za-z0-9][A-Za-z0-9._:@/+=-]*$"


class ReplicationEvent(Message):
    """One manifest pushed to or deleted from the primary."""

    #: plain characters only: ids are printed by the CLI and named in logs and records
    id: str = Field(pattern=EVENT_ID, max_length=256)
    source: Source
    action: Action
    repository: RepositoryField
    digest: DigestField | None = None
    media_type: str | None = Field(None, max_length=255)
    size: int | None = Field(None, ge=0)
    tag: TagField | None = None
    occurred_at: AwareDatetime
    received_at: AwareDatetime
    #: only this region acts on the event (redrive, repair); None: every region
    region: RegionField | None = None
    #: a repair of a damaged region: every key of the image is read back and rewritten where it differs
    repair: bool = False
    #: with `repair`: blobs whose bytes are wrong at the right size (found by rehashing), copied again regardless
    recopy: tuple[DigestField, ...] = Field((), max_length=1000)
    #: with `repair`: what was found to differ, for the replication record (e.g. "tag-missing, blob-size")
    drift: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _target(self) -> Self:
        if self.action is Action.PUSH and self.digest is None:
            raise ValueError("a push event needs the manifest digest")
        if self.action is Action.DELETE and self.digest is None and self.tag is None:
            raise ValueError("a delete event needs a digest or a tag")
        return self

    @property
    def key(self) -> bytes:
        return self.repository.name.encode()


class ReplicationRecord(Message):
    """What happened to one event in one region (one per attempt; the store keeps the latest)."""

    event_id: str
    region: RegionField
    repository: RepositoryField
    tag: TagField | None = None
    digest: DigestField | None = None
    action: Action = Action.PUSH
    source: Source | None = None
    status: Status
    attempt: int = Field(ge=1)
    blobs_total: int = 0
    blobs_copied: int = 0
    bytes_copied: int = 0
    manifests_total: int = 0
    started_at: AwareDatetime
    finished_at: AwareDatetime
    occurred_at: AwareDatetime | None = None
    lag_ms: int | None = None
    error: str | None = None
    note: str | None = None

    @property
    def key(self) -> bytes:
        return f"{self.region}/{self.repository}".encode()


class ReconcilePass(Message):
    """One reconciliation pass over one partition's repositories in one region (compacted, key region/partition)."""

    region: RegionField
    partition: int = Field(ge=0)
    #: which replicator ran it (host and pid), so that a pass is traced to a process
    member: str
    started_at: AwareDatetime
    finished_at: AwareDatetime
    repositories: int = 0
    #: repositories whose tags had not moved on the primary: one read of the region each
    unchanged: int = 0
    #: repositories whose keys were all checked
    checked_full: int = 0
    #: repositories left for the next pass because live events for them were still arriving
    deferred: int = 0
    #: differences found, by kind (tag-missing, blob-size, tag-extra, ...)
    drift: dict[str, int] = Field(default_factory=dict)
    #: repair events published (one per damaged tag, deleted tag or manifest)
    repairs: int = 0
    requests_primary: int = 0
    requests_region: int = 0
    error: str | None = None

    @property
    def key(self) -> bytes:
        return f"{self.region}/{self.partition}".encode()

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


class DeadLetter(Message):
    """An event a region gave up on, with why; `georep redrive` puts `event` back."""

    region: RegionField
    reason: str
    error: str
    attempts: int
    failed_at: AwareDatetime
    #: the event as it was read, parsed when possible, raw text otherwise
    event: dict[str, Any] | None = None
    raw: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    @property
    def key(self) -> bytes:
        repository = (self.event or {}).get("repository") or "-"
        return f"{self.region}/{repository}".encode()
