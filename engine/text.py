"""Text that came from outside (registries, S3, events, operators) made safe to print on a terminal.

Event ids, error messages from a registry or an object store, repository names
in a dead letter: any of them may carry terminal escape sequences. `clean`
replaces every control character but tab and newline, so nothing a pusher
sends can move a cursor, recolour a terminal or hide a line; `shown` also
keeps Rich from reading markup in it.
"""

from __future__ import annotations

import re
from typing import Final

from rich.text import Text

# C0 controls but tab and newline, DEL, and the C1 controls (CSI and friends in one byte).
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """`text` with every control character except tab and newline replaced by '?'."""
    return _CONTROL.sub("?", text)


def shown(text: object) -> Text:
    """A table cell for text from outside: control characters replaced and Rich markup left as typed
    (a record's error of "[red]...[/]" or "[link=...]" is shown, not obeyed)."""
    return Text(clean(str(text)))
