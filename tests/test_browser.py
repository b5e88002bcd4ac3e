"""The widget in a real browser: headless Chromium (Debian's package) on the demo page of the real app.

Playwright's async API runs on the test's event loop, so the app (served on a real loopback port by
pytest-aiohttp) and the browser driver share it. Waits poll the DOM (expect / wait_for), never sleep.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from bot.delivery.hub import message_frame
from storage.models import Delivery, Lead, Message

from conftest import rows, services_of

CHROMIUM = Path("/usr/bin/chromium")
# Every browser test's waits (they poll the page): CI runs both databases' suites side by side on two cores,
# where Playwright's default 5 s was sometimes too short for a page to catch up.
expect.set_options(timeout=15_000)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
GREETING = re.compile(r"Thanks for reaching out")
RECEIVED = re.compile(r"A person from our team will reply here")  # the answer to a question (not small talk)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium, Debian's package."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM}: install Debian's package "
            "(apt-get install chromium); `playwright install` is not used",
            pytrace=False,
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def new_page(browser: Browser) -> AsyncIterator[Callable[..., Awaitable[Page]]]:
    """Makes pages, each in its own context (cookies, storage; `locale=`, `timezone_id=` as Playwright takes them);
    uncaught JavaScript errors fail the test."""
    errors: list[str] = []

    async def make(**options: str) -> Page:
        context = await browser.new_context(viewport={"width": 1200, "height": 800}, **options)
        await context.route("**/*", _loopback_only)
        page = await context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        return page

    yield make
    assert errors == [], f"JavaScript errors on the page: {errors}"


@pytest.fixture
async def page(new_page: Callable[[], Awaitable[Page]]) -> Page:
    """A fresh browser page."""
    return await new_page()


async def _loopback_only(route: Route) -> None:
    """Like conftest's no_real_network, for the browser: the page may only reach this machine."""
    if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost", "::1"):
        await route.continue_()
    else:
        await route.abort()


async def open_chat(page: Page):  # type: ignore[no-untyped-def]
    """Click the chat button; returns the panel."""
    await page.get_by_role("button", name=re.compile("^Open chat")).click()
    panel = page.get_by_role("dialog", name="Chat with us")
    await expect(panel).to_be_visible()
    return panel


async def say(panel, text: str) -> None:  # type: ignore[no-untyped-def]
    box = panel.get_by_role("textbox", name="Message")
    await box.fill(text)
    await box.press("Enter")


async def stored(page: Page, key: str):  # type: ignore[no-untyped-def]
    return await page.evaluate("key => JSON.parse(localStorage.getItem('kindling.' + key))", key)


async def forget_local_transcript(page: Page) -> None:
    """Keep the visitor's identity but drop the widget's copy of the transcript: the server must replay it."""
    await page.evaluate("() => ['transcript', 'since'].forEach(k => localStorage.removeItem('kindling.' + k))")


async def test_a_visitor_chats_and_finds_the_conversation_again_after_a_reload(client, db, page):
    await page.goto(str(client.make_url("/")))
    panel = await open_chat(page)
    await say(panel, "Hi, do you ship to Canada?")
    bubbles = panel.locator(".kindling-bubble")
    await expect(bubbles).to_have_text(["Hi, do you ship to Canada?", RECEIVED])
    await expect(panel.locator(".kindling-pending")).to_have_count(0)  # acknowledged
    visitor = await stored(page, "visitor")
    assert re.fullmatch(r"[0-9a-f]{16}", visitor)
    deep_link = await page.evaluate("Kindling.telegramStart()")  # for t.me/<bot>?start=...
    assert re.fullmatch(rf"v-{visitor}-[0-9a-f]{{12}}", deep_link)

    await page.reload()  # drawn from the widget's copy, nothing replayed twice
    panel = await open_chat(page)
    await expect(panel.locator(".kindling-bubble")).to_have_text(["Hi, do you ship to Canada?", RECEIVED])
    assert await stored(page, "visitor") == visitor

    await forget_local_transcript(page)
    await page.reload()  # drawn from the server's history
    panel = await open_chat(page)
    await expect(panel.locator(".kindling-bubble")).to_have_text(["Hi, do you ship to Canada?", RECEIVED])
    assert await stored(page, "visitor") == visitor

    assert len(await rows(db, Lead)) == 1
    assert [(m.author, m.direction) for m in await rows(db, Message)] == [("visitor", "in"), ("bot", "out")]


