"""The inbox in a real browser (headless Chromium): a visitor's plain question shows up live, the answer gets back.

Two browser contexts on one real app: the operator on the console's inbox, the visitor in the widget on the
demo page. Waits poll the DOM (Playwright's expect), never sleep.
"""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect
from test_operator_browser import RECORD

from conftest import PASSWORD, templates_with
from test_browser import GREETING, browser, new_page, open_chat, say  # noqa: F401  (fixtures)
from test_console_browser import log_in
from test_handoff import DRIP

QUESTION = "Can we get an invoice for a German company?"  # no quick answer fits: a person answers
RECEIVED = "Thanks! A person from our team will reply here within 5 minutes."


@pytest.fixture
async def app(make_client, settings, tmp_path):
    """The real app on a loopback port, with only a test drip flow."""
    return await make_client(settings.with_(templates=templates_with(tmp_path / "templates", {"drip": DRIP})))


async def test_a_plain_question_arrives_live_in_the_inbox_and_the_answer_reaches_the_widget(
    app,
    add_operator,
    new_page,  # noqa: F811
):
    await add_operator("ann", "operator")
    console, site = await new_page(), await new_page()
    await console.add_init_script(RECORD)  # records each Notification the page makes
    await console.context.grant_permissions(["notifications"], origin=str(app.make_url("/")).rstrip("/"))
    await log_in(console, str(app.make_url("/console")), "ann", PASSWORD, then="Inbox")
    await expect(console.get_by_text("nobody is waiting for a reply")).to_be_visible()
    await console.evaluate("() => { window.__sameDocument = true; }")  # gone if the page reloads

    # Small talk reaches nobody; a plain question (no intent word) is in the inbox at once, without a reload.
    await site.goto(str(app.make_url("/")))
    chat = await open_chat(site)
    await say(chat, "Hi")
    await expect(chat.locator(".kindling-bubble")).to_have_text(["Hi", GREETING])
    await say(chat, QUESTION)
    await expect(chat.locator(".kindling-bubble").last).to_have_text(RECEIVED)
    row = console.locator("table[data-inbox] tbody tr")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text(QUESTION)
    await expect(row.locator("[data-field=channel]")).to_have_text("webchat")
    await expect(row.locator("[data-field=waiting]")).to_have_text("under 1 min")
    await expect(row.locator(".sla")).to_have_text(re.compile(r"^(\d+ min )?\d+ s left$"))
    await expect(console.locator("#inbox-count")).to_have_text("1")
    assert await console.evaluate("() => window.__sameDocument") is True
    await expect(console).to_have_title("(1) Inbox · Kindling")  # and the operator is told, in any tab
    notes = await console.evaluate("() => window.__notes")
    assert notes == [{"title": "Kindling: Visitor from webchat is waiting", "body": f'asked "{QUESTION}"'}], notes

    # Ann opens it, takes it and answers: the visitor's widget shows the answer.
    await row.get_by_role("link").click()
    await console.get_by_role("button", name="Take").click()
    await expect(console.get_by_text("You hold this conversation")).to_be_visible()
    await console.get_by_label(re.compile("^Reply to")).fill("Yes: the Team plan, up to 10 people.")
    await console.get_by_role("button", name="Send").click()
    await expect(chat.locator(".kindling-from-operator .kindling-bubble")).to_have_text(
        "Yes: the Team plan, up to 10 people."
    )

    # Answered: no longer waiting for a reply, still hers; when the visitor writes again it needs one again.
    await console.locator("nav").get_by_role("link", name="Inbox", exact=True).click()
    await expect(console.locator("body")).to_have_attribute("data-live", "on")
    await expect(row).to_have_count(0)
    await console.get_by_role("link", name="Mine", exact=True).click()
    await expect(console.locator("body")).to_have_attribute("data-live", "on")
    await expect(row).to_contain_text("Yes: the Team plan, up to 10 people.")
    await console.get_by_role("link", name="Needs reply", exact=True).click()
    await expect(console.locator("body")).to_have_attribute("data-live", "on")
    await say(chat, "Great, how do I sign up?")
    await expect(row).to_contain_text("Great, how do I sign up?")
    await expect(row.locator("[data-field=holder]")).to_have_text("taken by ann")
