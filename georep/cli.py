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
from typing import Any

import structlog
import uvloop

from engine.errors import GeorepError
from engine.logconfig import configure_logging, register_secrets, settings_secrets
from engine.names import parse_region
from engine.settings import CONFIG_ENV, ConfigError, Settings, load_settings
from georep.runtime import start_http, stop_on_signals

log = structlog.get_logger("georep")

Command = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


async def _webhook(settings: Settings, args: argparse.Namespace) -> int:
    from producers.kafka import KafkaUnavailable, Publisher
    from producers.webhook import WebhookApp

    publisher = Publisher(settings.kafka, "webhook")
    webhook = WebhookApp(settings.webhook, settings.kafka, publisher)
    if args.check:
        try:
            await publisher.publish(settings.kafka.events_topic, [], settings.webhook.publish_timeout_s)
        except KafkaUnavailable as exc:
            print(f"webhook check failed: {exc}", file=sys.stderr)
            return 1
        finally:
            await publisher.close()
        print("webhook check passed: settings valid, Kafka reachable")
        return 0
    stop = stop_on_signals()
    runner = await start_http(webhook.app(), settings.webhook.host, settings.webhook.port)
    await stop.wait()
    await runner.cleanup()
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
    from consumers.logstore.service import serve_logstore

    await serve_logstore(settings, stop_on_signals())
    return 0


async def _logs(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.logstore import run_logs

    return await run_logs(settings, args)


async def _topics(settings: Settings, args: argparse.Namespace) -> int:
    from producers.kafka import ensure_topics

    await ensure_topics(settings.kafka)
    print(f"topics ready on {settings.kafka.bootstrap_servers}")
    return 0


async def _redrive(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.redrive import redrive, summary

    parse_region(args.region)
    result = await redrive(settings, args.region, dry_run=args.dry_run)
    print(summary(result, args.region, args.dry_run))
    return 0


async def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.verify import publish_repairs, render_json, render_text, repair_events, verify
    from producers.kafka import KafkaUnavailable

    report = await verify(settings, args.region, args.repository, rehash=args.rehash)
    repairs = repair_events(report.damaged, args.region) if args.repair else []
    if repairs:
        try:
            await publish_repairs(settings, repairs, args.region)
        except KafkaUnavailable as exc:
            print(render_json(report, []) if args.json else render_text(report, []))
            print(f"georep verify: repair events not published: {exc}", file=sys.stderr)
            return 1
    print(render_json(report, repairs) if args.json else render_text(report, repairs))
    # tag-extra alone is no failure: a replica with deletes off keeps tags the primary deleted.
    return 1 if report.damaged and not repairs else 0


def build_parser() -> argparse.ArgumentParser:
    from consumers.logstore import add_logs_arguments
    from georep.control_cli import add_arguments as add_control_arguments

    parser = argparse.ArgumentParser(prog="georep", description="Geo-replication for container registries.")
    parser.add_argument("--config", help=f"TOML settings file (default: ${CONFIG_ENV})")
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
    topics.set_defaults(run=_topics)

    redrive = sub.add_parser("redrive", help="re-publish a region's dead letters once their cause is fixed")
    redrive.add_argument("--region", required=True)
    redrive.add_argument("--dry-run", action="store_true", help="list what would be redriven, change nothing")
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

    add_control_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.config:
        os.environ[CONFIG_ENV] = args.config
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"georep: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    register_secrets(settings_secrets(settings))
    configure_logging(settings.log_level, settings.log_format)
    command: Command = args.run
    raise SystemExit(_run(command(settings, args)))


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        return uvloop.run(coro)
    except GeorepError as exc:
        # Start-up problems (a region not configured, a missing token) are the operator's to fix.
        print(f"georep: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
