"""An image reference as people write it: `repo:tag`, `repo@sha256:…`, or either with its registry in front,
as copied from a pull command (`registry.example.com:5000/team/app:v1`)."""

from __future__ import annotations

import re
from typing import Final

from engine.digest import Digest
from engine.names import Repository, Tag

#: a registry's host[:port]: a host name or IPv4 address (IPv6 in brackets), and a port
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST: Final = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?$")


def without_registry(ref: str) -> str:
    """`ref` without a leading registry host: the first component is one when more follow, it reads as a host, and
    it has a `.` or a `:`, or is `localhost` (the rule docker and distribution use). Anything else is left for the
    name's own checks (`../x` is no host: it is refused as a repository)."""
    first, slash, rest = ref.partition("/")
    if slash and rest and ("." in first or ":" in first or first == "localhost") and _HOST.match(first):
        return rest
    return ref


def parse_image(text: str) -> tuple[Repository, Tag | None, Digest | None]:
    """`[registry/]repo:tag` or `[registry/]repo@sha256:…` (a bare `repo` means `repo:latest`)."""
    text = without_registry(text.strip())
    if "@" in text:
        name, _, digest = text.partition("@")
        return Repository.parse(name), None, Digest.parse(digest)
    name, _, tag = text.partition(":")
    return Repository.parse(name), Tag.parse(tag or "latest"), None
