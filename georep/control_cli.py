"""`georep replicas …`, `georep backfill` and `georep status`: the control plane from a terminal.

`replicas` and `status` talk to the georep API (`logstore.url`), which applies
the rules and owns the backfills; `backfill` runs a region's catalog walk in
this process (to resume or re-run one by hand, or `--dry-run` to list what it
would copy).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from engine.errors import ApiRefused, ApiUnavailable
from engine.settings import Settings
from engine.text import clean, shown

POLL_S: Final = 0.5
_STATE_STYLE: Final = {"replicated": "green", "in-progress": "yellow", "failed": "bold red"}


async def _call(settings: Settings, method: str, path: str, body: Any = None, **params: str) -> Any:
    url = settings.logstore.url + path
    token = settings.logstore.api_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
            session.request(method, url, json=body, params=params or None, headers=headers) as response,
        ):
            status, raw = response.status, await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ApiUnavailable(
            f"cannot reach the georep API at {settings.logstore.url}: {exc or type(exc).__name__} "
            f"(is `georep logstore` running? logstore.url / GEOREP_LOGSTORE__URL says where it is)"
        ) from None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiUnavailable(
            f"{settings.logstore.url}{path} is not the georep API: HTTP {status}: {raw[:200].decode(errors='replace')}"
        ) from None
    if status >= 400:
        reason = str(doc.get("reason") if isinstance(doc, dict) else doc)
        rule = doc.get("rule") if isinstance(doc, dict) and isinstance(doc.get("rule"), str) else None
        if status == 503:
            raise ApiUnavailable(reason)
        raise ApiRefused(f"refused [{rule}]: {reason}" if rule else reason, status, rule)
    return doc


def _print_json(doc: Any) -> None:
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


# -- replicas -------------------------------------------------------------------------------------


async def replicas(settings: Settings, args: argparse.Namespace) -> int:
    return await _REPLICAS[args.action](settings, args)


async def _create(settings: Settings, args: argparse.Namespace) -> int:
    request = {
        "region": args.region,
        "endpoint": args.endpoint,
        "bucket": args.bucket,
        "prefix": args.prefix,
        "s3_region": args.s3_region,
        "registry": args.registry,
        "credentials_ref": args.credentials_ref,
        "deletes": not args.no_deletes,
        "include": args.include,
        "exclude": args.exclude,
        "backfill": not args.no_backfill,
    }
    doc = await _call(settings, "POST", "/replicas", request)
    if args.json:
        _print_json(doc)
    else:
        print(f"created replica {args.region}; backfill {doc['backfill']}")
        _replica_table([doc["replica"]])
    if args.wait and not args.no_backfill:
        return await watch_backfill(settings, args.region, json_lines=args.json)
    return 0


async def _list(settings: Settings, args: argparse.Namespace) -> int:
    doc = await _call(settings, "GET", "/replicas")
    if args.json:
        _print_json(doc)
    else:
        _replica_table(doc["replicas"])
    return 0


async def _show(settings: Settings, args: argparse.Namespace) -> int:
    doc = await _call(settings, "GET", f"/replicas/{args.region}")
    if args.json:
        _print_json(doc)
        return 0
    _replica_table([doc["replica"]])
    backfill = doc.get("backfill")
    if backfill:
        print(clean(_backfill_line(backfill)))
    return 0


async def _delete(settings: Settings, args: argparse.Namespace) -> int:
    doc = await _call(settings, "DELETE", f"/replicas/{args.region}")
    print(orjson.dumps(doc).decode() if args.json else f"deleted replica {args.region}; its bucket is left as it is")
    return 0


async def _registry_config(settings: Settings, args: argparse.Namespace) -> int:
    from deploy.registry_config import ACCESS_KEY_ENV, SECRET_KEY_ENV, load_primary_config, registry_config, render
    from engine.replicas import ReplicaDefinition

    doc = await _call(settings, "GET", f"/replicas/{args.region}")
    replica = ReplicaDefinition.model_validate(doc["replica"])
    primary = load_primary_config(Path(args.primary_config)) if args.primary_config else None
    config = render(
        registry_config(replica, listen=args.listen, primary=primary, anonymous=args.anonymous, host=args.host),
        as_json=args.json,
    )
    if args.output:
        await asyncio.to_thread(Path(args.output).write_text, config)
    else:
        print(config, end="")
    print(f"# start it with {ACCESS_KEY_ENV} and {SECRET_KEY_ENV} set from {replica.credentials_ref}", file=sys.stderr)
    return 0


_REPLICAS: Final = {
    "create": _create,
    "list": _list,
    "show": _show,
    "delete": _delete,
    "registry-config": _registry_config,
}


def _replica_table(replicas: list[dict[str, Any]]) -> None:
    table = Table("region", "endpoint", "bucket/prefix", "registry", "deletes", "filters", "created")
    for r in replicas:
        filters = [f"+{p}" for p in r["include"]] + [f"-{p}" for p in r["exclude"]]
        bucket = r["bucket"] + (f"/{r['prefix']}" if r["prefix"] else "")
        table.add_row(
            r["region"], shown(r["endpoint"]), shown(bucket), shown(r.get("registry") or "-"),
            "on" if r["deletes"] else "off", shown(" ".join(filters) or "-"), r["created_at"][:19],
        )  # fmt: skip
    Console(width=160).print(table)


# -- backfill -------------------------------------------------------------------------------------


def _backfill_line(b: dict[str, Any]) -> str:
    return (
        f"backfill {b['state']}: {b['repositories_done']}/{b['repositories_total']} repositories, "
        f"{b['tags_published']} tags ({decimal(b['bytes_published'])}) published, "
        f"{b['replicated']} replicated ({decimal(b['replicated_bytes'])}), {b['dead_lettered']} dead-lettered"
    )


async def watch_backfill(settings: Settings, region: str, *, json_lines: bool = False) -> int:
    """Follow a backfill the API runs until every event it published is replicated."""
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[extra]}"),
    )
    with Progress(*columns, TimeElapsedColumn(), disable=json_lines) as bars:
        walk = bars.add_task("walk", total=None, extra="")
        copy = bars.add_task("replicate", total=None, extra="")
        while True:
            try:
                b = await _call(settings, "GET", f"/replicas/{region}/backfill")
            except ApiRefused as exc:
                if exc.status != 404:
                    raise
                await asyncio.sleep(POLL_S)  # created a moment ago: its first checkpoint is on its way
                continue
            if json_lines:
                print(orjson.dumps(b).decode(), flush=True)
            bars.update(walk, total=b["repositories_total"] or None, completed=b["repositories_done"],
                        extra=f"{b['tags_published']} tags, {decimal(b['bytes_published'])}")  # fmt: skip
            copied = f"{decimal(b['replicated_bytes'])} copied, {b['dead_lettered']} dead-lettered"
            bars.update(copy, total=b["tags_published"] or None, completed=b["replicated"], extra=copied)
            if b["complete"] or b["state"] == "failed":
                break
            await asyncio.sleep(POLL_S)
    if not json_lines:
        print(clean(_backfill_line(b)))
    return 0 if b["state"] == "done" and not b["dead_lettered"] else 1


async def backfill(settings: Settings, args: argparse.Namespace) -> int:
    """Walk the primary for one region here, resuming its checkpoint; `--dry-run` only lists."""
    from adapters.compacted import following, replica_view
    from adapters.kafka import Publisher
    from adapters.registry import RegistryClient
    from producers.backfill import Backfill, Checkpoint, checkpoint_view, current_checkpoint

    async with following(replica_view(settings.kafka, "backfill-cli", settings.replicas.verifier())) as catalog:
        replica = catalog.values.get(args.region)
    if replica is None:
        raise ApiRefused(f"no replica in {args.region}: create it first (georep replicas create)", 404)
    async with following(checkpoint_view(settings.kafka, "backfill-cli")) as checkpoints:
        resume = None if args.dry_run else current_checkpoint(checkpoints.values.get(args.region), replica)
    publisher = None if args.dry_run else Publisher(settings.kafka, "backfill-cli")
    columns = (TextColumn("walk"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"))
    try:
        async with RegistryClient.session(settings.primary) as session:
            primary = RegistryClient(settings.primary, session)
            job = Backfill(settings.kafka, primary, publisher, args.region, replica)
            with Progress(*columns, TimeElapsedColumn(), disable=args.json) as bars:
                bar = bars.add_task("walk", total=None, extra="")

                def show(c: Checkpoint) -> None:
                    if args.json and not args.dry_run:  # a dry run has no checkpoint to report: only its plan
                        print(c.to_json().decode(), flush=True)
                    bars.update(bar, total=c.repositories_total or None, completed=c.repositories_done,
                                extra=f"{c.tags_published} tags, {decimal(c.bytes_published)}")  # fmt: skip

                if resume is not None and resume.unfinished and not args.json:
                    print(f"resuming after {resume.after} ({resume.repositories_done} repositories done)")
                done = await job.run(resume, show)
    finally:
        if publisher is not None:
            await publisher.close()
    if args.dry_run:
        lacking, checked = await _lacking(settings, args.region, job.planned)
        _planned(lacking, len(job.planned), checked, args.json)
    elif not args.json:
        print(f"published {done.tags_published} tags ({decimal(done.bytes_published)}) for {args.region}")
    return 0


async def _lacking(settings: Settings, region: str, planned: list[Any]) -> tuple[list[Any], str | None]:
    """The planned tags the region does not already serve at the primary's digest (its current link and the
    manifest's revision link, read from its bucket), and None; or all of them and why the region was not read."""
    from adapters.store import RegionStore
    from consumers.regions import lookup_region
    from engine.digest import Digest
    from engine.errors import GeorepError
    from engine.layout import link_body
    from engine.names import Repository, Tag

    async def served(p: Any) -> bool:
        repository, digest = Repository.parse(p.repository), Digest.parse(p.digest)
        link = await store.get(layout.tag_current_link(repository, Tag.parse(p.tag)))
        return link == link_body(digest) and await store.exists(layout.revision_link(repository, digest))

    try:
        region_settings, _ = await lookup_region(settings, region, "backfill-cli")
        layout = region_settings.layout
        async with RegionStore.open(region_settings) as store:
            found = await asyncio.gather(*(served(p) for p in planned))
    except GeorepError as exc:
        return planned, f"{region}'s bucket was not read ({exc}): this lists everything the primary has"
    return [p for p, there in zip(planned, found, strict=True) if not there], None


