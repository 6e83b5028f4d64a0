"""The console at `/ui`: server-rendered pages over the same data as the CLI.

    GET  /ui                              every region: lag, oldest pending, totals, latency, backfill, last
                                          reconciliation, and an hour of lag and latency as SVG
    GET  /ui/overview.part                the overview's table alone (what the page's script refreshes)
    GET  /ui/image?ref=REPO:TAG|REPO@DIG  where an image is, per region (signed in: it asks the primary)
    GET  /ui/logs?<GET /logs filters>&page=N   the replication log, newest first, paged
    GET  /ui/replicas, /ui/replicas/new, /ui/replicas/{region}
    POST /ui/replicas                     create (the form has every field of `georep replicas create`)
    POST /ui/replicas/{region}/delete
    GET  /ui/dead-letters/{region}        the region's dead letters not yet redriven, with why
    POST /ui/dead-letters/{region}/redrive
    GET  /ui/login, POST /ui/login, POST /ui/logout

Reads are open, as the API's are, except the image page, which asks the primary with georep's credentials
(as `/status/image` does). Changes need a session, which the API token opens (georep.console.session), and
a CSRF token; they go through this process's own JSON API with the API token, so the console applies exactly
the rules, refusals and leader forwarding that the CLI meets. Every page is escaped by jinja2 and served with
a strict Content-Security-Policy: no inline script or style, nothing from anywhere but here.
"""

from __future__ import annotations

import hmac
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import aiohttp_jinja2
import jinja2
import orjson
import structlog
from aiohttp import web
from pydantic import ValidationError

from consumers.logstore.query import LogQuery, problems
from consumers.logstore.store import LogStore
from consumers.redrive import redrive
from engine.errors import GeorepError, InvalidInput, UpstreamUnavailable
from engine.events import utcnow
from engine.references import parse_image
from engine.settings import Settings
from georep.api.control import Control
from georep.api.routes import Handler
from georep.console import charts, filters
from georep.console.history import LagHistory
from georep.console.session import COOKIE, Session, Sessions

log = structlog.get_logger(__name__)

