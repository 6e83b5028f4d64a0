"""Health tells the truth: each rule breaks the real part it watches, then reads `/healthz` over HTTP.

    a lane stops        a partition's event keeps raising: 503 names the partition, the gauge says 1
    a task dies         the supervisor reports it by name and the command exits 1
    the budget is gone  copies wait and no byte comes back: 503 names the held bytes
    Kafka is gone       the probe fails: 503 names the brokers (the real stack: tests/faults)

The parts are real (Lane, ByteBudget, Supervisor, KafkaMonitor, the aiohttp routes); what breaks them is a
handler that raises, a holder that never gives back, a probe aimed at a port where nothing listens.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from adapters.health import Health, KafkaMonitor, Supervisor
from adapters.kafka import ClusterProbe
from consumers.budget import ByteBudget
from consumers.lanes import Lane
from consumers.replicator import budget_problems, lane_problems
from engine import topics
from engine.errors import Unhealthy
from engine.settings import KafkaSettings
from georep.cli import finish


@dataclass(frozen=True)
class TP:
    topic: str = topics.EVENTS
    partition: int = 3


@dataclass(frozen=True)
class Record:
    offset: int
    key: bytes | None = None


@pytest.fixture
async def served() -> AsyncIterator[tuple[Health, TestClient[Any, Any]]]:
    health = Health("replicator-eu-test")
    app = web.Application()
    health.add_routes(app)
    async with TestClient(TestServer(app)) as client:
        yield health, client


async def read(client: TestClient[Any, Any], path: str = "/healthz") -> tuple[int, dict[str, Any]]:
    async with client.get(path) as response:
        return response.status, await response.json()


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_a_lane_whose_event_keeps_failing_is_named_until_it_goes_through(
    served: tuple[Health, TestClient[Any, Any]],
) -> None:
    health, client = served
    broken = asyncio.Event()
    broken.set()

    async def handle(record: Record) -> None:
        if broken.is_set():
            raise KeyError("a bug nobody mapped")

    lane = Lane(TP(), handle, buffer=10, retry_initial_s=0.01, retry_max_s=0.05)
    health.watch(lambda: lane_problems("eu-test", [lane]))
    try:
        assert (await read(client))[0] == 200
        lane.put(Record(41))
        status, body = await read(client)
        async with asyncio.timeout(5):
            while status == 200:  # the first failure takes a loop turn or two
                status, body = await read(client)
        (problem,) = body["problems"]
        assert (problem["check"], problem["subject"]) == ("lane", f"{topics.EVENTS}/3")
        assert "offset 41" in problem["detail"]
        assert "KeyError" in problem["detail"]
        assert gauge("georep_replicator_lane_stalled", region="eu-test", partition="3") == 1
        assert gauge("georep_health_problem", process="replicator-eu-test", check="lane", subject=f"{topics.EVENTS}/3")

        broken.clear()  # the cause is fixed: the same event goes through, nothing was skipped
        async with asyncio.timeout(5):
            while lane.done != 42:  # noqa: ASYNC110 - the lane's progress has no event to wait on
                await asyncio.sleep(0.01)
        assert (await read(client))[0] == 200
        assert gauge("georep_replicator_lane_stalled", region="eu-test", partition="3") == 0
    finally:
        await lane.stop(grace_s=0)


async def test_a_budget_nobody_gives_back_to_is_named_with_its_held_bytes(
    served: tuple[Health, TestClient[Any, Any]],
) -> None:
    health, client = served
    budget = ByteBudget(8 * 1024 * 1024)
    health.watch(lambda: budget_problems("eu-test", budget, stall_s=0.2))
    await budget.take(8 * 1024 * 1024)  # a leak: taken, never released
    waiting = asyncio.create_task(budget.take(1024 * 1024))
    try:
        assert (await read(client))[0] == 200, "a full budget with a fresh waiter is only busy"
        async with asyncio.timeout(5):
            while (await read(client))[0] == 200:  # noqa: ASYNC110 - health is read over HTTP, as a probe would
                await asyncio.sleep(0.05)
        status, body = await read(client)
        (problem,) = body["problems"]
        assert (status, problem["check"], problem["subject"]) == (503, "budget", "copy-buffers")
        assert problem["detail"].startswith("8388608 of 8388608 bytes held with 1 copies waiting")
        assert gauge("georep_replicator_budget_held_bytes", region="eu-test") == 8 * 1024 * 1024
        assert gauge("georep_replicator_budget_waiting", region="eu-test") == 1
        budget.release(8 * 1024 * 1024)
        await waiting
        assert (await read(client))[0] == 200
    finally:
        waiting.cancel()


async def test_a_scrape_of_metrics_shows_the_budget_as_it_is_not_as_the_last_healthz_saw_it(
    served: tuple[Health, TestClient[Any, Any]],
) -> None:
    """A CI run waited 30 s for held bytes to reach 0 on /metrics: they had, but no /healthz had been read since."""
    health, client = served
    budget = ByteBudget(8 * 1024 * 1024)
    health.watch(lambda: budget_problems("eu-scrape", budget, stall_s=60))

    async def scraped() -> dict[str, float]:
        async with client.get("/metrics") as response:
            text = await response.text()
        wanted = ("georep_replicator_budget_held_bytes", "georep_health_problem")
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(wanted) and "eu-scrape" in line
        }

    await budget.take(3 * 1024 * 1024)
    assert (await read(client))[0] == 200
    assert gauge("georep_replicator_budget_held_bytes", region="eu-scrape") == 3 * 1024 * 1024
    budget.release(3 * 1024 * 1024)
    assert await scraped() == {'georep_replicator_budget_held_bytes{region="eu-scrape"}': 0.0}
    health.report("kafka", "eu-scrape:9092", "no answer")
    assert (await scraped())[
        'georep_health_problem{check="kafka",process="replicator-eu-test",subject="eu-scrape:9092"}'
    ] == 1.0
    health.clear("kafka", "eu-scrape:9092")
    assert (await scraped())[
        'georep_health_problem{check="kafka",process="replicator-eu-test",subject="eu-scrape:9092"}'
    ] == 0.0


async def test_a_task_that_dies_is_named_and_the_command_exits_1(
    served: tuple[Health, TestClient[Any, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    health, client = served
    stop = asyncio.Event()
    sweeping = asyncio.Event()

    async def sweeper() -> None:
        await sweeping.wait()
        raise OSError("disk gone")

    async def consume() -> None:
        await stop.wait()  # a healthy long-lived task: cancelled when its sibling dies

    async def process() -> int:
        async with Supervisor(health, stop).running() as tasks:
            tasks.spawn("consume", consume())
            tasks.spawn("sweep-uploads", sweeper())
            assert (await read(client))[0] == 200
            sweeping.set()
        return 0

    assert await finish("replicate", process()) == 1
    assert "georep replicate: task sweep-uploads died: OSError: disk gone" in capsys.readouterr().err
    status, body = await read(client)
    assert status == 503
    assert [(p["check"], p["subject"]) for p in body["problems"]] == [("task", "sweep-uploads")]


async def test_a_task_that_returns_while_the_process_runs_is_a_death_too() -> None:
    health = Health("api")
    with pytest.raises(Unhealthy, match="task log-ingest ended while the process was still running"):
        async with Supervisor(health, asyncio.Event()).running() as tasks:
            tasks.spawn("log-ingest", asyncio.sleep(0))
    assert [p.subject for p in health.problems()] == ["log-ingest"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_kafka_that_does_not_answer_is_named_on_healthz(served: tuple[Health, TestClient[Any, Any]]) -> None:
    health, client = served
    kafka = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{_closed_port()}", request_timeout_ms=1000, security_protocol="PLAINTEXT"
    )
    probe = ClusterProbe(kafka, "test")
    monitor = KafkaMonitor(health, kafka.bootstrap_servers, probe, timeout_s=2)
    try:
        assert not await monitor.check_once()
    finally:
        await probe.close()
    for path in ("/healthz", "/readyz"):
        status, body = await read(client, path)
        (problem,) = body["problems"]
        assert (status, problem["check"], problem["subject"]) == (503, "kafka", kafka.bootstrap_servers)
