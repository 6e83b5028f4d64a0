"""Every object-store key georep writes, built in this one module.

A region's bucket holds exactly what CNCF distribution's storage driver reads,
under an optional root prefix (the registry's `storage.s3.rootdirectory`):

    <prefix>/
    ├── docker/registry/v2/
    │   ├── blobs/<alg>/<hex[0:2]>/<hex>/data                 blob bytes (layers, configs, manifests)
    │   └── repositories/<name>/
    │       ├── _layers/<alg>/<hex>/link                      the repository may serve this blob
    │       └── _manifests/
    │           ├── revisions/<alg>/<hex>/link                the repository may serve this manifest
    │           └── tags/<tag>/
    │               ├── index/<alg>/<hex>/link                the tag has pointed at this manifest
    │               └── current/link                          the tag points at this manifest now
    └── georep/v1/repositories/<name>/
        ├── _tags/<tag>                                       georep's own: which push set the tag
        └── _reconciled                                       the tag -> digest map the last pass found equal

A link holds exactly `<alg>:<hex>`, no newline. The `georep/` tree sits beside
the registry's and is never read by it; it lets replays and out-of-order
deliveries see that a tag already reflects a newer push, and lets the
reconciliation loop tell in one read that a repository has not moved.

Names, tags and digests reach this module only as validated values, so no key
can leave its prefix; `parse` maps a key back, for verification and tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final

from engine.digest import Digest
from engine.errors import InvalidInput
from engine.names import Repository, Tag

_V2: Final = "docker/registry/v2"
_PREFIX: Final = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*", re.ASCII)


class KeyKind(Enum):
    BLOB_DATA = "blob-data"
    LAYER_LINK = "layer-link"
    REVISION_LINK = "revision-link"
    TAG_INDEX_LINK = "tag-index-link"
    TAG_CURRENT_LINK = "tag-current-link"
    TAG_STATE = "tag-state"
    RECONCILED = "reconciled"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    kind: KeyKind
    digest: Digest | None = None
    repository: Repository | None = None
    tag: Tag | None = None


def link_body(digest: Digest) -> bytes:
    """What a link file holds; a trailing newline makes the registry answer 500."""
    return str(digest).encode("ascii")


@dataclass(frozen=True, slots=True)
class Layout:
    prefix: str = ""

    def __post_init__(self) -> None:
        cleaned = self.prefix.strip("/")
        if cleaned and (_PREFIX.fullmatch(cleaned) is None or ".." in cleaned.split("/")):
            raise InvalidInput(f"invalid storage prefix {self.prefix!r}: '/'-separated [A-Za-z0-9._-] segments")
        object.__setattr__(self, "prefix", cleaned)

    def _key(self, *parts: str) -> str:
        path = "/".join(parts)
        return f"{self.prefix}/{path}" if self.prefix else path

    @property
    def blobs_root(self) -> str:
        """The prefix of every blob's data key (for listing, e.g. unfinished uploads)."""
        return self._key(_V2, "blobs") + "/"

    def blob_data(self, digest: Digest) -> str:
        return self._key(_V2, "blobs", digest.algorithm, digest.hex[:2], digest.hex, "data")

    def layer_link(self, repository: Repository, digest: Digest) -> str:
        return self._key(_V2, "repositories", repository.name, "_layers", digest.algorithm, digest.hex, "link")

    def revision_link(self, repository: Repository, digest: Digest) -> str:
        return self._key(
            _V2, "repositories", repository.name, "_manifests", "revisions", digest.algorithm, digest.hex, "link"
        )

    def tag_index_link(self, repository: Repository, tag: Tag, digest: Digest) -> str:
        return self._key(
            _V2,
            "repositories",
            repository.name,
            "_manifests",
            "tags",
            tag.name,
            "index",
            digest.algorithm,
            digest.hex,
            "link",
        )

    def tag_root(self, repository: Repository, tag: Tag) -> str:
        """The prefix of every link of one tag (its current link and its index): what a tag delete removes."""
        return self._key(_V2, "repositories", repository.name, "_manifests", "tags", tag.name) + "/"

    def tag_current_link(self, repository: Repository, tag: Tag) -> str:
        return self._key(_V2, "repositories", repository.name, "_manifests", "tags", tag.name, "current", "link")

    def revisions_root(self, repository: Repository) -> str:
        """The prefix of every revision link of a repository (the manifests the region serves in it)."""
        return self._key(_V2, "repositories", repository.name, "_manifests", "revisions") + "/"

    def tags_root(self, repository: Repository) -> str:
        """The prefix of every tag link of a repository (for listing the tags a region has)."""
        return self._key(_V2, "repositories", repository.name, "_manifests", "tags") + "/"

    def tag_state(self, repository: Repository, tag: Tag) -> str:
        return self._key("georep", "v1", "repositories", repository.name, "_tags", tag.name)

    def reconciled(self, repository: Repository) -> str:
        return self._key("georep", "v1", "repositories", repository.name, "_reconciled")

    def parse(self, key: str) -> ParsedKey:
        """The inverse of the builders above; raises InvalidInput for any other key."""
        rest = key
        if self.prefix:
            if not key.startswith(self.prefix + "/"):
                raise InvalidInput(f"key {key!r} is outside prefix {self.prefix!r}")
            rest = key[len(self.prefix) + 1 :]
        parsed = _parse_relative(rest)
        if parsed is None:
            raise InvalidInput(f"key {key!r} is not part of the registry layout")
        return parsed


