"""Every command, with what it needs gone: one line saying what and where, an exit code, never a traceback.

The real `georep` command runs in a subprocess against addresses where nothing listens: Kafka down, the API
down, the primary down. Exit codes: 1 failed, 2 bad settings or arguments, 3 a dependency did not answer.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

from engine.signing import new_signing_key, public_key

ROOT = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


KAFKA = f"127.0.0.1:{_closed_port()}"
API = f"http://127.0.0.1:{_closed_port()}"
PRIMARY = f"http://127.0.0.1:{_closed_port()}"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    keys = root / "keys.json"
    keys.write_text('{"access_key": "a", "secret_key": "b"}')
    path = root / "georep.toml"
    path.write_text(
        f"""
[kafka]
bootstrap_servers = "{KAFKA}"
security_protocol = "PLAINTEXT"
request_timeout_ms = 1000

[primary]
url = "{PRIMARY}"
timeout_s = 2

[replicas]
verify_key = "{public_key(new_signing_key())}"

[webhook]
token = "cli-test-token-123456"
publish_timeout_s = 2

[logstore]
url = "{API}"
path = "{root / "log.sqlite3"}"

# A region pinned in the file: verify needs no Kafka to find it.
[regions.eu-pinned]
endpoint = "http://127.0.0.1:{_closed_port()}"
bucket = "pinned"
access_key = "a"
secret_key = "b"
"""
    )
    return path


CREATE = ["--region", "eu-x", "--endpoint", "http://s3", "--bucket", "b", "--credentials-ref", "env:X"]
# (argv, what is down, exit code, the start of the one line on stderr)
CASES = [
    (["webhook", "--check"], "kafka", 3, f"georep webhook: Kafka at {KAFKA} did not answer"),
    (["topics"], "kafka", 3, f"georep topics: cannot create georep's topics on Kafka at {KAFKA}"),
    (["redrive", "--region", "eu-x"], "kafka", 3, "georep redrive: cannot read georep"),
    (["verify", "--region", "eu-x"], "kafka", 3, "georep verify: could not read georep"),
    (["backfill", "--region", "eu-x"], "kafka", 3, "georep backfill: could not read georep"),
    (["logs", "--follow"], "kafka", 3, "georep logs: cannot follow georep"),
    (["logs"], "api", 3, f"georep logs: cannot reach the georep API at {API}"),
    (["status"], "api", 3, f"georep status: cannot reach the georep API at {API}"),
    (["status", "team/app:v1"], "api", 3, f"georep status: cannot reach the georep API at {API}"),
    (["replicas", "list"], "api", 3, f"georep replicas list: cannot reach the georep API at {API}"),
    (["replicas", "show", "eu-x"], "api", 3, f"georep replicas show: cannot reach the georep API at {API}"),
    (["replicas", "delete", "eu-x"], "api", 3, f"georep replicas delete: cannot reach the georep API at {API}"),
    (["replicas", "create", *CREATE], "api", 3, f"georep replicas create: cannot reach the georep API at {API}"),
    (["replicas", "registry-config", "eu-x"], "api", 3, "georep replicas registry-config: cannot reach the georep API"),
    (["verify", "--region", "eu-pinned"], "primary", 3, "georep verify: primary registry unreachable"),
]


async def run(config: Path, argv: list[str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "georep", "--config", str(config), *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(("argv", "down", "code", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
async def test_a_command_whose_dependency_is_down_says_so_in_one_line(
    config: Path, argv: list[str], down: str, code: int, message: str
) -> None:
    exit_code, out, err = await run(config, argv)
    assert "Traceback" not in out + err
    assert err.startswith(message), f"{down} down: {err!r}"
    assert err.count("\n") == 1, f"one line, not {err!r}"
    assert exit_code == code, err


async def test_the_replicator_check_lists_every_dependency_it_cannot_reach(config: Path) -> None:
    exit_code, _, err = await run(config, ["replicate", "--region", "eu-pinned", "--check"])
    assert exit_code == 1
    assert "Traceback" not in err
    lines = err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["replicate check failed"] * 3
    assert any(f"kafka {KAFKA}" in line for line in lines)
    assert any(f"primary {PRIMARY}" in line for line in lines)
    assert any("region eu-pinned bucket pinned" in line for line in lines)


def test_an_unusable_log_store_path_is_a_settings_error(tmp_path: Path, config: Path) -> None:
    text = config.read_text().replace(str(config.parent / "log.sqlite3"), str(tmp_path))  # a directory
    broken = tmp_path / "broken.toml"
    broken.write_text(text)
    asyncio.run(_refused_at_start(broken, tmp_path))


async def _refused_at_start(broken: Path, tmp_path: Path) -> None:
    exit_code, _, err = await run(broken, ["logstore"])
    assert "Traceback" not in err
    assert exit_code == 2
    assert f"cannot open the log store {tmp_path}" in err