def _planned(planned: list[Any], walked: int, unchecked: str | None, as_json: bool) -> None:
    if as_json:
        doc = {"would_publish": [p.model_dump() for p in planned], "tags_walked": walked, "region_read": not unchecked}
        print(orjson.dumps(doc | ({"note": unchecked} if unchecked else {})).decode())
        return
    if unchecked:
        print(f"note: {unchecked}", file=sys.stderr)
    table = Table("repository", "tag", "digest", "new bytes", title="backfill --dry-run: the region lacks")
    for p in sorted(planned, key=lambda p: (p.repository, p.tag)):
        table.add_row(shown(p.repository), shown(p.tag), p.digest[:19], decimal(p.bytes))
    Console(width=140).print(table)
    have = "" if unchecked else f" ({walked - len(planned)} of {walked} walked are there already)"
    print(f"{len(planned)} tags, {decimal(sum(p.bytes for p in planned))}{have}; nothing was published")


# -- status ---------------------------------------------------------------------------------------


async def status(settings: Settings, args: argparse.Namespace) -> int:
    if args.image:
        doc = await _call(settings, "GET", "/status/image", image=args.image)
    else:
        doc = await _call(settings, "GET", "/status")
    if args.json:
        _print_json(doc)
    elif args.image:
        _image_table(doc)
    else:
        _status_table(doc)
    if args.image and doc["digest"] is None:
        print(f"georep status: {shown(args.image)} is not on the primary", file=sys.stderr)
        return 1
    alone = [r["region"] for r in doc.get("regions", []) if r.get("replicators") == 0]
    if alone and not args.image:
        print(f"georep status: no replicator is running for {', '.join(alone)}", file=sys.stderr)
    return 0


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _status_table(doc: dict[str, Any]) -> None:
    window = doc["regions"][0]["latency_window_s"] // 60 if doc["regions"] else 5
    table = Table(
        "region", "replicators", "lag", "oldest pending", "replicated", "bytes", "retrying", "dead", "p50", "p99",
        "backfill", "reconciled", title=f"replication status (latency over the last {window} min)",
    )  # fmt: skip
    for r in doc["regions"]:
        b = r.get("backfill")
        backfill = "-" if not b else f"{b['state']} {b['replicated']}/{b['tags_published']} tags"
        table.add_row(
            r["region"], _replicators(r.get("replicators")),
            "?" if r["lag_events"] is None else str(r["lag_events"]), _seconds(r["oldest_pending_s"]),
            str(r["events_replicated"]), decimal(r["bytes_replicated"]), str(r["retrying"]), str(r["dead_lettered"]),
            _seconds(r["latency_p50_s"]), _seconds(r["latency_p99_s"]), shown(backfill),
            shown(_reconciled(r.get("reconcile"))),
        )  # fmt: skip
    Console(width=180).print(table)


