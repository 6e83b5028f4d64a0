"""Secure by default, on the real stack: Kafka refuses strangers and keeps each role to its ACLs, a definition
nobody but the API signed changes nothing, and a read that asks the primary needs the API token."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError, TopicAuthorizationFailedError
from pydantic import SecretStr

from adapters.compacted import following, replica_view
from adapters.kafka import Publisher, new_consumer, new_producer, running, started
from deploy.local import images
from deploy.local.probe import wait_served
from engine import topics
from engine.events import utcnow
from engine.replicas import ReplicaDefinition, SignedReplica
from engine.settings import KafkaSettings
from engine.signing import new_signing_key, sign
from tests.integration.conftest import Stack, metric
from tests.waiting import until

pytestmark = pytest.mark.integration

KiB = 1024
#: how long a refused client may take to say so (aiokafka retries its bootstrap within its request timeout)
REFUSAL_TIMEOUT_S = 40


async def refused(kafka: KafkaSettings) -> BaseException:
    """The error a producer with these settings fails to start with (AssertionError if it starts)."""
    producer = new_producer(kafka.model_copy(update={"request_timeout_ms": 5000}), "stranger")
    try:
        async with asyncio.timeout(REFUSAL_TIMEOUT_S):
            await started(producer)
            # Started means metadata came back: a write must still be refused.
            await producer.send_and_wait(kafka.events_topic, b"{}", key=b"x")
    except (KafkaError, OSError) as exc:
        return exc
    finally:
        await producer.stop()
    raise AssertionError(f"a client with {kafka.security_protocol} and user {kafka.username!r} wrote an event")


async def test_kafka_refuses_a_client_without_credentials_or_with_a_wrong_password(live: Stack) -> None:
    admin = live.kafka()
    for stranger in (
        admin.model_copy(update={"security_protocol": "SSL", "username": None, "password": None}),  # TLS, no SASL
        admin.model_copy(update={"security_protocol": "PLAINTEXT", "username": None, "password": None}),
        admin.model_copy(update={"password": SecretStr("not-the-password")}),
    ):
        await refused(stranger)
    # The broker says why it closed the last one: the password, not the network.
    kafka_log = live.root / "logs" / "kafka.log"
    wrong_password = "invalid credentials with SASL mechanism SCRAM-SHA-512"
    await until(lambda: _found(kafka_log, wrong_password), "the broker to log the failed authentication")
    # The same settings with the right password work: the refusals above are about credentials.
    async with running(new_producer(admin, "test")) as producer:
        await producer.partitions_for(admin.events_topic)


async def test_a_replicator_principal_writes_its_topics_and_nothing_else(live: Stack) -> None:
    env = await live.principal("replicator-sec-probe")
    kafka = live.kafka(username=env["GEOREP_KAFKA__USERNAME"], password=env["GEOREP_KAFKA__PASSWORD"])
    async with running(new_producer(kafka, "test")) as producer:
        # Allowed: a replication record (what every replicator writes).
        await producer.send_and_wait(kafka.log_topic, b"{}", key=b"sec-probe/none")
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(kafka.replicas_topic, b"{}", key=b"eu-frankfurt")
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(kafka.backfill_topic, b"{}", key=b"eu-frankfurt")
    # Its own group only: another region's offsets are not its to move.
    other = new_consumer(kafka, "test", kafka.events_topic, group=topics.replicator_group("eu-frankfurt"))
    with pytest.raises(GroupAuthorizationFailedError):
        await asyncio.wait_for(joined(other), REFUSAL_TIMEOUT_S)
    await other.stop()


async def joined(consumer: AIOKafkaConsumer) -> None:
    await started(consumer)
    await consumer.getmany(timeout_ms=5000)


@asynccontextmanager
async def attacker_s3() -> AsyncIterator[tuple[str, list[str]]]:
    """A local server standing in for an attacker's S3 endpoint: its URL and every request it received."""
    received: list[str] = []

    async def record(request: web.Request) -> web.Response:
        received.append(f"{request.method} {request.path}")
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await runner.cleanup()


async def _found(path: Path, text: str) -> bool:
    return text in await asyncio.to_thread(path.read_text, errors="replace")


def stack_verify_key(live: Stack) -> str:
    key: str = tomllib.loads(Path(live.info["config"]).read_text())["replicas"]["verify_key"]
    return key


