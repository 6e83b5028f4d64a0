"""The console at /ui, driven in Debian's chromium (headless, through Playwright) against the real stack.

Every test saves a screenshot of each page it checks under `.artifacts/console/` (or $GEOREP_ARTIFACTS).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from adapters.kafka import Publisher
from deploy.local import images, stack
from deploy.local.probe import wait_served
from engine.events import Action, ReplicationRecord, Status, utcnow
from tests.integration.conftest import Stack
from tests.integration.test_log_and_webhook import post
from tests.integration.test_ordering_and_dead_letters import V1, manifest_event

pytestmark = pytest.mark.integration

KiB = 1024
ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("GEOREP_ARTIFACTS", ROOT / ".artifacts")) / "console"
#: what the browser waits for a page's figures to show (the overview refreshes every 5 s)
SHOWN_MS = 45_000


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make install` installs it"
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh browser window (no session), whose script errors and CSP violations fail the test (an answer
    of 4xx is a console error too, and some are what a test expects: those are checked by the test)."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    opened = await context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    opened.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    yield opened
    await context.close()
    assert not problems, problems


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def sign_in(page: Page, live: Stack) -> None:
    await page.goto(f"{live.info['logs']}/ui/login?next=/ui")
    await page.fill("input[name=token]", live.info["api_token"])
    await page.click("button[type=submit]")
    await expect(page.locator("header .who")).to_contain_text("signed in")


def cell(page: Page, region: str, field: str) -> Any:
    return page.locator(f"table.regions tr[data-region='{region}'] [data-field='{field}']")


async def _status(live: Stack) -> dict[str, dict[str, Any]]:
    code, doc = await live.api("GET", "/status")
    assert code == 200, doc
    return {r["region"]: r for r in doc["regions"]}


async def test_overview_shows_every_region_caught_up_with_the_counts_of_status(page: Page, live: Stack) -> None:
    before = await _status(live)
    repo = live.unique("console/overview")
    for i in range(2):
        digest = live.push_image(repo, f"v{i}", images.image([images.layer(30 * KiB + i, f"{repo}-{i}")]))
        await live.final_records(repo, digest)
    now = await _status(live)
    await page.goto(f"{live.info['logs']}/ui")
    for region in live.regions:
        assert now[region]["events_replicated"] - before[region]["events_replicated"] == 2
        await expect(cell(page, region, "lag")).to_have_text("0", timeout=SHOWN_MS)
        await expect(cell(page, region, "replicated")).to_have_text(str(now[region]["events_replicated"]))
        await expect(cell(page, region, "oldest")).to_have_text("-")
        # An hour of latency, drawn server-side: at least this test's pushes are on the p99 line.
        chart = page.locator(f"table.regions tr[data-region='{region}'] + tr.charts svg polyline")
        assert await chart.count() >= 2
    assert await page.locator("[data-age]").first.text_content(), "the page says how old its figures are"
    headers = (await page.request.get(f"{live.info['logs']}/ui")).headers
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    await shot(page, "overview")


async def test_overview_shows_the_lag_of_a_stopped_region_and_its_oldest_pending_age(page: Page, live: Stack) -> None:
    repo = live.unique("console/lagging")
    stack.stop(live.root, "replicator-eu-frankfurt")
    try:
        digests = {
            f"v{i}": live.push_image(repo, f"v{i}", images.image([images.layer(20 * KiB, f"{repo}-{i}")]))
            for i in range(3)
        }
        for tag, digest in digests.items():
            await wait_served(live.regions["ap-singapore"]["registry"], repo, tag, digest, 60)
        await page.goto(f"{live.info['logs']}/ui")
        # Without reloading: the page refreshes its table by itself.
        await expect(cell(page, "eu-frankfurt", "lag")).to_have_text("3", timeout=SHOWN_MS)
        await expect(cell(page, "eu-frankfurt", "oldest")).to_have_text(re.compile(r"^\d+[smh]$"))
        # ap-singapore served them; its last commit may be a refresh away (replicator.commit_interval_s).
        await expect(cell(page, "ap-singapore", "lag")).to_have_text("0", timeout=SHOWN_MS)
        await shot(page, "overview-lagging")
    finally:
        stack.restart(live.root, "replicator-eu-frankfurt")
        await stack.wait_up(live.root, "replicator-eu-frankfurt")
    for tag, digest in digests.items():
        await live.replicated(repo, tag, digest)


async def test_image_page_log_page_and_a_replica_created_refused_and_deleted_in_the_browser(
    browser: Browser, page: Page, live: Stack
) -> None:
    repo = live.unique("console/image")
    digest = live.push_image(repo, "v1", images.image([images.layer(25 * KiB, f"{repo}-1")]))
    live.push_image(repo, "v1-debug", images.image([images.layer(25 * KiB, f"{repo}-2")]))
    await live.final_records(repo, digest)
    url = live.info["logs"]

    # The image page asks the primary with georep's credentials: signed in only.
    await page.goto(f"{url}/ui/image?ref={repo}:v1")
    await expect(page.locator("#error")).to_contain_text("sign in first")
    await sign_in(page, live)
    # A full reference, as users copy it, names the same image.
    await page.goto(f"{url}/ui/image?ref={live.primary}/{repo}:v1")
    await expect(page.locator("[data-field=primary-digest]")).to_have_text(digest)
    for region in live.regions:
        row = page.locator(f"table.image tr[data-region='{region}']")
        await expect(row.locator("[data-field=state]")).to_have_text("replicated")
        await expect(row.locator("[data-field=detail]")).to_contain_text("after the push")
    await shot(page, "image")

    # The log, filtered by repository: exactly that repository's records (2 tags x 2 regions).
    await page.goto(f"{url}/ui/logs?repository={repo}")
    shown = await page.locator("table.logs [data-field=repository]").all_text_contents()
    assert len(shown) == 4, shown
    assert all(text.split(":")[0] == repo for text in shown), shown
    await shot(page, "logs")

    # A replica through the form, with a filter; the image page then names the filter for the excluded tag.
    endpoint, credentials = await live.own_bucket("georep-console-seoul")
    await page.goto(f"{url}/ui/replicas/new")
    await _fill_replica(page, "ap-seoul", endpoint, "georep-console-seoul", credentials)
    await page.fill("textarea[name=exclude]", "*:*-debug")
    await page.click("form.form button[type=submit]")
    await expect(page.locator(".message")).to_have_text("created")
    await expect(page.locator("dl.replica")).to_contain_text("*:*-debug")
    await shot(page, "replica")
    try:
        await page.goto(f"{url}/ui/image?ref={repo}:v1-debug")
        seoul = page.locator("table.image tr[data-region='ap-seoul']")
        await expect(seoul.locator("[data-field=state]")).to_have_text("not-replicated")
        await expect(seoul.locator("[data-field=detail]")).to_have_text("excluded by filter *:*-debug")

        # A rule refuses a cross-border replica, and the page says which rule and why.
        await page.goto(f"{url}/ui/replicas/new")
        await _fill_replica(page, "cn-shanghai", endpoint, "nowhere", credentials)
        await page.click("form.form button[type=submit]")
        await expect(page.locator("#error")).to_contain_text("refused [cross-border]")
        await expect(page.locator("#error")).to_contain_text("across the border of CN")
        await shot(page, "replica-refused")

        # Without the token (a window with no session) a create is refused, and the page says why.
        anonymous = await browser.new_context()
        try:
            other = await anonymous.new_page()
            await other.goto(f"{url}/ui/replicas/new")
            await _fill_replica(other, "ap-mumbai", endpoint, "nowhere", credentials)
            await other.click("form.form button[type=submit]")
            await expect(other.locator("#error")).to_contain_text("sign in with the API token")
            assert (await live.api("GET", "/replicas/ap-mumbai"))[0] == 404
        finally:
            await anonymous.close()

        # Deleted from its page.
        await page.goto(f"{url}/ui/replicas/ap-seoul")
        await page.click("button.danger")
        await expect(page.locator(".message")).to_contain_text("deleted replica ap-seoul")
        assert (await live.api("GET", "/replicas/ap-seoul"))[0] == 404
    finally:
        await live.api("DELETE", "/replicas/ap-seoul")


async def test_a_record_whose_error_holds_markup_is_shown_as_text(page: Page, live: Stack) -> None:
    repo = live.unique("console/escaped")
    hostile = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    now = utcnow()
    record = ReplicationRecord(
        event_id=f"{repo}-hostile", region="eu-frankfurt", repository=repo, tag="v1", digest="sha256:" + "ab" * 32,
        status=Status.DEAD_LETTERED, attempt=5, error=f"blob fetch failed: {hostile}", action=Action.PUSH,
        started_at=now, finished_at=now, occurred_at=now,
    )  # fmt: skip
    publisher = Publisher(live.kafka(), "test")
    try:
        await publisher.publish(live.kafka().log_topic, [(record.key, record.to_json())], 30)
    finally:
        await publisher.close()
    await live.records(lambda found: len(found) == 1, repository=repo)
    await page.goto(f"{live.info['logs']}/ui/logs?repository={repo}")
    error = page.locator("table.logs [data-field=error]")
    await expect(error).to_have_text(f"blob fetch failed: {hostile}")
    assert await page.locator("table.logs script, table.logs img").count() == 0
    assert await page.evaluate("typeof window.pwned") == "undefined"
    await shot(page, "logs-escaped")


async def test_the_replica_list_and_the_sign_in_page(page: Page, live: Stack) -> None:
    """The pages no other test shoots: the replica list (every region) and the sign-in form, which takes the
    operator back where they were."""
    url = live.info["logs"]
    await page.goto(f"{url}/ui/replicas")
    for name in live.regions:
        await expect(page.locator("main")).to_contain_text(name)
    await shot(page, "replicas")

    await page.goto(f"{url}/ui/login?next=/ui/replicas")
    await shot(page, "login")
    await page.fill("input[name=token]", live.info["api_token"])
    await page.click("button[type=submit]")
    await expect(page.locator("header .who")).to_contain_text("signed in")
    assert page.url.endswith("/ui/replicas")


async def _fill_replica(page: Page, region: str, endpoint: str, bucket: str, credentials: str) -> None:
    await page.fill("input[name=region]", region)
    await page.fill("input[name=endpoint]", endpoint)
    await page.fill("input[name=bucket]", bucket)
    await page.fill("input[name=credentials_ref]", credentials)


async def test_a_regions_dead_letters_are_listed_with_why_and_redriven_from_the_page(page: Page, live: Stack) -> None:
    """An event whose manifest was not on the primary yet is dead-lettered; once it is, the operator redrives
    the region's dead letters from its page, and the event succeeds there."""
    repo = live.unique("console/dead")
    region = sorted(live.regions)[0]
    img = images.image([images.layer(6 * KiB, repo)])
    digest = img.manifest.digest
    event_id = f"console-dead-{repo.replace('/', '-')}"
    status, _ = await post(
        live, live.info["webhook"], manifest_event(event_id, repo, digest, "v1", "2030-01-01T00:00:00Z"), V1
    )
    assert status == 200
    await live.records(
        lambda rs: region in {r["region"] for r in rs if r["status"] == "dead-lettered"}, event_id=event_id
    )
    live.push_image(repo, "v0", img)  # the manifest is on the primary now: a redrive can succeed

    url = live.info["logs"]
    await page.goto(f"{url}/ui/dead-letters/{region}")
    letter = page.locator("table.letters tbody tr", has_text=repo)
    await expect(letter).to_contain_text("not-found")
    await expect(page.locator("main")).to_contain_text("Sign in to redrive them.")
    await shot(page, "dead-letters")

    await sign_in(page, live)
    await page.goto(f"{url}/ui/dead-letters/{region}")
    await page.click(f"button:has-text('to {region}')")
    await expect(page.locator(".message")).to_contain_text("dead letter(s) redriven")
    await shot(page, "dead-letters-redriven")
    await live.records(
        lambda rs: any(r["region"] == region and r["status"] == "succeeded" for r in rs), event_id=event_id
    )
    # Each letter goes back once: the page now lists none of this repository's.
    await page.goto(f"{url}/ui/dead-letters/{region}")
    await expect(page.locator("table.letters tbody tr", has_text=repo)).to_have_count(0)
