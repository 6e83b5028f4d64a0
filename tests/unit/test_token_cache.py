"""Bearer tokens of the primary, cached per scope: bounded, each for its `expires_in` less a margin, and one
lock per scope (so that many requests answered 401 at once fetch one token), with the locks bounded too."""

from __future__ import annotations

import asyncio
import time

import pytest

from adapters.registry import TOKEN_MARGIN_S, TokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)  # what adapters.registry reads the time from
    return fake


def test_a_token_lives_its_expires_in_less_the_margin(clock: Clock) -> None:
    cache = TokenCache()
    cache.put("repository:team/app:pull", "t1", lifetime_s=300)
    clock.now += 300 - TOKEN_MARGIN_S - 1
    assert cache.get("repository:team/app:pull") == "t1"
    clock.now += 2
    assert cache.get("repository:team/app:pull") is None
    assert len(cache) == 0, "an expired token is dropped"


def test_the_least_recently_used_scope_goes_first(clock: Clock) -> None:
    cache = TokenCache(size=2)
    cache.put("a", "ta", 300)
    cache.put("b", "tb", 300)
    assert cache.get("a") == "ta"  # a is now the more recent
    cache.put("c", "tc", 300)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("ta", None, "tc")


async def test_concurrent_401s_of_one_scope_fetch_one_token() -> None:
    cache = TokenCache()
    fetched: list[str] = []

    async def token(scope: str) -> str:
        async with cache.lock(scope):
            if (known := cache.get(scope)) is not None:
                return known
            await asyncio.sleep(0)  # the token server's round trip: the others pile up on the lock meanwhile
            fetched.append(scope)
            cache.put(scope, f"token-{len(fetched)}", 300)
            return f"token-{len(fetched)}"

    got = await asyncio.gather(*(token("repository:team/app:pull") for _ in range(20)))
    assert fetched == ["repository:team/app:pull"]
    assert set(got) == {"token-1"}


def test_idle_locks_of_scopes_no_longer_cached_are_dropped() -> None:
    cache = TokenCache(size=4)
    first = cache.lock("scope-0")
    assert cache.lock("scope-0") is first, "one lock per scope"
    for n in range(1, 100):
        cache.lock(f"scope-{n}")
    assert len(cache._locks) <= 2 * cache.size + 1
