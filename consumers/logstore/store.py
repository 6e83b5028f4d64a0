"""The log store: the latest ReplicationRecord per (event, region), in SQLite.

Replicators publish one record per attempt, and Kafka may deliver any of them
twice or out of order, so a write is an upsert that keeps the newer record:
later `finished_at` wins, a tie goes to the higher `attempt`, and a full tie
(a duplicate delivery) changes nothing. Replaying the topic from the start is
therefore harmless.

Times are stored as integer microseconds since the epoch (UTC), so SQL compares
them exactly whatever offset the producer wrote. Filter columns sit beside the
full record JSON, which is what queries return.

One connection writes and another reads (WAL lets them run side by side), so
an HTTP query never waits behind a batch being written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiosqlite

from consumers.logstore.query import LogQuery
from engine.events import ReplicationRecord

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS records (
    event_id    TEXT    NOT NULL,
    region      TEXT    NOT NULL,
    repository  TEXT    NOT NULL,
    tag         TEXT,
    digest      TEXT,
    status      TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    finished_us INTEGER NOT NULL,
    record      TEXT    NOT NULL,
    PRIMARY KEY (event_id, region)
) WITHOUT ROWID;
-- Each filter index carries finished_us so that "newest first" needs no sort.
CREATE INDEX IF NOT EXISTS records_repository ON records (repository, finished_us);
CREATE INDEX IF NOT EXISTS records_region ON records (region, finished_us);
CREATE INDEX IF NOT EXISTS records_status ON records (status, finished_us);
CREATE INDEX IF NOT EXISTS records_digest ON records (digest, finished_us);
CREATE INDEX IF NOT EXISTS records_finished ON records (finished_us);
"""

_UPSERT: Final = """
INSERT INTO records (event_id, region, repository, tag, digest, status, attempt, finished_us, record)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (event_id, region) DO UPDATE SET
    repository = excluded.repository,
    tag = excluded.tag,
    digest = excluded.digest,
    status = excluded.status,
    attempt = excluded.attempt,
    finished_us = excluded.finished_us,
    record = excluded.record
WHERE (excluded.finished_us, excluded.attempt) > (records.finished_us, records.attempt)
"""

# Equality filters: each is both a LogQuery field and a column. SQL is built only from these names.
_EQUALITY: Final = ("repository", "tag", "digest", "region", "status", "event_id")


@dataclass(frozen=True, slots=True)
class Totals:
    #: events by the status of their latest record
    by_status: dict[str, int]
    bytes_copied: int

    def __getitem__(self, status: str) -> int:
        return self.by_status.get(status, 0)


def to_micros(when: datetime) -> int:
    """Microseconds since the epoch, exact (no float on the way)."""
    return (when - _EPOCH) // timedelta(microseconds=1)


def _row(record: ReplicationRecord) -> tuple[Any, ...]:
    return (
        record.event_id,
        record.region,
        str(record.repository),
        None if record.tag is None else str(record.tag),
        None if record.digest is None else str(record.digest),
        record.status.value,
        record.attempt,
        to_micros(record.finished_at),
        record.to_json().decode(),
    )


def _where(q: LogQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for name in _EQUALITY:
        value = getattr(q, name)
        if value is not None:
            clauses.append(f"{name} = ?")
            args.append(str(value))
    if q.since is not None:
        clauses.append("finished_us >= ?")
        args.append(to_micros(q.since))
    if q.until is not None:
        clauses.append("finished_us < ?")
        args.append(to_micros(q.until))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


class LogStore:
    """`async with LogStore(path) as store:`; the parent directory is created if missing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # A batch is one transaction; two callers must not interleave inside it.
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = await aiosqlite.connect(self.path)
        try:
            await writer.execute("PRAGMA journal_mode=WAL")
            # Kafka offsets are committed right after a batch: the batch must survive a power cut too.
            await writer.execute("PRAGMA synchronous=FULL")
            await writer.execute("PRAGMA busy_timeout=5000")
            await writer.executescript(_SCHEMA)
            await writer.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            await writer.commit()
            reader = await aiosqlite.connect(self.path)
        except BaseException:
            await writer.close()
            raise
        await reader.execute("PRAGMA query_only=ON")
        await reader.execute("PRAGMA busy_timeout=5000")
        self._writer, self._reader = writer, reader

    async def close(self) -> None:
        for connection in (self._reader, self._writer):
            if connection is not None:
                await connection.close()
        self._reader = self._writer = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _connections(self) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        if self._writer is None or self._reader is None:
            raise RuntimeError("the log store is not open")
        return self._writer, self._reader

    async def put_many(self, records: Iterable[ReplicationRecord]) -> int:
        """Store records in one transaction; returns how many were new or newer than what was stored."""
        writer, _ = self._connections()
        rows = [_row(record) for record in records]
        if not rows:
            return 0
        async with self._write_lock:
            try:
                cursor = await writer.executemany(_UPSERT, rows)
                changed = cursor.rowcount
                await cursor.close()
                await writer.commit()
            except BaseException:
                await writer.rollback()
                raise
        return changed

    async def query(self, q: LogQuery) -> list[ReplicationRecord]:
        """Matching records, newest `finished_at` first."""
        _, reader = self._connections()
        where, args = _where(q)
        sql = f"SELECT record FROM records{where} ORDER BY finished_us DESC, event_id, region LIMIT ?"  # noqa: S608 -- only fixed column names are formatted in
        async with reader.execute(sql, [*args, q.limit]) as cursor:
            rows = await cursor.fetchall()
        return [ReplicationRecord.model_validate_json(row[0]) for row in rows]

    async def totals(self, region: str, *, source: str | None = None, since: datetime | None = None) -> Totals:
        """Events per latest status, and the bytes copied by the succeeded ones, in `region`."""
        _, reader = self._connections()
        sql = (
            "SELECT status, count(*), coalesce(sum(json_extract(record, '$.bytes_copied')), 0) FROM records"
            " WHERE region = ? AND finished_us >= ?"
        )
        args: list[Any] = [region, to_micros(since) if since is not None else 0]
        if source is not None:
            sql += " AND json_extract(record, '$.source') = ?"
            args.append(source)
        async with reader.execute(sql + " GROUP BY status", args) as cursor:
            rows = await cursor.fetchall()
        counts = {str(status): int(n) for status, n, _ in rows}
        copied = sum(int(b) for status, _, b in rows if status == "succeeded")
        return Totals(counts, copied)

    async def lags_ms(self, region: str, since: datetime) -> list[int]:
        """Push-to-pullable times of live (not backfill) events that succeeded in `region` since `since`."""
        _, reader = self._connections()
        sql = (
            "SELECT json_extract(record, '$.lag_ms') FROM records WHERE region = ? AND status = 'succeeded'"
            " AND finished_us >= ? AND coalesce(json_extract(record, '$.source'), '') != 'backfill'"
            " AND json_extract(record, '$.lag_ms') IS NOT NULL"
        )
        async with reader.execute(sql, [region, to_micros(since)]) as cursor:
            rows = await cursor.fetchall()
        return sorted(int(row[0]) for row in rows)

    async def count(self) -> int:
        _, reader = self._connections()
        async with reader.execute("SELECT count(*) FROM records") as cursor:
            row = await cursor.fetchone()
        return 0 if row is None else int(row[0])
