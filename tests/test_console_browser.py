"""The console in a real browser (headless Chromium): an operator takes a warm lead live and talks to the visitor.

Two browser contexts on one real app: the operator in the console, the visitor in the widget on the
demo page. Waits poll the DOM (Playwright's expect), never sleep.
"""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from storage.models import Lead, Message

from conftest import API_KEY, PASSWORD, rows, services_of, templates_with
from test_browser import GREETING, browser, new_page, open_chat, say, stored  # noqa: F401  (fixtures)
from test_console_queue import warm
from test_handoff import COMING, DRIP
from test_webchat import say as visitor_says

NOTICE = re.compile(COMING)
NO_PLAIN_BOT_AFTER_THE_NOTICE = "a bot message after the handoff notice"
MARKUP = '<img src=x onerror="window.__pwned=1">'


@pytest.fixture
async def app(make_client, settings, tmp_path):
    """The real app on a loopback port, with only a test drip flow."""
    return await make_client(settings.with_(templates=templates_with(tmp_path / "templates", {"drip": DRIP})))


async def log_in(page: Page, url: str, name: str, password: str, then: str = "Queue") -> None:
    """Log in at the console's front door, which brings an operator to the inbox; then to `then` (a nav link)."""
    await page.goto(url)
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(re.compile(r"/console/inbox$"))
    if then != "Inbox":
        await page.locator("nav").get_by_role("link", name=then, exact=True).click()
        await expect(page).to_have_url(re.compile(f"/console/{then.lower()}$"))
    await expect(page.locator("body")).to_have_attribute("data-live", "on")  # the page is watched


async def test_an_operator_takes_a_warm_lead_live_replies_and_hands_it_back(app, db, add_operator, new_page):  # noqa: F811
    await add_operator("ann", "operator")
    console, site = await new_page(), await new_page()
    await log_in(console, str(app.make_url("/console")), "ann", PASSWORD)
    await expect(console.get_by_text("Nobody is waiting.")).to_be_visible()
    await console.evaluate("() => { window.__sameDocument = true; }")  # gone if the page reloads

    # A visitor on the site asks for a person; the lead shows up on the queue without a reload.
    await site.goto(str(app.make_url("/")))
    chat = await open_chat(site)
    await say(chat, "Hi")
    await expect(chat.locator(".kindling-bubble")).to_have_text(["Hi", GREETING])
    await say(chat, "Can I talk to a human?")
    await expect(chat.locator(".kindling-bubble").last).to_have_text(NOTICE)
    row = console.locator("table.queue tbody tr")
    await expect(row).to_have_count(1)
    await expect(row.locator(".sla")).to_have_text(re.compile(r"^(\d+ min )?\d+ s left$"))
    await expect(row).to_contain_text('wrote "talk to a human"')
    assert await console.evaluate("() => window.__sameDocument") is True

    # Ann takes it and replies; the visitor's widget shows the reply.
    await row.get_by_role("button", name="Take").click()
    await expect(console.get_by_text("You hold this conversation")).to_be_visible()
    await expect(console.locator("body")).to_have_attribute("data-live", "on")
    transcript = console.locator("ol.messages .text")
    so_far = ["Hi", GREETING, "Can I talk to a human?", NOTICE]
    await expect(transcript).to_have_text(so_far)
    await console.get_by_label(re.compile("^Reply to")).fill("Hi, I'm Ann. What can I do for you?")
    await console.get_by_role("button", name="Send").click()
    await expect(transcript).to_have_text([*so_far, "Hi, I'm Ann. What can I do for you?"])
    await expect(console.get_by_label(re.compile("^Reply to"))).to_have_value("")
    await expect(chat.locator(".kindling-from-operator .kindling-bubble")).to_have_text(
        "Hi, I'm Ann. What can I do for you?"
    )

    # The visitor answers: Ann sees it live, and the bot keeps quiet while she holds the lead.
    await say(chat, "Do you ship to Canada?")
    await expect(transcript).to_have_text([*so_far, "Hi, I'm Ann. What can I do for you?", "Do you ship to Canada?"])
    await services_of(app).drain()
    authors = [message.author for message in await rows(db, Message)]
    assert authors == ["visitor", "bot", "visitor", "bot", "operator", "visitor"], NO_PLAIN_BOT_AFTER_THE_NOTICE
    await expect(chat.locator(".kindling-bubble").last).to_have_text("Do you ship to Canada?")

    # Ann hands the lead back to nurture; the bot answers the visitor's next message again.
    await console.get_by_role("button", name="Hand back").click()
    await expect(console.get_by_text("Handed back: nurture.")).to_be_visible()
    await say(chat, "Thanks!")
    bot_said = chat.locator(".kindling-from-bot .kindling-bubble")
    await expect(bot_said).to_have_text([GREETING, NOTICE, re.compile("^Got it"), re.compile("email or phone")])
    await console.get_by_role("link", name="Back to the queue").click()
    await expect(console.get_by_text("Nobody is waiting.")).to_be_visible()


