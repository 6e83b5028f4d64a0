"""Health that tells the truth: what keeps a process from working, named, on `/healthz`, `/readyz` and `/metrics`.

A process holds one `Health`. Its parts report problems as they find them
(`report`, `clear`) or expose them as checks asked on every read (`watch`):

    check     subject                       raised by
    lane      <topic>/<partition>           a partition whose event keeps failing with an unexpected error
    task      <task name>                   a long-lived task that died (the process then exits non-zero)
    budget    copy-buffers                  buffer bytes held with copies waiting and none given back for long
    kafka     <bootstrap servers>           the brokers did not answer the last probe
    database  <path>                        the log store cannot be read or written

`/healthz` answers 503 while any problem stands and names each one;
`/readyz` also waits for what the process needs before it can serve (its
`ready` conditions). Every problem is also the gauge
`georep_health_problem{process, check, subject}` = 1. `/metrics` asks the
checks too before it answers, so a scrape never shows a gauge (these, or the
ones a check sets, such as the held budget) as it stood at the last `/healthz`.

`Supervisor` runs a process's long-lived tasks in one task group: the death of
any of them is reported here and ends the process with exit code 1, so that
its supervisor (Kubernetes, systemd) restarts it. `KafkaMonitor` probes the
brokers on a schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiohttp import web
from prometheus_client import Gauge

from adapters.runtime import metrics_handler
from engine.errors import Unhealthy

log = structlog.get_logger(__name__)

PROBLEM = Gauge(
    "georep_health_problem", "1 while a problem keeps the process from working", ["process", "check", "subject"]
)
#: how often the brokers are asked whether they answer, and how long they get
KAFKA_PROBE_EVERY_S: Final = 5.0
KAFKA_PROBE_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Problem:
    check: str
    subject: str
    detail: str
    #: time.monotonic() when it was first seen
    since: float

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "check": self.check,
            "subject": self.subject,
            "detail": self.detail,
            "for_s": round(now - self.since, 1),
        }


Check = Callable[[], Iterable[Problem]]


class Health:
    def __init__(self, process: str) -> None:
        self.process = process
        self._reported: dict[tuple[str, str], Problem] = {}
        self._checks: list[Check] = []
        self._ready: dict[str, Callable[[], bool]] = {}
        self._exported: set[tuple[str, str]] = set()
        #: extra facts shown on /healthz (bucket, partitions, ...)
        self.facts: Callable[[], dict[str, Any]] = dict

    def report(self, check: str, subject: str, detail: str) -> None:
        """A problem now stands (it keeps the time it was first reported)."""
        key = (check, subject)
        known = self._reported.get(key)
        if known is None:
            log.error("health.problem", process=self.process, check=check, subject=subject, detail=detail)
        self._reported[key] = Problem(check, subject, detail, known.since if known else time.monotonic())

    def clear(self, check: str, subject: str) -> None:
        if self._reported.pop((check, subject), None) is not None:
            log.info("health.recovered", process=self.process, check=check, subject=subject)

    def watch(self, check: Check) -> None:
        """Ask `check` for its problems on every read."""
        self._checks.append(check)

    def needs(self, what: str, ready: Callable[[], bool]) -> None:
        """`/readyz` answers 503 naming `what` until `ready()` holds."""
        self._ready[what] = ready

    def problems(self) -> list[Problem]:
        found = list(self._reported.values())
        for check in self._checks:
            found += check()
        self._export(found)
        return sorted(found, key=lambda p: (p.check, p.subject))

    def _export(self, found: list[Problem]) -> None:
        now = {(p.check, p.subject) for p in found}
        for check, subject in self._exported - now:
            PROBLEM.labels(self.process, check, subject).set(0)
        for check, subject in now:
            PROBLEM.labels(self.process, check, subject).set(1)
        self._exported = now

    def not_ready(self) -> list[str]:
        return sorted(what for what, ready in self._ready.items() if not ready())

    def _answer(self, *, readiness: bool) -> web.Response:
        now = time.monotonic()
        problems = [p.to_dict(now) for p in self.problems()]
        waiting = self.not_ready() if readiness else []
        body: dict[str, Any] = {"process": self.process, **self.facts()}
        if problems or waiting:
            body |= {"status": "unhealthy" if problems else "not-ready", "problems": problems}
            if waiting:
                body["waiting_for"] = waiting
            return web.json_response(body, status=503)
        return web.json_response(body | {"status": "ready" if readiness else "ok"})

    async def healthz(self, _: web.Request) -> web.Response:
        return self._answer(readiness=False)

    async def readyz(self, _: web.Request) -> web.Response:
        return self._answer(readiness=True)

    async def metrics(self, request: web.Request) -> web.Response:
        self.problems()
        return await metrics_handler(request)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)


class Supervisor:
    """A process's long-lived tasks, in one task group.

    A task that raises, or returns while the process is not stopping, is a
    death: it is reported to `health`, the other tasks are cancelled, and
    `run` raises Unhealthy, which the command turns into exit code 1.
    """

    def __init__(self, health: Health, stop: asyncio.Event) -> None:
        self.health = health
        self.stop = stop
        self._group: asyncio.TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Supervisor]:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                yield self
        except BaseExceptionGroup as failures:
            deaths = [e for e in _leaves(failures) if not isinstance(e, asyncio.CancelledError)]
            raise Unhealthy("; ".join(str(e) for e in deaths) or "a task died") from failures
        finally:
            self._group = None

    def spawn(self, name: str, work: Coroutine[Any, Any, object], *, until_stopped: bool = True) -> asyncio.Task[None]:
        """Run `work` as task `name`. With `until_stopped`, returning before `stop` is set is a death too."""
        if self._group is None:
            work.close()
            raise RuntimeError("Supervisor.spawn outside `running()`")
        return self._group.create_task(self._watched(name, work, until_stopped), name=name)

    async def _watched(self, name: str, work: Coroutine[Any, Any, object], until_stopped: bool) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.health.report("task", name, f"died: {type(exc).__name__}: {exc}")
            log.exception("task.died", task=name)
            raise Unhealthy(f"task {name} died: {type(exc).__name__}: {exc}") from exc
        if until_stopped and not self.stop.is_set():
            self.health.report("task", name, "ended while the process was still running")
            log.error("task.died", task=name, detail="returned early")
            raise Unhealthy(f"task {name} ended while the process was still running")


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


class KafkaMonitor:
    """Asks the brokers for their metadata every few seconds; a failed probe is a `kafka` problem until one succeeds."""

    def __init__(
        self,
        health: Health,
        servers: str,
        probe: Callable[[], Coroutine[Any, Any, None]],
        *,
        every_s: float = KAFKA_PROBE_EVERY_S,
        timeout_s: float = KAFKA_PROBE_TIMEOUT_S,
    ) -> None:
        self.health = health
        self.servers = servers
        self._probe = probe
        self.every_s = every_s
        self.timeout_s = timeout_s
        #: None until the first probe answered
        self.reachable: bool | None = None

    async def check_once(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._probe()
        except Exception as exc:  # refused, timed out, unauthorized ...: all mean "cannot work"
            detail = f"no answer within {self.timeout_s:g}s" if isinstance(exc, TimeoutError) else str(exc)
            self.health.report("kafka", self.servers, f"brokers unreachable: {type(exc).__name__}: {detail}")
            self.reachable = False
            return False
        self.health.clear("kafka", self.servers)
        self.reachable = True
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.check_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)