async def healthz(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as response:
        doc: dict[str, Any] = await response.json()
        return doc


async def test_a_definition_forged_by_a_kafka_superuser_changes_nothing(live: Stack) -> None:
    """The review's scenario: eu-frankfurt's definition rewritten on the topic by an admin principal, pointing at
    a server standing in for the attacker's S3. Unsigned, signed with another key, or a bare tombstone: the
    region keeps replicating into its own bucket, the forged server receives nothing, and the API writes the
    region's signed definition back on top of the forgeries, so that compaction keeps a value that is followed."""
    region = "eu-frankfurt"
    replicator = live.regions[region]["replicator"]
    verify_key = stack_verify_key(live)
    status, doc = await live.api("GET", f"/replicas/{region}")
    assert status == 200, doc
    genuine = ReplicaDefinition.model_validate(doc["replica"])
    bucket_before = (await healthz(replicator))["bucket"]
    ignored_before = await metric(replicator, "georep_replica_definitions_ignored_total")

    async with attacker_s3() as (endpoint, received):
        forged = genuine.model_copy(update={"endpoint": endpoint, "bucket": "attacker-bucket"})
        change = SignedReplica(region=region, signed_at=utcnow() + timedelta(days=1), definition=forged)
        admin = live.kafka()
        publisher = Publisher(admin, "test")
        try:
            await publisher.publish(admin.replicas_topic, [
                (region.encode(), forged.to_json()),  # unsigned
                (region.encode(), sign(change.to_json(), new_signing_key())),  # another key
                (region.encode(), None),  # a tombstone: would delete the region
            ], 30)  # fmt: skip
        finally:
            await publisher.close()

        async def all_ignored() -> bool:
            return await metric(replicator, "georep_replica_definitions_ignored_total") >= ignored_before + 3

        await until(all_ignored, "the replicator to ignore the three forged values", 60)
        repo = live.unique("forged/app")
        image = images.image([images.layer(64 * KiB, repo)], label=repo)
        digest = live.push_image(repo, "v1", image)
        await live.replicated(repo, "v1", digest)
        assert (await healthz(replicator))["bucket"] == bucket_before == genuine.bucket
        assert received == [], f"the forged endpoint was reached: {received}"

    # What a process started later reads: the topic's newest value for the region is the genuine one again.
    async with following(replica_view(live.kafka(), "test", verify_key)) as view:

        async def restored() -> bool:
            return not view.overwritten and region in view.values

        await until(restored, "the API to sign the region's definition again", 60)
        assert view.values[region] == genuine


async def test_a_read_that_asks_the_primary_needs_the_api_token(live: Stack) -> None:
    repo = live.unique("private/payroll")
    digest = live.push_image(repo, "v2", images.image([images.layer(8 * KiB, repo)], label=repo))
    url = f"{live.info['logs']}/status/image"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, params={"image": f"{repo}:v2"}) as anonymous:
            assert anonymous.status == 401
            body = await anonymous.json()
            assert digest not in str(body)
        async with session.get(url, params={"image": f"{repo}:v3"}) as anonymous:
            assert anonymous.status == 401  # no "not-on-primary" either: existence is not leaked
    status, doc = await live.api("GET", "/status/image", image=f"{repo}:v2")
    assert status == 200, doc
    assert doc["digest"] == digest
    # Answers built from the log store alone stay open.
    async with aiohttp.ClientSession() as session, session.get(f"{live.info['logs']}/status") as open_status:
        assert open_status.status == 200


async def test_a_replica_on_the_sdks_default_chain_replicates_with_the_keys_the_chain_finds(live: Stack) -> None:
    """`credentials_ref: aws:default` names no keys: the replicator's SDK finds them where a cloud puts them
    (here the shared credentials file, which the chain really reads; IRSA and instance roles come the same way)."""
    base = live.regions["ap-singapore"]
    shared = live.root / "aws-credentials"
    shared.write_text(
        f"[default]\naws_access_key_id = {base['access_key']}\naws_secret_access_key = {base['secret_key']}\n"
    )
    chain = {"AWS_SHARED_CREDENTIALS_FILE": str(shared), "AWS_CONFIG_FILE": str(live.root / "no-aws-config")}
    async with live.extra_region(
        "eu-chain", 8, env=chain, backfill=False, include=["chain/*"], credentials_ref="aws:default"
    ) as region:
        repo = live.unique("chain/app")
        digest = live.push_image(repo, "v1", images.image([images.layer(16 * KiB, repo)], label=repo))
        await wait_served(region.registry, repo, "v1", digest, 60)
