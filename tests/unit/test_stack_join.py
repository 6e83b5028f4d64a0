"""A process that joins the local stack after `up` is stopped by `down`, even if its starter never stops it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from deploy.local import stack


def _empty_stack(root: Path) -> None:
    (root / stack.STACK_FILE).write_text(json.dumps({"pids": {}, "commands": {}}))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_down_stops_every_process_that_joined_even_under_a_reused_name(tmp_path: Path) -> None:
    _empty_stack(tmp_path)
    sleep = shutil.which("sleep")
    assert sleep is not None
    command = {"argv": [sleep, "300"], "env": {}, "log": str(tmp_path / "extra.log")}
    first = stack.join(tmp_path, "registry-extra", command)
    second = stack.join(tmp_path, "registry-extra", command)  # a second test that uses the same name
    assert _running(first.pid)
    assert _running(second.pid)

    stopped = stack.down(tmp_path)

    assert sorted(stopped) == sorted([f"registry-extra@{first.pid}", f"registry-extra@{second.pid}"])
    # `down` waited for both and reaped them: their pids are gone.
    assert not _running(first.pid)
    assert not _running(second.pid)


def test_down_skips_a_joined_process_its_starter_already_stopped(tmp_path: Path) -> None:
    _empty_stack(tmp_path)
    true = shutil.which("true")
    assert true is not None
    proc = stack.join(tmp_path, "replicator-extra", {"argv": [true], "env": {}, "log": str(tmp_path / "r.log")})
    stack.stop_pid(proc.pid, [true], grace_s=5)

    assert stack.down(tmp_path) == []
