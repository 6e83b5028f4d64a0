"""How the console words values: sizes, ages, digests, times; and a pasted image reference made plain."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import jinja2
from rich.filesize import decimal

from engine.events import utcnow


def size(value: int | None) -> str:
    return "-" if value is None else decimal(value)


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def ago(value: float | datetime | str | None) -> str:
    """`12s`, `5m`, `3h` (an age in seconds, or the time since a moment)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        value = (utcnow() - value).total_seconds()
    value = max(0.0, value)
    if value < 120:
        return f"{value:.0f}s"
    return f"{value / 60:.0f}m" if value < 7200 else f"{value / 3600:.0f}h"


def short(digest: Any) -> str:
    text = "" if digest is None else str(digest)
    return text[:19] if text.startswith("sha256:") else text or "-"


def when(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def install(env: jinja2.Environment) -> None:
    env.filters |= {"size": size, "seconds": seconds, "ago": ago, "short": short, "when": when}
