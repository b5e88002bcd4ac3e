"""The console's queue and conversation pages over real HTTP: take, reply, hand back, live updates, escaping."""

from __future__ import annotations

import asyncio
import html
import re
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient

from bot.config import ConsoleSettings
from storage.models import Conversation, Delivery, Enrollment, Event, Handoff, Lead, Message

from conftest import API_KEY, rows, services_of, templates_with
from test_console_auth import csrf_of, log_in
from test_handoff import COMING, DRIP, bot_texts
from test_webchat import hello, next_from, say

XSS = "<script>alert(1)</script>"


@pytest.fixture
async def app(make_client, settings, tmp_path):
    """The real app with only a test drip flow (a pricing page enrolls the visitor)."""
    return await make_client(settings.with_(templates=templates_with(tmp_path / "templates", {"drip": DRIP})))


@pytest.fixture
async def second(app):
    """Another browser on the same app: its own cookies, so another operator can be logged in."""
    other = TestClient(app.server)
    yield other
    await other.session.close()  # not other.close(): that would stop the shared server


async def operator(client, add_operator, name: str, role: str = "operator") -> str:
    """An account logged in on `client`; returns its CSRF token."""
    await add_operator(name, role)
    assert (await log_in(client, name)).status == 303
    return await csrf_of(client, "/console/leads")


async def warm(app, name: str | None = None, text: str = "Can I talk to a human?"):
    """A widget visitor on the pricing page (named through the events API) who asks for a person."""
    ws = await app.ws_connect("/chat/ws")
    welcome = await hello(ws)
    if name:
        lead = {"visitor_id": welcome["visitor"], "first_name": name}
        answer = await app.post("/api/events", json={"type": "signup", "lead": lead}, headers=_api())
        assert answer.status == 201, await answer.text()
    await say(app, ws, text)
    assert COMING in (await bot_texts(ws, 1))[0]
    return ws


def _api() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


async def handoff_ids(db) -> list[int]:
    return [handoff.id for handoff in await rows(db, Handoff)]


async def post(client, path: str, csrf: str, **form: str):
    """A console form as a browser posts it; the redirect is not followed."""
    return await client.post(path, data={"csrf_token": csrf, **form}, allow_redirects=False)


async def test_the_queue_lists_a_warm_lead_with_its_sla(app, db, add_operator):
    await operator(app, add_operator, "ann")
    await warm(app, name="Fay")
    [handoff_id] = await handoff_ids(db)

    answer = await app.get("/console/queue")
    text = await answer.text()
    assert answer.status == 200
    assert f'<a data-field="name" href="/console/handoffs/{handoff_id}">Fay</a>' in text
    assert "wrote &#34;talk to a human&#34;" in text and ">intent<" in text and ">webchat<" in text
    assert 'data-left="300.0">5 min left</td>' in text and ">waiting</td>" in text
    assert '<script src="/console/console.js" data-watch-queue>' in text


async def test_a_lead_without_a_name_is_labelled_by_contact_or_source(app, db, add_operator):
    await operator(app, add_operator, "ann")
    await warm(app)  # no name, no contact: came from google (utm_source)
    [lead] = await rows(db, Lead)
    [handoff_id] = await handoff_ids(db)

    assert (
        f'href="/console/handoffs/{handoff_id}">Visitor from google</a>'
        in await (await app.get("/console/queue")).text()
    )
    assert "<h1>Visitor from google <small>" in await (await app.get(f"/console/handoffs/{handoff_id}")).text()
    assert f'href="/console/leads/{lead.id}">Visitor from google</a>' in await (await app.get("/console/leads")).text()
    assert "(no name)" not in await (await app.get(f"/console/leads/{lead.id}")).text()

    event = {"type": "signup", "lead": {"id": lead.id, "email": "max@example.com"}}
    assert (await app.post("/api/events", json=event, headers=_api())).status == 201
    assert "<h1>max@example.com <small>" in await (await app.get(f"/console/leads/{lead.id}")).text()
    assert f'href="/console/leads/{lead.id}">max@example.com</a>' in await (await app.get("/console/leads")).text()


