"""Digests, repository names and tags: what the registry accepts, we accept; nothing else."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.digest import Digest
from engine.errors import DigestMismatch, InvalidDigest, InvalidName
from engine.names import NAME_MAX_LENGTH, Repository, Tag, parse_region

HEX = "a" * 64


class TestDigest:
    def test_parses_sha256_and_prints_back(self) -> None:
        digest = Digest.parse(f"sha256:{HEX}")
        assert (digest.algorithm, digest.hex, str(digest)) == ("sha256", HEX, f"sha256:{HEX}")

    def test_accepts_the_registrys_other_algorithms(self) -> None:
        assert Digest.parse("sha512:" + "b" * 128).algorithm == "sha512"
        assert Digest.parse("sha384:" + "c" * 96).algorithm == "sha384"

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "sha256:",
            f"sha256:{HEX[:-1]}",
            f"sha256:{HEX}0",
            f"sha256:{HEX.upper()}",
            f"md5:{HEX}",
            f"SHA256:{HEX}",
            f"sha256:{HEX}\n",
            f" sha256:{HEX}",
            f"sha256:{'g' * 64}",
            "sha512:" + "b" * 64,
            f"sha256:{HEX}/../../x",
        ],
    )
    def test_rejects_malformed(self, value: str) -> None:
        with pytest.raises(InvalidDigest):
            Digest.parse(value)

    def test_rejects_non_strings(self) -> None:
        with pytest.raises(InvalidDigest, match="must be a string"):
            Digest.parse(42)

    def test_of_and_verify(self) -> None:
        data = b"hello"
        digest = Digest.of(data)
        assert digest.hex == hashlib.sha256(data).hexdigest()
        digest.verify(data)
        with pytest.raises(DigestMismatch) as caught:
            digest.verify(b"hellO")
        assert caught.value.context["expected"] == str(digest)

    @given(st.binary(max_size=256))
    def test_round_trip_of_any_content(self, data: bytes) -> None:
        digest = Digest.of(data)
        assert Digest.parse(str(digest)) == digest


class TestRepository:
    @pytest.mark.parametrize(
        "name",
        [
            "nginx",
            "library/nginx",
            "a/b/c/d",
            "my-app",
            "my--app",
            "my_app",
            "my__app",
            "my.app",
            "a0/b1.c2_d3-e4",
            "localhost:5000/team/app",  # distribution 2.8 accepts a domain component
            "Registry.Example.com/app",  # ... whose letters may be upper case
            "x" * NAME_MAX_LENGTH,
        ],
    )
    def test_accepts_what_distribution_accepts(self, name: str) -> None:
        assert Repository.parse(name).name == name

    @pytest.mark.parametrize(
        "name",
        [
            "",
            "Nginx",
            "library/Nginx",
            "/nginx",
            "nginx/",
            "a//b",
            "..",
            "a/../b",
            "a/./b",
            "./a",
            "a..b",
            "-a",
            "a-",
            "a___b",
            "_a",
            "a/_layers",
            "%2e%2e/a",
            "a%2fb",
            "a b",
            "a\\b",
            "a\x00b",
            "ａpp",  # full-width a
            "аpp",  # Cyrillic a
            "app\u200b",  # zero-width space
            "x" * (NAME_MAX_LENGTH + 1),
        ],
    )
    def test_rejects_everything_else(self, name: str) -> None:
        with pytest.raises(InvalidName):
            Repository.parse(name)

    def test_hostile_long_name_is_rejected_quickly(self) -> None:
        # With the registry's own `[-]*` separator a backtracking regex takes exponential time here.
        hostile = "a" * 60 + "!"
        with pytest.raises(InvalidName):
            Repository.parse(hostile)

    @given(st.text(max_size=300))
    def test_an_accepted_name_never_escapes_its_prefix(self, text: str) -> None:
        try:
            name = Repository.parse(text).name
        except InvalidName:
            return
        parts = name.split("/")
        assert all(part and part not in (".", "..") and not part.startswith("_") for part in parts)
        assert re.fullmatch(r"[A-Za-z0-9._:/-]+", name)


class TestTag:
    @pytest.mark.parametrize("tag", ["latest", "v1.2.3", "V1", "_x", "1", "a" * 128, "sha256-" + HEX + ".sig"])
    def test_accepts(self, tag: str) -> None:
        assert str(Tag.parse(tag)) == tag

    @pytest.mark.parametrize(
        "tag", ["", ".hidden", "-x", "a/b", "a:b", "..", "a" * 129, "v1\n", "ｖ1", "a b", f"sha256:{HEX}"]
    )
    def test_rejects(self, tag: str) -> None:
        with pytest.raises(InvalidName):
            Tag.parse(tag)


def test_region_names_are_dns_labels() -> None:
    assert parse_region("ap-singapore") == "ap-singapore"
    for bad in ("", "AP", "ap_singapore", "-ap", "ap-", "a" * 64, "ap/sg"):
        with pytest.raises(InvalidName):
            parse_region(bad)
