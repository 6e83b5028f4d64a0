"""A new replica's backfill: 55 repositories, pushes going on meanwhile, a crash halfway through a re-run."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import aiohttp
import pytest

from deploy.local import stack
from engine.layout import Layout
from engine.names import Repository, Tag
from tests.bench.pusher import Layer, Pusher
from tests.integration.conftest import Stack, run_georep
from tests.waiting import until

pytestmark = pytest.mark.integration

REPOSITORIES = 55
MOVES = 12


async def _backfill(live: Stack, region: str) -> dict[str, Any]:
    status, body = await live.api("GET", f"/replicas/{region}/backfill")
    assert status == 200, body
    return dict(body)


async def test_backfill_during_live_pushes_then_resumes_after_a_crash(live: Stack) -> None:
    stem = live.unique("backfill")
    repos = [f"{stem}/r{i:02d}" for i in range(REPOSITORIES)]
    expected: dict[tuple[str, str], str] = {}
    async with aiohttp.ClientSession() as session:
        pusher = Pusher(session, live.primary)
        slots = asyncio.Semaphore(8)

        async def push(repo: str, tag: str, seed: str) -> None:
            async with slots:
                expected[(repo, tag)] = await pusher.image(repo, tag, [Layer.make(2048, seed)], label=seed)

        # Every repository has v1; those whose `latest` will move have it from the start.
        await asyncio.gather(*(push(r, "v1", f"{r}-v1") for r in repos))
        await asyncio.gather(*(push(repos[i * 4], "latest", f"{repos[i * 4]}-latest") for i in range(MOVES)))

        async def live_pushes() -> None:
            """While the backfill runs: `latest` moves in some repositories, new repositories appear."""
            for i in range(MOVES):
                await push(repos[i * 4], "latest", f"{repos[i * 4]}-moved")
                await push(f"{stem}/new{i:02d}", "v1", f"{stem}-new-{i}")

        pushing = asyncio.create_task(live_pushes())
        async with live.extra_region("us-oregon", 1) as oregon:
            await pushing

            async def complete() -> dict[str, Any] | None:
                progress = await _backfill(live, oregon.name)
                return progress if progress["complete"] else None

            progress = await until(complete, "the backfill to walk everything and the region to replicate it", 120)
            assert progress["state"] == "done"
            assert progress["repositories_done"] == progress["repositories_total"] >= REPOSITORIES
            assert progress["tags_published"] >= REPOSITORIES + MOVES
            assert progress["bytes_published"] > 0

            async def lag_zero() -> bool:
                _, doc = await live.api("GET", "/status")
                (mine,) = [r for r in doc["regions"] if r["region"] == oregon.name]
                return bool(mine["lag_events"] == 0)

            await until(lag_zero, "us-oregon to finish the live events too", 90)
            # (Other tests' repositories are walked too, and some hold images broken on purpose: look at ours.)
            _, dead = await live.api("GET", "/logs", region=oregon.name, status="dead-lettered", limit="1000")
            assert [r for r in dead["records"] if r["repository"].startswith(stem)] == []
            # Every tag of every backfilled repository, as the primary serves it now: none behind, none missing.
            code, out, err = await run_georep(live, "verify", "--region", oregon.name, "--repository", f"{stem}/*",
                                              "--json", timeout_s=180)  # fmt: skip
            report = json.loads(out)
            assert code == 0, err
            assert report["findings"] == []
            checked = {(c["repository"], c["tag"]): c["digest"] for c in report["checked"]}
            assert checked == expected, "verify read the primary's tags: they are exactly what was pushed"

            code, out, _ = await run_georep(live, "replicas", "show", oregon.name)
            assert code == 0
            assert "backfill done" in out

            # --dry-run lists what the region lacks (read from its bucket), publishes nothing, writes no checkpoint.
            async def dry_run() -> dict[tuple[str, str], str]:
                code, out, err = await run_georep(
                    live, "backfill", "--region", oregon.name, "--dry-run", "--json", timeout_s=180
                )  # the whole catalog, as verify walks it
                assert code == 0, err
                (line,) = out.splitlines()  # the plan alone: no checkpoint lines from a run that publishes nothing
                doc = json.loads(line)
                assert doc["region_read"] is True
                return {(p["repository"], p["tag"]): p["digest"] for p in doc["would_publish"]
                        if p["repository"].startswith(stem)}  # fmt: skip

            assert await dry_run() == {}, "verify found the region equal: it lacks nothing"
            (gone_repo, gone_tag), gone_digest = sorted(expected.items())[0]
            async with live.region_store("ap-singapore", bucket=oregon.bucket) as store:
                await store.delete(Layout().tag_current_link(Repository.parse(gone_repo), Tag.parse(gone_tag)))
            assert await dry_run() == {(gone_repo, gone_tag): gone_digest}
            assert await _backfill(live, oregon.name) == progress, "a dry run writes no checkpoint"

            await _crash_and_resume(live, oregon.name)
            await _api_killed_and_restarted(live, oregon.name)


async def _crash_and_resume(live: Stack, region: str) -> None:
    """Kill a backfill re-run a few repositories in; the next run resumes after the last one it finished."""
    # Its log goes to a file: a pipe nobody reads fills up and blocks the backfill at its next log line.
    log = live.root / "logs" / f"backfill-{region}-crashed.log"
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "georep", "--config", live.info["config"], "backfill", "--region", region, "--json",
            stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    assert proc.stdout is not None
    last: dict[str, Any] = {}
    try:
        async with asyncio.timeout(60):
            while last.get("repositories_done", 0) < 10:
                line = await proc.stdout.readline()
                assert line, f"the backfill ended before it was killed:\n{log.read_text()[-3000:]}"
                last = json.loads(line)
    except TimeoutError:
        pytest.fail(f"no 10 repositories done in 60 s; last progress {last}; its log:\n{log.read_text()[-3000:]}")
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    crashed = await _backfill(live, region)
    assert crashed["state"] == "running"
    assert 10 <= crashed["repositories_done"] < crashed["repositories_total"]

    code, out, err = await run_georep(live, "backfill", "--region", region, timeout_s=120)
    assert code == 0, err
    assert f"resuming after {crashed['after']} ({crashed['repositories_done']} repositories done)" in out
    resumed = await _backfill(live, region)
    assert resumed["state"] == "done"
    assert resumed["started_at"] == crashed["started_at"], "the same run, resumed, not a new one"
    assert resumed["repositories_done"] == resumed["repositories_total"]


async def _api_killed_and_restarted(live: Stack, region: str) -> None:
    """The API runs backfills too; SIGKILLed partway, it resumes the run when it starts again."""
    status, body = await live.api("POST", f"/replicas/{region}/backfill")
    assert status == 202, body

    async def partway() -> dict[str, Any] | None:
        progress = await _backfill(live, region)
        return progress if progress["state"] == "running" and progress["repositories_done"] >= 5 else None

    crashed = await until(partway, "the API's backfill to be partway", 60)
    stack.stop(live.root, "logstore", signal.SIGKILL)
    stack.restart(live.root, "logstore")
    await stack.wait_up(live.root, "logstore")

    async def done() -> dict[str, Any] | None:
        progress = await _backfill(live, region)
        return progress if progress["state"] == "done" else None

    resumed = await until(done, "the restarted API to finish the backfill", 60)
    assert resumed["started_at"] == crashed["started_at"], "resumed, not started again"
    assert resumed["repositories_done"] == resumed["repositories_total"]
