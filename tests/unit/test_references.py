"""Image references as people paste them."""

from __future__ import annotations

import pytest

from engine.errors import InvalidInput
from engine.references import parse_image, without_registry


@pytest.mark.parametrize(("pasted", "plain"), [
    ("127.0.0.1:33010/team/app:v1", "team/app:v1"),
    ("registry.example.com/team/app@sha256:" + "a" * 64, "team/app@sha256:" + "a" * 64),
    ("localhost/app:v1", "app:v1"),
    ("team/app:v1", "team/app:v1"),
    ("app", "app"),
])  # fmt: skip
def test_a_full_reference_is_read_without_its_registry(pasted: str, plain: str) -> None:
    assert without_registry(pasted) == plain
    assert parse_image(pasted) == parse_image(plain)


def test_a_reference_without_a_tag_means_latest_and_a_bad_one_is_refused() -> None:
    assert str(parse_image("team/app")[1]) == "latest"
    for bad in ("127.0.0.1:5000/../x:v1", "../etc:v1", "../../x", "registry.example.com/Team/App:v1"):
        with pytest.raises(InvalidInput):
            parse_image(bad)
