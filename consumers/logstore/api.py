"""The log store's HTTP side.

    GET /logs      ?repository= &tag= &digest= &region= &status= &event_id= &since= &until= &limit=
                   -> {"records": [ReplicationRecord, ...]}, newest first
    GET /metrics   Prometheus

A parameter georep cannot read is answered 400 with `{"error", "reason"}`,
the reason naming the parameter and why, so that a typo never looks like an
empty log.
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from aiohttp import web
from pydantic import ValidationError

from adapters.runtime import metrics_handler
from consumers.logstore.query import LogQuery, problems
from consumers.logstore.store import LogStore

log = structlog.get_logger(__name__)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _bad_query(reason: str) -> web.Response:
    return _json({"error": "invalid-query", "reason": reason}, status=400)


def build_app(store: LogStore, *, metrics: bool = True) -> web.Application:
    """The aiohttp application over an open `store`; the caller owns the store's lifetime."""

    async def logs(request: web.Request) -> web.Response:
        repeated = sorted({name for name in request.query if len(request.query.getall(name)) > 1})
        if repeated:
            return _bad_query("; ".join(f"{name}: given more than once" for name in repeated))
        try:
            query = LogQuery.model_validate(dict(request.query))
        except ValidationError as exc:
            return _bad_query("; ".join(f"{name}: {why}" for name, why in problems(exc)))
        records = await store.query(query)
        return _json({"records": [record.model_dump(mode="json", by_alias=True) for record in records]})

    app = web.Application()
    app.router.add_get("/logs", logs)
    if metrics:  # the API process serves /metrics from its Health instead, which refreshes its checks first
        app.router.add_get("/metrics", metrics_handler)
    return app
