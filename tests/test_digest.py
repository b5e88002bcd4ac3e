"""Missed messages: what a widget visitor has not seen within `channels.webchat.email_after` reaches them by email,
one digest per conversation, at a real SMTP relay, with a signed link that reopens the conversation."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import expect
from sqlalchemy import update

from bot.config import EmailSettings
from bot.mail.digest import send_digests
from storage.models import Delivery, Handoff, Lead, Message

from conftest import rows, services_of, templates_with
from fake_smtp import FakeRelay
from test_browser import browser, eventually, new_page, open_chat  # noqa: F401  (fixtures: headless Chromium)
from test_browser import say as type_in
from test_handoff import add_operator
from test_webchat import next_from, say

PUBLIC = "https://kindling.example"
FROM = "Acme <hello@acme.example>"
ADDRESS = "ada@example.com"
NEWS = """+++
name = "News"
trigger = "page_view"
exit = ["opt_out"]
+++
{% step "news", after="1m", channel="webchat" %}Our spring sale starts today.{% endstep %}
"""


@pytest.fixture
def email_settings(settings, fake_smtp: FakeRelay, tmp_path):
    email = EmailSettings(smtp_url=fake_smtp.url, from_address=FROM, reply_domain="reply.acme.example", rate=10_000)
    templates = templates_with(tmp_path / "templates", {"news": NEWS})
    return settings.with_(public_url=PUBLIC, email=email, templates=templates)


@pytest.fixture
async def app(make_client, email_settings):
    return await make_client(email_settings)


async def visit(app, link: str | None = None, visitor: str | None = None, token: str | None = None):
    """A widget visitor's socket and welcome (continuing from a digest's link, when given one)."""
    ws = await app.ws_connect("/chat/ws")
    view = {"id": str(uuid.uuid4()), "url": "https://shop.example/", "referrer": "", "title": "Home"}
    await ws.send_json({"type": "hello", "visitor": visitor, "token": token, "link": link, "since": 0, "view": view})
    welcome = await ws.receive_json(timeout=5)
    assert welcome["type"] == "welcome"
    return ws, welcome


async def with_lead(db, **fields) -> None:
    """Set what the lead gave (an address, consent) or what happened to it (a bounce)."""
    async with db() as session, session.begin():
        await session.exec(update(Lead).values(**fields))


async def answered(app, db, clock, answers=("Hi, I'm Ana.", "We do ship to Canada.")):
    """A visitor asks for a person, an operator answers; returns the socket and the answers' frames."""
    ws, _ = await visit(app)
    await say(app, ws, "call me about shipping")
    ana = await add_operator(db, "Ana")
    [handoff] = await rows(db, Handoff)
    await services_of(app).handoffs.claim(handoff.id, ana)
    frames = []
    for text in answers:
        clock.advance(timedelta(seconds=30))
        await services_of(app).handoffs.reply(handoff.id, ana, text)
        frames.append(await next_from(ws, "operator"))
    return ws, frames


async def run_job(app, clock, minutes: float = 10) -> int:
    """Let time pass, run the digest job as the scheduler would, send what it queued."""
    clock.advance(timedelta(minutes=minutes))
    services = services_of(app)
    queued = await send_digests(services, clock.now())
    while await services.dispatcher.dispatch_due():
        pass
    return queued


def plain(message) -> str:
    return message.get_body(("plain",)).get_content()


async def test_an_answer_unseen_for_ten_minutes_goes_by_email_once_with_a_link_back(app, db, clock, fake_smtp):
    ws, _ = await answered(app, db, clock)
    await with_lead(db, email=ADDRESS)  # typed in the chat: a claim, no marketing consent
    await ws.close()  # the visitor left

    assert await run_job(app, clock, minutes=8) == 0  # not yet
    assert await run_job(app, clock, minutes=2) == 1
    [received] = fake_smtp.messages
    assert list(received.rcpt_tos) == [ADDRESS]
    assert received.message["Subject"] == "You have a reply from Acme"
    text = plain(received.message)
    assert "Hi, I'm Ana." in text and "We do ship to Canada." in text
    link = re.search(r"https://kindling\.example/\?kindling=[0-9a-f-]+", text).group(0)
    assert link in received.message.get_body(("html",)).get_content()
    [digest] = await rows(db, Delivery, Delivery.channel == "email")
    assert (digest.kind, digest.status) == ("system", "sent")
    assert digest.idempotency_key.startswith("digest:")
    operator_rows = await rows(db, Delivery, Delivery.kind == "operator")
    assert all(row.emailed_at is not None for row in operator_rows)

    assert await run_job(app, clock) == 0  # nothing new: nothing sent again
    assert len(fake_smtp.messages) == 1

    # A later answer gets a digest of its own, with only what the first one did not cover.
    [handoff] = await rows(db, Handoff)
    await services_of(app).handoffs.reply(handoff.id, handoff.claimed_by_id, "Shipping is free over $50.")
    assert await run_job(app, clock) == 1
    later = plain(fake_smtp.messages[1].message)
    assert "Shipping is free over $50." in later and "We do ship to Canada." not in later


async def test_the_link_reopens_the_conversation_and_reading_it_marks_it_seen(app, db, clock, fake_smtp):
    ws, _ = await answered(app, db, clock)
    await with_lead(db, email=ADDRESS)
    visitor_id = (await rows(db, Delivery, Delivery.kind == "operator"))[0].address
    await ws.close()
    await run_job(app, clock)
    text = plain(fake_smtp.messages[0].message)
    link = parse_qs(urlsplit(re.search(r"\((https://kindling\.example/\?[^)]+)\)", text).group(1)).query)["kindling"][0]

    ws, welcome = await visit(app, link=link)  # another browser: no visitor id or token of its own
    assert welcome["visitor"] == visitor_id
    answer = await next_from(ws, "operator")
    assert answer["text"] == "Hi, I'm Ana."
    await ws.send_json({"type": "seen", "ids": [answer["id"]]})
    await say(app, ws, "thanks!")  # once this is answered, the receipt before it was taken too
    [first, _] = await rows(db, Delivery, Delivery.kind == "operator")
    assert first.seen_at is not None


