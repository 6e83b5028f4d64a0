"""`georep`: one command, one subcommand per process or query.

    georep webhook                 the webhook adapter (registry notifications → Kafka)
    georep replicate --region R    the replicator of region R (Kafka → R's bucket)
    georep logstore                the log consumer and its HTTP query API
    georep logs [filters]          query the replication log (--follow tails Kafka)
    georep topics                  create georep's Kafka topics if missing
    georep redrive --region R      put R's dead letters back on georep.events
    georep verify --region R       compare R with the primary (--repair fixes what differs)
    georep replicas ACTION         create, list, show, delete replica regions; registry-config
    georep backfill --region R     walk the primary for R here (resumes; --dry-run lists)
    georep status [IMAGE]          per region lag, totals, latency, backfill; or one image per region

Every subcommand reads settings from `GEOREP_*` variables and the TOML file
given by `--config` (or `GEOREP_CONFIG`). Services answer `--check`: load and
validate settings, reach their dependencies, exit 0 or 1. SIGTERM drains.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Final

import orjson
import structlog
import uvloop

from adapters.runtime import stop_on_signals
from engine.errors import GeorepError, KafkaUnavailable, Unhealthy, most_telling
from engine.logconfig import configure_logging, register_secrets, settings_secrets
from engine.names import parse_region
from engine.settings import CONFIG_ENV, ConfigError, Settings, load_settings
from engine.text import clean

log = structlog.get_logger("georep")

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


async def _webhook(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.kafka import Publisher
    from producers.webhook import WebhookApp, serve_webhook

    if args.check:
        publisher = Publisher(settings.kafka, "webhook")
        WebhookApp(settings.webhook, settings.kafka, publisher)  # refuses settings it cannot serve with
        try:
            await publisher.probe(settings.webhook.publish_timeout_s)
        finally:
            await publisher.close()
        print("webhook check passed: settings valid, Kafka reachable")
        return 0
    await serve_webhook(settings, stop_on_signals())
    return 0


async def _replicate(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.replicator import serve_replicator
    from consumers.selfcheck import check_region

    parse_region(args.region)  # the region itself is looked up in the replicas topic (or the config file)
    if args.check:
        problems = await check_region(settings, args.region)
        for problem in problems:
            print(f"replicate check failed: {problem}", file=sys.stderr)
        if not problems:
            print(f"replicate check passed: Kafka, primary and region {args.region} reachable")
        return 1 if problems else 0
    await serve_replicator(settings, args.region, stop_on_signals())
    return 0


async def _logstore(settings: Settings, args: argparse.Namespace) -> int:
    from georep.api.service import serve_logstore

    await serve_logstore(settings, stop_on_signals())
    return 0


async def _logs(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.logstore import run_logs

    return await run_logs(settings, args)


async def _topics(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.kafka import ensure_topics

    await ensure_topics(settings.kafka, always=True)
    if args.json:
        print(orjson.dumps({"bootstrap_servers": settings.kafka.bootstrap_servers, "ready": True}).decode())
    else:
        print(f"topics ready on {settings.kafka.bootstrap_servers}")
    return 0


async def _redrive(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.redrive import as_json, redrive, summary

    parse_region(args.region)
    # Event ids and errors in dead letters came from outside: nothing in them may drive the terminal.
    say = (lambda _: None) if args.json else (lambda line: print(clean(line)))
    result = await redrive(settings, args.region, dry_run=args.dry_run, say=say)
    if args.json:
        print(orjson.dumps(as_json(result, args.region, args.dry_run)).decode())
    else:
        print(summary(result, args.region, args.dry_run))
    return 0


async def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.drift import repair_events
    from consumers.verify import publish_events, render_json, render_text, verify

    report = await verify(settings, args.region, args.repository, rehash=args.rehash)
    repairs = repair_events(report.damaged, args.region) if args.repair else []
    if repairs:
        try:
            await publish_events(settings, repairs, f"verify-{args.region}")
        except KafkaUnavailable:
            print(render_json(report, []) if args.json else clean(render_text(report, [])))
            raise
    print(render_json(report, repairs) if args.json else clean(render_text(report, repairs)))
    # tag-extra alone is no failure: a replica with deletes off keeps tags the primary deleted.
    return 1 if report.damaged and not repairs else 0


async def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.reconcile import reconcile_now, render_report

    parse_region(args.region)
    report = await reconcile_now(settings, args.region, args.repository, dry_run=args.dry_run)
    print(orjson.dumps(report.to_dict()).decode() if args.json else clean(render_report(report)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from consumers.logstore import add_logs_arguments
    from georep.control_cli import add_arguments as add_control_arguments
    from georep.image_cli import add_arguments as add_image_arguments

    parser = argparse.ArgumentParser(prog="georep", description="Geo-replication for container registries.")
    parser.add_argument("--config", help=f"TOML settings file (default: ${CONFIG_ENV})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (commands log only warnings)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    webhook = sub.add_parser("webhook", help="serve the webhook adapter")
    webhook.add_argument("--check", action="store_true", help="validate settings and reach Kafka, then exit")
    webhook.set_defaults(run=_webhook)

    replicate = sub.add_parser("replicate", help="replicate events into one region")
    replicate.add_argument("--region", required=True)
    replicate.add_argument("--check", action="store_true", help="validate settings and reach every dependency")
    replicate.set_defaults(run=_replicate)

    logstore = sub.add_parser("logstore", help="consume the replication log into SQLite and serve queries")
    logstore.set_defaults(run=_logstore)

    logs = sub.add_parser("logs", help="query the replication log")
    add_logs_arguments(logs)
    logs.set_defaults(run=_logs)

    topics = sub.add_parser("topics", help="create georep's Kafka topics if missing")
    topics.add_argument("--json", action="store_true", help="the outcome as one JSON document")
    topics.set_defaults(run=_topics)

    redrive = sub.add_parser("redrive", help="re-publish a region's dead letters once their cause is fixed")
    redrive.add_argument("--region", required=True)
    redrive.add_argument("--dry-run", action="store_true", help="list what would be redriven, change nothing")
    redrive.add_argument("--json", action="store_true", help="what was (or would be) redriven, as one JSON document")
    redrive.set_defaults(run=_redrive)

    verify = sub.add_parser("verify", help="compare a region with the primary; exit 1 if they differ")
    verify.add_argument("--region", required=True)
    verify.add_argument(
        "--repository", default="*", metavar="PATTERN", help="repositories to check, a glob (default: all)"
    )
    verify.add_argument("--rehash", action="store_true", help="read every blob back and check its sha256")
    verify.add_argument("--repair", action="store_true", help="publish repair events for every damaged tag")
    verify.add_argument("--json", action="store_true", help="the report as one JSON document, for machines")
    verify.set_defaults(run=_verify)

    reconcile = sub.add_parser("reconcile", help="compare a region with the primary now and repair what differs")
    reconcile.add_argument("--region", required=True)
    reconcile.add_argument(
        "--repository", default="*", metavar="GLOB", help="repositories to compare, a glob (default: all)"
    )
    reconcile.add_argument("--dry-run", action="store_true", help="print the drift, publish nothing")
    reconcile.add_argument("--json", action="store_true", help="the drift as one JSON document")
    reconcile.set_defaults(run=_reconcile)

    add_control_arguments(sub)
    add_image_arguments(sub)
    return parser


#: long-running services: JSON logs at the configured level; every other command is a person's, quiet but for warnings
SERVICES: Final = frozenset({"webhook", "replicate", "logstore"})


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.config:
        os.environ[CONFIG_ENV] = args.config
    name = " ".join(filter(None, [args.command, getattr(args, "action", None)]))
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"georep {name}: {clean(str(exc))}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    register_secrets(settings_secrets(settings))
    if args.command in SERVICES and not getattr(args, "check", False):
        configure_logging(settings.log_level, settings.log_format)
    else:
        configure_logging("debug" if args.verbose else "warning", "console", quiet_libraries=not args.verbose)
    command: Command = args.run
    raise SystemExit(_run(name, command(settings, args)))


#: exit codes: 0 done; 1 failed (or found differences); 2 bad settings or arguments; 3 a dependency did not answer
EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 2
EXIT_UNAVAILABLE: Final = 3


def _run(name: str, coro: Coroutine[Any, Any, int]) -> int:
    try:
        return uvloop.run(finish(name, coro))
    except KeyboardInterrupt:
        return 130


async def finish(name: str, coro: Coroutine[Any, Any, int]) -> int:
    """Run a command; every georep error becomes one line on stderr and an exit code, never a traceback."""
    try:
        return await coro
    except BaseExceptionGroup as group:
        exc = most_telling(group)
        if not isinstance(exc, GeorepError):
            raise
        return _failed(name, exc)
    except GeorepError as exc:
        return _failed(name, exc)


def _failed(name: str, exc: GeorepError) -> int:
    print(f"georep {name}: {clean(str(exc))}", file=sys.stderr)
    if isinstance(exc, Unhealthy):
        log.error("process.unhealthy", error=str(exc))
        return EXIT_FAILED
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    return EXIT_UNAVAILABLE if exc.retriable else EXIT_FAILED