async def test_markup_in_a_message_is_shown_as_text_and_never_runs(client, db, page):
    payload = '<img src=x onerror="window.__pwned=1">'
    await page.goto(str(client.make_url("/")))
    panel = await open_chat(page)
    await say(panel, payload)
    await expect(panel.locator(".kindling-bubble")).to_have_text([payload, RECEIVED])

    await forget_local_transcript(page)
    await page.reload()  # now the text comes from the server's history
    panel = await open_chat(page)
    await expect(panel.locator(".kindling-bubble")).to_have_text([payload, RECEIVED])
    assert await page.locator("#kindling-root img").count() == 0
    assert await page.evaluate("() => window.__pwned") is None


async def test_an_operator_message_shows_a_badge_and_its_buttons_answer(client, db, page, clock):
    await page.goto(str(client.make_url("/")))
    panel = await open_chat(page)
    await say(panel, "hello")
    await expect(panel.locator(".kindling-bubble")).to_have_text(["hello", GREETING])
    await page.get_by_role("button", name="Close chat").click()
    await expect(panel).to_be_hidden()

    [visitor_message] = await rows(db, Message, Message.direction == "in")
    async with db() as session:
        reply = Message(
            conversation_id=visitor_message.conversation_id,
            lead_id=visitor_message.lead_id,
            direction="out",
            author="operator",
            text="<b>Want a demo?</b>",
            buttons=[{"text": "Yes please"}, {"text": "No"}],
            at=clock.now(),
        )
        session.add(reply)
        await session.commit()
    services_of(client).hub.publish(reply.conversation_id, message_frame(reply))

    badge = page.locator(".kindling-badge")
    await expect(badge).to_have_text("1")
    await expect(page.get_by_role("button", name="Open chat, 1 unread")).to_be_visible()
    panel = await open_chat(page)
    await expect(badge).to_be_hidden()
    await expect(panel.locator(".kindling-from-operator .kindling-bubble")).to_have_text("<b>Want a demo?</b>")
    await panel.get_by_role("button", name="Yes please").click()
    # the label is sent as the visitor's answer (the bot may already be replying to it)
    await expect(panel.locator(".kindling-from-visitor .kindling-bubble")).to_have_text(["hello", "Yes please"])
    await expect(panel.locator(".kindling-pending")).to_have_count(0)
    await expect(panel.locator(".kindling-choices")).to_have_count(0)  # answered: the buttons go

    answers = await rows(db, Message, Message.direction == "in")
    assert [m.text for m in answers] == ["hello", "Yes please"]


async def test_messages_survive_a_dropped_connection_and_are_stored_once(client, db, page):
    sockets: list = []
    lose: dict[str, tuple] = {"to_server": (), "to_page": ()}  # frame types lost in transit on this connection
    lost = asyncio.Event()

    def through(route):  # type: ignore[no-untyped-def]
        """Stand between the page and the server, losing the frames `lose` names."""
        server = route.connect_to_server()

        def relay(frame, kinds: tuple, to) -> None:  # type: ignore[no-untyped-def]
            if kinds and json.loads(frame).get("type") in kinds:
                lost.set()
            else:
                to.send(frame)

        route.on_message(lambda frame: relay(frame, lose["to_server"], server))
        server.on_message(lambda frame: relay(frame, lose["to_page"], route))
        sockets.append((route, server))

    async def drop_connection() -> None:
        route, server = sockets[-1]
        await server.close()
        await route.close()

    await page.route_web_socket(re.compile(r"/chat/ws$"), through)
    await page.goto(str(client.make_url("/")))
    panel = await open_chat(page)
    await expect(panel.get_by_text("We reply right here")).to_be_visible()
    bubbles = panel.locator(".kindling-bubble")

    lose["to_server"] = ("message",)  # the message never reaches the server
    await say(panel, "first")
    await lost.wait()
    await expect(panel.get_by_text("Sending…")).to_be_visible()
    lose["to_server"], lost = (), asyncio.Event()
    await drop_connection()
    await expect(panel.get_by_text("Reconnecting…")).to_be_visible()
    await expect(bubbles).to_have_text(["first", RECEIVED])  # resent after the reconnect (1 s backoff)
    await expect(panel.locator(".kindling-pending")).to_have_count(0)

    # Stored, but neither the ack nor the stored message coming back (either settles it) reaches the page:
    # the resend must not store or show it twice
    lose["to_page"] = ("ack", "message")
    await say(panel, "second")
    await lost.wait()
    await expect(panel.get_by_text("Sending…")).to_be_visible()
    lose["to_page"] = ()
    await drop_connection()
    await expect(panel.get_by_text("We reply right here")).to_be_visible()
    await expect(panel.locator(".kindling-pending")).to_have_count(0)
    await expect(bubbles.filter(has_text=re.compile("^second$"))).to_have_count(1)
    assert len(sockets) == 3
    assert [m.text for m in await rows(db, Message, Message.direction == "in")] == ["first", "second"]
    assert len(await rows(db, Lead)) == 1