HERE: Final = Path(__file__).parent
PAGE_SIZE: Final = 50
#: the browser may load and run only what this process serves; forms post only here; no framing
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class Console:
    def __init__(self, settings: Settings, store: LogStore, control: Control, history: LagHistory) -> None:
        self.settings = settings
        self.store = store
        self.control = control
        self.history = history
        self.sessions = Sessions(settings.logstore.api_token)
        self._token = settings.logstore.api_token
        self._client: aiohttp.ClientSession | None = None

    # -- plumbing ---------------------------------------------------------------------------------

    @web.middleware
    async def headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/ui"):
            return await handler(request)
        if request.method == "POST" and (refused := self._refuse_post(request)) is not None:
            return refused
        response = await handler(request)
        response.headers.update(_HEADERS)
        return response

    def _refuse_post(self, request: web.Request) -> web.Response | None:
        """A POST from another site is refused before anything reads its form (the CSRF token is checked by each
        change, which needs the form)."""
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
            return self._plain(request, 403, f"refused: a form posted from {origin}, not from this console")
        return None

    def _plain(self, request: web.Request, status: int, text: str) -> web.Response:
        log.info("console.refused", path=request.path, status=status, reason=text)
        response = web.Response(status=status, text=text)
        response.headers.update(_HEADERS)
        return response

    def session(self, request: web.Request) -> Session | None:
        return self.sessions.read(request.cookies.get(COOKIE))

    def render(self, name: str, request: web.Request, context: dict[str, Any], status: int = 200) -> web.Response:
        session = self.session(request)
        base = {
            "session": session,
            "changes_enabled": self.sessions.enabled,
            "path": request.path_qs,
            "rendered_at": utcnow(),
            "error": None,
            "message": None,
        }
        return aiohttp_jinja2.render_template(name, request, base | context, status=status)

    async def _change(self, request: web.Request) -> tuple[Session, dict[str, str]] | web.Response:
        """The session and form of a change, or the page that refuses it (not signed in, stale form)."""
        form = {k: str(v) for k, v in (await request.post()).items()}
        session = self.session(request)
        if session is None:
            why = (
                "sign in with the API token to create, delete or redrive"
                if self.sessions.enabled
                else "changes are off: this georep API has no logstore.api_token"
            )
            log.info("console.refused", path=request.path, status=401, reason=why)
            return self.render("refused.html", request, {"title": "Not signed in", "error": why}, 401)
        if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
            log.info("console.refused", path=request.path, status=403, reason="stale or foreign form (CSRF token)")
            return self.render(
                "refused.html", request,
                {"title": "Stale form", "error": "this form is stale or came from elsewhere: reload the page"}, 403,
            )  # fmt: skip
        return session, form

    async def _api(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """This process's own JSON API, with the API token: the CLI's path, leader forwarding included."""
        assert self._token is not None
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90))
        headers = {"Authorization": f"Bearer {self._token.get_secret_value()}"}
        url = self.control.leadership.url + path
        try:
            async with self._client.request(method, url, json=body, headers=headers) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 503, {"error": "api-unavailable", "reason": f"the georep API at {url} did not answer: {exc}"}
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return status, {"error": "api-unavailable", "reason": raw[:300].decode(errors="replace")}
        return status, doc if isinstance(doc, dict) else {"answer": doc}

    async def close(self, _: web.Application) -> None:
        if self._client is not None:
            await self._client.close()

    # -- overview ---------------------------------------------------------------------------------

    async def _overview(self) -> dict[str, Any]:
        try:
            status = await self.control.status()
        except GeorepError as exc:
            return {"regions": [], "error": f"status is not known: {exc}"}
        self.history.record(status)
        end = time.time()
        start = end - 3600
        since = utcnow() - timedelta(hours=1)
        for region in status["regions"]:
            latency = [(t, ms / 1000) for t, ms in await self.store.lag_series(region["region"], since)]
            region["charts"] = {
                "lag": charts.line(self.history.samples(region["region"]), start, end),
                "p99": charts.line(charts.bucketed(latency, start, end, 0.99), start, end, floor=0.5),
                "p50": charts.line(charts.bucketed(latency, start, end, 0.5), start, end, floor=0.5),
            }
        return {"regions": status["regions"], "error": self.history.error}

    async def overview(self, request: web.Request) -> web.Response:
        return self.render("overview.html", request, {"title": "Overview", **await self._overview()})

    async def overview_part(self, request: web.Request) -> web.Response:
        return self.render("_overview_table.html", request, await self._overview())

    # -- where is my image ------------------------------------------------------------------------

    async def image(self, request: web.Request) -> web.Response:
        ref = request.query.get("ref", "").strip()
        context: dict[str, Any] = {"title": "Where is my image", "ref": ref, "answer": None}
        if not ref:
            return self.render("image.html", request, context)
        if self.session(request) is None:
            context["error"] = "sign in first: this page asks the primary with georep's credentials"
            return self.render("image.html", request, context, 401)
        try:
            repository, tag, digest = parse_image(ref)
        except InvalidInput as exc:
            context["error"] = f"{ref}: {exc}; expected repo:tag or repo@sha256:…"
            return self.render("image.html", request, context, 400)
        try:
            context["answer"] = await self.control.image(repository, tag, digest)
        except UpstreamUnavailable as exc:
            context["error"] = f"cannot ask the primary what {ref} is: {exc}"
            return self.render("image.html", request, context, 503)
        return self.render("image.html", request, context)

    # -- replication log --------------------------------------------------------------------------

    async def logs(self, request: web.Request) -> web.Response:
        params = {k: v for k, v in request.query.items() if v != "" and k != "page"}
        page = request.query.get("page", "1")
        context: dict[str, Any] = {"title": "Replication log", "filters": params, "records": [], "page": 1}
        if not page.isdigit() or int(page) < 1:
            context["error"] = f"page: {page!r} is not a page number"
            return self.render("logs.html", request, context, 400)
        context["page"] = number = int(page)
        params.setdefault("limit", str(PAGE_SIZE))
        try:
            query = LogQuery.model_validate(params | {"offset": str((number - 1) * int(params["limit"]))})
        except (ValidationError, ValueError) as exc:
            reasons = problems(exc) if isinstance(exc, ValidationError) else [("limit", str(exc))]
            context["error"] = "; ".join(f"{name}: {why}" for name, why in reasons)
            return self.render("logs.html", request, context, 400)
        records = await self.store.query(query)
        context |= {"records": records, "limit": query.limit, "more": len(records) == query.limit}
        return self.render("logs.html", request, context)

    # -- replicas ---------------------------------------------------------------------------------

    async def replicas(self, request: web.Request) -> web.Response:
        context: dict[str, Any] = {"title": "Replica regions", "message": _deleted(request)}
        try:
            context["replicas"] = await self.control.replica_list()
        except GeorepError as exc:
            context |= {"replicas": [], "error": f"replicas are not known yet: {exc}"}
            return self.render("replicas.html", request, context, 503)
        return self.render("replicas.html", request, context)

    async def replica(self, request: web.Request) -> web.Response:
        region = request.match_info["region"]
        try:
            definition = await self.control.replica(region)
            backfill = await self.control.backfill(region) if definition is not None else None
        except GeorepError as exc:
            return self.render("refused.html", request, {"title": region, "error": str(exc)}, 503)
        if definition is None:
            return self.render("refused.html", request, {"title": region, "error": f"no replica in {region}"}, 404)
        return self.render(
            "replica.html", request, {"title": region, "replica": definition, "backfill": backfill,
                                      "message": "created" if request.query.get("created") else None},
        )  # fmt: skip

    async def new_replica(self, request: web.Request) -> web.Response:
        return self.render("replica_form.html", request, {"title": "New replica", "form": {"backfill": "on"}})

    async def create(self, request: web.Request) -> web.Response:
        checked = await self._change(request)
        if isinstance(checked, web.Response):
            return checked
        _, form = checked
        status, doc = await self._api("POST", "/replicas", replica_request(form))
        if status == 201:
            log.info("console.replica_created", region=form.get("region"))
            raise web.HTTPSeeOther(f"/ui/replicas/{doc['replica']['region']}?created=1")
        return self.render(
            "replica_form.html", request, {"title": "New replica", "form": form, "error": refusal(doc)}, status
        )

    async def delete(self, request: web.Request) -> web.Response:
        region = request.match_info["region"]
        checked = await self._change(request)
        if isinstance(checked, web.Response):
            return checked
        status, doc = await self._api("DELETE", f"/replicas/{region}")
        if status == 200:
            log.info("console.replica_deleted", region=region)
            raise web.HTTPSeeOther(f"/ui/replicas?deleted={region}")
        return self.render("refused.html", request, {"title": f"Delete {region}", "error": refusal(doc)}, status)

    # -- dead letters -----------------------------------------------------------------------------

    async def dead_letters(self, request: web.Request) -> web.Response:
        region = request.match_info["region"]
        context: dict[str, Any] = {"title": f"Dead letters of {region}", "region": region}
        try:
            found = await redrive(self.settings, region, dry_run=True, say=lambda _: None)
        except GeorepError as exc:
            context["error"] = f"cannot read the dead letters: {exc}"
            return self.render("dead_letters.html", request, context, 503)
        context |= {"letters": found.letters, "unredrivable": found.unredrivable, "done": request.query.get("done")}
        return self.render("dead_letters.html", request, context)

    async def redrive(self, request: web.Request) -> web.Response:
        region = request.match_info["region"]
        checked = await self._change(request)
        if isinstance(checked, web.Response):
            return checked
        try:
            done = await redrive(self.settings, region, say=lambda _: None)
        except GeorepError as exc:
            return self.render("refused.html", request, {"title": "Redrive", "error": f"redrive failed: {exc}"}, 503)
        log.info("console.redriven", region=region, events=len(done.redriven))
        raise web.HTTPSeeOther(f"/ui/dead-letters/{region}?done={len(done.redriven)}")

    # -- sign in ----------------------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.Response:
        return self.render("login.html", request, {"title": "Sign in", "next": _local(request.query.get("next"))})

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        target = _local(str(form.get("next", "")))
        if not self.sessions.enabled:
            off = "changes are off: this georep API has no logstore.api_token"
            return self.render("login.html", request, {"title": "Sign in", "next": target, "error": off}, 403)
        if not self.sessions.token_ok(str(form.get("token", ""))):
            log.info("console.sign_in_refused", remote=request.remote)
            return self.render(
                "login.html", request, {"title": "Sign in", "next": target, "error": "wrong API token"}, 401
            )
        cookie, _ = self.sessions.new()
        response = web.HTTPSeeOther(target)
        response.set_cookie(
            COOKIE, cookie, httponly=True, samesite="Strict", secure=request.secure, path="/ui"
        )  # no max_age: it ends with the browser session
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/ui")
        response.del_cookie(COOKIE, path="/ui")
        raise response


