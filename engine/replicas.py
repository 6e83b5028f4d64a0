"""Replica regions: their definition, their filters, and the rules a new one must pass.

A definition lives in the compacted topic `georep.replicas`, keyed by region:
a value creates (or changes) the replica, a tombstone deletes it. It names the
region's bucket and a *reference* to its credentials (`env:` or `file:`),
never the keys themselves, because every consumer of the topic can read it.

Filters are `repository-glob[:tag-glob]` patterns (fnmatch, so `*` also
crosses `/`). Signature and referrer tags (`sha256-<hex>.sig`, `.att`,
`.sbom`, and the bare `sha256-<hex>` of the OCI referrers tag schema) follow
their repository, not the tag patterns: a tag filter that lets an image
through lets its signatures through too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Annotated, Final, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.errors import InvalidInput
from engine.events import Message, describe, utcnow
from engine.layout import Layout
from engine.names import Repository, Tag, parse_region

_REFERRER_TAG: Final = re.compile(r"sha256-[0-9a-f]{64}(?:\.(?:sig|att|sbom))?", re.ASCII)
_CREDENTIALS_REF: Final = re.compile(r"(?:env:[A-Z_][A-Z0-9_]*|file:/.+|aws:default)", re.ASCII)


def is_referrer_tag(tag: Tag | str) -> bool:
    """A cosign signature/attestation/SBOM tag, or an OCI 1.1 referrers fallback tag."""
    return _REFERRER_TAG.fullmatch(str(tag)) is not None


class ReplicaRefused(InvalidInput):
    """A replica operation a rule forbids; `rule` names the rule, the message says why and what to do."""

    reason = "replica-refused"

    def __init__(self, rule: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.rule = rule
        self.status = status


def _check_filter(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput("a filter is a non-empty string: repository-glob[:tag-glob]")
    repository, _, tag = value.partition(":")
    if not repository or value.count(":") > 1 or (":" in value and not tag):
        raise InvalidInput(f"filter {value!r}: expected repository-glob[:tag-glob], e.g. 'team-a/*' or '*:v*'")
    if any(c.isspace() for c in value):
        raise InvalidInput(f"filter {value!r}: whitespace is not allowed")
    return value


Filter = Annotated[str, PlainValidator(_check_filter)]


def filter_matches(pattern: str, repository: Repository, tag: Tag | None, *, untagged: bool) -> bool:
    """Whether `pattern` covers `repository[:tag]`.

    A tag glob cannot judge a digest-only event (an index child, a referrer, a
    manifest delete) or a signature tag: those follow their repository, so a
    tag glob admits them when it includes (`untagged=True`) and leaves them
    alone when it excludes.
    """
    repo_glob, _, tag_glob = pattern.partition(":")
    if not fnmatchcase(repository.name, repo_glob):
        return False
    if not tag_glob:
        return True
    if tag is None or is_referrer_tag(tag):
        return untagged
    return fnmatchcase(tag.name, tag_glob)


class ReplicaDefinition(Message):
    """One replica region as operators create it; what its replicator and registry need."""

    region: Annotated[str, PlainValidator(lambda v: parse_region(str(v)))]
    endpoint: str
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = ""
    s3_region: str = "us-east-1"
    #: where the region's read-only registry answers (`host:port`), for people and status
    registry: str | None = None
    #: where the replicator finds the bucket's keys: `env:PREFIX` or `file:/path`
    credentials_ref: str
    #: apply tag and manifest deletes from the primary (content another tag still uses stays)
    deletes: bool = True
    include: tuple[Filter, ...] = ()
    exclude: tuple[Filter, ...] = ()
    created_at: AwareDatetime = Field(default_factory=utcnow)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise InvalidInput(f"endpoint {value!r} must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return Layout(value).prefix

    @field_validator("credentials_ref")
    @classmethod
    def _check_credentials_ref(cls, value: str) -> str:
        if _CREDENTIALS_REF.fullmatch(value) is None:
            raise InvalidInput(
                "credentials_ref must reference the keys, not hold them: 'env:PREFIX' (reads PREFIX_ACCESS_KEY "
                "and PREFIX_SECRET_KEY), 'file:/path' (a JSON file or a directory with access_key and secret_key, "
                "under replicator.credentials_dir) or 'aws:default' (the AWS SDK's default chain: IRSA, instance "
                "profile, ...)"
            )
        return value

    @property
    def layout(self) -> Layout:
        return Layout(self.prefix)

    def excluded(self, repository: Repository, tag: Tag | None) -> str | None:
        """Why this replica does not take `repository[:tag]`, or None if it does."""
        if self.include and not any(filter_matches(p, repository, tag, untagged=True) for p in self.include):
            return f"matches no include filter ({', '.join(self.include)})"
        for pattern in self.exclude:
            if filter_matches(pattern, repository, tag, untagged=False):
                return f"excluded by filter {pattern}"
        return None

    @classmethod
    def parse(cls, fields: Mapping[str, object]) -> Self:
        """A definition from an operator's request; an InvalidInput naming every bad field."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidInput(describe(exc)) from None


