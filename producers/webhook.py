"""The webhook adapter: registry notifications in, ReplicationEvents on Kafka out.

    POST /webhooks/distribution   CNCF distribution notification envelopes
    POST /webhooks/harbor         Harbor webhooks (Default or CloudEvents payload)
    GET  /healthz                 503 naming the problem while the brokers do not answer, or a task died
    GET  /readyz                  the same: 200 only while Kafka answers (probed every few seconds)
    GET  /metrics                 Prometheus

A request is answered 2xx only after Kafka acknowledged every event in it;
503 if Kafka cannot take them (the registry retries); 401, 400, 413 or 415
with a JSON `{"error", "reason"}` for bad callers and bad bodies. Every
refusal and every skipped event is logged with its reason.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Final

import structlog
from aiohttp import web
from prometheus_client import Counter

from adapters.health import KAFKA_PROBE_TIMEOUT_S, Health, KafkaMonitor, Supervisor
from adapters.kafka import Publisher, connection_options
from adapters.runtime import start_http
from engine.errors import InvalidInput, KafkaUnavailable
from engine.events import ReplicationEvent, utcnow
from engine.recent import RecentIds
from engine.settings import KafkaSettings, Settings, WebhookSettings
from producers import distribution, harbor
from producers.notifications import Parsed

log = structlog.get_logger(__name__)

REQUESTS = Counter("georep_webhook_requests_total", "Webhook requests by source and HTTP status", ["source", "status"])
EVENTS = Counter("georep_webhook_events_total", "Events by source and outcome", ["source", "outcome"])
SKIPPED = Counter(
    "georep_webhook_skipped_total", "Events acknowledged but not replicated, by source and kind", ["source", "kind"]
)

Parser = Callable[[bytes, datetime], Parsed]
_JSON_TYPES: Final = distribution.MEDIA_TYPES | {"application/cloudevents+json"}


def _error(status: int, error: str, reason: str) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status)


#: skipped events a registry can be told not to send at all, and how (first one of each kind logs it once)
_AVOIDABLE: Final = {
    "blob": f"ignore them at the source: add {distribution.BLOB_MEDIA_TYPE} (the type distribution gives every "
    "uploaded blob) to the endpoint's ignore.mediatypes; a push then sends one notification instead of one per "
    "blob (deploy/k8s/README.md, the notifications example)",
    "pull": "ignore them at the source: add pull to the endpoint's ignore.actions",
}


class WebhookApp:
    def __init__(
        self,
        webhook: WebhookSettings,
        kafka: KafkaSettings,
        publisher: Publisher,
        health: Health | None = None,
        *,
        max_clock_skew_s: float = 5.0,
    ) -> None:
        if webhook.token is None or not webhook.token.get_secret_value():
            raise InvalidInput("webhook.token is required: the webhook refuses unauthenticated callers")
        self._token = webhook.token.get_secret_value().encode()
        self._settings = webhook
        self._max_skew = timedelta(seconds=max_clock_skew_s)
        self._topic = kafka.events_topic
        self.publisher = publisher
        # Ids of events Kafka already took: a registry redelivers an event whose answer it
        # did not get (a timeout, a restart), and that must not become a second replication.
        self._published = RecentIds(webhook.dedupe_window)
        #: (source, kind) of the avoidable events already warned about: once per process is enough
        self._advised: set[tuple[str, str]] = set()
        self.health = health or Health("webhook")
        #: probes the brokers on a schedule (run by `serve_webhook`); /readyz and /healthz say what it found
        self.monitor = KafkaMonitor(
            self.health, kafka.bootstrap_servers, lambda: publisher.probe(KAFKA_PROBE_TIMEOUT_S)
        )  # fmt: skip
        self.health.needs("a first answer from Kafka", lambda: self.monitor.reachable is True)
        connection_options(kafka, "webhook")  # refuse at start what could never connect

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._settings.max_body_bytes)
        app.router.add_post("/webhooks/distribution", self._handler("distribution", distribution.parse_envelope))
        app.router.add_post("/webhooks/harbor", self._handler("harbor", harbor.parse_harbor))
        self.health.add_routes(app)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        await self.publisher.close()

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        # distribution sends the configured header verbatim ("Bearer <token>");
        # Harbor's "auth header" field is sent as-is and often holds the bare token.
        presented = header[7:] if header[:7].lower() == "bearer " else header
        return hmac.compare_digest(presented.strip().encode(), self._token)

    def _handler(self, source: str, parse: Parser) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            response = await self._handle(source, parse, request)
            REQUESTS.labels(source, str(response.status)).inc()
            return response

        return handle

    async def _handle(self, source: str, parse: Parser, request: web.Request) -> web.Response:
        bound = log.bind(source=source, remote=request.remote)
        if not self._authorized(request):
            bound.warning("webhook.refused", status=401, reason="missing or wrong bearer token")
            return _error(401, "unauthorized", "missing or wrong bearer token")
        content_type = request.content_type
        if content_type not in _JSON_TYPES:
            reason = f"content type {content_type[:80]!r} is not a registry notification (JSON)"
            bound.warning("webhook.refused", status=415, reason=reason)
            return _error(415, "unsupported-media-type", reason)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            reason = f"body exceeds {self._settings.max_body_bytes} bytes"
            bound.warning("webhook.refused", status=413, reason=reason)
            return _error(413, "body-too-large", reason)
        except web.RequestPayloadError:
            # A Content-Encoding the body does not match, or broken chunked framing.
            reason = "body cannot be read: it does not match its Content-Encoding or transfer framing"
            bound.warning("webhook.refused", status=400, reason=reason)
            return _error(400, "invalid-body", reason)
        try:
            parsed = parse(body, utcnow())
        except InvalidInput as exc:
            status = 413 if exc.reason == "body-too-large" else 400
            bound.warning("webhook.refused", status=status, reason=exc.message)
            return _error(status, exc.reason, exc.message)

        parsed.events = [self._clamped(event, bound) for event in parsed.events]
        duplicates = [event.id for event in parsed.events if event.id in self._published]
        parsed.events = [event for event in parsed.events if event.id not in self._published]
        for event_id in duplicates:
            bound.info("webhook.event_skipped", event_id=event_id, reason="duplicate delivery: already published")
        EVENTS.labels(source, "duplicate").inc(len(duplicates))
        for skip in parsed.skipped:
            bound.info(
                "webhook.event_skipped", index=skip.index, event_id=skip.event_id, kind=skip.kind, reason=skip.reason
            )
            if skip.kind in _AVOIDABLE and (source, skip.kind) not in self._advised:
                self._advised.add((source, skip.kind))
                bound.warning(
                    "webhook.avoidable_events", kind=skip.kind, advice=_AVOIDABLE[skip.kind],
                    reason="the registry notifies georep of events georep never replicates; it sends an endpoint's "
                    "notifications one at a time, so each one delays the pushes queued behind it",
                )  # fmt: skip
            SKIPPED.labels(source, skip.kind).inc()
        EVENTS.labels(source, "skipped").inc(len(parsed.skipped))
        if parsed.events:
            messages = [(event.key, event.to_json()) for event in parsed.events]
            try:
                await self.publisher.publish(self._topic, messages, self._settings.publish_timeout_s)
            except KafkaUnavailable as exc:
                bound.warning("webhook.kafka_unavailable", status=503, reason=str(exc), events=len(messages))
                return _error(503, "kafka-unavailable", str(exc))
            EVENTS.labels(source, "published").inc(len(parsed.events))
            self._published.add(event.id for event in parsed.events)
            for event in parsed.events:
                bound.info(
                    "webhook.event_published",
                    event_id=event.id,
                    action=event.action.value,
                    repository=str(event.repository),
                    digest=str(event.digest) if event.digest else None,
                    tag=str(event.tag) if event.tag else None,
                )
        return web.json_response(
            {
                "published": [event.id for event in parsed.events],
                "duplicates": duplicates,
                "skipped": [{"index": s.index, "id": s.event_id, "reason": s.reason} for s in parsed.skipped],
            }
        )

    def _clamped(self, event: ReplicationEvent, bound: structlog.typing.FilteringBoundLogger) -> ReplicationEvent:
        """An event dated later than its receipt (plus the allowed skew) is taken as of then: a future date would
        otherwise win its tag against every later real push."""
        latest = event.received_at + self._max_skew
        if event.occurred_at <= latest:
            return event
        bound.warning(
            "webhook.future_event", event_id=event.id, occurred_at=event.occurred_at.isoformat(),
            taken_as=latest.isoformat(),
        )  # fmt: skip
        return event.model_copy(update={"occurred_at": latest})


async def serve_webhook(settings: Settings, stop: asyncio.Event) -> None:
    """Serve the webhook until `stop`; the brokers are probed on a schedule, and /readyz says what it found."""
    publisher = Publisher(settings.kafka.model_copy(update={"linger_ms": settings.webhook.linger_ms}), "webhook")
    webhook = WebhookApp(settings.webhook, settings.kafka, publisher, max_clock_skew_s=settings.max_clock_skew_s)
    runner = await start_http(
        webhook.app(), settings.webhook.host, settings.webhook.port,
        header_timeout_s=settings.webhook.header_timeout_s, max_connections=settings.webhook.max_connections,
    )  # fmt: skip
    try:
        async with Supervisor(webhook.health, stop).running() as tasks:
            tasks.spawn("kafka-probe", webhook.monitor.run(stop))
    finally:
        await runner.cleanup()
