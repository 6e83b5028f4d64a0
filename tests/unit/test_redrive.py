"""Which dead letters `georep redrive --region R` puts back, and how."""

from __future__ import annotations

from datetime import UTC, datetime

from consumers.redrive import Redrive, as_json, redrivable
from engine.digest import Digest
from engine.events import Action, DeadLetter, ReplicationEvent, Source
from engine.names import Repository, Tag
from engine.text import clean

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
EVENT = ReplicationEvent(
    id="evt-1", source=Source.DISTRIBUTION, action=Action.PUSH, repository=Repository.parse("team/app"),
    digest=Digest.parse("sha256:" + "a" * 64), tag=Tag.parse("v1"), occurred_at=NOW, received_at=NOW,
)  # fmt: skip


def letter(region: str, **fields: object) -> bytes:
    base: dict[str, object] = {
        "region": region, "reason": "not-found", "error": "gone", "attempts": 1, "failed_at": NOW,
        "event": EVENT.model_dump(mode="json", by_alias=True),
    }  # fmt: skip
    return DeadLetter.model_validate(base | fields).to_json()


def test_a_letter_of_this_region_comes_back_as_the_same_event_addressed_to_it_alone() -> None:
    result = Redrive()
    event = redrivable((7, letter("eu-frankfurt")), "eu-frankfurt", result)
    assert event is not None
    assert event.model_dump(exclude={"region"}) == EVENT.model_dump(exclude={"region"})
    assert event.region == "eu-frankfurt"
    assert result.unredrivable == []


def test_another_regions_letter_is_passed_over_silently() -> None:
    result = Redrive()
    assert redrivable((7, letter("ap-singapore")), "eu-frankfurt", result) is None
    assert result.unredrivable == []


def test_a_letter_without_an_event_is_listed_as_stuck_with_its_reason() -> None:
    result = Redrive()
    raw = letter("eu-frankfurt", event=None, raw="{not json", reason="invalid-event", error="not JSON")
    assert redrivable((3, raw), "eu-frankfurt", result) is None
    assert result.unredrivable == [(3, "the message was not an event (invalid-event: not JSON)")]


def test_an_unreadable_letter_and_an_invalid_event_are_listed_not_raised() -> None:
    result = Redrive()
    assert redrivable((1, b"\xff garbage"), "eu-frankfurt", result) is None
    bad_event = EVENT.model_dump(mode="json", by_alias=True) | {"repository": "../etc"}
    assert redrivable((2, letter("eu-frankfurt", event=bad_event)), "eu-frankfurt", result) is None
    assert [offset for offset, _ in result.unredrivable] == [1, 2]
    assert "unreadable dead letter" in result.unredrivable[0][1]
    assert "repository" in result.unredrivable[1][1]


def test_an_event_id_with_terminal_escapes_is_never_redriven_or_printed_raw() -> None:
    """An id that could drive a terminal (`redrive --dry-run` prints ids) fails validation; the reason
    printed for it names the field, and the CLI's `clean` leaves no escape in it."""
    result = Redrive()
    hostile = EVENT.model_dump(mode="json", by_alias=True) | {"id": "evt\x1b[2J\x1b]0;owned\x07"}
    raw = letter("eu-frankfurt", event=hostile, error="\x1b[31mred\x1b[0m [bold]markup[/]")
    assert redrivable((4, raw), "eu-frankfurt", result) is None
    [(offset, why)] = result.unredrivable
    assert offset == 4
    assert "id" in why
    assert "\x1b" not in clean(why)
    assert "\x07" not in clean(why)


def test_json_names_each_letter_with_why_it_was_given_up_on() -> None:
    result = Redrive()
    event = redrivable((7, letter("eu-frankfurt")), "eu-frankfurt", result)
    assert event is not None
    result.redriven.append(event)
    redrivable((8, b"not json"), "eu-frankfurt", result)
    doc = as_json(result, "eu-frankfurt", dry_run=True)
    assert doc["dry_run"] is True
    assert doc["redriven"] == [{
        "event_id": "evt-1", "image": "team/app:v1@sha256:aaaaaaaaaaaa", "reason": "not-found", "error": "gone",
        "attempts": 1, "failed_at": NOW.isoformat(),
    }]  # fmt: skip
    assert [u["offset"] for u in doc["unredrivable"]] == [8]