class Rules(BaseModel):
    """What the cloud registries enforce before they create a replica."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the primary registry's region; a replica there would copy a region onto itself
    primary_region: str | None = None
    #: region -> jurisdiction (e.g. `cn-shanghai = "CN"`); regions not listed have no jurisdiction
    jurisdictions: dict[str, str] = {}
    #: jurisdictions whose images must not cross their border, in or out
    no_cross_border: tuple[str, ...] = ()
    #: regions georep does not offer replication in
    not_offered: tuple[str, ...] = ()

    def jurisdiction(self, region: str) -> str | None:
        return self.jurisdictions.get(region)

    def check_create(self, new: ReplicaDefinition, existing: Mapping[str, ReplicaDefinition]) -> None:
        region = new.region
        if region == self.primary_region:
            raise ReplicaRefused(
                "primary-region", f"{region} is the primary's region: a replica must be in another region"
            )
        if region in self.not_offered:
            offered = "; not offered: " + ", ".join(sorted(self.not_offered))
            raise ReplicaRefused("not-offered", f"replication is not offered in {region}{offered}")
        self._check_border(region)
        if region in existing:
            since = existing[region].created_at.isoformat(timespec="seconds")
            raise ReplicaRefused(
                "exists", f"a replica in {region} exists already (created {since}); delete it first", status=409
            )

    def _check_border(self, region: str) -> None:
        if self.primary_region is None:
            return
        home, there = self.jurisdiction(self.primary_region), self.jurisdiction(region)
        if home == there:
            return
        closed = [j for j in (home, there) if j is not None and j in self.no_cross_border]
        if closed:
            raise ReplicaRefused(
                "cross-border",
                f"{region} is in jurisdiction {there or 'none'}, the primary {self.primary_region} in "
                f"{home or 'none'}: replication across the border of {', '.join(closed)} is forbidden",
            )

    def check_delete(self, region: str, existing: Mapping[str, ReplicaDefinition]) -> ReplicaDefinition:
        if region == self.primary_region:
            if existing:
                names = ", ".join(sorted(existing))
                raise ReplicaRefused(
                    "primary-in-use",
                    f"{region} is the primary: it cannot be removed while {len(existing)} replica(s) exist "
                    f"({names}); delete them first",
                    status=409,
                )
            raise ReplicaRefused("primary-region", f"{region} is the primary, not a replica: nothing to delete")
        try:
            return existing[region]
        except KeyError:
            known = ", ".join(sorted(existing)) or "none"
            raise ReplicaRefused("unknown", f"no replica in {region} (replicas: {known})", status=404) from None


class SignedReplica(Message):
    """What the georep API signs for georep.replicas: a region's definition, or its deletion (None), at a time."""

    region: Annotated[str, PlainValidator(lambda v: parse_region(str(v)))]
    signed_at: AwareDatetime
    definition: ReplicaDefinition | None = None

    @model_validator(mode="after")
    def _same_region(self) -> Self:
        if self.definition is not None and self.definition.region != self.region:
            raise ValueError(f"definition of {self.definition.region} signed for {self.region}")
        return self