def _replicators(count: int | None) -> Text:
    if count is None:
        return Text("?")
    return Text("none", style="bold red") if count == 0 else Text(str(count))


def _reconciled(last: dict[str, Any] | None) -> str:
    """The last pass: when it ended, what it took, the drift it found and the repairs it published."""
    if not last:
        return "-"
    ago = (datetime.now(UTC) - datetime.fromisoformat(last["ended_at"])).total_seconds()
    text = f"{_ago(ago)} ago in {last['took_s']:.1f}s: {last['drift_found']} drift, {last['repaired']} repaired"
    return text + (f" ({last['errors'][0]})" if last["errors"] else "")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.0f}h"


def _image_table(doc: dict[str, Any]) -> None:
    digest = doc["digest"][:19] if doc["digest"] else "not on the primary"
    table = Table("region", "state", "detail", title=shown(f"{doc['image']}  {digest}"))
    for r in doc["regions"]:
        state = r["state"]
        detail = r.get("detail") or (f"after {r['lag_s']}s, at {r['finished_at'][:19]}" if "lag_s" in r else "")
        table.add_row(r["region"], Text(state, style=_STATE_STYLE.get(state, "dim")), shown(detail))
    Console(width=160).print(table)


def add_arguments(sub: Any) -> None:
    rep = sub.add_parser("replicas", help="create, list, show and delete replica regions")
    actions = rep.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a replica (rules apply) and start its backfill")
    create.add_argument("--region", required=True)
    create.add_argument("--endpoint", required=True, help="the region's S3 endpoint URL")
    create.add_argument("--bucket", required=True)
    create.add_argument("--prefix", default="", help="root prefix inside the bucket")
    create.add_argument(
        "--s3-region", default="us-east-1",
        help="the bucket's signing region (AWS: where the bucket is, such as ap-northeast-1); default us-east-1",
    )  # fmt: skip
    create.add_argument("--registry", help="host:port of the region's read-only registry")
    create.add_argument(
        "--credentials-ref", required=True,
        help="where the keys are: env:PREFIX, file:/path, or aws:default (the AWS SDK's chain: IRSA, instance role)",
    )  # fmt: skip
    create.add_argument("--no-deletes", action="store_true", help="keep content deleted on the primary")
    create.add_argument("--include", action="append", default=[], metavar="REPO[:TAG]", help="glob; repeatable")
    create.add_argument("--exclude", action="append", default=[], metavar="REPO[:TAG]", help="glob; repeatable")
    create.add_argument("--no-backfill", action="store_true", help="replicate new pushes only")
    create.add_argument("--wait", action="store_true", help="show the backfill's progress until it is replicated")
    for name, text in (("list", "every replica"), ("show", "one replica and its backfill"), ("delete", "delete")):
        action = actions.add_parser(name, help=text)
        if name != "list":
            action.add_argument("region")
    config = actions.add_parser("registry-config", help="the region's read-only registry configuration")
    config.add_argument("region")
    config.add_argument("--primary-config", help="the primary registry's config: its auth section is copied")
    config.add_argument("--listen", default="0.0.0.0:5000", help="address the registry listens on")
    config.add_argument(
        "--host", help="the URL clients reach this region's registry at (http.host); default: the primary's"
    )
    config.add_argument(
        "--anonymous", action="store_true", help="no auth section: the region serves every image to anyone"
    )
    config.add_argument("--output", "-o", help="write to this file instead of stdout")
    for action in actions.choices.values():
        action.add_argument("--json", action="store_true", help="JSON output, for machines")
    rep.set_defaults(run=replicas)

    fill = sub.add_parser("backfill", help="walk the primary and publish a region's backfill here (resumes)")
    fill.add_argument("--region", required=True)
    fill.add_argument("--dry-run", action="store_true", help="list what would be replicated, publish nothing")
    fill.add_argument("--json", action="store_true", help="progress as JSON lines")
    fill.set_defaults(run=backfill)

    stat = sub.add_parser("status", help="per region lag, totals, latency and backfill; or one image per region")
    stat.add_argument("image", nargs="?", help="repo:tag or repo@digest")
    stat.add_argument("--json", action="store_true", help="JSON output, for machines")
    stat.set_defaults(run=status)
