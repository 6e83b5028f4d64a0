"""What a reader of the replication log may ask for, validated with the engine's own value types.

The same `LogQuery` filters rows in SQL (the log store), records in memory
(`georep logs --follow`) and travels as HTTP query parameters, so the three can
never disagree on what a filter means. Times select on `finished_at` as a
half-open range: `since <= finished_at < until`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.events import Action, DigestField, RegionField, ReplicationRecord, RepositoryField, Status, TagField

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 10_000

_TIME_HINT: Final = "expected an RFC 3339 time such as 2024-05-01T12:00:00Z (in a URL, write '+' as %2B)"


class LogQuery(BaseModel):
    """Filters over replication records; every filter left as None matches everything."""

    # Unknown parameters are refused: a misspelt filter must not silently return everything.
    model_config = ConfigDict(frozen=True, extra="forbid")

    repository: RepositoryField | None = None
    tag: TagField | None = None
    digest: DigestField | None = None
    region: RegionField | None = None
    status: Status | None = None
    event_id: str | None = Field(None, min_length=1, max_length=256)
    action: Action | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    #: records to skip before the first one returned (paging, newest first)
    offset: int = Field(0, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _ordered_range(self) -> Self:
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError(f"since ({self.since.isoformat()}) is after until ({self.until.isoformat()})")
        return self

    def matches(self, record: ReplicationRecord) -> bool:
        """Whether `record` passes every filter (the limit aside): the in-memory twin of the SQL."""
        equal: list[tuple[object, object]] = [
            (self.repository, record.repository),
            (self.tag, record.tag),
            (self.digest, record.digest),
            (self.region, record.region),
            (self.status, record.status),
            (self.event_id, record.event_id),
            (self.action, record.action),
        ]
        if any(wanted is not None and wanted != actual for wanted, actual in equal):
            return False
        return _in_range(record.finished_at, self.since, self.until)

    def to_params(self) -> dict[str, str]:
        """The query as HTTP query parameters, which `LogQuery.model_validate` reads back."""
        return {name: str(value) for name, value in self.model_dump(mode="json", exclude_none=True).items()}


def _in_range(when: datetime, since: datetime | None, until: datetime | None) -> bool:
    return (since is None or when >= since) and (until is None or when < until)


def problems(exc: ValidationError) -> list[tuple[str, str]]:
    """(parameter, why) for each refused parameter; `query` names a problem between parameters."""
    found = []
    for err in exc.errors(include_url=False, include_input=False):
        parameter = ".".join(str(part) for part in err["loc"]) or "query"
        error = (err.get("ctx") or {}).get("error")
        # The engine's own value types word their refusals best; pydantic's prefix adds nothing.
        why = str(error) if isinstance(error, Exception) else err["msg"]
        if err["type"] == "extra_forbidden":
            why = "unknown parameter; known: " + ", ".join(LogQuery.model_fields)
        elif parameter in ("since", "until"):
            why = f"{why}; {_TIME_HINT}"
        found.append((parameter, why))
    return found
