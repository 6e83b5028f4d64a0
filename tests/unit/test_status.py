"""Status: percentiles, and the per-image answer from a region's records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.digest import Digest
from engine.errors import InvalidEvent
from engine.events import Action, ReplicationRecord, Status
from engine.names import Repository, Tag
from engine.replicas import ReplicaDefinition
from georep.api.status import image_status, percentile
from producers.backfill import Checkpoint, State, current_checkpoint

REPO = Repository.parse("team/app")
TAG = Tag.parse("v1")
NEW = Digest.parse("sha256:" + "1" * 64)
OLD = Digest.parse("sha256:" + "2" * 64)
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def record(status: Status, digest: Digest | None = NEW, *, action: Action = Action.PUSH, minute: int = 0,
           **extra: object) -> ReplicationRecord:  # fmt: skip
    when = T0 + timedelta(minutes=minute)
    fields: dict[str, object] = {
        "event_id": f"e{minute}", "region": "eu-frankfurt", "repository": REPO, "tag": TAG, "digest": digest,
        "action": action, "status": status, "attempt": 1, "started_at": when, "finished_at": when, "lag_ms": 1500,
    }  # fmt: skip
    return ReplicationRecord.model_validate(fields | extra)


def answer(
    records: list[ReplicationRecord], wanted: Digest | None = NEW, replica: ReplicaDefinition | None = None
) -> dict[str, Any]:
    newest_first = sorted(records, key=lambda r: r.finished_at, reverse=True)
    return image_status(replica, "eu-frankfurt", REPO, TAG, None if wanted is None else str(wanted), newest_first)


def test_nearest_rank_percentiles() -> None:
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50, 99, 100)
    assert percentile([7], 99) == 7
    assert percentile([], 50) is None


@given(st.lists(st.integers(0, 10**6), min_size=1))
def test_p50_never_exceeds_p99_and_both_are_samples(values: list[int]) -> None:
    ordered = sorted(values)
    p50, p99 = percentile(ordered, 50), percentile(ordered, 99)
    assert p50 is not None
    assert p99 is not None
    assert p50 <= p99
    assert p50 in values
    assert p99 in values


def test_replicated_when_the_current_digest_succeeded() -> None:
    state = answer([record(Status.SUCCEEDED, OLD, minute=0), record(Status.SUCCEEDED, NEW, minute=1)])
    assert state["state"] == "replicated"
    assert state["lag_s"] == 1.5


def test_in_progress_while_the_tag_moved_and_the_new_digest_has_no_record() -> None:
    state = answer([record(Status.SUCCEEDED, OLD)])
    assert state["state"] == "in-progress"
    assert NEW.hex in state["detail"]


def test_in_progress_while_retrying_and_failed_once_dead_lettered_with_why() -> None:
    retrying = answer([record(Status.FAILED, error="storage-unavailable: connection refused", attempt=2)])
    assert retrying["state"] == "in-progress"
    assert retrying["detail"] == "retrying after attempt 2: storage-unavailable: connection refused"
    dead = answer([record(Status.FAILED), record(Status.DEAD_LETTERED, minute=1, error="not-found: blob gone")])
    assert (dead["state"], dead["detail"]) == ("failed", "not-found: blob gone")


def test_not_replicated_when_filtered_and_deleted_when_a_delete_came_last() -> None:
    replica = ReplicaDefinition.parse({
        "region": "eu-frankfurt", "endpoint": "http://s3", "bucket": "bucket", "credentials_ref": "env:K",
        "exclude": ["team/*:v*"],
    })  # fmt: skip
    assert answer([], replica=replica) == {
        "region": "eu-frankfurt", "state": "not-replicated", "detail": "excluded by filter team/*:v*",
    }  # fmt: skip
    deleted = answer([
        record(Status.SUCCEEDED), record(Status.SUCCEEDED, action=Action.DELETE, minute=1, note="manifest deleted"),
    ])  # fmt: skip
    assert (deleted["state"], deleted["detail"]) == ("deleted", "manifest deleted")
    assert answer([record(Status.SUCCEEDED)], wanted=None)["state"] == "not-on-primary"


def test_checkpoint_survives_the_topic() -> None:
    checkpoint = Checkpoint(region="us-oregon", state=State.RUNNING, after="team/app", repositories_done=3)
    assert Checkpoint.from_json(checkpoint.to_json()) == checkpoint


@pytest.mark.parametrize("raw", [b"not json", b'{"region": 5, "state": "sideways"}'])
def test_an_unreadable_checkpoint_is_an_invalid_event(raw: bytes) -> None:
    with pytest.raises(InvalidEvent):
        Checkpoint.from_json(raw)


def test_a_checkpoint_left_by_a_deleted_replica_is_not_resumed() -> None:
    replica = ReplicaDefinition.parse({
        "region": "us-oregon", "endpoint": "http://s3", "bucket": "bucket", "credentials_ref": "env:K",
        "created_at": T0.isoformat(),
    })  # fmt: skip
    old = Checkpoint(region="us-oregon", started_at=T0 - timedelta(days=1), after="a/b")
    new = Checkpoint(region="us-oregon", started_at=T0 + timedelta(seconds=1), after="c/d")
    assert current_checkpoint(old, replica) is None
    assert current_checkpoint(new, replica) == new
    assert current_checkpoint(old, None) == old, "a pinned region has no creation time to compare"
    assert current_checkpoint(None, replica) is None


def test_a_running_or_failed_checkpoint_is_unfinished() -> None:
    assert Checkpoint(region="r", state=State.RUNNING).unfinished
    assert Checkpoint(region="r", state=State.FAILED, error="primary unreachable").unfinished
    assert not Checkpoint(region="r", state=State.DONE).unfinished
