"""The log store on a real SQLite file: upsert semantics, filters, order, limits, time ranges."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from consumers.logstore import LogQuery, LogStore
from engine.events import ReplicationRecord, Status

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
DIGEST_C = "sha256:" + "c" * 64

Key = tuple[str, str]


def record(
    event_id: str = "e1",
    region: str = "eu-west",
    *,
    repository: str = "library/nginx",
    tag: str | None = "1.0",
    digest: str | None = DIGEST_A,
    status: Status = Status.SUCCEEDED,
    attempt: int = 1,
    finished: datetime = T0,
    **extra: Any,
) -> ReplicationRecord:
    return ReplicationRecord.model_validate(
        {
            "event_id": event_id,
            "region": region,
            "repository": repository,
            "tag": tag,
            "digest": digest,
            "status": status,
            "attempt": attempt,
            "started_at": finished - timedelta(seconds=2),
            "finished_at": finished,
            **extra,
        }
    )


# Five rows, one minute apart, varied on every filtered field.
DATASET = [
    record("e1", "eu-west", finished=T0),
    record("e1", "us-east", status=Status.FAILED, finished=T0 + timedelta(minutes=1), error="timeout"),
    record(
        "e2",
        "eu-west",
        repository="library/redis",
        tag="7",
        digest=DIGEST_B,
        status=Status.DEAD_LETTERED,
        finished=T0 + timedelta(minutes=2),
    ),
    record(
        "e3",
        "us-east",
        repository="team/app",
        tag=None,
        digest=DIGEST_C,
        status=Status.SKIPPED,
        finished=T0 + timedelta(minutes=3),
    ),
    record("e4", "eu-west", tag="1.1", digest=DIGEST_B, finished=T0 + timedelta(minutes=4)),
]


def keys(records: list[ReplicationRecord]) -> list[Key]:
    return [(r.event_id, r.region) for r in records]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LogStore]:
    async with LogStore(tmp_path / "log.sqlite3") as opened:
        yield opened


@pytest.fixture
async def filled(store: LogStore) -> LogStore:
    assert await store.put_many(DATASET) == len(DATASET)
    return store


# -- upsert: one row per (event, region), the newest record wins


async def test_retries_of_one_event_leave_one_row_with_the_latest_attempt(store: LogStore) -> None:
    attempts = [
        record(status=Status.FAILED, attempt=1, finished=T0, error="primary answered 503"),
        record(status=Status.FAILED, attempt=2, finished=T0 + timedelta(seconds=5), error="primary answered 503"),
        record(status=Status.SUCCEEDED, attempt=3, finished=T0 + timedelta(seconds=10)),
    ]
    for attempt in attempts:
        assert await store.put_many([attempt]) == 1

    assert await store.query(LogQuery()) == [attempts[-1]]
    assert await store.count() == 1


async def test_an_older_attempt_arriving_later_does_not_overwrite_a_newer_one(store: LogStore) -> None:
    newer = record(status=Status.SUCCEEDED, attempt=2, finished=T0 + timedelta(seconds=10))
    older = record(status=Status.FAILED, attempt=1, finished=T0, error="boom")
    await store.put_many([newer])

    assert await store.put_many([older]) == 0
    assert await store.query(LogQuery()) == [newer]


async def test_a_duplicate_delivery_changes_nothing(store: LogStore) -> None:
    once = record()
    await store.put_many([once])

    assert await store.put_many([once, once]) == 0
    assert await store.query(LogQuery()) == [once]


@pytest.mark.parametrize("order", ["lower-first", "higher-first"])
async def test_on_equal_finish_times_the_higher_attempt_wins(store: LogStore, order: str) -> None:
    lower = record(attempt=1, status=Status.FAILED)
    higher = record(attempt=2, status=Status.SUCCEEDED)
    for one in [lower, higher] if order == "lower-first" else [higher, lower]:
        await store.put_many([one])

    assert await store.query(LogQuery()) == [higher]


async def test_retries_inside_one_batch_keep_the_newest_whatever_their_order(store: LogStore) -> None:
    first = record(attempt=1, status=Status.FAILED, finished=T0)
    second = record(attempt=2, status=Status.SUCCEEDED, finished=T0 + timedelta(seconds=1))

    assert await store.put_many([second, first]) == 1
    assert await store.query(LogQuery()) == [second]


async def test_the_same_event_in_two_regions_is_two_rows(store: LogStore) -> None:
    await store.put_many([record(region="eu-west"), record(region="us-east")])

    assert sorted(keys(await store.query(LogQuery()))) == [("e1", "eu-west"), ("e1", "us-east")]


async def test_an_empty_batch_writes_nothing(store: LogStore) -> None:
    assert await store.put_many([]) == 0
    assert await store.count() == 0


async def test_records_round_trip_with_every_field(store: LogStore) -> None:
    full = record(
        action="delete",
        source="harbor",
        blobs_total=5,
        blobs_copied=3,
        bytes_copied=123_456_789,
        manifests_total=2,
        occurred_at=T0 - timedelta(seconds=3),
        lag_ms=3000,
        error="x",
        note="n",
    )
    await store.put_many([full])

    assert await store.query(LogQuery()) == [full]


# -- queries


async def test_all_records_come_newest_first(filled: LogStore) -> None:
    assert keys(await filled.query(LogQuery())) == [
        ("e4", "eu-west"),
        ("e3", "us-east"),
        ("e2", "eu-west"),
        ("e1", "us-east"),
        ("e1", "eu-west"),
    ]


FILTERS: list[tuple[dict[str, Any], list[Key]]] = [
    ({"repository": "library/nginx"}, [("e4", "eu-west"), ("e1", "us-east"), ("e1", "eu-west")]),
    ({"tag": "1.0"}, [("e1", "us-east"), ("e1", "eu-west")]),
    ({"digest": DIGEST_B}, [("e4", "eu-west"), ("e2", "eu-west")]),
    ({"region": "us-east"}, [("e3", "us-east"), ("e1", "us-east")]),
    ({"status": "failed"}, [("e1", "us-east")]),
    ({"status": "dead-lettered"}, [("e2", "eu-west")]),
    ({"event_id": "e1"}, [("e1", "us-east"), ("e1", "eu-west")]),
    ({"repository": "library/nginx", "region": "eu-west"}, [("e4", "eu-west"), ("e1", "eu-west")]),
    ({"repository": "library/nginx", "status": "skipped"}, []),
    ({"since": T0 + timedelta(minutes=2)}, [("e4", "eu-west"), ("e3", "us-east"), ("e2", "eu-west")]),
    ({"until": T0 + timedelta(minutes=2)}, [("e1", "us-east"), ("e1", "eu-west")]),
    ({"since": T0 + timedelta(minutes=1), "until": T0 + timedelta(minutes=3)}, [("e2", "eu-west"), ("e1", "us-east")]),
    ({"limit": 2}, [("e4", "eu-west"), ("e3", "us-east")]),
    ({"region": "eu-west", "limit": 1}, [("e4", "eu-west")]),
]


@pytest.mark.parametrize(("filters", "expected"), FILTERS)
async def test_each_filter_selects_exactly_its_records(
    filled: LogStore, filters: dict[str, Any], expected: list[Key]
) -> None:
    assert keys(await filled.query(LogQuery.model_validate(filters))) == expected


@pytest.mark.parametrize(("filters", "expected"), FILTERS)
async def test_matching_in_memory_agrees_with_the_store(
    filled: LogStore, filters: dict[str, Any], expected: list[Key]
) -> None:
    query = LogQuery.model_validate({k: v for k, v in filters.items() if k != "limit"})
    in_memory = {(r.event_id, r.region) for r in DATASET if query.matches(r)}

    assert in_memory == {(r.event_id, r.region) for r in await filled.query(query)}


async def test_times_compare_as_instants_whatever_their_offset(store: LogStore) -> None:
    plus_two = timezone(timedelta(hours=2))
    # 13:30+02:00 is 11:30Z: earlier than 12:00Z although its wall-clock reads later.
    early = record("early", finished=datetime(2026, 3, 1, 13, 30, tzinfo=plus_two))
    late = record("late", finished=T0)
    await store.put_many([early, late])

    assert keys(await store.query(LogQuery())) == [("late", "eu-west"), ("early", "eu-west")]
    since = datetime(2026, 3, 1, 13, 45, tzinfo=plus_two)  # 11:45Z
    assert keys(await store.query(LogQuery(since=since))) == [("late", "eu-west")]


async def test_since_is_inclusive_and_until_exclusive_to_the_microsecond(store: LogStore) -> None:
    tick = timedelta(microseconds=1)
    await store.put_many(
        [record("before", finished=T0 - tick), record("at", finished=T0), record("after", finished=T0 + tick)]
    )

    assert keys(await store.query(LogQuery(since=T0))) == [("after", "eu-west"), ("at", "eu-west")]
    assert keys(await store.query(LogQuery(until=T0))) == [("before", "eu-west")]
    assert keys(await store.query(LogQuery(since=T0, until=T0 + tick))) == [("at", "eu-west")]


async def test_the_default_limit_is_100(store: LogStore) -> None:
    await store.put_many(record(f"e{i}", finished=T0 + timedelta(seconds=i)) for i in range(150))

    found = await store.query(LogQuery())
    assert len(found) == 100
    assert found[0].event_id == "e149"


# -- the query's own validation


@pytest.mark.parametrize(
    ("filters", "complaint"),
    [
        ({"digest": "sha256:abc"}, "digest"),
        ({"repository": "Library/Nginx"}, "repository"),
        ({"tag": ".hidden"}, "tag"),
        ({"region": "EU_WEST"}, "region"),
        ({"status": "ok"}, "status"),
        ({"event_id": ""}, "event_id"),
        ({"since": datetime(2026, 3, 1, 12, 0)}, "since"),  # naive, on purpose
        ({"until": "yesterday"}, "until"),
        ({"since": T0 + timedelta(seconds=1), "until": T0}, "after until"),
        ({"limit": 0}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"regoin": "eu-west"}, "regoin"),
    ],
)
def test_a_bad_filter_is_refused_naming_what_is_wrong(filters: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        LogQuery.model_validate(filters)


def test_a_query_travels_as_http_parameters_and_back() -> None:
    query = LogQuery.model_validate(
        {
            "repository": "library/nginx",
            "tag": "1.0",
            "digest": DIGEST_A,
            "region": "eu-west",
            "status": "dead-lettered",
            "event_id": "abc",
            "since": T0,
            "until": T0 + timedelta(hours=1),
            "limit": 7,
        }
    )

    assert LogQuery.model_validate(query.to_params()) == query


# -- the database file


async def test_the_store_creates_its_directory_uses_wal_and_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "log.sqlite3"
    async with LogStore(path) as first:
        await first.put_many(DATASET)

    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    raw.close()
    async with LogStore(path) as second:
        assert await second.count() == len(DATASET)
        assert await second.query(LogQuery(event_id="e2")) == [DATASET[2]]


async def test_a_closed_store_says_so(tmp_path: Path) -> None:
    closed = LogStore(tmp_path / "log.sqlite3")

    with pytest.raises(RuntimeError, match="not open"):
        await closed.query(LogQuery())


async def test_latency_counts_live_pushes_that_succeeded_and_nothing_else(store: LogStore) -> None:
    """A delete's lag, a backfill's, or a failed attempt's would move push-to-pullable percentiles."""
    await store.put_many([
        record("push", lag_ms=100), record("push-2", lag_ms=300, finished=T0 + timedelta(seconds=1)),
        record("delete", action="delete", lag_ms=7200), record("backfill", source="backfill", lag_ms=9000),
        record("failed", status=Status.FAILED, lag_ms=5000), record("other-region", region="us-east", lag_ms=50),
    ])  # fmt: skip
    assert await store.lags_ms("eu-west", T0 - timedelta(minutes=1)) == [100, 300]
    assert await store.lags_ms("eu-west", T0 - timedelta(minutes=1), most=1) == [300], "the latest ones"
    assert [ms for _, ms in await store.lag_series("eu-west", T0 - timedelta(minutes=1))] == [100, 300]
