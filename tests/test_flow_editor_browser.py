"""The flow editor in a real browser (headless Chromium): a marketer edits, checks and publishes a flow.

Waits poll the DOM (Playwright's expect), never sleep; time moves with the app's injected clock.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from playwright.async_api import Page, expect

from flows.spec import flow_version
from storage.models import Delivery

from conftest import PASSWORD, rows, services_of, templates_with
from test_browser import browser, new_page  # noqa: F401  (fixtures)
from test_flow_editor import pricing_visitor

FLOW = """+++
name = "Pricing drip"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
exit = ["reply", "handoff", "opt_out", "stage >= sql"]
+++
{% step "one", after="10m" %}One for {{ lead.first_name or "you" }}.{% endstep %}
{% step "two", after="2d" %}Two.{% endstep %}
{% step "three", after="2d" %}Three.{% endstep %}
"""
TYPO = FLOW.replace("Two.", "Two {{ lead.frist_name }}.")
NEW = FLOW.replace("One for", "Hello again,")


@pytest.fixture
def templates(tmp_path):
    return templates_with(tmp_path / "templates", {"drip": FLOW})


@pytest.fixture
def clock(clock):
    clock.advance(datetime(2026, 1, 6, 15, 0, tzinfo=UTC) - clock.now())  # 10:00 in New York
    return clock


@pytest.fixture
async def app(make_client, settings, templates):
    return await make_client(settings.with_(templates=templates))


async def log_in_to(page: Page, url: str, name: str) -> None:
    """Open a console address; the login page comes first and brings the person back to it."""
    await page.goto(url)
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()


async def test_a_marketer_fixes_a_typo_tries_the_flow_and_publishes_it(
    app,
    add_operator,
    clock,
    db,
    templates,
    new_page,  # noqa: F811
):
    before = await pricing_visitor(app)  # in the flow before the edit: stays on its version
    await add_operator("mia", "marketer")
    page = await new_page()
    await log_in_to(page, str(app.make_url("/console/flows/drip/edit")), "mia")
    await expect(page).to_have_title("Edit drip · Kindling")
    status = page.locator("[data-lint-status]")
    await expect(status).to_have_text("Lint: no problems")
    text = page.get_by_label("The flow's text")
    await expect(page.locator(".preview [data-step='one'] .text")).to_have_text("One for Ann.")

    # A typo: marked on its line with the fix, and the preview waits for the fix.
    await text.fill(TYPO)
    problem = page.locator("[data-problems] li")
    await expect(problem).to_have_count(1)
    await expect(problem).to_have_text(re.compile(r"^line 8: .*first_name"))
    await expect(page.locator("[data-marks]")).to_have_attribute("data-lines", "8")
    marks = (await page.locator("[data-marks]").text_content() or "").split("\n")
    assert marks[7].startswith("◀ ") and "first_name" in marks[7] and not any(marks[:7])
    await expect(status).to_have_text(re.compile("1 problem"))

    # Fixed, and reworded: the preview follows.
    await text.fill(NEW)
    await expect(status).to_have_text("Lint: no problems")
    await expect(problem).to_have_count(0)
    await expect(page.locator(".preview [data-step='one'] .text")).to_have_text("Hello again, Ann.")
    await page.get_by_label("For").select_option("sparse")  # and for a lead nothing is known about
    await expect(page.locator(".preview [data-step='one'] .text")).to_have_text("Hello again, you.")

    # The lead replies on day 3: the simulated timeline ends there, after step two and before step three.
    timeline = page.locator("[data-timeline]")
    await expect(timeline).to_contain_text("three:")
    await page.get_by_label("On day").fill("3")
    await page.get_by_label("the lead").select_option("message")
    await page.get_by_role("button", name="Add").click()
    await expect(timeline).to_contain_text("exits the flow")
    await expect(timeline).not_to_contain_text("three:")
    await expect(timeline).to_contain_text("two:")
    drawn = page.locator("[data-simulation-svg] svg g[data-step]")  # and drawn: the picture ends there too
    await expect(drawn).to_have_count(2)
    assert [await g.get_attribute("data-step") for g in await drawn.all()] == ["one", "two"]

    # Publish after a look at the change.
    await page.get_by_role("button", name="Review and publish").click()
    await expect(page.locator("[data-diff]")).to_contain_text('+{% step "one", after="10m" %}Hello again,')
    await page.get_by_role("button", name="Publish", exact=True).click()
    await expect(page.locator("[data-published]")).to_have_text(f"Published: version {flow_version(NEW)} is running.")
    assert (templates / "flows" / "drip.j2").read_text() == NEW

    after = await pricing_visitor(app)  # enrolled on the published version
    clock.advance(timedelta(minutes=10))
    await services_of(app).runner.run_due()
    sent = sorted(d.text for d in await rows(db, Delivery, Delivery.kind == "nurture"))
    assert sent == ["Hello again, you.", "One for you."]
    await before.close()
    await after.close()


async def test_a_file_changed_on_disk_meanwhile_is_shown_and_kept(app, add_operator, templates, new_page):  # noqa: F811
    await add_operator("mia", "marketer")
    page = await new_page()
    await log_in_to(page, str(app.make_url("/console/flows/drip/edit")), "mia")
    await expect(page.locator("[data-lint-status]")).to_have_text("Lint: no problems")
    await page.get_by_label("The flow's text").fill(NEW)
    await expect(page.locator("[data-saved]")).to_have_text("Draft saved")

    on_disk = FLOW.replace("Three.", "Three, edited on the server.")
    (templates / "flows" / "drip.j2").write_text(on_disk)  # someone edits the file meanwhile
    await page.get_by_role("button", name="Review and publish").click()
    await page.get_by_role("button", name="Publish", exact=True).click()
    conflict = page.locator("[data-conflict]")
    await expect(conflict).to_be_visible()
    await expect(conflict.locator("[data-conflict-message]")).to_contain_text("The flow changed since this draft began")
    await expect(conflict.locator("[data-conflict-diff]")).to_contain_text(
        '-{% step "three", after="2d" %}Three, edited'
    )
    assert (templates / "flows" / "drip.j2").read_text() == on_disk  # not overwritten

    await page.reload()  # the draft survives, with a word that the file moved on
    await expect(page.get_by_label("The flow's text")).to_have_value(NEW)
    await expect(page.locator("[data-moved-on]")).to_be_visible()


async def test_an_operator_cannot_reach_the_editor(app, add_operator, new_page):  # noqa: F811
    await add_operator("ola", "operator")
    page = await new_page()
    await log_in_to(page, str(app.make_url("/console/flows/drip/edit")), "ola")
    await expect(page.get_by_text("Your role (operator) does not allow this.")).to_be_visible()
    await expect(page.get_by_label("The flow's text")).to_have_count(0)