def replica_request(form: dict[str, str]) -> dict[str, Any]:
    """The JSON body of `POST /replicas` from the form: the fields of `georep replicas create`."""
    body: dict[str, Any] = {
        name: form.get(name, "").strip()
        for name in ("region", "endpoint", "bucket", "prefix", "s3_region", "credentials_ref")
    }
    body["registry"] = form.get("registry", "").strip() or None
    body["s3_region"] = body["s3_region"] or "us-east-1"
    body |= {"include": _lines(form, "include"), "exclude": _lines(form, "exclude")}
    body |= {"deletes": form.get("deletes") == "on", "backfill": form.get("backfill") == "on"}
    return body


def _lines(form: dict[str, str], name: str) -> list[str]:
    return [x.strip() for x in form.get(name, "").splitlines() if x.strip()]


def refusal(doc: dict[str, Any]) -> str:
    """A refusal as the CLI words it: `refused [rule]: reason`, or the reason alone."""
    reason = str(doc.get("reason") or doc.get("error") or doc)
    rule = doc.get("rule")
    return f"refused [{rule}]: {reason}" if isinstance(rule, str) else reason


def _deleted(request: web.Request) -> str | None:
    region = request.query.get("deleted")
    return f"deleted replica {region}; its bucket is left as it is" if region else None


