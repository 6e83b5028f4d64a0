"""The README's captured outputs have the shape its commands print today: run them all on the test stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local import readme_outputs
from deploy.local.readme_outputs import README, headings
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


async def test_every_captured_output_in_the_readme_matches_what_its_command_prints(live: Stack, tmp_path: Path) -> None:
    captured = await readme_outputs.capture(live.info, live.root, README.read_text(), tmp_path)
    assert len(captured) >= 5, [command for command, _, _ in captured]
    for command, shown, now in captured:
        assert headings(shown) == headings(now), (
            f"$ {command}\n--- README:\n" + "\n".join(shown) + "\n--- prints now:\n" + "\n".join(now)
            + "\n(regenerate with `make up && make readme-outputs`)"
        )  # fmt: skip
