"""Reading the replication log from outside: the log store over HTTP, or the topic live."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Final

import aiohttp
import orjson
import structlog
from pydantic import ValidationError

from adapters.kafka import KAFKA_ERRORS, new_consumer, started
from adapters.runtime import unless_stopped
from consumers.logstore.query import LogQuery
from consumers.logstore.wire import decode_record
from engine.errors import ApiRefused, ApiUnavailable, InvalidEvent, KafkaUnavailable
from engine.events import ReplicationRecord
from engine.settings import KafkaSettings

log = structlog.get_logger(__name__)

_POLL_MS: Final = 1000


async def fetch(url: str, query: LogQuery, timeout_s: float = 30.0) -> list[ReplicationRecord]:
    """The records the log store at `url` holds for `query`, newest first."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(f"{url}/logs", params=query.to_params()) as response,
        ):
            status, body = response.status, await response.read()
    except aiohttp.ClientError as exc:
        raise ApiUnavailable(f"cannot reach the georep API at {url}: {exc}") from None
    except TimeoutError:
        raise ApiUnavailable(f"the georep API at {url} did not answer within {timeout_s:g}s") from None
    if status == 400:
        raise ApiRefused(f"the log store refused the query: {_reason(body)}", status)
    if status != 200:
        raise ApiUnavailable(f"the georep API at {url} answered HTTP {status}: {_reason(body)}")
    try:
        return [ReplicationRecord.model_validate(item) for item in orjson.loads(body)["records"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValidationError) as exc:
        raise ApiUnavailable(f"the log store at {url} sent an answer georep cannot read: {exc}") from None


def _reason(body: bytes) -> str:
    try:
        return str(orjson.loads(body)["reason"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode(errors="replace").strip() or "(no reason given)"


async def tail(
    kafka: KafkaSettings, query: LogQuery, stop: asyncio.Event, *, from_beginning: bool = False
) -> AsyncGenerator[ReplicationRecord, None]:
    """Records matching `query` as they arrive on the log topic, until `stop` is set.

    No consumer group: following the log must not take partitions from the
    log store or leave committed offsets behind.
    """
    consumer = new_consumer(
        kafka, "logs-follow", kafka.log_topic, group=None, auto_offset_reset="earliest" if from_beginning else "latest"
    )
    try:
        await started(consumer)
        # Fix the starting point now; a lazy reset at the first fetch would
        # skip whatever is published in between.
        await (consumer.seek_to_beginning() if from_beginning else consumer.seek_to_end())
    except KAFKA_ERRORS as exc:
        await consumer.stop()
        raise KafkaUnavailable(
            f"cannot follow {kafka.log_topic} on Kafka at {kafka.bootstrap_servers}: {exc or type(exc).__name__}"
        ) from None
    except BaseException:
        await consumer.stop()
        raise
    try:
        while not stop.is_set():
            batch = await unless_stopped(consumer.getmany(timeout_ms=_POLL_MS), stop)
            records = []
            for tp, messages in (batch or {}).items():
                for message in messages:
                    try:
                        records.append(decode_record(message.value))
                    except InvalidEvent as exc:
                        log.warning(
                            "logs.invalid_record", reason=str(exc), partition=tp.partition, offset=message.offset
                        )
            # Partitions arrive one after another; show a batch in the order things finished.
            for record in sorted(records, key=lambda r: r.finished_at):
                if query.matches(record):
                    yield record
    finally:
        await consumer.stop()
