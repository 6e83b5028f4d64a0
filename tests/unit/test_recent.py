"""What a replicator remembers of its region lately (RecentKeys): bounded in number and in age, and forgotten on
demand, since a remembered key it trusts wrongly would point a tag at a manifest the region lacks."""

from __future__ import annotations

from engine.recent import RecentIds, RecentKeys


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_remembered_until_its_time_is_up() -> None:
    clock = Clock()
    keys = RecentKeys(10, ttl_s=60, clock=clock)
    keys.add("a")
    clock.now += 60
    assert "a" in keys
    clock.now += 0.5
    assert "a" not in keys
    assert len(keys) == 0, "an expired key is dropped when it is asked for"


def test_adding_again_restarts_its_time_and_the_oldest_go_first() -> None:
    clock = Clock()
    keys = RecentKeys(2, ttl_s=60, clock=clock)
    keys.add("a")
    keys.add("b")
    clock.now += 50
    keys.add("a")  # found again: fresh, and now the newest
    keys.add("c")  # over the bound: b, the oldest, goes
    assert ("a" in keys, "b" in keys, "c" in keys) == (True, False, True)
    clock.now += 30
    assert "a" in keys, "its time restarted when it was added again"


def test_discard_and_clear_forget_at_once_and_size_zero_remembers_nothing() -> None:
    keys = RecentKeys(10, ttl_s=60)
    keys.add("a")
    keys.add("b")
    keys.discard("a")
    keys.discard("never-there")
    assert ("a" in keys, "b" in keys) == (False, True)
    keys.clear()
    assert "b" not in keys
    off = RecentKeys(0, ttl_s=60)
    off.add("a")
    assert "a" not in off


def test_recent_ids_keep_the_last_size_ids() -> None:
    ids = RecentIds(2)
    ids.add(["1", "2", "3"])
    assert ("1" in ids, "2" in ids, "3" in ids, len(ids)) == (False, True, True, 2)
