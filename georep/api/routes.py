"""The control plane over HTTP, beside `/logs` on the georep API.

    GET    /replicas                      {"replicas": [definition, ...]}
    POST   /replicas                      definition fields (+ "backfill": bool, default true) -> 201
    GET    /replicas/{region}             {"replica": definition, "backfill": progress | null}
    DELETE /replicas/{region}             {"deleted": definition}
    GET    /replicas/{region}/backfill    backfill progress: walk checkpoint and replicated counts
    POST   /replicas/{region}/backfill    run the backfill again (or resume one left running) -> 202
    GET    /status                        per region: lag, oldest pending event, totals, latency, backfill
    GET    /status/image?image=REPO:TAG   per region: replicated, in progress, failed (why), not replicated

Changes (POST, DELETE) and `/status/image` (it asks the primary with georep's
credentials) need `Authorization: Bearer <logstore.api_token>`: 401 without it,
403 if no token is configured (they are then off). Everything else is read from
the log store and the topics, and is open.
Refusals carry `{"error", "reason"}` (and `rule` for a replica rule): 400 for a
bad request, 404 for an unknown replica, 409 for a conflict (exists already,
primary still in use), 422 for a rule, 503 when Kafka cannot be reached.
Nothing about replicas is answered before both compacted topics have been
read to their end once (503 if that does not happen in time).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from pydantic import SecretStr

from engine.errors import CatalogUnavailable, InvalidInput, KafkaUnavailable, UpstreamUnavailable
from engine.names import parse_region
from engine.references import parse_image
from engine.replicas import ReplicaDefinition, ReplicaRefused
from georep.api.control import Control
from georep.api.forward import FORWARDED, Forwarder

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(error: str, reason: str, status: int, **extra: str) -> web.Response:
    log.info("api.refused", error=error, reason=reason, status=status, **extra)
    return _json({"error": error, "reason": reason, **extra}, status=status)


def _replica(definition: ReplicaDefinition) -> dict[str, Any]:
    return definition.model_dump(mode="json", by_alias=True)


#: what a replica change can fail with, each answered by `_refused`
_REFUSALS = (InvalidInput, KafkaUnavailable)


def _refused(exc: Exception, invalid: str) -> web.Response:
    """A rule's refusal (its status and name), a bad request (400, as `invalid`), or Kafka out of reach (503)."""
    if isinstance(exc, ReplicaRefused):
        return _error("replica-refused", str(exc), exc.status, rule=exc.rule)
    if isinstance(exc, InvalidInput):
        return _error(invalid, str(exc), 400)
    return _error("kafka-unavailable", str(exc), 503)


#: reads that make georep ask the primary with its own credentials: open, they would tell anyone which private
#: images exist (and their digests)
_ASKS_THE_PRIMARY = ("/status/image",)


def _changes(request: web.Request) -> bool:
    return request.method not in ("GET", "HEAD") and request.path.startswith("/replicas")


def _guarded(request: web.Request) -> bool:
    return _changes(request) or request.path in _ASKS_THE_PRIMARY


