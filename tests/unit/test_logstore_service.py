"""The log store service without Kafka: HTTP serves at once, Kafka is retried, `stop` ends it all cleanly."""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict
from pathlib import Path

import aiohttp
from structlog.testing import capture_logs
from structlog.typing import EventDict

from engine.settings import KafkaSettings, LogStoreSettings, ReplicasSettings, Settings
from engine.signing import new_signing_key, public_key
from georep.api.service import serve_logstore


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LogEvents:
    """A structlog processor that lets a test await a log event by name."""

    def __init__(self) -> None:
        self._seen: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def __call__(self, _: object, __: str, event_dict: EventDict) -> EventDict:
        self._seen[str(event_dict["event"])].set()
        return event_dict

    async def wait_for(self, event: str, meanwhile: asyncio.Task[None], timeout_s: float = 20.0) -> None:
        """Wait for `event`, failing at once with its error if `meanwhile` ends first."""
        seen = asyncio.ensure_future(self._seen[event].wait())
        try:
            await asyncio.wait({seen, meanwhile}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            seen.cancel()
        if meanwhile.done():
            meanwhile.result()
            raise AssertionError(f"the service ended before logging {event}")
        if not self._seen[event].is_set():
            raise AssertionError(f"no {event} within {timeout_s}s")


async def test_http_serves_while_kafka_is_unreachable_and_stop_ends_it(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(
        replicas=ReplicasSettings(verify_key=public_key(new_signing_key())),
        kafka=KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=1000, security_protocol="PLAINTEXT"
        ),
        logstore=LogStoreSettings(path=tmp_path / "db" / "log.sqlite3", host="127.0.0.1", port=port),
    )
    stop = asyncio.Event()

    events = LogEvents()
    with capture_logs(processors=[events]) as logs:
        service = asyncio.create_task(serve_logstore(settings, stop))
        # Once Kafka has been refused, the service is in its retry loop: HTTP must already answer.
        await events.wait_for("logstore.kafka_unavailable", meanwhile=service)

        await events.wait_for("health.problem", meanwhile=service)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/logs") as response:
                assert response.status == 200, "the log is read from the store, which needs no Kafka"
                assert await response.json() == {"records": []}
            async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 503, "health tells the truth: Kafka does not answer"
                problems = (await response.json())["problems"]
                assert [(p["check"], p["subject"]) for p in problems] == [("kafka", settings.kafka.bootstrap_servers)]

        stop.set()
        async with asyncio.timeout(10):
            await service

    assert any(e["event"] == "logstore.stopped" for e in logs)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the HTTP listener is closed"
