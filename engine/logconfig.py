"""structlog set-up: JSON lines via orjson in production, readable in a terminal.

Secrets are `SecretStr` everywhere, so they are not logged by accident; as a
second line of defence every string that reaches a log line is scrubbed of the
secret values registered at start.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson
import structlog
from pydantic import SecretStr

from engine.settings import Settings

_secrets: set[str] = set()
REDACTED = "**********"


def register_secrets(values: Iterable[SecretStr | str | None]) -> None:
    for value in values:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        # Very short values would redact ordinary words; they are not secrets anyone should use.
        if raw and len(raw) >= 6:
            _secrets.add(raw)


def settings_secrets(settings: Settings) -> list[SecretStr | str | None]:
    values: list[SecretStr | str | None] = [
        settings.kafka.password,
        settings.primary.password,
        settings.webhook.token,
        settings.logstore.api_token,
    ]
    values += [region.secret_key for region in settings.regions.values()]
    return values


def scrub(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    return value


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _secrets:
        for key, value in event_dict.items():
            event_dict[key] = _scrub_value(value)
    return event_dict


class _ScrubbingFormatter(logging.Formatter):
    """For what libraries log through the standard library: the whole line, traceback included."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure_logging(level: str = "info", fmt: str = "json", *, quiet_libraries: bool = False) -> None:
    """structlog and the standard library's loggers, to stderr. `quiet_libraries` (commands run by a person):
    aiokafka and botocore say nothing; the command reports what failed in one line of its own."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    processors: list[structlog.typing.Processor]
    if fmt == "json":
        processors = [*shared, _redact, structlog.processors.JSONRenderer(serializer=orjson.dumps)]
        factory: Any = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors = [*shared, _redact, structlog.dev.ConsoleRenderer(colors=False)]
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # aiokafka and botocore log through the standard library; keep their warnings, drop their chatter.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ScrubbingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=max(numeric, logging.WARNING), handlers=[handler], force=True)
    for library in ("aiokafka", "botocore", "aiobotocore", "asyncio"):
        logging.getLogger(library).setLevel(logging.CRITICAL if quiet_libraries else logging.NOTSET)
