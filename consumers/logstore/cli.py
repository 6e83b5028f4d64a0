"""`georep logs`: what happened to which image in which region.

    georep logs --repository library/nginx --since 2h
    georep logs --status failed --json | jq .error
    georep logs --follow --region eu-west

By default the log store answers (settings `logstore.url`); `--follow` reads
the replication-log topic live instead and applies the same filters locally.
"""

from __future__ import annotations

import argparse
import re
import sys
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import ValidationError
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from adapters.runtime import stop_on_signals
from consumers.logstore.client import fetch, tail
from consumers.logstore.query import DEFAULT_LIMIT, MAX_LIMIT, LogQuery, problems
from consumers.logstore.render import json_line, records_table
from engine.events import ReplicationRecord, Status
from engine.settings import ConfigError, Settings

_FILTERS: Final = ("repository", "tag", "digest", "region", "status", "event_id", "since", "until", "limit")
_AGO: Final = re.compile(r"(\d+)([smhd])", re.ASCII)
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# Wide enough for any row; the printed width is the table's own.
_UNBOUNDED: Final = 100_000


def add_logs_arguments(parser: argparse.ArgumentParser) -> None:
    when = "RFC 3339 time (2024-05-01T12:00:00Z) or a duration ago (90s, 15m, 2h, 7d)"
    filters = parser.add_argument_group("filters")
    filters.add_argument("--repository", help="repository name, e.g. library/nginx")
    filters.add_argument("--tag", help="tag, e.g. v1.2.3")
    filters.add_argument("--digest", help="manifest digest, sha256:<64 hex>")
    filters.add_argument("--region", help="replica region")
    filters.add_argument("--status", help="one of: " + ", ".join(s.value for s in Status))
    filters.add_argument("--event-id", help="the source's event id")
    filters.add_argument("--since", help=f"finished at or after: {when}")
    filters.add_argument("--until", help=f"finished before: {when}")
    filters.add_argument(
        "--limit",
        type=int,
        help=f"at most this many records (default {DEFAULT_LIMIT}, at most {MAX_LIMIT}); "
        "with --follow, stop after this many",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line, for machines")
    parser.add_argument("-f", "--follow", action="store_true", help="follow the replication-log topic live")
    parser.add_argument("--from-beginning", action="store_true", help="with --follow: start at the oldest record")
    parser.add_argument("--url", help="the log store's URL (default: the logstore.url setting)")


async def run_logs(settings: Settings, args: argparse.Namespace) -> int:
    """Print the matching records; a GeorepError (one line on stderr, an exit code) otherwise."""
    if args.from_beginning and not args.follow:
        raise ConfigError("--from-beginning only applies with --follow")
    query = _query(args, datetime.now(UTC))
    printer = _Printer(as_json=args.json)
    if args.follow:
        await _follow(settings, args, query, printer)
    else:
        url = (args.url or settings.logstore.url).rstrip("/")
        printer.all(await fetch(url, query))
    return 0


async def _follow(settings: Settings, args: argparse.Namespace, query: LogQuery, printer: _Printer) -> None:
    shown = 0
    async with aclosing(tail(settings.kafka, query, stop_on_signals(), from_beginning=args.from_beginning)) as records:
        async for record in records:
            printer.one(record)
            shown += 1
            if args.limit is not None and shown >= args.limit:
                return


def _query(args: argparse.Namespace, now: datetime) -> LogQuery:
    given: dict[str, Any] = {name: getattr(args, name) for name in _FILTERS if getattr(args, name) is not None}
    for name in ("since", "until"):
        if name in given:
            given[name] = _time(name, given[name], now)
    try:
        return LogQuery.model_validate(given)
    except ValidationError as exc:
        reasons = [f"--{name.replace('_', '-')}: {why}" if name in _FILTERS else why for name, why in problems(exc)]
        raise ConfigError("; ".join(reasons)) from None


def _time(option: str, value: str, now: datetime) -> str | datetime:
    """A duration ago ("15m") as a time; anything else is left for LogQuery to read as RFC 3339."""
    match = _AGO.fullmatch(value)
    if match is None:
        return value
    amount, unit = match.groups()
    try:
        return now - timedelta(**{_UNITS[unit]: int(amount)})
    except OverflowError:
        raise ConfigError(f"--{option}: {value} is further back than any time georep can name") from None


class _Printer:
    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self.console = Console(highlight=False)
        self._header_shown = False

    def _print(self, table: Table) -> None:
        # Rich would squeeze columns to the terminal (or to 80 in a pipe) until
        # values vanish; print at the table's natural width and let long rows wrap.
        self.console.width = _UNBOUNDED
        self.console.width = Measurement.get(self.console, self.console.options, table).maximum
        self.console.print(table)

    def all(self, records: list[ReplicationRecord]) -> None:
        if self.as_json:
            for record in records:
                print(json_line(record))
        elif records:
            self._print(records_table(records))
        else:
            print("no matching records", file=sys.stderr)

    def one(self, record: ReplicationRecord) -> None:
        """One record as it arrives: flushed at once, rows aligned under one header."""
        if self.as_json:
            print(json_line(record), flush=True)
            return
        if not self._header_shown:
            self._print(records_table([], fixed=True))
            self._header_shown = True
        self._print(records_table([record], header=False, fixed=True))
