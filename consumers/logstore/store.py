"""The log store: the latest ReplicationRecord per (event, region), in SQLite.

Replicators publish one record per attempt, and Kafka may deliver any of them
twice or out of order, so a write is an upsert that keeps the newer record:
later `finished_at` wins, a tie goes to the higher `attempt`, and a full tie
(a duplicate delivery) changes nothing. Replaying the topic from the start is
therefore harmless.

Times are stored as integer microseconds since the epoch (UTC), so SQL compares
them exactly whatever offset the producer wrote. Filter columns sit beside the
full record JSON, which is what queries return; status totals are a table the
triggers keep, so status costs the same with ten records or ten million.

One connection writes and another reads (WAL lets them run side by side), so
an HTTP query never waits behind a batch being written.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import aiosqlite

from adapters.runtime import in_slices
from consumers.logstore.query import LogQuery
from engine.events import ReplicationRecord
from engine.settings import ConfigError

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: status percentiles are taken over at most this many of the latest pushes in their window
LATENCY_SAMPLES: Final = 10_000
#: bumped when the schema changes; an older file is rebuilt from the topic (the store is a cache of it)
_SCHEMA_VERSION: Final = 2

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS records (
    event_id     TEXT    NOT NULL,
    region       TEXT    NOT NULL,
    repository   TEXT    NOT NULL,
    tag          TEXT,
    digest       TEXT,
    status       TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    finished_us  INTEGER NOT NULL,
    action       TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    bytes_copied INTEGER NOT NULL,
    lag_ms       INTEGER,
    record       TEXT    NOT NULL,
    PRIMARY KEY (event_id, region)
) WITHOUT ROWID;
-- Each filter index carries finished_us so that "newest first" needs no sort.
CREATE INDEX IF NOT EXISTS records_repository ON records (repository, finished_us);
CREATE INDEX IF NOT EXISTS records_region ON records (region, finished_us);
CREATE INDEX IF NOT EXISTS records_status ON records (status, finished_us);
CREATE INDEX IF NOT EXISTS records_digest ON records (digest, finished_us);
CREATE INDEX IF NOT EXISTS records_finished ON records (finished_us);
-- A backfill's progress: its region's backfill records since it started, nothing else.
CREATE INDEX IF NOT EXISTS records_source ON records (region, source, finished_us, status, bytes_copied);

-- Events and bytes per region, source and latest status, kept by the triggers below in the same
-- transaction as the records: status reads a handful of rows, whatever the size of the log.
CREATE TABLE IF NOT EXISTS totals (
    region  TEXT    NOT NULL,
    source  TEXT    NOT NULL,
    status  TEXT    NOT NULL,
    events  INTEGER NOT NULL,
    bytes   INTEGER NOT NULL,
    PRIMARY KEY (region, source, status)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS totals_insert AFTER INSERT ON records BEGIN
    INSERT INTO totals VALUES (new.region, new.source, new.status, 1, new.bytes_copied)
    ON CONFLICT DO UPDATE SET events = events + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS totals_update AFTER UPDATE ON records BEGIN
    UPDATE totals SET events = events - 1, bytes = bytes - old.bytes_copied
    WHERE region = old.region AND source = old.source AND status = old.status;
    INSERT INTO totals VALUES (new.region, new.source, new.status, 1, new.bytes_copied)
    ON CONFLICT DO UPDATE SET events = events + 1, bytes = bytes + excluded.bytes;
END;

-- How far each partition of the log topic has been read: written with the records it covers,
-- so a crash between the two is impossible and a restart resumes exactly there.
CREATE TABLE IF NOT EXISTS positions (
    topic      TEXT    NOT NULL,
    partition  INTEGER NOT NULL,
    next       INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
"""

_UPSERT: Final = """
INSERT INTO records (event_id, region, repository, tag, digest, status, attempt, finished_us,
                     action, source, bytes_copied, lag_ms, record)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (event_id, region) DO UPDATE SET
    repository = excluded.repository,
    tag = excluded.tag,
    digest = excluded.digest,
    status = excluded.status,
    attempt = excluded.attempt,
    finished_us = excluded.finished_us,
    action = excluded.action,
    source = excluded.source,
    bytes_copied = excluded.bytes_copied,
    lag_ms = excluded.lag_ms,
    record = excluded.record
WHERE (excluded.finished_us, excluded.attempt) > (records.finished_us, records.attempt)
"""

_POSITION: Final = """
INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET next = max(next, excluded.next)
"""

# Equality filters: each is both a LogQuery field and a column. SQL is built only from these names.
_EQUALITY: Final = ("repository", "tag", "digest", "region", "status", "event_id", "action")


@dataclass(frozen=True, slots=True)
class Totals:
    #: events by the status of their latest record
    by_status: dict[str, int]
    #: bytes copied by the events that succeeded
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
        record.action.value,
        "" if record.source is None else record.source.value,
        record.bytes_copied,
        record.lag_ms,
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


def _totals(rows: Iterable[Any]) -> Totals:
    counts: dict[str, int] = {}
    copied = 0
    for status, events, nbytes in rows:
        counts[str(status)] = counts.get(str(status), 0) + int(events)
        if status == "succeeded":
            copied += int(nbytes)
    return Totals(counts, copied)


