"""georep's domain: values, schemas, storage layout, manifests and the replication plan. No I/O."""

from engine.digest import Digest
from engine.errors import (
    DigestMismatch,
    GeorepError,
    InvalidDigest,
    InvalidEvent,
    InvalidInput,
    InvalidManifest,
    InvalidName,
    NotFoundUpstream,
    StorageUnavailable,
    UpstreamUnavailable,
)
from engine.events import Action, DeadLetter, ReplicationEvent, ReplicationRecord, Source, Status
from engine.layout import KeyKind, Layout, ParsedKey, link_body
from engine.manifests import Descriptor, Manifest, parse_manifest
from engine.names import Repository, Tag
from engine.plan import Mode, Phase, Plan, TagState, Write, build_plan, child_digests

__all__ = [
    "Action",
    "DeadLetter",
    "Descriptor",
    "Digest",
    "DigestMismatch",
    "GeorepError",
    "InvalidDigest",
    "InvalidEvent",
    "InvalidInput",
    "InvalidManifest",
    "InvalidName",
    "KeyKind",
    "Layout",
    "Manifest",
    "Mode",
    "NotFoundUpstream",
    "ParsedKey",
    "Phase",
    "Plan",
    "ReplicationEvent",
    "ReplicationRecord",
    "Repository",
    "Source",
    "Status",
    "StorageUnavailable",
    "Tag",
    "TagState",
    "UpstreamUnavailable",
    "Write",
    "build_plan",
    "child_digests",
    "link_body",
    "parse_manifest",
]