async def test_a_lead_past_its_sla_shows_late(app, db, clock, add_operator):
    await operator(app, add_operator, "ann")
    await warm(app, name="Fay")
    clock.advance(timedelta(minutes=6))
    await services_of(app).notifier.sweep()

    text = await (await app.get("/console/queue")).text()
    assert '<tr class="handoff late"' in text and ">late by 1 min</td>" in text
    [handoff_id] = await handoff_ids(db)
    assert "late by 1 min" in await (await app.get(f"/console/handoffs/{handoff_id}")).text()


async def test_a_long_sla_reads_as_hours_and_minutes(app, db, clock, add_operator):
    clock.advance(datetime(2026, 1, 12, 6, 27, tzinfo=UTC) - clock.now())  # Monday 06:27; hours open at 09:00 UTC
    ws = await app.ws_connect("/chat/ws")
    await hello(ws)
    await say(app, ws, "Can I talk to a human?")  # nobody online: the SLA counts from the opening, 09:05
    await operator(app, add_operator, "ann")
    [handoff_id] = await handoff_ids(db)

    assert ">2 h 38 min left</td>" in await (await app.get("/console/queue")).text()
    clock.advance(timedelta(hours=2, minutes=37, seconds=55))
    assert ">5 s left</span>" in await (await app.get(f"/console/handoffs/{handoff_id}")).text()


async def test_marketers_allowed_to_read_conversations_read_but_do_not_take(make_client, settings, add_operator, db):
    console = ConsoleSettings(marketers_read_conversations=True)
    app = await make_client(settings.with_(console=console))
    csrf = await operator(app, add_operator, "mo", "marketer")
    await warm(app, name="Fay")
    [handoff_id] = await handoff_ids(db)

    page = await app.get(f"/console/handoffs/{handoff_id}")
    text = await page.text()
    assert page.status == 200 and "Can I talk to a human?" in text
    assert "/reply" not in text and "/take" not in text and "data-watch-queue" not in text
    assert (await post(app, f"/console/handoffs/{handoff_id}/take", csrf)).status == 403
    live = await app.ws_connect(f"/console/ws?handoff={handoff_id}")
    assert (await live.receive_json(timeout=5))["text"] == "Can I talk to a human?"


async def test_the_front_door_is_the_inbox_for_operators_and_the_leads_for_marketers(app, second, add_operator):
    await operator(app, add_operator, "ann")
    await operator(second, add_operator, "mo", "marketer")
    assert (await app.get("/console", allow_redirects=False)).headers["Location"] == "/console/inbox"
    assert (await second.get("/console", allow_redirects=False)).headers["Location"] == "/console/leads"
    script = await app.get("/console/console.js")
    assert script.status == 200 and "textContent" in await script.text()


async def test_next_lead_claims_the_most_urgent_and_opens_it(app, db, clock, add_operator):
    csrf = await operator(app, add_operator, "ann")
    await warm(app)
    clock.advance(timedelta(minutes=1))
    await warm(app)
    first, _ = await handoff_ids(db)

    answer = await post(app, "/console/queue/next", csrf)
    assert answer.status == 303 and answer.headers["Location"] == f"/console/handoffs/{first}"
    page = await (await app.get(answer.headers["Location"])).text()
    assert "You hold this conversation" in page
    [taken, waiting] = await rows(db, Handoff)
    assert (taken.status, waiting.status) == ("claimed", "waiting")

    await post(app, "/console/queue/next", csrf)
    empty = await post(app, "/console/queue/next", csrf)
    assert empty.headers["Location"] == "/console/queue?empty=1"
    assert "The queue is empty" in await (await app.get(empty.headers["Location"])).text()