async def test_a_forged_link_does_not_open_another_visitors_conversation(app, db, clock):
    ws, _ = await answered(app, db, clock)
    await with_lead(db, email=ADDRESS)
    visitor_id = (await rows(db, Delivery, Delivery.kind == "operator"))[0].address
    await ws.close()

    stranger, welcome = await visit(app, link=f"{visitor_id}-000000000000")
    assert welcome["visitor"] != visitor_id
    assert welcome["conversation"] != (await rows(db, Delivery, Delivery.kind == "operator"))[0].conversation_id


async def test_messages_seen_within_ten_minutes_are_not_emailed(app, db, clock, fake_smtp):
    ws, _ = await answered(app, db, clock)
    await with_lead(db, email=ADDRESS)
    shown = [m.id for m in await rows(db, Message, Message.direction == "out")]  # the greeting and both answers
    await ws.send_json({"type": "seen", "ids": shown})
    await say(app, ws, "ok, thanks")  # the receipt before it is stored once this is acknowledged
    await ws.close()
    assert await run_job(app, clock, minutes=30) == 0
    assert fake_smtp.messages == []


@pytest.mark.parametrize("address", ["none", "bounced"])
async def test_a_lead_without_a_usable_address_gets_no_digest(app, db, clock, fake_smtp, address):
    ws, _ = await answered(app, db, clock)
    if address == "bounced":
        await with_lead(db, email=ADDRESS, email_bounced_at=clock.now(), email_bounce_reason="550 no such user")
    await ws.close()
    assert await run_job(app, clock) == 0
    assert fake_smtp.messages == []


async def test_email_after_off_sends_nothing(make_client, email_settings, db, clock, fake_smtp):
    app = await make_client(email_settings.with_(webchat_email_after=None))
    ws, _ = await answered(app, db, clock)
    await with_lead(db, email=ADDRESS)
    await ws.close()
    assert await run_job(app, clock, minutes=60) == 0
    assert fake_smtp.messages == []


async def nurtured(app, db, clock) -> None:
    """A visitor who left before a flow's webchat step was stored for them."""
    ws, _ = await visit(app)
    await ws.close()
    await services_of(app).drain()
    clock.advance(timedelta(minutes=2))
    assert await services_of(app).runner.run_due(10) >= 1
    while await services_of(app).dispatcher.dispatch_due():
        pass
    [news] = await rows(db, Delivery, Delivery.kind == "nurture")
    assert (news.channel, news.status) == ("webchat", "sent")


async def test_nurture_alone_is_emailed_only_with_consent(app, db, clock, fake_smtp):
    await nurtured(app, db, clock)
    await with_lead(db, email=ADDRESS)  # an address, no consent
    assert await run_job(app, clock) == 0
    assert fake_smtp.messages == []

    await with_lead(db, email_consent_at=clock.now(), email_consent_source="widget")
    assert await run_job(app, clock) == 1
    [received] = fake_smtp.messages
    assert received.message["Subject"] == "New messages from Acme"
    assert "Our spring sale starts today." in plain(received.message)


async def test_in_a_browser_the_digest_link_shows_the_answer(app, db, clock, fake_smtp, new_page):  # noqa: F811
    """A visitor who gave an address and left reads the operator's answer through the digest email's link."""
    page = await new_page()
    await page.goto(str(app.make_url("/")))
    panel = await open_chat(page)
    await panel.get_by_role("textbox", name="Your email").fill(ADDRESS)
    await panel.get_by_role("checkbox").check()
    await type_in(panel, "Do you ship to Canada? Please call me")
    await expect(panel.locator(".kindling-bubble").last).to_contain_text("bringing in a person")

    async def gave_address() -> bool:
        return [lead.email for lead in await rows(db, Lead)] == [ADDRESS]

    await eventually(gave_address, "the address typed next to the consent box is stored")
    await page.context.close()  # the visitor left

    ana = await add_operator(db, "Ana")
    [handoff] = await rows(db, Handoff)
    await services_of(app).handoffs.claim(handoff.id, ana)
    await services_of(app).handoffs.reply(handoff.id, ana, "Yes, we ship to Canada: 5 to 7 days.")
    assert await run_job(app, clock) == 1
    [received] = fake_smtp.messages
    assert "Yes, we ship to Canada: 5 to 7 days." in plain(received.message)
    link = urlsplit(re.search(r"\((https://kindling\.example/\?[^)]+)\)", plain(received.message)).group(1))
    # The app under test serves on a loopback port, not at its public URL: same path and query, local origin.
    local = app.make_url(f"{link.path}?{link.query}")

    fresh = await new_page()  # another browser: nothing of the visitor's in its storage
    await fresh.goto(str(local))
    panel = fresh.get_by_role("dialog", name="Chat with us")
    await expect(panel).to_be_visible()  # opened on the conversation
    await expect(panel.locator(".kindling-bubble").last).to_have_text("Yes, we ship to Canada: 5 to 7 days.")
    await expect(panel.locator(".kindling-bubble").first).to_have_text("Do you ship to Canada? Please call me")
    assert "kindling=" not in fresh.url  # the link leaves the address bar

    async def answer_seen() -> bool:
        [answer] = await rows(db, Delivery, Delivery.kind == "operator")
        return answer.seen_at is not None

    await eventually(answer_seen, "the answer, shown in the widget opened from the email, is reported seen")