async def test_an_erased_lead_leaves_the_queue_and_the_visitors_browser_at_once(app, db, add_operator, new_page):  # noqa: F811
    await add_operator("ann", "operator")
    console, site = await new_page(), await new_page()
    await log_in(console, str(app.make_url("/console")), "ann", PASSWORD)
    await site.goto(str(app.make_url("/")))
    chat = await open_chat(site)
    await say(chat, "Can I talk to a human?")
    await expect(chat.locator(".kindling-bubble").last).to_have_text(NOTICE)
    await expect(console.locator("table.queue tbody tr")).to_have_count(1)
    [lead] = await rows(db, Lead)
    await console.evaluate("() => { window.__sameDocument = true; }")

    erased = await app.delete(f"/api/leads/{lead.id}", headers={"Authorization": f"Bearer {API_KEY}"})
    assert erased.status == 200

    await expect(console.locator("table.queue tbody tr")).to_have_count(0)  # no reload needed
    await expect(console.get_by_text("Nobody is waiting.")).to_be_visible()
    assert await console.evaluate("() => window.__sameDocument") is True
    await expect(chat.get_by_text("This chat has ended.")).to_be_visible()
    await expect(chat.locator(".kindling-bubble")).to_have_count(0)
    assert [await stored(site, key) for key in ("visitor", "token", "transcript")] == [None, None, []]


async def test_a_lead_named_like_markup_arrives_live_as_text(app, db, add_operator, new_page):  # noqa: F811
    await add_operator("ann", "operator")
    console = await new_page()
    await log_in(console, str(app.make_url("/console")), "ann", PASSWORD)

    visitor = await warm(app, name=MARKUP, text=f"talk to a human {MARKUP}")

    await expect(console.locator("table.queue tbody tr .name a")).to_have_text(MARKUP)
    await console.locator("table.queue tbody tr .name a").click()
    await expect(console.locator("h1")).to_contain_text(MARKUP)
    await expect(console.locator("ol.messages .text").first).to_have_text(f"talk to a human {MARKUP}")
    await expect(console.locator("body")).to_have_attribute("data-live", "on")
    await visitor_says(app, visitor, MARKUP)  # drawn by console.js this time
    await expect(console.locator("ol.messages .text").last).to_have_text(MARKUP)
    assert await console.locator("img").count() == 0
    assert await console.evaluate("() => window.__pwned") is None


async def test_a_second_operator_sees_claims_live_and_is_told_who_has_the_lead(app, db, add_operator, new_page):  # noqa: F811
    for name in ("ann", "bob"):
        await add_operator(name, "operator")
    ann, bob = await new_page(), await new_page()
    await log_in(ann, str(app.make_url("/console")), "ann", PASSWORD)
    await log_in(bob, str(app.make_url("/console")), "bob", PASSWORD)
    await warm(app, name="Fay")
    await warm(app, name="Gus")
    names = bob.locator("table.queue tbody tr .name a")
    await expect(names).to_have_text(["Fay", "Gus"])  # the same SLA and score: the older first

    # Ann takes Fay: on Bob's queue Fay moves below the waiting lead, taken, without a Take button.
    await ann.get_by_role("row", name="Fay").get_by_role("button", name="Take").click()
    await expect(ann.get_by_text("You hold this conversation")).to_be_visible()
    await expect(names).to_have_text(["Gus", "Fay"])
    await expect(bob.get_by_role("row", name="Fay")).to_contain_text("taken by ann")
    await expect(bob.get_by_role("row", name="Fay").get_by_role("button", name="Take")).to_be_hidden()

    # Bob reads Gus's conversation while Ann presses Next lead: Bob's page says so, his Take is refused.
    await bob.get_by_role("link", name="Gus").click()
    await expect(bob.get_by_text("Waiting for a person")).to_be_visible()
    await expect(bob.locator("body")).to_have_attribute("data-live", "on")
    await ann.get_by_role("link", name="Queue", exact=True).click()
    await ann.get_by_role("button", name="Next lead").click()
    await expect(ann.locator("h1")).to_contain_text("Gus")
    await expect(bob.get_by_role("status")).to_have_text("Taken by ann. Reload to see it.")
    await bob.get_by_role("button", name="Take").click()
    await expect(bob.get_by_role("alert")).to_have_text("already taken by ann")
    await expect(bob.get_by_role("button", name="Send")).to_be_hidden()  # only the holder replies


async def test_the_queue_catches_up_after_its_connection_drops(app, db, add_operator, new_page):  # noqa: F811
    await add_operator("ann", "operator")
    console = await new_page()
    sockets: list = []
    refuse = {"now": False}

    async def through(route) -> None:  # type: ignore[no-untyped-def]
        if refuse["now"]:
            await route.close()
        else:
            sockets.append((route, route.connect_to_server()))

    await console.route_web_socket(re.compile(r"/console/ws\?"), through)
    await log_in(console, str(app.make_url("/console")), "ann", PASSWORD)

    refuse["now"] = True
    route, server = sockets[-1]
    await server.close()
    await route.close()
    await expect(console.locator("body")).to_have_attribute("data-live", "off")
    await expect(console.get_by_text("Live updates paused; reconnecting…")).to_be_visible()
    await warm(app, name="Fay")  # announced while the page was not listening

    refuse["now"] = False
    # The page retries with growing pauses (up to 30 s); it has made a few attempts by now.
    await expect(console.locator("body")).to_have_attribute("data-live", "on", timeout=20_000)
    await expect(console.locator("table.queue tbody tr .name a")).to_have_text(["Fay"])
    await expect(console.get_by_text("Live updates paused; reconnecting…")).to_be_hidden()
