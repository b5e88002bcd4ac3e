"""No question goes unanswered: a plain question goes to a person (trigger `question`), and the console's inbox.

A visitor's question with no intent word opens a `question` handoff and gets an honest answer (a person will
reply, and when); small talk does not. The inbox lists conversations that need a reply, filtered and paged,
live over /console/ws; the Telegram operators' group lists them with `/inbox`.
"""

from __future__ import annotations

import html
from dataclasses import replace
from datetime import timedelta

import pytest

from bot.handoff.inbox import InboxView, inbox, waited
from flows.answers import bare, load_answers
from storage.models import Conversation, Handoff, Lead, Operator

from conftest import API_KEY, rows, services_of, shipped_templates, templates_with
from fake_telegram import TOKEN
from test_console_queue import operator
from test_handoff import DRIP, bot_texts, next_from, press, visitor
from test_handoff_telegram import GROUP
from test_reports import report
from test_telegram import CHAT, SECRET, payload, post
from test_webchat import say

QUESTION = "Can we get an invoice for a German company?"  # no quick answer fits: a person answers
RECEIVED = "A person from our team will reply here"
API = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def templates(tmp_path):
    return templates_with(tmp_path / "templates", {"drip": DRIP})


@pytest.fixture
async def app(make_client, settings, templates):
    return await make_client(settings.with_(templates=templates))


async def test_a_plain_question_goes_to_a_person_and_the_visitor_is_told_when(app, db, add_operator):
    ws = await visitor(app)
    await say(app, ws, QUESTION)

    [answer] = await bot_texts(ws, 1)
    assert answer == "Thanks! A person from our team will reply here within 5 minutes."  # not the greeting too
    [handoff] = await rows(db, Handoff)
    assert (handoff.trigger, handoff.reason, handoff.status) == ("question", f'asked "{QUESTION}"', "waiting")
    [conversation] = await rows(db, Conversation)
    assert conversation.owner == "queued"  # the bot stays silent now, as for any handoff

    await operator(app, add_operator, "ann")
    page = await (await app.get("/console/inbox")).text()
    assert f'href="/console/handoffs/{handoff.id}">Visitor from google</a>' in page
    assert html.escape(QUESTION, quote=True) in page and ">webchat<" in page and "5 min left" in page


async def test_a_common_question_gets_its_quick_answer_with_a_person_on_offer_and_no_handoff(app, db):
    ws = await visitor(app)
    await say(app, ws, "how much does it cost")  # the shipped pricing answer (templates/_answers/en.toml)
    answer = await next_from(ws, "bot")
    assert answer["text"].startswith("Our plans start at $29 a month") and "[" not in answer["text"]
    assert answer["buttons"] == ["Talk to a person"]
    assert await rows(db, Handoff) == []  # answered: nobody is asked
    [conversation] = await rows(db, Conversation)
    assert conversation.owner == "bot"

    await press(app, ws, "Talk to a person")  # the person it offers
    [handoff] = await rows(db, Handoff)
    assert (handoff.trigger, handoff.status) == ("button", "waiting")


async def test_a_long_question_is_quoted_short_in_the_reason(app, db):
    ws = await visitor(app)
    await say(app, ws, "Hello, " + "could you tell me more about your onboarding process " * 3)
    [handoff] = await rows(db, Handoff)
    assert handoff.reason.startswith('asked "Hello, could you tell me') and handoff.reason.endswith('…"')
    assert len(handoff.reason) <= len('asked ""') + 60


@pytest.mark.parametrize("text", ["Hi!", "thanks 👍", "OK", "Спасибо!", "привет", "谢谢", "好的。", "👍"])
async def test_small_talk_gets_the_usual_answer_and_reaches_nobody(app, db, text):
    ws = await visitor(app)
    await say(app, ws, text)
    [answer] = await bot_texts(ws, 1)
    assert answer.startswith("Hi! Thanks for reaching out")
    assert await rows(db, Handoff) == []


async def test_a_question_after_small_talk_goes_to_a_person_once(app, db):
    ws = await visitor(app)
    await say(app, ws, "hello")
    await say(app, ws, QUESTION)
    await say(app, ws, "And is there a discount for nonprofits?")  # the bot is silent: a person has it
    texts = await bot_texts(ws, 2)
    assert texts[0].startswith("Hi! Thanks for reaching out") and RECEIVED in texts[1]
    assert len(await rows(db, Handoff)) == 1


async def test_out_of_hours_the_question_says_when_the_team_is_back(app, db, clock):
    clock.advance(timedelta(days=5))  # Saturday 12:00 UTC
    ws = await visitor(app)
    await say(app, ws, QUESTION)
    [answer] = await bot_texts(ws, 1)
    # The widget's visitor is in New York: the opening in their time.
    assert answer == f"Thanks! {RECEIVED} when we're back: Monday at 04:00 (America/New_York)."


