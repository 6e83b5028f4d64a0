"""The georep API process (`georep logstore`): its own log store fed from Kafka, the queries on it, and
the control plane (replicas, backfills, status).

HTTP serves at once, even while Kafka is still unreachable (reads of the log
work; replica and status answers wait until the compacted topics are read).
Its long-lived tasks (the log ingest, the control plane, the Kafka probe) run
under one supervisor: if one dies, `/healthz` names it and the process exits
non-zero, so that it is restarted rather than serve from a dead store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from aiohttp import web

from adapters.health import Health, KafkaMonitor, Supervisor
from adapters.kafka import ClusterProbe, connection_options
from adapters.registry import RegistryClient
from adapters.runtime import start_http
from consumers.logstore.api import build_app
from consumers.logstore.ingest import Ingest
from consumers.logstore.store import LogStore
from engine.settings import Settings
from georep.api.control import Control
from georep.api.routes import add_control_routes
from georep.console.app import add_console
from georep.console.history import LagHistory

log = structlog.get_logger(__name__)


def api_app(
    settings: Settings, store: LogStore, control: Control, health: Health, history: LagHistory | None = None
) -> web.Application:
    """Every route of the API: the log's queries, health, the control plane, the console."""
    health.needs("replicas read from Kafka", lambda: control.loaded)
    app = build_app(store, metrics=False)
    health.add_routes(app)
    add_control_routes(app, control, settings.logstore.api_token)
    add_console(app, settings, store, control, history or LagHistory(control.status))
    return app


async def serve_logstore(settings: Settings, stop: asyncio.Event) -> None:
    """Run the georep API until `stop` is set; Unhealthy (exit 1) if one of its tasks dies."""
    connection_options(settings.kafka, "api")  # refuse at start settings that could never connect
    health = Health("api")
    probe = ClusterProbe(settings.kafka, "api")
    async with LogStore(settings.logstore.path) as store, RegistryClient.session(settings.primary) as session:
        control = Control(settings, store, RegistryClient(settings.primary, session), health=health)
        ingest = Ingest(settings.kafka, store, health=health)
        health.facts = lambda: {
            "database": str(Path(settings.logstore.path)),
            "consuming": ingest.consumer is not None,
            "leading": control.leading,
            "leader": control.leadership.url if control.leading else control.leadership.leader_url(),
        }
        history = LagHistory(control.status)
        app = api_app(settings, store, control, health, history)
        runner = await start_http(app, settings.logstore.host, settings.logstore.port)
        try:
            async with Supervisor(health, stop).running() as tasks:
                tasks.spawn("log-ingest", ingest.run(stop))
                tasks.spawn("control-plane", control.run(stop))
                tasks.spawn("console-lag-history", history.run(stop))
                tasks.spawn("kafka-probe", KafkaMonitor(health, settings.kafka.bootstrap_servers, probe).run(stop))
        finally:
            # HTTP goes first, so that no request reaches a closed database.
            await runner.cleanup()
            await probe.close()
    log.info("logstore.stopped")
