"""Replica regions as operators manage them: the rules, a replica's lifecycle, its filters and deletes switch."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import orjson
import pytest

from adapters.kafka import Publisher
from deploy.local import images, stack
from deploy.local.probe import served_digest
from engine import topics
from engine.events import utcnow
from engine.replicas import ReplicaDefinition, SignedReplica
from engine.signing import sign
from tests.integration.conftest import Stack, run_georep
from tests.waiting import until

pytestmark = pytest.mark.integration

KiB = 1024


def _refused(stderr: str, rule: str, words: str) -> None:
    assert f"refused [{rule}]" in stderr, stderr
    assert words in stderr, stderr


async def test_every_rule_refuses_with_its_message_from_the_cli_and_over_http(live: Stack) -> None:
    create = ["replicas", "create", "--endpoint", "http://127.0.0.1:9", "--bucket", "nowhere", "--credentials-ref",
              "env:NOWHERE"]  # fmt: skip
    cases = [
        ("us-virginia", "primary-region", "us-virginia is the primary's region", 422),
        ("cn-shanghai", "cross-border", "replication across the border of CN is forbidden", 422),
        ("us-gov-east", "not-offered", "replication is not offered in us-gov-east", 422),
        ("ap-singapore", "exists", "a replica in ap-singapore exists already", 409),
    ]
    for region, rule, words, status in cases:
        code, _, err = await run_georep(live, *create, "--region", region)
        assert code == 1
        _refused(err, rule, words)
        answer_status, answer = await live.api("POST", "/replicas", {
            "region": region, "endpoint": "http://127.0.0.1:9", "bucket": "nowhere", "credentials_ref": "env:NOWHERE",
        })  # fmt: skip
        assert (answer_status, answer["error"], answer["rule"]) == (status, "replica-refused", rule)
        assert words in answer["reason"]

    code, _, err = await run_georep(live, "replicas", "delete", "us-virginia")
    assert code == 1
    _refused(err, "primary-in-use", "cannot be removed while 2 replica(s) exist (ap-singapore, eu-frankfurt)")
    status, answer = await live.api("DELETE", "/replicas/us-virginia")
    assert (status, answer["rule"]) == (409, "primary-in-use")

    # Secrets are referenced, never stored: keys in the request are refused, and say how to reference them.
    status, answer = await live.api("POST", "/replicas", {
        "region": "ap-tokyo", "endpoint": "http://127.0.0.1:9", "bucket": "nowhere",
        "credentials_ref": "AKIAxxxx:s3cr3t",
    })  # fmt: skip
    assert status == 400
    assert "must reference the keys" in answer["reason"]

    # Changes need the API token; reading does not.
    async with aiohttp.ClientSession() as session:
        async with session.delete(f"{live.info['logs']}/replicas/ap-singapore") as anonymous:
            assert anonymous.status == 401
            assert "missing or wrong bearer token" in (await anonymous.json())["reason"]
        async with session.get(f"{live.info['logs']}/replicas") as listing:
            assert listing.status == 200

    code, out, _ = await run_georep(live, "replicas", "list", "--json")
    assert code == 0
    listed = json.loads(out)["replicas"]
    assert [r["region"] for r in listed] == ["ap-singapore", "eu-frankfurt"], "nothing refused was created"
    assert all(r["credentials_ref"].startswith("file:") and "secret" not in r for r in listed)


async def test_replica_with_filters_and_deletes_off_then_deleted(live: Stack) -> None:
    """ap-tokyo takes `filtered/*` except `*-debug` tags and keeps deleted content; deleting it stops its replicator."""
    repo, other = live.unique("filtered/app"), live.unique("unfiltered/app")
    options: dict[str, Any] = {"include": ["filtered/*"], "exclude": ["*:*-debug"], "deletes": False, "backfill": False}
    async with live.extra_region("ap-tokyo", 0, **options) as tokyo:
        code, out, _ = await run_georep(live, "replicas", "show", "ap-tokyo", "--json")
        shown = json.loads(out)["replica"]
        assert (shown["include"], shown["exclude"], shown["deletes"]) == (["filtered/*"], ["*:*-debug"], False)

        wanted = live.push_image(repo, "v1", images.image([images.layer(40 * KiB, f"{repo}-1")]))
        debug = live.push_image(repo, "v1-debug", images.image([images.layer(40 * KiB, f"{repo}-2")]))
        elsewhere = live.push_image(other, "v1", images.image([images.layer(40 * KiB, f"{other}-1")]))
        await live.replicated(repo, "v1", wanted)
        await live.replicated(other, "v1", elsewhere)  # the stack's own regions take everything

        found = await live.records(lambda rs: len(rs) == 2, repository=repo, region="ap-tokyo")
        by_tag = {r["tag"]: r for r in found}
        assert by_tag["v1"]["status"] == "succeeded"
        assert (by_tag["v1-debug"]["status"], by_tag["v1-debug"]["note"]) == ("skipped", "excluded by filter *:*-debug")
        (skipped,) = await live.records(lambda rs: len(rs) == 1, repository=other, region="ap-tokyo")
        assert skipped["status"] == "skipped"
        assert "matches no include filter" in skipped["note"]
        async with aiohttp.ClientSession() as session:
            assert await served_digest(session, tokyo.registry, repo, "v1") == wanted
            assert await served_digest(session, tokyo.registry, repo, "v1-debug") is None
            assert await served_digest(session, tokyo.registry, other, "v1") is None
        assert debug != wanted

        code, out, _ = await run_georep(live, "status", f"{repo}:v1-debug", "--json")
        states = {r["region"]: r for r in json.loads(out)["regions"]}
        assert states["ap-tokyo"]["state"] == "not-replicated"
        assert states["ap-tokyo"]["detail"] == "excluded by filter *:*-debug"

        # Deletes off: the primary drops the image, the stack's regions follow, ap-tokyo keeps serving it.
        async with aiohttp.ClientSession() as session:
            async with session.delete(f"http://{live.primary}/v2/{repo}/manifests/{wanted}") as deleted:
                assert deleted.status == 202
            kept = await live.records(
                lambda rs: any(r["action"] == "delete" and r["digest"] == wanted for r in rs),
                repository=repo, region="ap-tokyo",
            )  # fmt: skip
            note = next(r["note"] for r in kept if r["action"] == "delete" and r["digest"] == wanted)
            assert note == "deletes are off for this replica: the region keeps the content"
            for region in live.regions.values():
                await _until_gone(session, region["registry"], repo, "v1")
            assert await served_digest(session, tokyo.registry, repo, "v1") == wanted

        code, out, err = await run_georep(live, "replicas", "delete", "ap-tokyo")
        assert code == 0, err
        assert "deleted replica ap-tokyo" in out
        # The replicator learns it from the replicas topic and stops by itself, draining first.
        await _until_exited(tokyo.replicator)
        assert tokyo.replicator.returncode == 0
        code, out, _ = await run_georep(live, "replicas", "list", "--json")
        assert [r["region"] for r in json.loads(out)["replicas"]] == ["ap-singapore", "eu-frankfurt"]


async def test_a_replica_rewritten_in_place_is_served_from_its_new_definition(live: Stack) -> None:
    """A definition replaced in the replicas topic (here: another prefix) moves the running replicator to it."""
    before, after = live.unique("redefined/app"), live.unique("redefined/app")
    async with live.extra_region("eu-paris", 2, backfill=False) as paris:
        first = live.push_image(before, "v1", images.image([images.layer(40 * KiB, f"{before}-1")]))
        await live.records(lambda rs: [r["status"] for r in rs] == ["succeeded"], repository=before, region="eu-paris")

        status, body = await live.api("GET", "/replicas/eu-paris")
        assert status == 200, body
        old = ReplicaDefinition.from_json(orjson.dumps(body["replica"]))
        new = old.model_copy(update={"prefix": "moved", "created_at": utcnow()})
        publisher = Publisher(live.kafka(), "test")
        try:
            change = SignedReplica(region="eu-paris", signed_at=utcnow(), definition=new)
            await publisher.publish(topics.REPLICAS, [(b"eu-paris", sign(change.to_json(), live.signing_key))], 15)
        finally:
            await publisher.close()

        async def moved() -> bool:
            try:
                async with aiohttp.ClientSession() as session, session.get(f"{paris.health}/healthz") as health:
                    return health.status == 200 and (await health.json())["prefix"] == new.prefix
            except aiohttp.ClientConnectionError:  # its HTTP side restarts with the new definition
                return False

        await until(moved, "the eu-paris replicator to write under its new prefix", 30)
        second = live.push_image(after, "v1", images.image([images.layer(40 * KiB, f"{after}-1")]))
        await live.records(lambda rs: [r["status"] for r in rs] == ["succeeded"], repository=after, region="eu-paris")
        assert paris.replicator.poll() is None, "a rewritten definition does not stop the replicator"

        # verify reads the region as its definition now says: the image pushed after the rewrite is under "moved/".
        code, out, err = await run_georep(live, "verify", "--region", "eu-paris", "--repository", after, "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["findings"] == []
        assert [(c["repository"], c["tag"], c["digest"]) for c in report["checked"]] == [(after, "v1", second)]
        # ...and the one pushed before it is where the old definition put it, served by the registry configured so.
        async with aiohttp.ClientSession() as session:
            assert await served_digest(session, paris.registry, before, "v1") == first
            assert await served_digest(session, paris.registry, after, "v1") is None


async def _until_gone(session: aiohttp.ClientSession, registry: str, repo: str, reference: str) -> None:
    async def gone() -> bool:
        return await served_digest(session, registry, repo, reference) is None

    await until(gone, f"{registry} to stop serving {repo}:{reference}", 60)


async def _until_exited(proc: stack.Proc) -> None:
    async def exited() -> bool:
        return proc.poll() is not None

    await until(exited, "the replicator to exit after its replica was deleted", 60)