async def test_questions_off_restores_the_greeting_and_got_it(make_client, settings, templates, db):
    app = await make_client(settings.with_(templates=templates, handoff=replace(settings.handoff, questions=False)))
    ws = await visitor(app)
    await say(app, ws, QUESTION)
    await say(app, ws, "Do you also sell gift cards?")
    texts = await bot_texts(ws, 2)
    assert texts[0].startswith("Hi! Thanks for reaching out") and texts[1].startswith("Got it, thanks!")
    assert await rows(db, Handoff) == []


ANSWERING = """+++
name = "Answers at once"
trigger = "message"
exit = ["opt_out"]
reenter = "never"
+++
{% step "answer", after="0s" %}We ship everywhere.{% endstep %}
"""


async def test_a_message_a_flow_answers_at_once_goes_to_nobody(make_client, settings, tmp_path, db):
    templates = templates_with(tmp_path / "answering", {"answering": ANSWERING})
    app = await make_client(settings.with_(templates=templates))
    ws = await visitor(app)
    await say(app, ws, QUESTION)
    assert await rows(db, Handoff) == []  # the flow's step answers it; the next message would reach a person


def test_small_talk_is_matched_on_the_whole_message_without_punctuation_or_emoji(tmp_path):
    answers = load_answers(shipped_templates(tmp_path / "templates"))
    assert bare("  Thank   YOU!!! 🙏") == "thank you"
    assert answers.is_small_talk("Thank you!") and answers.is_small_talk("ДА") and answers.is_small_talk("你好！")
    assert not answers.is_small_talk("thanks, but what does it cost?")
    assert not answers.is_small_talk("yes please send the contract")


async def test_needs_reply_follows_who_spoke_last(app, db, add_operator, clock):
    ws = await visitor(app)
    await say(app, ws, QUESTION)
    [handoff] = await rows(db, Handoff)
    await operator(app, add_operator, "ann")
    services = services_of(app)
    [ann] = [o.id for o in await _operators(db)]

    async def shown(show: str) -> list[int]:
        async with services.sessions() as session:
            found = await inbox(session, InboxView(show=show, operator_id=ann), clock.now())
        return [row["id"] for row in found.rows]

    assert (await shown("needs_reply"), await shown("mine"), await shown("all")) == ([handoff.id], [], [handoff.id])
    await services.handoffs.claim(handoff.id, ann)
    assert await shown("needs_reply") == [handoff.id]  # taken, not answered yet
    clock.advance(timedelta(minutes=3))
    await services.handoffs.reply(handoff.id, ann, "Yes: the Team plan, $40 a month.")
    await services.drain()
    assert (await shown("needs_reply"), await shown("mine"), await shown("all")) == ([], [handoff.id], [handoff.id])
    assert (await api_needing(app, "true"), await api_needing(app, "false")) == ([], [handoff.id])
    page = await (await app.get("/console/inbox?show=mine")).text()
    assert "the Team plan, $40 a month." in page and "taken by ann" in page

    clock.advance(timedelta(minutes=2))
    await say(app, ws, "Does it include phone support?")
    assert await shown("needs_reply") == [handoff.id]
    assert (await api_needing(app, "true"), await api_needing(app, "false")) == ([handoff.id], [])
    assert (await app.get("/api/handoffs?needs_reply=maybe", headers=API)).status == 400
    async with services.sessions() as session:
        [row] = (await inbox(session, InboxView(show="needs_reply"), clock.now() + timedelta(minutes=12))).rows
    assert (row["last_text"], row["last_from"], row["waiting"]) == (
        "Does it include phone support?",
        "visitor",
        "12 min",
    )


async def test_the_inbox_filters_by_channel_and_refuses_bad_filters(app, db, add_operator):
    ws = await visitor(app)
    await say(app, ws, QUESTION)
    await operator(app, add_operator, "ann")
    assert QUESTION in await (await app.get("/console/inbox?channel=webchat")).text()
    assert QUESTION not in await (await app.get("/console/inbox?channel=telegram")).text()
    for bad in ("show=everything", "page=0", "page=x", "channel=%3Cb%3E"):
        answer = await app.get(f"/console/inbox?{bad}")
        assert answer.status == 400, bad
    assert (await app.get("/console/queue?page=-1")).status == 400


async def test_the_inbox_and_the_queue_page_fifty_at_a_time(app, db, add_operator, clock):
    await _waiting_handoffs(db, clock, 60)
    await operator(app, add_operator, "ann")
    first = await (await app.get("/console/inbox")).text()
    second = await (await app.get("/console/inbox?page=2")).text()
    assert first.count('<tr class="conversation') == 50 + 1  # and the row template
    assert second.count('<tr class="conversation') == 10 + 1
    assert 'rel="next" href="/console/inbox?show=needs_reply&amp;page=2"' in first
    assert "page <span data-page-number>2</span> of" in second
    queue1 = await (await app.get("/console/queue")).text()
    queue2 = await (await app.get("/console/queue?page=2")).text()
    assert queue1.count('<tr class="handoff') == 51 and queue2.count('<tr class="handoff') == 11
    async with app.ws_connect("/console/ws?queue=1&page=2") as ws:
        assert len((await ws.receive_json(timeout=5))["handoffs"]) == 10


