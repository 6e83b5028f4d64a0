"""How `georep logs` shows records: a rich table for people, JSON lines for machines."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC
from typing import Final

import orjson
from rich import box
from rich.filesize import decimal
from rich.table import Table
from rich.text import Text

from engine.events import ReplicationRecord, Status
from engine.text import shown

_STATUS_STYLE: Final = {
    Status.SUCCEEDED: "green",
    Status.FAILED: "red",
    Status.DEAD_LETTERED: "bold red",
    Status.SKIPPED: "dim",
}

# (header, width when following); the error column takes what is left.
_COLUMNS: Final = (
    ("finished", 20),
    ("region", 12),
    ("action", 6),
    ("repository", 28),
    ("tag", 16),
    ("digest", 19),
    ("status", 13),
    ("blobs", 9),
    ("bytes", 9),
    ("lag ms", 8),
    ("attempt", 7),
    ("error", None),
)
_RIGHT: Final = {"blobs", "bytes", "lag ms", "attempt"}


def json_line(record: ReplicationRecord) -> str:
    """One record as one line of JSON, in the same form as the HTTP API."""
    return orjson.dumps(record.model_dump(mode="json", by_alias=True)).decode()


def records_table(records: Iterable[ReplicationRecord], *, header: bool = True, fixed: bool = False) -> Table:
    """A table of records; `fixed` widths line up tables printed one row at a time (`--follow`)."""
    # Rows printed one table at a time line up only if every table draws the same box.
    table = Table(box=box.SIMPLE_HEAD, show_header=header, show_edge=False, padding=(0, 1, 0, 0))
    for name, width in _COLUMNS:
        table.add_column(
            name,
            justify="right" if name in _RIGHT else "left",
            width=width if fixed else None,
            # One record, one line (grep-able); a row wider than the terminal wraps there.
            no_wrap=True,
            overflow="ellipsis",
        )
    for record in records:
        table.add_row(*_cells(record))
    return table


def _cells(record: ReplicationRecord) -> list[str | Text]:
    return [
        record.finished_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
        record.region,
        record.action.value,
        shown(record.repository),
        "" if record.tag is None else shown(record.tag),
        "" if record.digest is None else record.digest.short,
        Text(record.status.value, style=_STATUS_STYLE[record.status]),
        f"{record.blobs_copied}/{record.blobs_total}",
        decimal(record.bytes_copied),
        "" if record.lag_ms is None else str(record.lag_ms),
        str(record.attempt),
        shown(record.error or ""),
    ]
