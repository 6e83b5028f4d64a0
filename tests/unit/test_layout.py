"""Every key georep writes, exactly where CNCF distribution reads it, and back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.digest import Digest
from engine.errors import InvalidInput
from engine.layout import KeyKind, Layout, ParsedKey, link_body
from engine.names import Repository, Tag

D = Digest.parse("sha256:" + "0123456789abcdef" * 4)
REPO = Repository.parse("library/nginx")
TAG = Tag.parse("1.27")
V2 = "docker/registry/v2"


def test_link_body_is_exactly_the_digest_without_newline() -> None:
    assert link_body(D) == f"sha256:{D.hex}".encode()
    assert len(link_body(D)) == 71


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda lo: lo.blob_data(D), f"{V2}/blobs/sha256/01/{D.hex}/data"),
        (lambda lo: lo.layer_link(REPO, D), f"{V2}/repositories/library/nginx/_layers/sha256/{D.hex}/link"),
        (
            lambda lo: lo.revision_link(REPO, D),
            f"{V2}/repositories/library/nginx/_manifests/revisions/sha256/{D.hex}/link",
        ),
        (
            lambda lo: lo.tag_index_link(REPO, TAG, D),
            f"{V2}/repositories/library/nginx/_manifests/tags/1.27/index/sha256/{D.hex}/link",
        ),
        (
            lambda lo: lo.tag_current_link(REPO, TAG),
            f"{V2}/repositories/library/nginx/_manifests/tags/1.27/current/link",
        ),
        (lambda lo: lo.tag_state(REPO, TAG), "georep/v1/repositories/library/nginx/_tags/1.27"),
        (lambda lo: lo.reconciled(REPO), "georep/v1/repositories/library/nginx/_reconciled"),
    ],
)
def test_every_key_with_and_without_prefix(build: object, expected: str) -> None:
    assert callable(build)
    assert build(Layout()) == expected
    assert build(Layout("mirror/eu")) == f"mirror/eu/{expected}"
    assert build(Layout("/mirror/eu/")) == f"mirror/eu/{expected}"


@pytest.mark.parametrize("prefix", ["..", "a/../b", "a//b", "a b", "a%2f", "ü"])
def test_hostile_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(InvalidInput):
        Layout(prefix)


@pytest.mark.parametrize("prefix", ["", "registry", "a/b.c_d-e"])
def test_parse_inverts_every_builder(prefix: str) -> None:
    layout = Layout(prefix)
    cases = {
        layout.blob_data(D): ParsedKey(KeyKind.BLOB_DATA, digest=D),
        layout.layer_link(REPO, D): ParsedKey(KeyKind.LAYER_LINK, digest=D, repository=REPO),
        layout.revision_link(REPO, D): ParsedKey(KeyKind.REVISION_LINK, digest=D, repository=REPO),
        layout.tag_index_link(REPO, TAG, D): ParsedKey(KeyKind.TAG_INDEX_LINK, digest=D, repository=REPO, tag=TAG),
        layout.tag_current_link(REPO, TAG): ParsedKey(KeyKind.TAG_CURRENT_LINK, repository=REPO, tag=TAG),
        layout.tag_state(REPO, TAG): ParsedKey(KeyKind.TAG_STATE, repository=REPO, tag=TAG),
        layout.reconciled(REPO): ParsedKey(KeyKind.RECONCILED, repository=REPO),
    }
    for key, parsed in cases.items():
        assert layout.parse(key) == parsed


@pytest.mark.parametrize(
    "key",
    [
        "elsewhere/x",
        f"{V2}/blobs/sha256/ff/{D.hex}/data",  # the shard must match the digest
        f"{V2}/repositories/library/nginx/_uploads/x/data",
        f"{V2}/repositories/_layers/sha256/{D.hex}/link",
        f"{V2}/repositories/library/nginx/_manifests/tags/1.27/current/data",
    ],
)
def test_parse_refuses_keys_outside_the_layout(key: str) -> None:
    with pytest.raises(InvalidInput):
        Layout().parse(key)


def test_parse_refuses_keys_outside_the_prefix() -> None:
    with pytest.raises(InvalidInput, match="outside prefix"):
        Layout("eu").parse(Layout("us").blob_data(D))


names = st.from_regex(
    r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8}){0,2}(?:/[a-z0-9]{1,8}(?:__[a-z0-9]{1,4})?){0,3}", fullmatch=True
)
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
hexes = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)


@given(names, tags, hexes)
def test_round_trip_for_any_valid_name_tag_and_digest(name: str, tag: str, hex_: str) -> None:
    layout = Layout("p")
    repo, tg, digest = Repository.parse(name), Tag.parse(tag), Digest("sha256", hex_)
    assert layout.parse(layout.tag_index_link(repo, tg, digest)) == ParsedKey(
        KeyKind.TAG_INDEX_LINK, digest=digest, repository=repo, tag=tg
    )
    assert layout.parse(layout.layer_link(repo, digest)).repository == repo