async def test_the_inbox_is_live_over_the_console_socket(app, db, add_operator):
    await operator(app, add_operator, "ann")
    async with app.ws_connect("/console/ws?inbox=1&show=needs_reply") as live:
        assert (await live.receive_json(timeout=15))["rows"] == []
        ws = await visitor(app)
        await say(app, ws, QUESTION)
        while not (frame := await live.receive_json(timeout=15))["rows"]:
            pass
    [row] = frame["rows"]
    assert (row["label"], row["channel"], row["last_text"], row["trigger"]) == (
        "Visitor from google",
        "webchat",
        QUESTION,
        "question",
    )
    assert (await app.get("/console/ws?inbox=1&show=nope")).status == 400


async def test_the_speed_to_lead_report_counts_question_handoffs(app, db, add_operator, clock):
    ws = await visitor(app)
    await say(app, ws, QUESTION)
    [handoff] = await rows(db, Handoff)
    await operator(app, add_operator, "ann")
    [ann] = [o.id for o in await _operators(db)]
    clock.advance(timedelta(minutes=2))
    await services_of(app).handoffs.claim(handoff.id, ann)
    got = await report(app, "handoffs", "since=2026-01-05&until=2026-01-05")
    assert (got["handoffs"], got["claimed"], got["open"]) == (1, 1, 1)
    assert got["speed_to_lead"]["claimed"]["p50"] == 120


async def test_a_telegram_question_is_noticed_carded_and_listed_by_inbox(make_client, settings, db, fake_telegram):
    telegram = {"telegram_token": TOKEN, "telegram_secret": SECRET, "telegram_api_url": fake_telegram.url}
    client = await make_client(settings.with_(**telegram, operators_chat=GROUP, public_url="https://bot.example"))
    await post(client, payload("message_text", text="Hi, do you ship to Canada?"))

    assert fake_telegram.texts(CHAT) == ["Thanks, Ann! A person from our team will reply here within 5 minutes."]
    [card] = fake_telegram.sent_messages(GROUP)
    assert 'Why: asked "Hi, do you ship to Canada?"' in card["text"]
    [handoff] = await rows(db, Handoff)

    command = {"message_id": 5, "from": {"id": 7001, "is_bot": False, "first_name": "Ana"}, "date": 1767614400}
    command |= {"chat": {"id": GROUP, "type": "supergroup", "title": "Operators"}, "text": "/inbox"}
    await post(client, {"update_id": 900001, "message": command})
    listing = fake_telegram.texts(GROUP)[-1]
    assert listing.startswith("1 conversation needs a reply:")
    assert 'Ann Lee (telegram), waiting under 1 min: "Hi, do you ship to Canada?"' in listing
    assert f"https://bot.example/console/handoffs/{handoff.id}" in listing


def test_waiting_times_read_as_hours_and_minutes():
    assert [waited(s) for s in (20, 12 * 60 + 5, 2 * 3600 + 5 * 60, 3600)] == [
        "under 1 min",
        "12 min",
        "2 h 5 min",
        "1 h",
    ]


async def api_needing(app, value: str) -> list[int]:
    """The ids `GET /api/handoffs?needs_reply=` lists."""
    answer = await app.get(f"/api/handoffs?needs_reply={value}", headers=API)
    assert answer.status == 200, await answer.text()
    return [item["id"] for item in (await answer.json())["items"]]


async def _operators(db):
    return await rows(db, Operator)


async def _waiting_handoffs(db, clock, count: int) -> None:
    """`count` leads waiting for a person, each in its own widget conversation."""
    now = clock.now()
    async with db() as session, session.begin():
        for number in range(count):
            lead = Lead(created_at=now, updated_at=now, stage_at=now, first_name=f"Lead{number}")
            session.add(lead)
            await session.flush()
            conversation = Conversation(lead_id=lead.id, channel="webchat", external_id=f"v{number}", created_at=now)
            session.add(conversation)
            await session.flush()
            session.add(
                Handoff(
                    lead_id=lead.id, conversation_id=conversation.id, trigger="question", reason="asked",
                    card={"name": f"Lead{number}", "channel": "webchat"}, warm_at=now, created_at=now,
                    sla_due_at=now + timedelta(minutes=5 + number),
                    console_notified_at=now,
                )
            )  # fmt: skip


async def test_a_person_merged_while_waiting_keeps_one_handoff_and_asks_no_second(app, db):
    """The backend knew them first; it names the widget visitor who asked: the handoff goes to the merged lead."""
    signup = {"type": "signup", "lead": {"email": "max@example.com"}}
    assert (await app.post("/api/events", json=signup, headers=API)).status == 201
    ws = await visitor(app)
    await say(app, ws, QUESTION)
    login = {"email": "max@example.com", "visitor_id": (await rows(db, Conversation))[0].external_id}
    assert (await app.post("/api/events", json={"type": "login", "lead": login}, headers=API)).status == 201
    await services_of(app).drain()
    assert len([lead for lead in await rows(db, Lead) if lead.merged_into_id is not None]) == 1

    await say(app, ws, "Also, do you invoice in euros?")
    [handoff] = await rows(db, Handoff)
    assert handoff.status == "waiting" and handoff.lead_id == (await rows(db, Conversation))[0].lead_id
