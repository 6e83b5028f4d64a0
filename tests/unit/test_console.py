"""The console's parts that need no browser: sessions, CSRF, references, charts, the replica form."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import SecretStr

from engine.errors import KafkaUnavailable
from georep.console import charts
from georep.console.app import _local, refusal, replica_request
from georep.console.filters import ago, short
from georep.console.history import LagHistory
from georep.console.session import LIFETIME_S, Sessions


def test_a_session_opens_with_the_token_and_is_accepted_by_every_process_with_that_token() -> None:
    one, other = Sessions(SecretStr("t0ken")), Sessions(SecretStr("t0ken"))
    assert one.token_ok("t0ken")
    assert not one.token_ok("t0ke")
    assert not one.token_ok("")
    cookie, session = one.new()
    assert "t0ken" not in cookie
    assert other.read(cookie) == session
    assert Sessions(SecretStr("another")).read(cookie) is None, "a new token signs everyone out"


@pytest.mark.parametrize("tamper", [
    lambda c: c.replace(c.split(".")[1], "someone-else"),
    lambda c: str(int(c.split(".")[0]) + 3600) + c[c.index("."):],
    lambda c: c + "0", lambda c: "", lambda c: "a.b", lambda c: "x.y.z",
])  # fmt: skip
def test_a_forged_or_altered_cookie_is_no_session(tamper: object) -> None:
    sessions = Sessions(SecretStr("t0ken"))
    cookie, _ = sessions.new()
    assert sessions.read(tamper(cookie)) is None  # type: ignore[operator]


def test_a_session_ends_after_its_lifetime_and_each_has_its_own_csrf_token() -> None:
    now = [1_000_000.0]
    sessions = Sessions(SecretStr("t0ken"), clock=lambda: now[0])
    cookie, first = sessions.new()
    _, second = sessions.new()
    assert first.csrf != second.csrf
    now[0] += LIFETIME_S - 1
    assert sessions.read(cookie) == first
    now[0] += 2
    assert sessions.read(cookie) is None


def test_without_an_api_token_nobody_can_sign_in() -> None:
    sessions = Sessions(None)
    assert not sessions.enabled
    assert not sessions.token_ok("")
    assert sessions.read("1.2.3") is None


def test_sign_in_sends_nobody_away_from_the_console() -> None:
    assert _local("/ui/logs?region=x") == "/ui/logs?region=x"
    for target in ("https://evil.example/", "//evil.example/ui", "/replicas", None, ""):
        assert _local(target) == "/ui"


def test_the_form_becomes_the_request_of_replicas_create() -> None:
    form = {
        "region": " ap-tokyo ", "endpoint": "http://s3", "bucket": "b", "prefix": "", "s3_region": "",
        "registry": "", "credentials_ref": "env:TOKYO", "include": "team/*\n\n  shop/*:v* \n", "exclude": "",
        "deletes": "on",
    }  # fmt: skip
    assert replica_request(form) == {
        "region": "ap-tokyo", "endpoint": "http://s3", "bucket": "b", "prefix": "", "s3_region": "us-east-1",
        "registry": None, "credentials_ref": "env:TOKYO", "include": ["team/*", "shop/*:v*"], "exclude": [],
        "deletes": True, "backfill": False,
    }  # fmt: skip
    assert refusal({"error": "replica-refused", "reason": "no", "rule": "cross-border"}) == "refused [cross-border]: no"
    assert refusal({"error": "unauthorized", "reason": "missing token"}) == "missing token"


def test_a_chart_places_samples_in_its_box_and_leaves_out_the_rest() -> None:
    chart = charts.line([(0, 0), (50, 10), (100, 5), (200, 99)], start=0, end=100)
    assert chart.samples == 3
    assert chart.top == 10
    points = [tuple(map(float, p.split(","))) for p in chart.points.split()]
    assert points[0] == (0.0, charts.HEIGHT - 1)
    assert points[1] == (charts.WIDTH / 2, 1.0)
    assert points[2][0] == charts.WIDTH
    assert charts.line([], 0, 100).points == ""


def test_buckets_take_a_quantile_per_minute() -> None:
    samples = [(t, float(t % 60)) for t in range(0, 120)]
    buckets = charts.bucketed(samples, 0, 120, 0.5)
    assert [round(t) for t, _ in buckets] == [30, 90]
    assert all(24 <= v <= 35 for _, v in buckets)


def test_values_are_worded_for_people() -> None:
    assert [ago(None), ago(5), ago(600), ago(9000)] == ["-", "5s", "10m", "2h"]
    assert short("sha256:" + "ab" * 32) == "sha256:abababababab"


def _status(**lags: int | None) -> dict[str, Any]:
    return {"regions": [{"region": r, "lag_events": n} for r, n in lags.items()]}


async def test_lag_history_keeps_an_hour_says_why_a_sample_failed_and_stops_at_once() -> None:
    now = [1000.0]
    answers: list[dict[str, Any] | Exception] = [_status(a=1), KafkaUnavailable("brokers away"), _status(a=2)]
    stop = asyncio.Event()

    async def status() -> dict[str, Any]:
        answer = answers.pop(0) if answers else None
        if answer is None:
            stop.set()
            await asyncio.Event().wait()  # Kafka hangs: the stop must not wait for it
        if isinstance(answer, Exception):
            raise answer
        assert answer is not None
        return answer

    history = LagHistory(status, every_s=0, clock=lambda: now[0])
    errors: list[str | None] = []
    run = asyncio.create_task(history.run(stop))
    while not stop.is_set():
        errors.append(history.error)
        await asyncio.sleep(0)
    await asyncio.wait_for(run, 5)
    assert "brokers away" in " ".join(e for e in errors if e)
    assert history.error is None, "a later sample clears the error"
    assert history.samples("a") == [(1000.0, 1.0), (1000.0, 2.0)]
    now[0] += 3601
    history.record(_status(a=0, b=None))
    assert history.samples("a") == [(4601.0, 0.0)], "samples older than an hour go"
    assert history.samples("b") == [], "a lag Kafka did not tell is not a sample"