async def test_a_message_the_server_refuses_is_marked_not_sent_and_never_resent(client, db, page):
    await page.goto(str(client.make_url("/")))
    panel = await open_chat(page)
    await say(panel, "pasted from a terminal \x00 with a NUL")

    await expect(panel.get_by_text(re.compile("^Not sent: .*the JSON holds a NUL"))).to_be_visible()
    assert await stored(page, "outbox") == []  # nothing left to resend on the next connection
    await page.reload()
    panel = await open_chat(page)
    await say(panel, "hello")
    await expect(panel.locator(".kindling-bubble")).to_have_text(["hello", GREETING])
    assert [m.text for m in await rows(db, Message, Message.direction == "in")] == ["hello"]


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (at most 5 s) for the browser's report to reach the database; a bounded wait for another party."""
    for _ in range(100):
        if await check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"never happened: {what}")


async def test_a_message_counts_as_seen_only_once_shown_in_the_open_panel(client, db, page, clock):
    await page.goto(str(client.make_url("/")))
    panel = await open_chat(page)
    await say(panel, "hello")
    await expect(panel.locator(".kindling-bubble")).to_have_text(["hello", GREETING])

    async def greeting_seen() -> bool:
        [greeting] = await rows(db, Delivery)
        return greeting.seen_at is not None and greeting.delivered_at is not None

    await eventually(greeting_seen, "the greeting, shown in the open panel, is reported seen")

    await page.get_by_role("button", name="Close chat").click()
    await expect(panel).to_be_hidden()
    [greeting] = await rows(db, Delivery)
    async with db() as session:
        note = Delivery(
            lead_id=greeting.lead_id, conversation_id=greeting.conversation_id, channel="webchat",
            address=greeting.address, kind="system", text="Your quote is ready.", idempotency_key="quote",
            not_before=clock.now(), created_at=clock.now(),
        )  # fmt: skip
        session.add(note)
        await session.commit()
    await services_of(client).dispatcher.send_now([note.id])
    await expect(page.locator(".kindling-badge")).to_have_text("1")

    async def note_state() -> tuple:
        [row] = await rows(db, Delivery, Delivery.idempotency_key == "quote")
        return row.delivered_at is not None, row.seen_at is not None

    await eventually(lambda: _is(note_state, (True, False)), "the widget reports the message received")
    # Whatever the page does while the panel is closed (a scroll, the tab shown again), it is not seen.
    await page.evaluate("() => document.querySelector('.kindling-list').dispatchEvent(new Event('scroll'))")
    await page.evaluate("() => document.dispatchEvent(new Event('visibilitychange'))")
    last = (await stored(page, "transcript"))[-1]
    assert last["text"] == "Your quote is ready." and last.get("acked") and not last.get("shown")
    assert await note_state() == (True, False)

    panel = await open_chat(page)
    await expect(panel.locator(".kindling-bubble").last).to_have_text("Your quote is ready.")
    await eventually(lambda: _is(note_state, (True, True)), "the message, once shown, is reported seen")


async def _is(read: Callable[[], Awaitable[tuple]], expected: tuple) -> bool:
    return await read() == expected