def _local(target: str | None) -> str:
    """Only a path of the console itself: a sign-in never sends anyone elsewhere."""
    if target and target.startswith("/ui") and not target.startswith("//"):
        return target
    return "/ui"


def add_console(
    app: web.Application, settings: Settings, store: LogStore, control: Control, history: LagHistory
) -> None:
    console = Console(settings, store, control, history)
    env = aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, context_processors=[],
    )  # fmt: skip
    filters.install(env)
    app.middlewares.append(console.headers)
    app.on_cleanup.append(console.close)
    routes = app.router
    routes.add_get("/ui", console.overview)
    routes.add_get("/ui/overview.part", console.overview_part)
    routes.add_get("/ui/image", console.image)
    routes.add_get("/ui/logs", console.logs)
    routes.add_get("/ui/replicas", console.replicas)
    routes.add_get("/ui/replicas/new", console.new_replica)
    routes.add_post("/ui/replicas", console.create)
    routes.add_get("/ui/replicas/{region}", console.replica)
    routes.add_post("/ui/replicas/{region}/delete", console.delete)
    routes.add_get("/ui/dead-letters/{region}", console.dead_letters)
    routes.add_post("/ui/dead-letters/{region}/redrive", console.redrive)
    routes.add_get("/ui/login", console.login_form)
    routes.add_post("/ui/login", console.login)
    routes.add_post("/ui/logout", console.logout)
    routes.add_static("/ui/static", HERE / "static")
