"""The README's walkthrough, command by command, on a stack of its own at base 26000, beside the session's stack
at 23000: both run at once, and each command succeeds and prints no log line."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deploy.local import images, stack
from tests.integration.conftest import QUIET_RECONCILE, Stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: the base the README's commands are written for (`make up`'s default) and the one this test uses
README_BASE, BASE = stack.DEFAULT_PORT_BASE, 26000
#: a log line: structlog's JSON, or its console renderer's `[level    ]`
LOG_LINE = re.compile(r'^\s*\{.*"(event|level)"\s*:|\[(debug|info|warning|error)\s*\]')


def walkthrough() -> list[str]:
    """The commands between the README's walkthrough markers."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- walkthrough -->", 1)[1].split("<!-- /walkthrough -->", 1)[0]
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("```")]
    assert len(lines) >= 8, lines
    return lines


@pytest.fixture(scope="module")
async def beside(tmp_path_factory: pytest.TempPathFactory, live: Stack) -> AsyncIterator[dict[str, object]]:
    """A second stack, started as `make up GEOREP_PORT_BASE=26000` would, while the session's runs at 23000.

    26000 and not a base from 32768 up: those ports are the kernel's ephemeral range, where the busy stack at 23000
    holds outgoing connections, and a CI run once found one of them (33122) taken for good."""
    assert int(live.info["port_base"]) == 23000
    root = tmp_path_factory.mktemp(f"stack-{BASE}")
    try:
        yield await stack.up(root, BASE, ["ap-singapore", "eu-frankfurt"], georep_env=QUIET_RECONCILE)
    finally:
        stack.down(root)


async def _run(line: str, env: dict[str, str], scratch: Path) -> tuple[int, str, str]:
    line = re.sub(r"127\.0\.0\.1:(\d{5})", lambda m: f"127.0.0.1:{int(m[1]) - README_BASE + BASE}", line)
    argv = [
        str(scratch) if a == "/tmp/app" else a.replace("/tmp/app:", f"{scratch}:")
        for a in shlex.split(line, comments=True)
    ]
    if argv[0] == ".venv/bin/georep":
        argv[0] = str(Path(sys.executable).parent / "georep")
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_readme_walkthrough_runs_as_written_beside_another_stack(
    beside: dict[str, object], live: Stack, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOREP_")} | {
        "GEOREP_CONFIG": str(beside["config"])
    }
    for line in walkthrough():
        image_status = line.startswith(".venv/bin/georep status 127.0.0.1")
        # A region serves a push a moment after it: a person would look again, and so does this test.
        deadline = time.monotonic() + (60 if "inspect" in line or image_status else 0)
        while True:
            code, out, err = await _run(line, env, tmp_path / "app")
            done = code == 0 and (not image_status or out.count("replicated") >= 2)
            if done or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert done, f"{line}\nexit {code}\nstdout:\n{out}\nstderr:\n{err}"
        for text in (out, err):
            logged = [x for x in text.splitlines() if LOG_LINE.search(x)]
            assert not logged, f"{line} printed log lines: {logged}"

    # Meanwhile the session's stack, 3,000 ports below, works as before.
    repo = live.unique("beside/app")
    digest = live.push_image(repo, "v1", images.image([images.layer(10 * 1024, repo)]))
    await live.replicated(repo, "v1", digest)
