"""How the registry client reads a 401 challenge and a pagination `Link` header."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from adapters.registry import Challenge, _next_page, parse_challenge

# -- WWW-Authenticate -------------------------------------------------------------


def test_distribution_bearer_challenge() -> None:
    # Verbatim the shape distribution 2.8 sends for a manifest GET without a token.
    header = 'Bearer realm="http://127.0.0.1:5001/token",service="registry.local",scope="repository:team/app:pull"'
    assert parse_challenge(header) == Challenge(
        "bearer",
        {"realm": "http://127.0.0.1:5001/token", "service": "registry.local", "scope": "repository:team/app:pull"},
    )


def test_basic_challenge() -> None:
    assert parse_challenge('Basic realm="georep-test"') == Challenge("basic", {"realm": "georep-test"})


@pytest.mark.parametrize("scheme", ["BEARER", "bearer", "Bearer", "bEaReR"])
def test_scheme_is_case_insensitive(scheme: str) -> None:
    assert parse_challenge(f'{scheme} realm="https://auth.example/token"').scheme == "bearer"


def test_comma_inside_a_quoted_value_stays_in_the_value() -> None:
    # A push scope lists actions with commas; they must not split the parameter.
    challenge = parse_challenge('Bearer realm="https://auth.example/token",scope="repository:a/b:pull,push"')
    assert challenge.params["scope"] == "repository:a/b:pull,push"


def test_error_of_an_insufficient_scope_challenge_is_kept() -> None:
    header = (
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull",error="insufficient_scope"'
    )
    assert parse_challenge(header).params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a:pull",
        "error": "insufficient_scope",
    }


def test_spaces_around_parameters_and_header() -> None:
    challenge = parse_challenge('  Bearer realm="https://auth.example/token", service="reg",  scope="x"  ')
    assert challenge == Challenge("bearer", {"realm": "https://auth.example/token", "service": "reg", "scope": "x"})


def test_empty_value_is_kept_as_empty() -> None:
    assert parse_challenge('Bearer realm="https://auth.example/token",scope=""').params["scope"] == ""


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", Challenge("", {})),
        ("Basic", Challenge("basic", {})),
        ("Negotiate abc123==", Challenge("negotiate", {})),
    ],
    ids=["absent", "scheme-only", "token68"],
)
def test_challenge_without_parameters(header: str, expected: Challenge) -> None:
    # No realm: the client has nothing to follow and must report the 401, not guess.
    assert parse_challenge(header) == expected


# -- Link pagination ------------------------------------------------------------------


@dataclass(frozen=True)
class _Headers:
    """Only what `_next_page` reads of a response: its headers."""

    headers: CIMultiDictProxy[str]


def next_page(*links: str) -> str | None:
    headers: CIMultiDict[str] = CIMultiDict()
    for link in links:
        headers.add("Link", link)
    return _next_page(cast(aiohttp.ClientResponse, _Headers(CIMultiDictProxy(headers))))


def test_no_link_is_the_last_page() -> None:
    assert next_page() is None
    assert next_page("") is None


def test_distribution_catalog_link_keeps_its_encoding() -> None:
    # Verbatim what distribution 2.8 sends for /v2/_catalog?n=1; `last` stays percent-encoded as sent.
    assert next_page('</v2/_catalog?last=auth%2Fapp&n=1>; rel="next"') == "/v2/_catalog?last=auth%2Fapp&n=1"


def test_tags_link() -> None:
    assert next_page('</v2/team/app/tags/list?last=v2&n=2>; rel="next"') == "/v2/team/app/tags/list?last=v2&n=2"


def test_absolute_link_is_followed_on_the_configured_primary() -> None:
    link = '<https://registry.example:5000/v2/_catalog?last=b&n=100>; rel="next"'
    assert next_page(link) == "/v2/_catalog?last=b&n=100"


@pytest.mark.parametrize("rel", ["rel=next", "REL=Next", 'rel="next"'])
def test_rel_spellings(rel: str) -> None:
    assert next_page(f"</v2/_catalog?last=a&n=1>; {rel}") == "/v2/_catalog?last=a&n=1"


def test_next_is_chosen_among_several_links() -> None:
    link = '</v2/_catalog?n=1>; rel="prev", </v2/_catalog?last=b&n=1>; rel="next"'
    assert next_page(link) == "/v2/_catalog?last=b&n=1"


def test_next_among_link_parameters() -> None:
    assert next_page('</v2/_catalog?last=b&n=1>; title="more"; rel="next"') == "/v2/_catalog?last=b&n=1"


@pytest.mark.parametrize(
    "link",
    [
        '</v2/_catalog?n=1>; rel="prev"',  # following it would walk backwards forever
        '</v2/_catalog?last=a&n=1>; rel="nextpage"',
        '</other/path?last=a>; rel="next"',  # not the registry API
        '<https://elsewhere.example/login>; rel="next"',
        "</v2/_catalog?last=a&n=1>",
    ],
    ids=["prev-only", "other-rel", "outside-v2", "absolute-outside-v2", "no-rel"],
)
def test_links_that_are_not_a_next_page(link: str) -> None:
    assert next_page(link) is None
