"""Handoff from the widget: warm signals, the context card, the queue, claims, replies, hand back, SLA."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bot.delivery.hub import QUEUE, Hub
from bot.handoff.handoffs import HandoffError, NotHolder
from storage.models import Conversation, Delivery, Enrollment, Event, Handoff, Lead, Operator

from conftest import rows, services_of, templates_with
from test_webchat import _unread, hello, next_from, say

DRIP = """+++
name = "Test drip"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
exit = ["opt_out"]
+++
{% step "one", after="10m" %}One.{% endstep %}
{% step "two", after="1h" %}Two.{% endstep %}
"""

ASK = """+++
name = "Ask for a call"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
exit = ["opt_out", "handoff"]
+++
{% step "ask", after="1h", action="handoff" %}{% endstep %}
"""

COMING = "I'm bringing in a person from our team"


@pytest.fixture
def templates(tmp_path):
    """The shipped system messages and partials, with only the test's drip flow."""
    return templates_with(tmp_path / "templates", {"drip": DRIP})


@pytest.fixture
async def app(make_client, settings, templates):
    return await make_client(settings.with_(templates=templates))


async def add_operator(db, name: str, telegram_id: int | None = None) -> int:
    """An operator account, as `kindling operator add` would leave it."""
    async with db() as session, session.begin():
        operator = Operator(
            name=name,
            role="operator",
            password_hash="x",
            telegram_user_id=str(telegram_id) if telegram_id else None,
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        session.add(operator)
        await session.flush()
        return operator.id


async def visitor(app, url="https://shop.example/pricing?utm_source=google&utm_campaign=spring"):
    """A widget visitor landing on a page (pricing by default: the drip enrolls them)."""
    ws = await app.ws_connect("/chat/ws")
    await hello(ws, url=url)
    return ws


async def press(app, ws, label: str) -> None:
    """Press a button in the widget and wait for its ack (other frames stay for `next_from`)."""
    client_id = str(uuid.uuid4())
    await ws.send_json({"type": "button", "id": client_id, "value": label})
    while (frame := await ws.receive_json(timeout=5)).get("id") != client_id or frame["type"] != "ack":
        _unread.setdefault(id(ws), []).append(frame)
    await services_of(app).drain()


async def bot_texts(ws, count: int) -> list[str]:
    return [(await next_from(ws, "bot"))["text"] for _ in range(count)]


async def published(hub: Hub, queue: asyncio.Queue) -> list[tuple[str, int]]:
    """(change, handoff id) of everything published on the queue topic so far (on every instance)."""
    await hub.flush()
    items = []
    while not queue.empty():
        item = queue.get_nowait()
        items.append((item["change"], item["handoff"]["id"]))
    return items


async def test_an_intent_word_hands_off_with_the_context_card(app, db, clock):
    services = services_of(app)
    async with services.hub.watch(QUEUE) as queue:
        ws = await visitor(app)
        await say(app, ws, "Hi there")
        await say(app, ws, "Can I talk to a HUMAN please?")
        assert await bot_texts(ws, 2) == [
            "Hi! Thanks for reaching out. What's your name? And how can we help you today?",
            "Thanks! I'm bringing in a person from our team: they'll reply here in a few minutes.",
        ]
        [handoff] = await rows(db, Handoff)
        assert await published(services.hub, queue) == [("opened", handoff.id)]

    assert (handoff.trigger, handoff.reason, handoff.status) == ("intent", 'wrote "talk to a human"', "waiting")
    assert handoff.sla_due_at == clock.now() + timedelta(minutes=5) and handoff.warm_at == clock.now()
    assert handoff.console_notified_at == clock.now() and handoff.telegram_notified_at is None
    card = handoff.card
    assert card["channel"] == "webchat" and card["first_touch"]["source"] == "google"
    assert [page["path"] for page in card["pages"]] == ["/pricing"]
    assert card["score_reasons"][0]["rule"] == "pricing page" and card["score_explained"].startswith("14 = ")
    assert card["flows"] == [{"flow": "drip", "status": "paused", "steps_sent": []}]  # paused by the handoff
    assert [(line["from"], line["text"]) for line in card["transcript"]][-2:] == [
        ("bot", "Hi! Thanks for reaching out. What's your name? And how can we help you today?"),
        ("visitor", "Can I talk to a HUMAN please?"),
    ]
    [conversation] = await rows(db, Conversation)
    assert conversation.owner == "queued"
    [enrollment] = await rows(db, Enrollment)
    assert enrollment.status == "paused"
    types = [event.type for event in await rows(db, Event)]
    assert types[-2:] == ["handoff", "handoff_notified"]


@pytest.mark.parametrize(
    ("text", "warm"),
    [("我要人工服务", True), ("Нужен оператор!", True), ("What's the PRICE?", True), ("that is priceless", False)],
)
async def test_intent_words_match_whole_words_and_cjk_anywhere(app, db, text, warm):
    ws = await visitor(app, url="https://shop.example/")
    await say(app, ws, text)

    triggers = [handoff.trigger for handoff in await rows(db, Handoff)]
    assert triggers == ["intent"] if warm else "intent" not in triggers  # "priceless" is no intent word "price"


async def test_out_of_hours_the_visitor_is_told_when_to_expect_an_answer(app, db, clock):
    clock.advance(datetime(2026, 1, 10, 12, 0, tzinfo=UTC) - clock.now())  # Saturday
    ws = await visitor(app)
    await say(app, ws, "call me please")

    [text] = await bot_texts(ws, 1)
    assert text.endswith("when we're back: Monday at 04:00 (America/New_York).")  # 09:00 UTC, the lead's zone
    [handoff] = await rows(db, Handoff)
    assert handoff.sla_due_at == datetime(2026, 1, 12, 9, 5, tzinfo=UTC)


async def test_a_score_reaching_the_threshold_hands_off(make_client, settings, templates, db):
    policy = replace(settings.handoff, warm_score=30)
    app = await make_client(settings.with_(templates=templates, handoff=policy))
    ws = await visitor(app)  # pricing page: 10 points
    for _ in range(2):
        view = {"id": str(uuid.uuid4()), "url": "https://shop.example/pricing/teams"}
        await ws.send_json({"type": "page_view", "view": view})
    await say(app, ws, "ok")  # answered by nobody: the handoff opened on the third pricing page

    [handoff] = await rows(db, Handoff)
    assert (handoff.trigger, handoff.reason) == ("score", "score 30 reached 30")
    assert COMING in (await bot_texts(ws, 1))[0]


async def test_a_handoff_button_hands_off(app, db):
    ws = await visitor(app)
    await press(app, ws, "Talk to a human")

    [handoff] = await rows(db, Handoff)
    assert (handoff.trigger, handoff.reason) == ("button", 'pressed "Talk to a human"')


async def test_a_flow_step_with_action_handoff_opens_a_handoff_and_the_tick_announces_it(app, db, clock, templates):
    (templates / "flows" / "ask.j2").write_text(ASK)
    services = services_of(app)
    services.library.reload()
    ws = await visitor(app)
    clock.advance(timedelta(hours=1))
    await services.runner.run_due()

    [handoff] = await rows(db, Handoff)
    assert (handoff.trigger, handoff.reason, handoff.console_notified_at) == ("flow", "flow ask, step ask", None)
    enrollments = {e.flow_slug: e.status for e in await rows(db, Enrollment)}
    assert enrollments == {"drip": "paused", "ask": "exited"}
    assert await services.notifier.pending() == 1
    assert COMING in (await bot_texts(ws, 1))[0]
    [handoff] = await rows(db, Handoff)
    assert handoff.console_notified_at == clock.now()
    assert await services.notifier.pending() == 0


async def test_a_second_warm_signal_opens_no_second_handoff_and_the_bot_stays_silent(app, db):
    ws = await visitor(app)
    await say(app, ws, "call me")
    await say(app, ws, "what's the price? talk to a human!")
    await press(app, ws, "Talk to a human")
    await say(app, ws, "hello?")

    assert len(await rows(db, Handoff)) == 1
    assert [d.idempotency_key.split(":")[-1] for d in await rows(db, Delivery)] == ["coming"]


async def test_a_due_step_racing_the_handoff_is_not_sent_and_nothing_follows(app, db, clock):
    services = services_of(app)
    ws = await visitor(app)
    clock.advance(timedelta(minutes=10))
    await services.runner.run_due()  # step one is in the outbox...
    await say(app, ws, "call me")  # ...when the lead turns warm
    await services.dispatcher.dispatch_due()
    clock.advance(timedelta(hours=3))
    await services.runner.run_due()
    await services.dispatcher.dispatch_due()

    [nurture] = await rows(db, Delivery, Delivery.kind == "nurture")
    assert nurture.status == "skipped" and "human owns" in nurture.last_error
    [enrollment] = await rows(db, Enrollment)
    assert (enrollment.status, enrollment.step_index) == ("paused", 1)
    assert COMING in (await bot_texts(ws, 1))[0]


async def test_next_lead_is_the_most_urgent_then_the_highest_score(app, db, clock):
    services = services_of(app)
    ana, ben = await add_operator(db, "Ana"), await add_operator(db, "Ben")
    first = await visitor(app, url="https://shop.example/")
    await say(app, first, "call me")
    clock.advance(timedelta(minutes=1))
    low = await visitor(app, url="https://shop.example/")
    high = await visitor(app)  # the pricing page: a higher score
    await say(app, low, "call me")
    await say(app, high, "call me")
    handoffs = {h.lead_id: h.id for h in await rows(db, Handoff)}
    [first_lead, low_lead, high_lead] = sorted(handoffs)

    order = [await services.handoffs.next_for(op) for op in (ana, ben, ana)]
    assert [r.handoff_id for r in order] == [handoffs[first_lead], handoffs[high_lead], handoffs[low_lead]]
    assert [r.holder for r in order] == ["Ana", "Ben", "Ana"]
    assert await services.handoffs.next_for(ben) is None
    assert {c.owner for c in await rows(db, Conversation)} == {"human"}


async def test_two_operators_claiming_at_once_get_one_winner(app, db):
    services = services_of(app)
    ana, ben = await add_operator(db, "Ana"), await add_operator(db, "Ben")
    ws = await visitor(app)
    await say(app, ws, "call me")
    [handoff] = await rows(db, Handoff)

    results = await asyncio.gather(services.handoffs.claim(handoff.id, ana), services.handoffs.claim(handoff.id, ben))

    [winner] = [result for result in results if result.ok]
    [loser] = [result for result in results if not result.ok]
    assert loser.message == f"already taken by {winner.holder}" and loser.holder == winner.holder
    [handoff] = await rows(db, Handoff)
    holder = (await rows(db, Operator, Operator.name == winner.holder))[0]
    assert handoff.status == "claimed" and handoff.claimed_by_id == holder.id
    assert len(await rows(db, Event, Event.type == "handoff_claimed")) == 1


async def test_an_unclaimed_handoff_past_its_sla_is_escalated_and_the_visitor_told_once(app, db, clock):
    services = services_of(app)
    ws = await visitor(app)
    await say(app, ws, "call me")
    await services.hub.flush()  # the 'opened' change is out before we start listening
    async with services.hub.watch(QUEUE) as queue:
        clock.advance(timedelta(minutes=4))
        assert await services.notifier.sweep() == 0
        clock.advance(timedelta(minutes=2))
        assert await services.notifier.sweep() == 1
        assert await services.notifier.sweep() == 0
        clock.advance(timedelta(minutes=15))
        assert await services.notifier.sweep() == 1  # reminded again, the visitor is not
        [handoff] = await rows(db, Handoff)
        assert await published(services.hub, queue) == [("breached", handoff.id), ("breached", handoff.id)]

    assert handoff.breached_at == clock.now() - timedelta(minutes=15) and handoff.status == "waiting"
    texts = await bot_texts(ws, 2)
    assert texts[1].startswith("Sorry for the wait!")
    holding = await rows(db, Delivery, Delivery.idempotency_key == f"handoff:{handoff.id}:holding")
    assert len(holding) == 1 and holding[0].status == "sent"
    assert [e.type for e in await rows(db, Event) if e.type.startswith("handoff_")][-2:] == [
        "handoff_breached",
        "handoff_escalated",
    ]


async def test_the_operator_replies_and_the_visitor_sees_it_live(app, db, clock):
    services = services_of(app)
    ana, ben = await add_operator(db, "Ana"), await add_operator(db, "Ben")
    ws = await visitor(app)
    await say(app, ws, "call me")
    [handoff] = await rows(db, Handoff)
    with pytest.raises(NotHolder, match="take lead"):
        await services.handoffs.reply(handoff.id, ana, "too early")
    await services.handoffs.claim(handoff.id, ana)
    clock.advance(timedelta(seconds=40))
    await services.handoffs.reply(handoff.id, ana, "Hi, I'm Ana. How can I help?")
    with pytest.raises(NotHolder, match="held by Ana"):
        await services.handoffs.reply(handoff.id, ben, "me too")

    assert (await next_from(ws, "operator"))["text"] == "Hi, I'm Ana. How can I help?"
    [delivery] = await rows(db, Delivery, Delivery.kind == "operator")
    assert (delivery.priority, delivery.status, delivery.channel) == (0, "sent", "webchat")
    [handoff] = await rows(db, Handoff)
    assert handoff.first_reply_at == clock.now()
    assert len(await rows(db, Delivery)) == 2  # "a human is coming" and the operator's reply: the bot said nothing else


async def test_visitor_messages_reach_the_operator_live(app, db):
    services = services_of(app)
    ws = await visitor(app)
    await say(app, ws, "call me")
    [handoff] = await rows(db, Handoff)
    await services.hub.flush()  # what came before is out before we start listening
    async with services.hub.watch(handoff.conversation_id) as live:
        await say(app, ws, "my number is on the website")
        await services.hub.flush()
        message = live.get_nowait()
    assert (message["from"], message["text"]) == ("visitor", "my number is on the website")
    assert live.empty()


async def claimed(app, db, text="call me"):
    """A visitor whose handoff Ana holds; returns the socket, the handoff id and Ana's id."""
    ana = await add_operator(db, "Ana")
    ws = await visitor(app)
    await say(app, ws, text)
    assert COMING in (await bot_texts(ws, 1))[0]
    [handoff] = await rows(db, Handoff)
    await services_of(app).handoffs.claim(handoff.id, ana)
    return ws, handoff.id, ana


async def test_hand_back_won_makes_a_customer_and_ends_paused_flows(app, db):
    ws, handoff_id, ana = await claimed(app, db)
    await services_of(app).handoffs.reply(handoff_id, ana, "Deal!")
    await services_of(app).handoffs.hand_back(handoff_id, ana, "won")

    [lead] = await rows(db, Lead)
    assert lead.stage == "customer"
    [handoff] = await rows(db, Handoff)
    assert (handoff.status, handoff.outcome) == ("closed", "won")
    [enrollment] = await rows(db, Enrollment)
    assert (enrollment.status, enrollment.exit_reason) == ("exited", "handoff won")
    assert {c.owner for c in await rows(db, Conversation)} == {"bot"}
    types = [e.type for e in await rows(db, Event) if e.type.startswith("handoff")]
    assert types == ["handoff", "handoff_notified", "handoff_claimed", "handoff_replied", "handoff_closed"]


async def test_hand_back_to_nurture_resumes_paused_flows_no_earlier_than_now(app, db, clock):
    ws, handoff_id, ana = await claimed(app, db)
    clock.advance(timedelta(hours=2))  # step one fell due while the human had the lead
    services = services_of(app)
    await services.handoffs.hand_back(handoff_id, ana, "nurture")

    [enrollment] = await rows(db, Enrollment)
    assert enrollment.status == "active" and enrollment.due_at == clock.now()
    await services.runner.run_due()
    await services.dispatcher.dispatch_due()
    assert (await next_from(ws, "bot"))["text"] == "One."
    [closed] = await rows(db, Event, Event.type == "handoff_closed")
    assert closed.payload["outcome"] == "nurture" and closed.payload["resumed"] == 1
    await say(app, ws, "thanks")
    assert (await next_from(ws, "bot"))["text"].startswith("Got it")  # the bot answers again


async def test_hand_back_to_nurture_can_start_a_chosen_flow(app, db, clock, templates):
    (templates / "flows" / "ask.j2").write_text(ASK.replace('trigger = "page_view"', 'trigger = "custom:never"'))
    services_of(app).library.reload()
    ws, handoff_id, ana = await claimed(app, db)
    await services_of(app).handoffs.hand_back(handoff_id, ana, "nurture", flow="ask")

    flows = {(e.flow_slug, e.status) for e in await rows(db, Enrollment)}
    assert flows == {("drip", "active"), ("ask", "active")}


async def test_hand_back_lost_needs_a_reason_and_ends_paused_flows(app, db):
    ws, handoff_id, ana = await claimed(app, db)
    handoffs = services_of(app).handoffs
    with pytest.raises(HandoffError, match="reason"):
        await handoffs.hand_back(handoff_id, ana, "lost")
    await handoffs.hand_back(handoff_id, ana, "lost", reason="went with a competitor")

    [handoff] = await rows(db, Handoff)
    assert (handoff.outcome, handoff.outcome_reason) == ("lost", "went with a competitor")
    [enrollment] = await rows(db, Enrollment)
    assert (enrollment.status, enrollment.exit_reason) == ("exited", "handoff lost")
    assert {c.owner for c in await rows(db, Conversation)} == {"bot"}
    with pytest.raises(NotHolder, match="handed back"):
        await handoffs.reply(handoff_id, ana, "one more thing")


async def test_an_operator_picks_a_lead_up_directly(app, db):
    ana = await add_operator(db, "Ana")
    ws = await visitor(app)
    await say(app, ws, "just browsing")
    [lead] = await rows(db, Lead)

    result = await services_of(app).handoffs.open_for_lead(lead.id, ana)

    assert result.ok and result.holder == "Ana"
    [handoff] = await rows(db, Handoff)
    assert (handoff.trigger, handoff.status, handoff.reason) == ("operator", "claimed", "picked up by Ana")
    assert {c.owner for c in await rows(db, Conversation)} == {"human"}
    assert (await services_of(app).handoffs.open_for_lead(lead.id, ana)).message.startswith("you hold")


async def test_a_restart_keeps_the_queue_owners_and_sla(app, make_client, settings, templates, db, clock):
    (templates / "flows" / "ask.j2").write_text(ASK)
    services_of(app).library.reload()
    await visitor(app)
    clock.advance(timedelta(hours=1))
    await services_of(app).runner.run_due()  # the handoff is made, then the process dies before announcing it
    [before] = await rows(db, Handoff)

    again = services_of(await make_client(settings.with_(templates=templates)))
    [queued] = await again.handoffs.queue()
    assert (queued["id"], queued["status"]) == (before.id, "waiting")
    assert queued["sla_due_at"] == before.sla_due_at.isoformat()
    assert queued["sla_seconds_left"] == 300
    assert {c.owner for c in await rows(db, Conversation)} == {"queued"}
    assert await again.notifier.pending() == 1  # the new process announces what the old one did not
    [coming] = await rows(db, Delivery, Delivery.idempotency_key == f"handoff:{before.id}:coming")
    assert coming.status == "sent" and COMING in coming.text
    clock.advance(timedelta(minutes=6))
    assert await again.notifier.sweep() == 1
    [after] = await rows(db, Handoff)
    assert after.breached_at == clock.now() and after.console_notified_at is not None


async def test_a_flow_started_while_a_human_is_coming_waits_too(app, db):
    ws = await visitor(app, url="https://shop.example/")
    await say(app, ws, "call me")
    await ws.send_json({"type": "page_view", "view": {"id": str(uuid.uuid4()), "url": "https://shop.example/pricing"}})
    await say(app, ws, "still there?")

    [enrollment] = await rows(db, Enrollment)
    assert (enrollment.flow_slug, enrollment.status) == ("drip", "paused")


ASK_THEN_FOLLOW_UP = """+++
name = "Ask, then follow up"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
exit = ["opt_out"]
+++
{% step "ask", after="1h", action="handoff" %}{% endstep %}
{% step "follow-up", after="1d" %}How did the call go?{% endstep %}
"""


async def test_a_flow_handed_back_to_nurture_goes_on_after_its_handoff_step_not_into_it_again(
    app, db, clock, templates
):
    (templates / "flows" / "drip.j2").write_text(ASK_THEN_FOLLOW_UP)
    services = services_of(app)
    services.library.reload()
    ana = await add_operator(db, "Ana")
    await visitor(app)
    clock.advance(timedelta(hours=1))
    await services.runner.run_due()
    [handoff] = await rows(db, Handoff)
    await services.handoffs.claim(handoff.id, ana)
    await services.handoffs.hand_back(handoff.id, ana, "nurture")

    clock.advance(timedelta(days=1, hours=2))  # 10:00 in the visitor's New York: not quiet hours
    await services.runner.run_due()
    await services.dispatcher.dispatch_due()
    assert len(await rows(db, Handoff)) == 1  # the handoff step did not run a second time
    [follow_up] = await rows(db, Delivery, Delivery.kind == "nurture")
    assert (follow_up.step, follow_up.status, follow_up.text) == ("follow-up", "sent", "How did the call go?")
