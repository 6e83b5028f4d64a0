"""The benchmark's stack and the measuring tools around it.

The stack is the local stack (`deploy/local/stack.py`), on ports of its own.
Next to it the harness can start, per region, a writable docker-registry on
that region's S3 server (under another root prefix), into which the skopeo
peer copies; and it reads what it needs to time georep straight from Kafka.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer

from adapters.kafka import new_consumer, started
from deploy.local import stack
from engine import topics

LOG_TOPIC = topics.REPLICATION_LOG


_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def role(name: str) -> str:
    """What a stack process is, whatever its region: `s3-eu-frankfurt` → `s3`, `kafka-1` → `kafka`."""
    for known in ("s3", "replicator", "registry", "kafka"):
        if name == known or name.startswith(f"{known}-"):
            return known
    return name


class CpuSplit:
    """CPU seconds each role of the stack spends between `__init__` and `done()`; processes started meanwhile
    (replicators, started for the measurement) count from their start."""

    def __init__(self, bench: Bench, also: dict[str, int] | None = None) -> None:
        self.bench = bench
        #: processes outside the stack to count as well (name → pid): the bench's own, say
        self.also = also or {}
        self.started = time.monotonic()
        self.before = self._now()

    def _now(self) -> dict[int, float]:
        self.bench.reload()
        pids = [*map(int, self.bench.info["pids"].values()), *self.also.values()]
        return {pid: cpu_s(pid) for pid in pids if Path(f"/proc/{pid}").exists()}

    def done(self, extra: dict[str, int] | None = None) -> dict[str, Any]:
        """Per role: CPU seconds, and cores busy on average; `extra`: further name → pid started meanwhile."""
        seconds = time.monotonic() - self.started
        pids = {name: int(pid) for name, pid in self.bench.info["pids"].items()} | self.also | (extra or {})
        spent: dict[str, float] = {}
        for name, pid in pids.items():
            if Path(f"/proc/{pid}").exists():
                spent[role(name)] = spent.get(role(name), 0.0) + cpu_s(pid) - self.before.get(pid, 0.0)
        return {
            "seconds": seconds,
            "cpu_s": spent,
            "cores": {name: cpu / seconds for name, cpu in spent.items()},
            "cores_total": sum(spent.values()) / seconds,
        }


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmHWM for pid {pid}")


class Bench(stack.Running):
    def reload(self) -> None:
        self.info = json.loads((self.root / stack.STACK_FILE).read_text())

    def pid(self, name: str) -> int:
        return int(self.info["pids"][name])

    async def stop(self, name: str) -> None:
        await asyncio.to_thread(stack.stop, self.root, name)

    async def start(self, name: str, env: dict[str, str] | None = None) -> None:
        stack.restart(self.root, name, env)
        self.reload()
        await stack.wait_up(self.root, name)

    async def stop_replicators(self) -> None:
        await asyncio.gather(*(self.stop(f"replicator-{r}") for r in self.regions))

    async def start_replicators(self, env: dict[str, str] | None = None) -> None:
        await asyncio.gather(*(self.start(f"replicator-{r}", env) for r in self.regions))

    def spawn_replicator(self, region: str, port: int, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
        """A further replicator process in `region`'s group; (pid, argv) to stop it with."""
        command = self.info["commands"][f"replicator-{region}"]
        extra = {
            "argv": command["argv"],
            "env": command["env"] | (env or {}) | {"GEOREP_REPLICATOR__PORT": str(port)},
            "log": str(self.root / "logs" / f"replicator-{region}-{port}.log"),
        }
        return stack.spawn(extra).pid, command["argv"]

    @asynccontextmanager
    async def records(self) -> AsyncIterator[RecordWatch]:
        """Watch the replication log from its current end: what is recorded from now on."""
        consumer = await started(new_consumer(self.kafka(), "bench", LOG_TOPIC, group=None, auto_offset_reset="latest"))
        # Pin the start: `latest` is resolved lazily, and records may land before the first fetch.
        await consumer.seek_to_end()
        for tp in consumer.assignment():
            await consumer.position(tp)
        try:
            yield RecordWatch(consumer)
        finally:
            await consumer.stop()

    @asynccontextmanager
    async def writable_registries(self, prefix: str) -> AsyncIterator[dict[str, str]]:
        """Per region, a writable docker-registry on the region's bucket under `prefix`; region → host:port."""
        started: dict[str, tuple[int, list[str]]] = {}
        hosts: dict[str, str] = {}
        registry = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        try:
            for i, (name, region) in enumerate(self.regions.items()):
                port = int(self.info["port_base"]) + 70 + i
                config = self.root / f"writable-{name}.yml"
                config.write_text(json.dumps(_writable_config(region, port, prefix)))
                argv = [registry, "serve", str(config)]
                proc = stack.spawn({"argv": argv, "env": {}, "log": str(self.root / "logs" / f"writable-{name}.log")})
                started[name] = (proc.pid, argv)
                hosts[name] = f"127.0.0.1:{port}"
            for name, host in hosts.items():
                await until_http(f"http://{host}/v2/", f"writable registry {name}")
            yield hosts
        finally:
            for pid, argv in started.values():
                await asyncio.to_thread(stack.stop_pid, pid, argv)


class RecordWatch:
    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.seen: list[dict[str, Any]] = []

    async def until(self, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 600) -> float:
        """Consume records until `done(all seen so far)`; returns the monotonic time it became true."""
        deadline = time.monotonic() + timeout_s
        while not done(self.seen):
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met after {timeout_s:g}s ({len(self.seen)} records seen)")
            batch = await self._consumer.getmany(timeout_ms=100)
            arrived = time.monotonic()
            for records in batch.values():
                for record in records:
                    value = json.loads(record.value)
                    value["_seen_at"] = arrived
                    self.seen.append(value)
        return time.monotonic()


def succeeded_per_region(records: list[dict[str, Any]], repositories: set[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        if r["status"] == "succeeded" and r["repository"] in repositories:
            counts[r["region"]] = counts.get(r["region"], 0) + 1
    return counts


async def until_http(url: str, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not answer at {url}")
            await asyncio.sleep(0.1)


def _writable_config(region: dict[str, Any], port: int, prefix: str) -> dict[str, Any]:
    return {
        "version": "0.1",
        "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": os.urandom(16).hex()},
        "storage": {
            "s3": {
                "accesskey": region["access_key"], "secretkey": region["secret_key"], "region": "us-east-1",
                "regionendpoint": region["s3"], "bucket": region["bucket"], "secure": False, "v4auth": True,
                "rootdirectory": f"/{prefix}",
            },
            "redirect": {"disable": True},
        },
    }  # fmt: skip