class _Routes:
    def __init__(self, control: Control, token: SecretStr | None) -> None:
        self.control = control
        self._token = token.get_secret_value().encode() if token and token.get_secret_value() else None
        self.forwarder = Forwarder(control.leadership, control.settings.logstore.forward_wait_s)

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Replica changes, and reads that ask the primary with georep's own credentials, need the API token;
        reads answered from the log store and the topics do not. Nothing about replicas is told before it is known.
        """
        if _guarded(request):
            if self._token is None:
                return _error("changes-disabled", "this is off: set logstore.api_token to allow it", 403)
            presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip().encode()
            if not hmac.compare_digest(presented, self._token):
                return _error("unauthorized", "missing or wrong bearer token (logstore.api_token)", 401)
        if _changes(request) and not self.control.leading:
            if request.headers.get(FORWARDED):
                return _error("not-leader", "this georep API process does not lead; send the change again", 503)
            answer = await self.forwarder.forward(request)
            if answer is not None:
                return answer
        try:
            return await handler(request)
        except CatalogUnavailable as exc:
            return _error("kafka-unavailable", f"replicas not known yet: {exc}", 503)

    async def list_replicas(self, _: web.Request) -> web.Response:
        return _json({"replicas": [_replica(d) for d in await self.control.replica_list()]})

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _error("invalid-body", f"body is not JSON: {exc}", 400)
        if not isinstance(body, dict):
            return _error("invalid-body", "body must be a JSON object of replica fields", 400)
        backfill = body.pop("backfill", True)
        body.pop("created_at", None)  # set here, not by the caller
        if not isinstance(backfill, bool):
            return _error("invalid-body", "backfill must be true or false", 400)
        try:
            definition = ReplicaDefinition.parse(body)
            created = await self.control.create(definition, backfill=backfill)
        except _REFUSALS as exc:
            return _refused(exc, "invalid-replica")
        return _json({"replica": _replica(created), "backfill": "started" if backfill else "off"}, status=201)

    async def show(self, request: web.Request) -> web.Response:
        region = request.match_info["region"]
        definition = await self.control.replica(region)
        if definition is None:
            known = ", ".join(d.region for d in await self.control.replica_list()) or "none"
            return _error("unknown-replica", f"no replica in {region} (replicas: {known})", 404)
        return _json({"replica": _replica(definition), "backfill": await self.control.backfill(region)})

    async def delete(self, request: web.Request) -> web.Response:
        region = request.match_info["region"]
        try:
            parse_region(region)
            gone = await self.control.delete(region)
        except _REFUSALS as exc:
            return _refused(exc, "invalid-region")
        return _json({"deleted": _replica(gone)})

    async def backfill(self, request: web.Request) -> web.Response:
        region = request.match_info["region"]
        progress = await self.control.backfill(region)
        if progress is None:
            return _error("no-backfill", f"no backfill has run for {region}", 404)
        return _json(progress)

    async def rerun(self, request: web.Request) -> web.Response:
        region = request.match_info["region"]
        if await self.control.replica(region) is None:
            return _error("unknown-replica", f"no replica in {region}", 404)
        try:
            if not await self.control.backfill_again(region):
                return _error("backfill-running", f"a backfill of {region} is running already", 409)
        except KafkaUnavailable as exc:
            return _refused(exc, "invalid-region")
        return _json({"backfill": "started"}, status=202)

    async def status(self, _: web.Request) -> web.Response:
        return _json(await self.control.status())

    async def image(self, request: web.Request) -> web.Response:
        text = request.query.get("image", "")
        try:
            repository, tag, digest = parse_image(text)
        except InvalidInput as exc:
            return _error("invalid-image", f"image {text[:300]!r}: {exc}; expected repo:tag or repo@digest", 400)
        try:
            return _json(await self.control.image(repository, tag, digest))
        except UpstreamUnavailable as exc:
            return _error("primary-unavailable", f"cannot ask the primary what {text[:300]} is: {exc}", 503)


def add_control_routes(app: web.Application, control: Control, token: SecretStr | None) -> None:
    routes = _Routes(control, token)
    app.middlewares.append(routes.guard)

    async def close(_: web.Application) -> None:
        await routes.forwarder.close()

    app.on_cleanup.append(close)
    app.router.add_get("/replicas", routes.list_replicas)
    app.router.add_post("/replicas", routes.create)
    app.router.add_get("/replicas/{region}", routes.show)
    app.router.add_delete("/replicas/{region}", routes.delete)
    app.router.add_get("/replicas/{region}/backfill", routes.backfill)
    app.router.add_post("/replicas/{region}/backfill", routes.rerun)
    app.router.add_get("/status", routes.status)
    app.router.add_get("/status/image", routes.image)