async def test_two_operators_take_the_same_lead_and_one_is_told_who_has_it(app, second, db, add_operator):
    ann = await operator(app, add_operator, "ann")
    bob = await operator(second, add_operator, "bob")
    await warm(app)
    [handoff_id] = await handoff_ids(db)

    take = f"/console/handoffs/{handoff_id}/take"
    answers = await asyncio.gather(post(app, take, ann), post(second, take, bob))

    assert sorted(answer.status for answer in answers) == [303, 409]
    [handoff] = await rows(db, Handoff)
    winner = "ann" if answers[0].status == 303 else "bob"
    loser_page = await next(answer for answer in answers if answer.status == 409).text()
    assert f"already taken by {winner}" in loser_page and f"Taken by {winner}." in loser_page
    assert handoff.status == "claimed"


async def test_a_reply_reaches_the_visitor_and_the_transcript_and_the_bot_stays_silent(app, db, add_operator):
    csrf = await operator(app, add_operator, "ann")
    ws = await warm(app)
    [handoff_id] = await handoff_ids(db)
    page = f"/console/handoffs/{handoff_id}"
    early = await post(app, f"{page}/reply", csrf, text="too early")
    assert early.status == 409 and "take lead" in await early.text()
    assert (await post(app, f"{page}/take", csrf)).status == 303

    answer = await post(app, f"{page}/reply", csrf, text="Hi, I'm Ann. How can I help?")
    assert answer.status == 303 and answer.headers["Location"] == page
    assert (await next_from(ws, "operator"))["text"] == "Hi, I'm Ann. How can I help?"
    await say(app, ws, "Do you ship to Canada?")  # while Ann holds the lead, the bot says nothing

    text = await (await app.get(page)).text()
    said = [html.unescape(t) for t in re.findall(r'<span class="text">([^<]*)</span>', text)]
    assert COMING in said[-3] and said[-2:] == ["Hi, I'm Ann. How can I help?", "Do you ship to Canada?"]
    authors = [message.author for message in await rows(db, Message)]
    assert authors[-3:] == ["bot", "operator", "visitor"] and authors.count("bot") == 1


async def test_a_reply_from_the_page_script_gets_json(app, db, add_operator):
    csrf = await operator(app, add_operator, "ann")
    await warm(app)
    [handoff_id] = await handoff_ids(db)
    headers = {"Accept": "application/json", "X-CSRF-Token": csrf}
    refused = await app.post(f"/console/handoffs/{handoff_id}/reply", data={"text": "hi"}, headers=headers)
    assert refused.status == 409 and "take lead" in (await refused.json())["error"]
    await post(app, f"/console/handoffs/{handoff_id}/take", csrf)
    sent = await app.post(f"/console/handoffs/{handoff_id}/reply", data={"text": "hi"}, headers=headers)
    assert sent.status == 200 and (await sent.json())["ok"]


async def taken(app, db, add_operator):  # type: ignore[no-untyped-def]
    """Ann logged in and holding a fresh warm lead's handoff; returns her CSRF token, the page, the socket."""
    csrf = await operator(app, add_operator, "ann")
    ws = await warm(app)
    [handoff_id] = await handoff_ids(db)
    assert (await post(app, f"/console/handoffs/{handoff_id}/take", csrf)).status == 303
    return csrf, f"/console/handoffs/{handoff_id}", ws


async def test_hand_back_won_makes_a_customer(app, db, add_operator):
    csrf, page, _ = await taken(app, db, add_operator)
    answer = await post(app, f"{page}/hand-back", csrf, outcome="won", flow="drip", reason="")
    assert answer.status == 303 and answer.headers["Location"] == page
    [handoff] = await rows(db, Handoff)
    assert (handoff.status, handoff.outcome) == ("closed", "won")
    assert (await rows(db, Lead))[0].stage == "customer"
    assert "Handed back: won." in await (await app.get(page)).text()


async def test_hand_back_to_nurture_gives_the_lead_back_to_the_bot(app, db, add_operator):
    csrf, page, ws = await taken(app, db, add_operator)
    answer = await post(app, f"{page}/hand-back", csrf, outcome="nurture", flow="", reason="")
    assert answer.status == 303
    assert [(e.flow_slug, e.status) for e in await rows(db, Enrollment)] == [("drip", "active")]
    assert {c.owner for c in await rows(db, Conversation)} == {"bot"}
    await say(app, ws, "thanks!")
    assert (await next_from(ws, "bot"))["text"].startswith("Got it")


