"""Repository names and tags, with exactly the grammar of CNCF distribution 2.8.

A validator stricter than the registry would stall replication (the registry
retries a refused notification forever), and a looser one could let a request
write outside its key prefix. So: the registry's own grammar, its own length
limits, ASCII only. Every separator in the grammar must be followed by an
alphanumeric, so `..`, `/x`, `x/`, `%2e` and look-alike letters cannot pass.

The registry writes its separator rule as `[-]*`; here it is `-+` with the
zero-dash case folded into the alphanumeric run: the same language, without
the exponential backtracking Python's `re` would otherwise do on a hostile name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from engine.errors import InvalidName

NAME_MAX_LENGTH: Final = 255
TAG_MAX_LENGTH: Final = 128

_COMPONENT: Final = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT: Final = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN: Final = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_NAME: Final = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*", re.ASCII)
_TAG: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_REGION: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "…")


@dataclass(frozen=True, slots=True, order=True)
class Repository:
    """A repository name such as `library/nginx`."""

    name: str

    @classmethod
    def parse(cls, value: object) -> Repository:
        if isinstance(value, Repository):
            return value
        if not isinstance(value, str):
            raise InvalidName(f"repository name must be a string, got {type(value).__name__}")
        if not value:
            raise InvalidName("repository name is empty")
        if len(value) > NAME_MAX_LENGTH:
            raise InvalidName(f"repository name is {len(value)} characters long; the limit is {NAME_MAX_LENGTH}")
        if _NAME.fullmatch(value) is None:
            raise InvalidName(
                f"invalid repository name {_shown(value)}: lowercase path components of "
                "[a-z0-9] joined by '.', '_', '__' or '-', separated by '/'"
            )
        return cls(value)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True, order=True)
class Tag:
    """A tag such as `v1.2.3`: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'."""

    name: str

    @classmethod
    def parse(cls, value: object) -> Tag:
        if isinstance(value, Tag):
            return value
        if not isinstance(value, str):
            raise InvalidName(f"tag must be a string, got {type(value).__name__}")
        if _TAG.fullmatch(value) is None:
            raise InvalidName(
                f"invalid tag {_shown(value)}: up to {TAG_MAX_LENGTH} of [A-Za-z0-9_.-], not starting with '.' or '-'"
            )
        return cls(value)

    def __str__(self) -> str:
        return self.name


def parse_region(value: str) -> str:
    """Region names become consumer group ids and record keys: DNS-label style."""
    if _REGION.fullmatch(value) is None:
        raise InvalidName(f"invalid region name {_shown(value)}: lowercase letters, digits and '-', up to 63")
    return value