def _digest(algorithm: str, hex_: str) -> Digest:
    return Digest.parse(f"{algorithm}:{hex_}")


def _parse_relative(rest: str) -> ParsedKey | None:
    parts = rest.split("/")
    if rest.startswith("georep/v1/repositories/") and len(parts) >= 6 and parts[-2] == "_tags":
        return ParsedKey(
            KeyKind.TAG_STATE, repository=Repository.parse("/".join(parts[3:-2])), tag=Tag.parse(parts[-1])
        )
    if rest.startswith("georep/v1/repositories/") and len(parts) >= 5 and parts[-1] == "_reconciled":
        return ParsedKey(KeyKind.RECONCILED, repository=Repository.parse("/".join(parts[3:-1])))
    if not rest.startswith(_V2 + "/"):
        return None
    parts = parts[3:]
    if len(parts) == 5 and parts[0] == "blobs" and parts[4] == "data" and parts[2] == parts[3][:2]:
        return ParsedKey(KeyKind.BLOB_DATA, digest=_digest(parts[1], parts[3]))
    if parts[0] != "repositories" or parts[-1] != "link":
        return None
    # Repository names never contain a component starting with '_', so the
    # first '_layers' or '_manifests' component ends the name.
    i = next((i for i, part in enumerate(parts) if i > 0 and part.startswith("_")), None)
    if i is None:
        return None
    repository = Repository.parse("/".join(parts[1:i]))
    tail = parts[i:]
    if len(tail) == 4 and tail[0] == "_layers":
        return ParsedKey(KeyKind.LAYER_LINK, digest=_digest(tail[1], tail[2]), repository=repository)
    if len(tail) == 5 and tail[:2] == ["_manifests", "revisions"]:
        return ParsedKey(KeyKind.REVISION_LINK, digest=_digest(tail[2], tail[3]), repository=repository)
    if len(tail) == 5 and tail[:2] == ["_manifests", "tags"] and tail[3] == "current":
        return ParsedKey(KeyKind.TAG_CURRENT_LINK, repository=repository, tag=Tag.parse(tail[2]))
    if len(tail) == 7 and tail[:2] == ["_manifests", "tags"] and tail[3] == "index":
        return ParsedKey(
            KeyKind.TAG_INDEX_LINK, digest=_digest(tail[4], tail[5]), repository=repository, tag=Tag.parse(tail[2])
        )
    return None
