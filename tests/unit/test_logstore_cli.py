"""`georep logs` against the real log store app: output forms, filters, and its one-line errors."""

from __future__ import annotations

import argparse
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from consumers.logstore import LogQuery, LogStore, add_logs_arguments, run_logs
from consumers.logstore.api import build_app
from consumers.logstore.client import fetch
from engine.errors import ApiRefused
from engine.events import ReplicationRecord
from engine.settings import LogStoreSettings, Settings
from georep.cli import finish

NOW = datetime.now(UTC)
DIGEST = "sha256:" + "d" * 64


def record(event_id: str, region: str, ago: timedelta, **fields: Any) -> ReplicationRecord:
    finished = NOW - ago
    base: dict[str, Any] = {
        "event_id": event_id,
        "region": region,
        "repository": "library/nginx",
        "tag": "1.25",
        "digest": DIGEST,
        "status": "succeeded",
        "attempt": 1,
        "blobs_total": 3,
        "blobs_copied": 2,
        "bytes_copied": 4_096_000,
        "lag_ms": 1234,
        "started_at": finished - timedelta(seconds=2),
        "finished_at": finished,
    }
    return ReplicationRecord.model_validate(base | fields)


RECENT = record("e2", "us-east", timedelta(minutes=10), status="failed", attempt=3, error="storage unavailable")
OLD = record("e1", "eu-west", timedelta(hours=1))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def serving(path: Path, records: list[ReplicationRecord]) -> AsyncIterator[str]:
    """The log store app on a store holding `records`; yields its URL."""
    async with LogStore(path) as store:
        await store.put_many(records)
        server = TestServer(build_app(store), host="127.0.0.1")
        await server.start_server()
        try:
            yield str(server.make_url("")).rstrip("/")
        finally:
            await server.close()


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    async with serving(tmp_path / "log.sqlite3", [OLD, RECENT]) as served:
        yield served


async def logs(url: str, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="georep logs")
    add_logs_arguments(parser)
    # As the command runs it: a georep error becomes one line on stderr and an exit code.
    return await finish("logs", run_logs(Settings(logstore=LogStoreSettings(url=url)), parser.parse_args(argv)))


async def test_json_prints_one_record_per_line_newest_first(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await logs(url, "--json") == 0

    lines = capsys.readouterr().out.splitlines()
    assert [orjson.loads(line) for line in lines] == [r.model_dump(mode="json", by_alias=True) for r in (RECENT, OLD)]


async def test_the_table_shows_each_record_in_human_units(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await logs(url) == 0

    out = capsys.readouterr().out
    for header in ("finished", "region", "repository", "digest", "status", "blobs", "bytes", "lag ms", "attempt"):
        assert header in out
    row = next(line for line in out.splitlines() if "us-east" in line)
    for cell in (
        "library/nginx",
        "1.25",
        "sha256:dddddddddddd",
        "failed",
        "2/3",
        "4.1 MB",
        "1234",
        "storage unavailable",
    ):
        assert cell in row
    assert DIGEST not in out


async def test_filters_reach_the_store(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await logs(url, "--json", "--region", "eu-west", "--status", "succeeded", "--event-id", "e1") == 0

    assert [orjson.loads(line)["event_id"] for line in capsys.readouterr().out.splitlines()] == ["e1"]


async def test_since_takes_a_duration_ago(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # 30 minutes before the records' NOW, however long after it this runs (the suite may take that long).
    since = int((datetime.now(UTC) - NOW).total_seconds() // 60) + 30
    assert await logs(url, "--json", "--since", f"{since}m") == 0

    assert [orjson.loads(line)["event_id"] for line in capsys.readouterr().out.splitlines()] == ["e2"]


async def test_nothing_found_is_said_on_stderr(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await logs(url, "--repository", "nobody/here") == 0

    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no matching records" in captured.err


async def test_a_bad_filter_fails_with_one_line_naming_the_option(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await logs(url, "--digest", "sha256:nope") == 2

    err = capsys.readouterr().err
    assert err.startswith("georep logs: --digest: invalid digest 'sha256:nope'")
    assert err.count("\n") == 1


async def test_from_beginning_needs_follow(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await logs(url, "--from-beginning") == 2

    assert "--from-beginning only applies with --follow" in capsys.readouterr().err


async def test_an_unreachable_log_store_fails_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    down = f"http://127.0.0.1:{free_port()}"

    assert await logs(down) == 3

    err = capsys.readouterr().err
    assert err.startswith(f"georep logs: cannot reach the georep API at {down}")
    assert err.count("\n") == 1


async def test_a_query_the_server_refuses_carries_its_reason(url: str) -> None:
    # Skipping validation stands in for an older client talking to a stricter server.
    refused = LogQuery.model_construct(limit=0)

    with pytest.raises(ApiRefused, match=r"refused the query: limit: Input should be greater than or equal to 1"):
        await fetch(url, refused)


async def test_outside_text_in_a_record_cannot_drive_the_terminal_or_rich(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record's error comes from a registry or an object store: escapes are replaced, markup is shown."""
    hostile = record(
        "e3", "us-east", timedelta(minutes=1), status="failed", error="\x1b[2J[red]boom[/red] [link=http://x]y[/link]"
    )
    async with serving(tmp_path / "log.sqlite3", [hostile]) as served:
        assert await logs(served) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "?[2J[red]boom[/red]" in out


async def test_the_table_says_which_records_are_deletes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deleted = record("e3", "ap-south", timedelta(minutes=1), action="delete", tag=None, blobs_total=0, bytes_copied=0)
    async with serving(tmp_path / "log.sqlite3", [OLD, deleted]) as served:
        assert await logs(served) == 0
    out = capsys.readouterr().out
    assert "action" in out.splitlines()[0]
    assert " delete " in next(line for line in out.splitlines() if "ap-south" in line)
    assert " push " in next(line for line in out.splitlines() if "eu-west" in line)