async def test_a_lost_lead_needs_a_reason_and_nothing_changes_without_one(app, db, add_operator):
    csrf, page, _ = await taken(app, db, add_operator)
    refused = await post(app, f"{page}/hand-back", csrf, outcome="lost", reason="  ", flow="")
    assert refused.status == 422 and "a lost lead needs a reason" in await refused.text()
    [handoff] = await rows(db, Handoff)
    assert handoff.status == "claimed" and {c.owner for c in await rows(db, Conversation)} == {"human"}

    answer = await post(app, f"{page}/hand-back", csrf, outcome="lost", reason="went elsewhere", flow="")
    assert answer.status == 303
    [handoff] = await rows(db, Handoff)
    assert (handoff.status, handoff.outcome, handoff.outcome_reason) == ("closed", "lost", "went elsewhere")


async def test_the_card_shows_the_lead_s_flows_as_they_are_now(app, db, add_operator):
    csrf, page, _ = await taken(app, db, add_operator)
    assert "<li>drip (paused): nothing sent yet</li>" in await (await app.get(page)).text()  # not "active"

    await post(app, f"{page}/hand-back", csrf, outcome="lost", reason="went elsewhere", flow="")
    assert "<li>drip (exited): nothing sent yet</li>" in await (await app.get(page)).text()


async def test_state_changes_without_the_csrf_token_are_refused(app, db, add_operator):
    csrf, page, _ = await taken(app, db, add_operator)
    for path, form in (
        ("/console/queue/next", {}),
        (f"{page}/take", {}),
        (f"{page}/reply", {"text": "hi"}),
        (f"{page}/hand-back", {"outcome": "won"}),
    ):
        answer = await app.post(path, data=form, allow_redirects=False)
        assert answer.status == 403 and "CSRF" in await answer.text(), path
    assert [d.kind for d in await rows(db, Delivery)] == ["system"]
    assert (await rows(db, Handoff))[0].status == "claimed"


async def test_a_marketer_may_not_work_the_queue(app, db, add_operator):
    csrf = await operator(app, add_operator, "mo", "marketer")
    await warm(app)
    [handoff_id] = await handoff_ids(db)
    for answer in (
        await app.get("/console/queue"),
        await app.get(f"/console/handoffs/{handoff_id}"),
        await post(app, f"/console/handoffs/{handoff_id}/take", csrf),
        await post(app, "/console/queue/next", csrf),
        await app.get("/console/ws?queue=1", headers={"Accept": "application/json"}),
    ):
        assert answer.status == 403, answer.url
    assert (await rows(db, Handoff))[0].status == "waiting"


async def test_a_visitor_named_like_a_script_shows_as_text(app, db, add_operator):
    await operator(app, add_operator, "ann")
    await warm(app, name=XSS, text=f"talk to a human {XSS}")
    [handoff_id] = await handoff_ids(db)
    for path in ("/console/queue", f"/console/handoffs/{handoff_id}"):
        text = await (await app.get(path)).text()
        assert XSS not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path


async def test_an_unknown_handoff_is_a_404_page(app, add_operator):
    await operator(app, add_operator, "ann")
    for path, message in (
        ("/console/handoffs/4242", "There is no handoff 4242."),
        ("/console/handoffs/x", "handoff x"),
    ):
        answer = await app.get(path)
        text = await answer.text()
        assert answer.status == 404 and message in text and "<h1>Not found</h1>" in text


async def test_an_operator_takes_over_a_lead_from_its_page(app, db, add_operator):
    csrf = await operator(app, add_operator, "ann")
    ws = await app.ws_connect("/chat/ws")
    await hello(ws)
    await say(app, ws, "just looking")
    [lead] = await rows(db, Lead)
    assert f'action="/console/leads/{lead.id}/take"' in await (await app.get(f"/console/leads/{lead.id}")).text()

    answer = await post(app, f"/console/leads/{lead.id}/take", csrf)
    [handoff] = await rows(db, Handoff)
    assert answer.status == 303 and answer.headers["Location"] == f"/console/handoffs/{handoff.id}"
    assert (handoff.trigger, handoff.status) == ("operator", "claimed")


