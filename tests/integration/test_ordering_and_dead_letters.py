"""Replays never move a tag backwards; events that cannot succeed are dead-lettered and the partition moves on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.kafka import new_consumer, running
from deploy.local import images, stack
from engine import topics
from tests.integration.conftest import Stack
from tests.integration.test_log_and_webhook import post

pytestmark = pytest.mark.integration

V1 = "application/vnd.docker.distribution.events.v1+json"


def manifest_event(event_id: str, repo: str, digest: str, tag: str, timestamp: str) -> dict[str, Any]:
    return {
        "events": [
            {
                "id": event_id, "timestamp": timestamp, "action": "push",
                "target": {"mediaType": images.OCI_MANIFEST, "digest": digest, "size": 1, "repository": repo,
                           "tag": tag},
            }
        ]
    }  # fmt: skip


async def test_a_replayed_older_push_does_not_move_the_tag_back(live: Stack) -> None:
    repo = live.unique("order/app")
    old = live.push_image(repo, "t", images.image([images.layer(8_000, f"{repo}-old")]))
    await live.replicated(repo, "t", old)
    new = live.push_image(repo, "t", images.image([images.layer(8_000, f"{repo}-new")]))
    await live.replicated(repo, "t", new)
    # A late redelivery of the first push (its timestamp is older than the second push's).
    replay_id = f"replay-{repo.replace('/', '-')}"
    status, _ = await post(
        live, live.info["webhook"], manifest_event(replay_id, repo, old, "t", "2001-01-01T00:00:00Z"), V1
    )
    assert status == 200
    found = await live.records(lambda rs: len(rs) == len(live.regions), event_id=replay_id)
    assert all(r["status"] == "succeeded" and "left on" in (r["note"] or "") for r in found), found
    await live.replicated(repo, "t", new)  # still the newer image, in every region

    # Replicators that just started know no tag note: the replay's claim on the tag's note fails, and the
    # note it then reads still wins.
    for region in live.regions:
        stack.stop(live.root, f"replicator-{region}")
        stack.restart(live.root, f"replicator-{region}")
        await stack.wait_up(live.root, f"replicator-{region}")
    again = f"{replay_id}-2"
    status, _ = await post(
        live, live.info["webhook"], manifest_event(again, repo, old, "t", "2001-01-01T00:00:01Z"), V1
    )
    assert status == 200
    found = await live.records(lambda rs: len(rs) == len(live.regions), event_id=again)
    assert all(r["status"] == "succeeded" and "left on" in (r["note"] or "") for r in found), found
    await live.replicated(repo, "t", new)
    live.pull_everywhere(repo, "t", new)


async def test_an_event_for_a_missing_manifest_is_dead_lettered_and_the_partition_moves_on(live: Stack) -> None:
    repo = live.unique("dead/app")
    missing = "sha256:" + "e" * 64
    event_id = f"missing-{repo.replace('/', '-')}"
    status, _ = await post(
        live, live.info["webhook"], manifest_event(event_id, repo, missing, "v1", "2030-01-01T00:00:00Z"), V1
    )
    assert status == 200
    found = await live.records(
        lambda rs: {r["region"] for r in rs if r["status"] == "dead-lettered"} == set(live.regions), event_id=event_id
    )
    assert all("not-found" in (r["error"] or "") for r in found if r["status"] == "dead-lettered")
    # The same repository (so the same partition) keeps replicating after the dead letter.
    digest = live.push_image(repo, "v2", images.image([images.layer(4_000, repo)]))
    await live.replicated(repo, "v2", digest)

    async with running(new_consumer(live.kafka(), "test", topics.DEAD_LETTER, group=None)) as consumer:
        letters: dict[str, dict[str, Any]] = {}
        while set(letters) != set(live.regions):
            batch = await consumer.getmany(timeout_ms=1000)
            assert batch, f"dead letters missing; found {sorted(letters)}"
            for records in batch.values():
                for record in records:
                    letter = json.loads(record.value)
                    if (letter.get("event") or {}).get("id") == event_id:
                        letters[letter["region"]] = letter
    for region, letter in letters.items():
        assert (letter["reason"], letter["attempts"], letter["event"]["digest"]) == ("not-found", 1, missing), region