class LogStore:
    """`async with LogStore(path) as store:`; the parent directory is created if missing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # A batch is one transaction; two callers must not interleave inside it.
        self._write_lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            await self._open()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the log store {self.path} (logstore.path): {exc}") from None

    async def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Opened once synchronously first: a file aiosqlite cannot open leaves its worker thread behind.
        sqlite3.connect(self.path).close()
        writer = await aiosqlite.connect(self.path)
        try:
            await writer.execute("PRAGMA journal_mode=WAL")
            # NORMAL is enough: records and the topic positions they cover commit in one transaction,
            # so a power cut loses both together and the ingest reads those records again.
            await writer.execute("PRAGMA synchronous=NORMAL")
            await writer.execute("PRAGMA busy_timeout=5000")
            await self._migrate(writer)
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

    @staticmethod
    async def _migrate(writer: aiosqlite.Connection) -> None:
        """A file of an older schema is emptied: the store is rebuilt from the log topic (no positions left)."""
        async with writer.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        if 0 < version < _SCHEMA_VERSION:
            await writer.executescript(
                "DROP TABLE IF EXISTS records; DROP TABLE IF EXISTS totals; DROP TABLE IF EXISTS positions;"
            )

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

    async def put_many(
        self, records: Iterable[ReplicationRecord], positions: Mapping[tuple[str, int], int] | None = None
    ) -> int:
        """Store records, and how far the topic was read (`positions`: (topic, partition) -> next offset),
        in one transaction; returns how many records were new or newer than what was stored."""
        writer, _ = self._connections()
        rows = await in_slices(map(_row, records))
        marks = [(topic, partition, offset) for (topic, partition), offset in (positions or {}).items()]
        if not rows and not marks:
            return 0
        async with self._write_lock:
            try:
                changed = 0
                if rows:
                    cursor = await writer.executemany(_UPSERT, rows)
                    changed = cursor.rowcount
                    await cursor.close()
                if marks:
                    await writer.executemany(_POSITION, marks)
                await writer.commit()
            except BaseException:
                await writer.rollback()
                raise
        return changed

    async def positions(self, topic: str) -> dict[int, int]:
        """partition -> the next offset to read, for every partition of `topic` read so far."""
        _, reader = self._connections()
        async with reader.execute("SELECT partition, next FROM positions WHERE topic = ?", [topic]) as cursor:
            return {int(partition): int(offset) for partition, offset in await cursor.fetchall()}

    async def query(self, q: LogQuery) -> list[ReplicationRecord]:
        """Matching records, newest `finished_at` first."""
        _, reader = self._connections()
        where, args = _where(q)
        sql = f"SELECT record FROM records{where} ORDER BY finished_us DESC, event_id, region LIMIT ? OFFSET ?"  # noqa: S608 -- only fixed column names are formatted in
        async with reader.execute(sql, [*args, q.limit, q.offset]) as cursor:
            rows = await cursor.fetchall()
        return [ReplicationRecord.model_validate_json(row[0]) for row in rows]

    async def totals(self, region: str, *, source: str | None = None, since: datetime | None = None) -> Totals:
        """Events per latest status, and the bytes copied by the succeeded ones, in `region`.

        Without `since`, from the maintained aggregate; with it (a backfill's progress since it started),
        from that source's records in the range, by index.
        """
        _, reader = self._connections()
        if since is None:
            sql = "SELECT status, sum(events), sum(bytes) FROM totals WHERE region = ?"
            args: list[Any] = [region]
            if source is not None:
                sql += " AND source = ?"
                args.append(source)
            sql += " GROUP BY status"
        else:
            sql = (
                "SELECT status, count(*), coalesce(sum(bytes_copied), 0) FROM records"
                " WHERE region = ? AND source = ? AND finished_us >= ? GROUP BY status"
            )
            args = [region, source or "", to_micros(since)]
        async with reader.execute(sql, args) as cursor:
            return _totals(await cursor.fetchall())

    async def lags_ms(self, region: str, since: datetime, most: int = LATENCY_SAMPLES) -> list[int]:
        """Push-to-pullable times of live pushes (not backfill, not deletes) that succeeded in `region` since then,
        ascending: the latest `most` of them, so that a burst does not make every status read slow."""
        _, reader = self._connections()
        sql = (
            "SELECT lag_ms FROM records WHERE region = ? AND finished_us >= ? AND status = 'succeeded'"
            " AND action = 'push' AND source != 'backfill' AND lag_ms IS NOT NULL ORDER BY finished_us DESC LIMIT ?"
        )
        async with reader.execute(sql, [region, to_micros(since), most]) as cursor:
            rows = await cursor.fetchall()
        return sorted(int(row[0]) for row in rows)

    async def lag_series(self, region: str, since: datetime) -> list[tuple[float, int]]:
        """(unix time finished, push-to-pullable ms) of the same pushes as `lags_ms`, oldest first: the console's
        latency chart."""
        _, reader = self._connections()
        sql = (
            "SELECT finished_us, lag_ms FROM records WHERE region = ? AND finished_us >= ? AND status = 'succeeded'"
            " AND action = 'push' AND source != 'backfill' AND lag_ms IS NOT NULL ORDER BY finished_us"
        )
        async with reader.execute(sql, [region, to_micros(since)]) as cursor:
            rows = await cursor.fetchall()
        return [(int(row[0]) / 1e6, int(row[1])) for row in rows]

    async def count(self) -> int:
        _, reader = self._connections()
        async with reader.execute("SELECT count(*) FROM records") as cursor:
            row = await cursor.fetchone()
        return 0 if row is None else int(row[0])
