"""Content digests (`algorithm:hex`), validated once at the edge.

The algorithms and hex lengths are the ones CNCF distribution accepts; anything
else is refused before it can become part of a storage key.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from engine.errors import DigestMismatch, InvalidDigest

_HEX_LENGTHS: Final = {"sha256": 64, "sha384": 96, "sha512": 128}
_PATTERN: Final = re.compile(r"(sha256|sha384|sha512):([0-9a-f]+)", re.ASCII)


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, value: object) -> Digest:
        if isinstance(value, Digest):
            return value
        if not isinstance(value, str):
            raise InvalidDigest(f"digest must be a string, got {type(value).__name__}")
        match = _PATTERN.fullmatch(value)
        if match is None:
            raise InvalidDigest(f"invalid digest {value[:100]!r}: expected sha256:<64 lowercase hex>")
        algorithm, hex_ = match.groups()
        if len(hex_) != _HEX_LENGTHS[algorithm]:
            raise InvalidDigest(
                f"invalid digest {value[:100]!r}: {algorithm} takes {_HEX_LENGTHS[algorithm]} hex digits"
            )
        return cls(algorithm, hex_)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    def verify(self, data: bytes) -> None:
        actual = hashlib.new(self.algorithm, data).hexdigest()
        if actual != self.hex:
            raise DigestMismatch(
                f"content hashes to {self.algorithm}:{actual}, expected {self}",
                expected=str(self),
                actual=f"{self.algorithm}:{actual}",
            )

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def short(self) -> str:
        return f"{self.algorithm}:{self.hex[:12]}"