@pytest.mark.parametrize("how", ["purchase", "stage customer"])
async def test_a_lead_who_buys_leaves_the_queue_as_won(app, db, add_operator, how):
    await operator(app, add_operator, "ann")
    queue = await app.ws_connect("/console/ws?queue=1")
    assert await queue.receive_json(timeout=5) == {"type": "queue", "handoffs": []}
    await warm(app, name="Fay")
    assert (await queue.receive_json(timeout=5))["change"] == "opened"
    [lead] = await rows(db, Lead)

    if how == "purchase":
        event = {"type": "purchase", "lead": {"id": lead.id}, "properties": {"amount": 49}}
        answer = await app.post("/api/events", json=event, headers=_api())
    else:
        answer = await app.patch(f"/api/leads/{lead.id}", json={"stage": "customer"}, headers=_api())
    assert answer.status in (200, 201), await answer.text()

    closed = await queue.receive_json(timeout=5)
    assert (closed["change"], closed["handoff"]["status"]) == ("closed", "closed")
    [handoff] = await rows(db, Handoff)
    assert (handoff.status, handoff.outcome, handoff.outcome_reason) == ("closed", "won", how)
    assert "Fay" not in await (await app.get("/console/queue")).text()
    assert {c.owner for c in await rows(db, Conversation)} == {"bot"}
    assert [e.status for e in await rows(db, Enrollment)] == ["exited"]
    [event] = [e for e in await rows(db, Event) if e.type == "handoff_closed"]
    assert event.payload["outcome"] == "won" and event.payload["reason"] == how


async def test_the_console_socket_streams_the_queue_and_the_conversation(app, db, add_operator):
    await operator(app, add_operator, "ann")
    queue = await app.ws_connect("/console/ws?queue=1")
    assert await queue.receive_json(timeout=5) == {"type": "queue", "handoffs": []}

    ws = await warm(app, name="Fay")
    opened = await queue.receive_json(timeout=5)
    assert (opened["type"], opened["change"], opened["handoff"]["name"]) == ("handoff", "opened", "Fay")
    handoff_id = opened["handoff"]["id"]

    live = await app.ws_connect(f"/console/ws?handoff={handoff_id}")
    history = [await live.receive_json(timeout=5) for _ in range(2)]
    assert [(m["from"], m["text"][:6]) for m in history] == [("visitor", "Can I "), ("bot", "Thanks")]
    await say(app, ws, "are you there?")
    frame = await live.receive_json(timeout=5)
    assert (frame["type"], frame["from"], frame["text"]) == ("message", "visitor", "are you there?")
    assert frame["conversation"] == opened["handoff"]["conversation_id"]

    again = await app.ws_connect(f"/console/ws?handoff={handoff_id}&since={frame['id']}")
    await say(app, ws, "hello?")
    assert (await again.receive_json(timeout=5))["text"] == "hello?"  # only what came after `since`


async def test_the_console_socket_needs_a_login_and_something_to_watch(app, add_operator):
    refused = await app.get("/console/ws?queue=1", headers={"Accept": "application/json"})
    assert refused.status == 401
    await operator(app, add_operator, "ann")
    assert (await app.get("/console/ws", headers={"Accept": "application/json"})).status == 400
    assert (await app.get("/console/ws?handoff=99", headers={"Accept": "application/json"})).status == 404


async def test_the_console_socket_closes_when_its_login_ends(app, add_operator, monkeypatch):
    monkeypatch.setattr("bot.console.live.SESSION_CHECK", 0.05)  # not 30 s of real time
    csrf = await operator(app, add_operator, "ann")
    ws = await app.ws_connect("/console/ws?queue=1")
    assert (await ws.receive_json(timeout=5))["type"] == "queue"
    await post(app, "/console/logout", csrf)
    closed = await ws.receive(timeout=5)
    assert closed.type.name == "CLOSE" and closed.data == 4401
