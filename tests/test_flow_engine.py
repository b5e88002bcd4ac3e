"""The flow engine end to end: a visitor is enrolled, steps go out once and on time, and stop when they must."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from bot.delivery.channel import SendResult
from bot.delivery.dispatcher import Dispatcher
from bot.delivery.hub import Hub
from storage.models import Conversation, Delivery, Enrollment, Event, Lead, PointsEntry

from conftest import API_KEY, rows, services_of, templates_with
from test_webchat import hello, next_from, say

DRIP = """+++
name = "Test drip"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
exit = ["reply", "handoff", "opt_out", "stage >= sql"]
+++
{% step "one", after="10m" %}One for {{ lead.first_name or "you" }}.{% endstep %}
{% step "two", after="1h" %}Two.{% endstep %}
{% step "three", after="1h" %}Three.{% endstep %}
"""


@pytest.fixture
def templates(tmp_path):
    """The shipped system messages and partials, with only the test's own flows."""
    return templates_with(tmp_path / "templates", {"drip": DRIP})


@pytest.fixture
def clock(clock):
    clock.advance(datetime(2026, 1, 6, 15, 0, tzinfo=UTC) - clock.now())  # 10:00 in New York
    return clock


@pytest.fixture
async def app(make_client, settings, templates):
    return await make_client(settings.with_(templates=templates))


async def tick(client, clock, delta):
    """Let time pass, then run what the scheduler would run."""
    clock.advance(delta)
    services = services_of(client)
    await services.runner.run_due()
    await services.dispatcher.dispatch_due()


async def visitor_on_pricing(client):
    ws = await client.ws_connect("/chat/ws")
    await hello(ws)  # lands on /pricing?utm_source=google..., time zone America/New_York
    return ws


async def test_a_pricing_visitor_gets_each_step_once_and_on_time(app, clock, db):
    ws = await visitor_on_pricing(app)
    [enrollment] = await rows(db, Enrollment)
    assert enrollment.flow_slug == "drip" and enrollment.due_at == clock.now() + timedelta(minutes=10)

    await tick(app, clock, timedelta(minutes=9))
    assert await rows(db, Delivery) == []
    await tick(app, clock, timedelta(minutes=1))
    assert (await next_from(ws, "bot"))["text"] == "One for you."
    await tick(app, clock, timedelta(minutes=1))  # nothing new is due: nothing is sent twice
    await tick(app, clock, timedelta(hours=1))
    assert (await next_from(ws, "bot"))["text"] == "Two."
    await tick(app, clock, timedelta(hours=1))  # a third nurture message today would pass the daily cap of 2
    [held] = await rows(db, Delivery, Delivery.step == "three")
    assert held.status == "pending" and "daily cap" in held.last_error
    await tick(app, clock, held.not_before - clock.now())  # 09:00 tomorrow in New York
    assert (await next_from(ws, "bot"))["text"] == "Three."

    sent = await rows(db, Delivery, Delivery.kind == "nurture")
    assert [(d.step, d.status) for d in sent] == [("one", "sent"), ("two", "sent"), ("three", "sent")]
    [enrollment] = await rows(db, Enrollment)
    assert enrollment.status == "done"


async def test_a_reply_ends_the_flow(app, clock, db):
    ws = await visitor_on_pricing(app)
    await tick(app, clock, timedelta(minutes=10))
    await say(app, ws, "thanks, what about discounts?")
    await tick(app, clock, timedelta(days=1))
    assert [d.step for d in await rows(db, Delivery, Delivery.kind == "nurture")] == ["one"]
    [enrollment] = await rows(db, Enrollment)
    assert (enrollment.status, enrollment.exit_reason) == ("exited", "reply")


async def test_nothing_goes_out_once_a_human_owns_the_conversation_even_a_claimed_step(app, clock, db):
    await visitor_on_pricing(app)
    clock.advance(timedelta(minutes=10))
    await services_of(app).runner.run_due()  # step one is in the outbox...
    async with db() as session, session.begin():  # ...when an operator takes the conversation
        await session.exec(update(Conversation).values(owner="human"))
    await services_of(app).dispatcher.dispatch_due()
    [delivery] = await rows(db, Delivery, Delivery.kind == "nurture")
    assert delivery.status == "skipped" and "human" in delivery.last_error


async def test_quiet_hours_and_the_daily_cap_hold_steps_back_in_the_leads_time_zone(app, clock, db):
    clock.advance(timedelta(hours=10, minutes=55))  # 20:55 in New York
    await visitor_on_pricing(app)
    await tick(app, clock, timedelta(minutes=10))  # 21:05: quiet hours
    [held] = await rows(db, Delivery)
    assert held.status == "pending" and held.last_error == "quiet hours"
    assert held.not_before == datetime(2026, 1, 7, 14, 0, tzinfo=UTC)  # 09:00 New York
    shown = await (await app.get(f"/api/leads/{held.lead_id}", headers={"Authorization": f"Bearer {API_KEY}"})).json()
    assert [(d["flow"], d["step"], d["status"], d["error"]) for d in shown["deliveries"]] == [
        ("drip", "one", "pending", "quiet hours")
    ]
    assert [(e["flow"], e["status"], e["next_step"]) for e in shown["enrollments"]] == [("drip", "active", 1)]

    await tick(app, clock, held.not_before - clock.now())
    await tick(app, clock, timedelta(hours=1))
    await tick(app, clock, timedelta(hours=1))
    steps = {d.step: d for d in await rows(db, Delivery)}
    assert steps["one"].status == steps["two"].status == "sent"
    assert steps["three"].status == "pending" and "daily cap of 2" in steps["three"].last_error
    assert steps["three"].not_before == datetime(2026, 1, 8, 14, 0, tzinfo=UTC)  # next day, after quiet


async def test_quiet_hours_are_the_leads_own_even_when_it_is_daytime_in_utc(app, clock, db):
    clock.advance(timedelta(hours=21, minutes=50))  # 07:50 in New York, 12:50 UTC
    ws = await visitor_on_pricing(app)
    await tick(app, clock, timedelta(minutes=10))  # 08:00 in New York: still night there, 13:00 UTC is not
    [held] = await rows(db, Delivery)
    assert held.status == "pending" and held.last_error == "quiet hours"
    assert held.not_before == datetime(2026, 1, 7, 14, 0, tzinfo=UTC)  # 09:00 New York
    await tick(app, clock, timedelta(minutes=59))
    assert (await rows(db, Delivery))[0].status == "pending"
    await tick(app, clock, timedelta(minutes=1))
    assert (await next_from(ws, "bot"))["text"] == "One for you."


def pricing_flow(name: str, steps: str) -> str:
    """A flow that enrolls each visitor to /pricing, with the given steps."""
    return f'''+++
name = "{name}"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
+++
{steps}
'''


FIRST = pricing_flow(
    "First", '{% step "a1", after="10m" %}A1.{% endstep %}{% step "a2", after="110m" %}A2.{% endstep %}'
)
SECOND = pricing_flow(
    "Second", '{% step "b1", after="1h" %}B1.{% endstep %}{% step "b2", after="1h" %}B2.{% endstep %}'
)


async def test_the_daily_cap_counts_every_flows_sends_on_the_leads_local_day(
    make_client, settings, clock, db, tmp_path
):
    templates = templates_with(tmp_path / "two-flows", {"first": FIRST, "second": SECOND})
    app = await make_client(settings.with_(templates=templates))
    clock.advance(timedelta(hours=8))  # 18:00 in New York, 23:00 UTC: the UTC day ends before hers does
    ws = await visitor_on_pricing(app)
    assert {e.flow_slug for e in await rows(db, Enrollment)} == {"first", "second"}
    await tick(app, clock, timedelta(minutes=10))  # 18:10: first flow's a1
    await tick(app, clock, timedelta(minutes=50))  # 19:00 (00:00 UTC): second flow's b1
    await tick(app, clock, timedelta(hours=1))  # 20:00: a2 and b2 are due, and she has had two today
    assert [(await next_from(ws, "bot"))["text"] for _ in range(2)] == ["A1.", "B1."]
    deliveries = {d.step: d for d in await rows(db, Delivery, Delivery.kind == "nurture")}
    assert {step for step, d in deliveries.items() if d.status == "sent"} == {"a1", "b1"}
    held = deliveries["a2"]  # b2 waits behind it: a lead's messages go out in order
    assert held.status == deliveries["b2"].status == "pending" and "daily cap of 2" in held.last_error
    assert held.not_before == datetime(2026, 1, 7, 14, 0, tzinfo=UTC)  # 09:00 in New York
    await tick(app, clock, held.not_before - clock.now())
    await tick(app, clock, timedelta(minutes=1))
    assert sorted([(await next_from(ws, "bot"))["text"] for _ in range(2)]) == ["A2.", "B2."]


async def test_stop_opts_out_once_everywhere(app, clock, db):
    ws = await visitor_on_pricing(app)
    await say(app, ws, "hi")
    await say(app, ws, "STOP")
    confirmation = await next_from(ws, "bot")
    while "won't get any more" not in confirmation["text"]:
        confirmation = await next_from(ws, "bot")
    await say(app, ws, "stop")
    await tick(app, clock, timedelta(days=2))

    [lead] = await rows(db, Lead)
    assert lead.opted_out_at is not None
    texts = [d.text for d in await rows(db, Delivery)]
    assert sum("won't get any more" in text for text in texts) == 1
    assert await rows(db, Delivery, Delivery.kind == "nurture") == []
    [enrollment] = await rows(db, Enrollment)
    assert enrollment.status == "exited"


async def test_editing_a_flow_never_resends_a_step_already_sent(app, clock, db, templates):
    ws = await visitor_on_pricing(app)
    await tick(app, clock, timedelta(minutes=10))
    (templates / "flows" / "drip.j2").write_text(DRIP.replace("One for", "Edited one for").replace("Two.", "New two."))
    services_of(app).library.reload()
    await tick(app, clock, timedelta(hours=1))
    await tick(app, clock, timedelta(hours=1))
    steps = [(d.step, d.text) for d in await rows(db, Delivery, Delivery.kind == "nurture")]
    assert steps == [("one", "One for you."), ("two", "Two."), ("three", "Three.")]  # the pinned version
    assert (await next_from(ws, "bot"))["text"] == "One for you."


async def test_a_step_that_fails_to_render_is_skipped_and_recorded_never_sent_raw(app, clock, db, templates):
    broken = DRIP.replace("Two.", "Two: {{ 100 // (lead.score | int - 10) }}")
    (templates / "flows" / "drip.j2").write_text(broken)
    services_of(app).library.reload()
    await visitor_on_pricing(app)
    await tick(app, clock, timedelta(minutes=10))
    await tick(app, clock, timedelta(hours=1))
    await tick(app, clock, timedelta(hours=1))
    assert [d.step for d in await rows(db, Delivery, Delivery.kind == "nurture")] == ["one", "three"]
    [skipped] = await rows(db, Event, Event.type == "step_skipped")
    assert skipped.payload["step"] == "two" and "render error" in skipped.payload["reason"]


SLOW_FOR_ONE = DRIP.replace(
    "One for",
    '{% if "slow" in lead.tags %}'
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% endif %}One for",
)


async def test_a_step_over_the_render_budget_for_one_lead_is_skipped_and_everyone_else_is_served(
    app, clock, db, templates
):
    (templates / "flows" / "drip.j2").write_text(SLOW_FOR_ONE)  # lint passes: no sample lead has the tag
    assert services_of(app).library.reload() == []
    fast, slow = await visitor_on_pricing(app), await visitor_on_pricing(app)
    [fast_lead, slow_lead] = [lead.id for lead in await rows(db, Lead)]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    tagged = await app.patch(f"/api/leads/{slow_lead}", json={"add_tags": ["slow"]}, headers=auth)
    assert tagged.status == 200

    await tick(app, clock, timedelta(minutes=10))  # both leads' step one are due in the same tick

    assert (await next_from(fast, "bot"))["text"] == "One for you."
    assert [(d.lead_id, d.step) for d in await rows(db, Delivery, Delivery.kind == "nurture")] == [(fast_lead, "one")]
    report = await (await app.get(f"/api/leads/{slow_lead}", headers=auth)).json()
    [skipped] = [event["payload"] for event in report["events"] if event["type"] == "step_skipped"]
    assert skipped["step"] == "one" and "too much work: more than 100,000 loop turns" in skipped["reason"]
    assert "drip.j2:7:" in skipped["reason"]  # file:line of the loop
    assert (await app.get("/healthz")).status == 200
    await tick(app, clock, timedelta(hours=1))  # the slow lead's flow goes on with its next step
    assert (await next_from(slow, "bot"))["text"] == "Two."


# Lint renders the sample leads (scores 35 and 0) cleanly: only a lead at score 10 builds the name `__class__`.
SNEAKY = DRIP.replace("Two.", 'Two{% set k = "__cla" ~ "ss__" if lead.score | int == 10 else "year" %} {{ now[k] }}.')


async def test_an_attribute_name_built_at_send_time_is_refused_by_the_sandbox_and_nothing_leaks(
    app, clock, db, templates
):
    (templates / "flows" / "drip.j2").write_text(SNEAKY)
    assert services_of(app).library.reload() == []  # it passed lint
    ws = await visitor_on_pricing(app)  # the pricing page view scores her 10
    await tick(app, clock, timedelta(minutes=10))
    await tick(app, clock, timedelta(hours=1))
    await tick(app, clock, timedelta(hours=1))
    sent = await rows(db, Delivery, Delivery.kind == "nurture")
    assert [(d.step, d.text) for d in sent] == [("one", "One for you."), ("three", "Three.")]
    assert [(await next_from(ws, "bot"))["text"] for _ in sent] == ["One for you.", "Three."]
    [skipped] = await rows(db, Event, Event.type == "step_skipped")
    assert skipped.payload["step"] == "two" and "'__class__'" in skipped.payload["reason"]
    assert "unsafe" in skipped.payload["reason"]


STUCK = """+++
name = "Stuck in MQL"
trigger = "stuck:mql:7d"
exit = ["reply", "stage >= sql"]
reenter = "never"
+++
{% step "nudge", after="1m" %}Still thinking it over?{% endstep %}
{% step "later", after="83d" %}Checking in once more.{% endstep %}
"""

BROADCAST = """+++
name = "Monday news"
trigger = "schedule:0 10 * * mon"
audience = "lead.stage == 'mql'"
+++
{% step "news", after="1m" %}This week's news.{% endstep %}
"""


async def mql_lead(client, email):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for name in ("signup", "cart"):  # +20, +15: mql
        await client.post("/api/events", json={"type": name, "lead": {"email": email}}, headers=auth)


async def test_a_lead_stuck_in_a_stage_is_nudged_once_per_stay(app, clock, db, templates):
    (templates / "flows" / "stuck.j2").write_text(STUCK)
    services_of(app).library.reload()
    await mql_lead(app, "stuck@example.com")
    sweeps = services_of(app).sweeps
    clock.advance(timedelta(days=6, hours=23))
    assert await sweeps.run() == 0
    clock.advance(timedelta(hours=1))
    assert await sweeps.run() == 1
    assert await sweeps.run() == 0  # already nudged for this stay in mql
    [enrollment] = await rows(db, Enrollment)
    assert enrollment.flow_slug == "stuck" and enrollment.status == "active"


async def test_a_scheduled_flow_enrolls_its_audience_once_per_firing(app, clock, db, templates):
    (templates / "flows" / "news.j2").write_text(BROADCAST)
    services_of(app).library.reload()
    await mql_lead(app, "a@example.com")
    await mql_lead(app, "b@example.com")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    await app.post("/api/events", json={"type": "visit", "lead": {"email": "c@example.com"}}, headers=auth)
    sweeps = services_of(app).sweeps
    assert await sweeps.run() == 0  # first sight (Tuesday): waits for the next Monday 10:00
    clock.advance(timedelta(days=5, hours=19))  # Monday 10:00 UTC
    assert await sweeps.run() == 2  # the two MQLs, not the visitor
    assert await sweeps.run() == 0  # the same firing is not repeated
    enrollments = await rows(db, Enrollment)
    assert sorted(e.due_at - enrollments[0].due_at for e in enrollments) == [timedelta(0), timedelta(milliseconds=100)]


class HangingChannel:
    """A channel whose network never answers: the sender is stuck, like a process about to be killed."""

    name = "webchat"

    def __init__(self) -> None:
        self.sending = asyncio.Event()  # set once the sender is stuck in the send

    async def send(self, delivery):  # type: ignore[no-untyped-def]
        self.sending.set()
        await asyncio.Event().wait()


async def test_a_sender_dying_between_claim_and_send_is_taken_over_after_its_lease(app, clock, db):
    ws = await visitor_on_pricing(app)
    clock.advance(timedelta(minutes=10))
    services = services_of(app)
    await services.runner.run_due()
    hanging = HangingChannel()
    doomed = Dispatcher(services.sessions, {"webchat": hanging}, Hub(), clock, services.settings.policy)
    dying = asyncio.create_task(doomed.dispatch_due())
    # It dies in the send: its claim and its last check before the send are written (no time passes for the
    # app meanwhile). Cancelled any earlier, its check could still be writing when the others look.
    await asyncio.wait_for(hanging.sending.wait(), timeout=30)
    dying.cancel()

    await services.dispatcher.dispatch_due()  # still leased: nobody else sends it
    assert (await rows(db, Delivery))[0].status == "sending"
    clock.advance(timedelta(seconds=61))
    await services.dispatcher.dispatch_due()
    [delivery] = await rows(db, Delivery)
    assert delivery.status == "sent" and delivery.attempts == 2
    assert (await next_from(ws, "bot"))["text"] == "One for you."


class SlowChannel(HangingChannel):
    """A channel whose receiver answers only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()

    async def send(self, delivery):  # type: ignore[no-untyped-def]
        self.sending.set()
        await self.answer.wait()
        return SendResult.sent()


async def test_a_send_outlasting_its_lease_stays_its_senders_and_goes_once(app, clock, db):
    await visitor_on_pricing(app)
    clock.advance(timedelta(minutes=10))
    services = services_of(app)
    await services.runner.run_due()
    slow = SlowChannel()
    sender = Dispatcher(services.sessions, {"webchat": slow}, Hub(), clock, services.settings.policy)
    sending = asyncio.create_task(sender.dispatch_due())
    await asyncio.wait_for(slow.sending.wait(), timeout=30)

    for _ in range(4):  # 160 s in all, the lease is 60 s: renewed every 40 s, as the app's tick does
        clock.advance(timedelta(seconds=40))
        assert await sender.renew_leases() == 1
        assert await services.dispatcher.dispatch_due() == 0  # another sender finds it still held
    slow.answer.set()
    assert await sending == 1
    [delivery] = await rows(db, Delivery)
    assert (delivery.status, delivery.attempts) == ("sent", 1)
    assert await sender.renew_leases() == 0  # nothing in flight any more


async def test_one_broken_enrollment_never_holds_up_the_others(app, clock, db):
    await visitor_on_pricing(app)
    await visitor_on_pricing(app)
    broken, healthy = await rows(db, Enrollment)
    async with db() as session, session.begin():  # a bad manual edit: a step the flow does not have
        await session.exec(update(Enrollment).where(Enrollment.id == broken.id).values(step_index=99))

    await tick(app, clock, timedelta(minutes=10))
    [sent] = await rows(db, Delivery, Delivery.kind == "nurture")
    assert (sent.lead_id, sent.step, sent.status) == (healthy.lead_id, "one", "sent")
    [failed] = await rows(db, Event, Event.type == "step_failed")
    assert failed.lead_id == broken.lead_id and "IndexError" in failed.payload["error"]
    [broken] = await rows(db, Enrollment, Enrollment.id == broken.id)
    assert broken.status == "active" and broken.due_at == clock.now() + timedelta(minutes=10)  # tried again later


async def test_a_step_already_in_the_outbox_is_never_recorded_twice(app, clock, db):
    ws = await visitor_on_pricing(app)
    await tick(app, clock, timedelta(minutes=10))
    assert (await next_from(ws, "bot"))["text"] == "One for you."
    async with db() as session, session.begin():  # e.g. an old backup put the enrollment back a step
        await session.exec(update(Enrollment).values(step_index=0, due_at=clock.now()))

    await tick(app, clock, timedelta(minutes=1))
    assert [(d.step, d.status) for d in await rows(db, Delivery, Delivery.kind == "nurture")] == [("one", "sent")]
    [enrollment] = await rows(db, Enrollment)
    assert enrollment.step_index == 1 and enrollment.status == "active"  # moved on to step two


ACTS = """+++
name = "Acts on the lead"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
exit = ["opt_out"]
+++
{% step "tag", after="10m", action="tag:priced" %}{% endstep %}
{% step "points", after="1h", action="score:+15" %}{% endstep %}
{% step "promote", after="1h", action="stage:sql" %}Welcome aboard, {{ lead.first_name or "friend" }}.{% endstep %}
{% step "stop", after="1h", action="exit" %}{% endstep %}
{% step "never", after="1h" %}Never sent.{% endstep %}
"""

LATER = """+++
name = "Later, unless sales-ready"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
exit = ["opt_out", "stage >= sql"]
+++
{% step "one", after="131m" %}Later.{% endstep %}
"""


async def test_steps_act_on_the_lead_and_a_later_step_in_the_same_batch_sees_it(app, clock, db, templates):
    (templates / "flows" / "drip.j2").unlink()
    (templates / "flows" / "acts.j2").write_text(ACTS)
    (templates / "flows" / "later.j2").write_text(LATER)
    services_of(app).library.reload()
    runner = services_of(app).runner
    await visitor_on_pricing(app)

    clock.advance(timedelta(minutes=10))
    await runner.run_due()
    [lead] = await rows(db, Lead)
    assert "priced" in lead.tags
    clock.advance(timedelta(hours=1))
    await runner.run_due()
    [points] = await rows(db, PointsEntry, PointsEntry.rule == "flow acts, step points")
    [lead] = await rows(db, Lead)
    assert points.points == 15 and lead.score >= 15
    clock.advance(timedelta(hours=1, minutes=5))  # "promote" (2h10m) and "later" (2h11m) are due in one batch
    assert await runner.run_due() == 2
    [lead] = await rows(db, Lead)
    assert lead.stage == "sql"
    [later] = await rows(db, Enrollment, Enrollment.flow_slug == "later")
    assert (later.status, later.exit_reason) == ("exited", "stage >= sql")  # promoted just before: not sent
    clock.advance(timedelta(hours=1))
    await runner.run_due()
    clock.advance(timedelta(days=1))
    await runner.run_due()

    assert [(d.step, d.text) for d in await rows(db, Delivery, Delivery.kind == "nurture")] == [
        ("promote", "Welcome aboard, friend.")
    ]
    [acts] = await rows(db, Enrollment, Enrollment.flow_slug == "acts")
    assert (acts.status, acts.exit_reason, acts.step_index) == ("exited", "step stop ends the flow", 3)


UNTIL_PURCHASE = """+++
name = "Until they buy"
trigger = "custom:signup"
exit = ["custom:purchase"]
+++
{% step "nudge", after="1d" %}Ready to buy?{% endstep %}
"""


async def test_a_custom_event_named_as_an_exit_ends_the_flow(app, clock, db, templates):
    (templates / "flows" / "until.j2").write_text(UNTIL_PURCHASE)
    services_of(app).library.reload()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for name in ("signup", "cart"):
        body = {"type": name, "lead": {"email": "buyer@example.com"}}
        response = await app.post("/api/events", json=body, headers=auth)
        assert response.status < 300, await response.text()
    [enrollment] = await rows(db, Enrollment, Enrollment.flow_slug == "until")
    assert enrollment.status == "active"  # a cart is not a purchase
    body = {"type": "purchase", "lead": {"email": "buyer@example.com"}, "properties": {"amount": 49}}
    assert (await app.post("/api/events", json=body, headers=auth)).status < 300
    await tick(app, clock, timedelta(days=2))
    [enrollment] = await rows(db, Enrollment, Enrollment.flow_slug == "until")
    assert (enrollment.status, enrollment.exit_reason) == ("exited", "custom:purchase")
    assert await rows(db, Event, Event.type == "step_skipped") == []  # the nudge was never due


async def test_a_leads_messages_go_out_one_at_a_time_in_order_whichever_sender_claims_them(app, clock, db):
    ws = await visitor_on_pricing(app)
    [conversation] = await rows(db, Conversation)
    async with db() as session:  # three notices due at once for this lead, oldest first
        session.add_all(
            Delivery(
                lead_id=conversation.lead_id,
                conversation_id=conversation.id,
                channel="webchat",
                address=conversation.external_id,
                kind="system",
                text=f"Notice {n}",
                idempotency_key=f"notice:{n}",
                not_before=clock.now(),
                created_at=clock.now(),
            )
            for n in (1, 2, 3)
        )
        await session.commit()
    services = services_of(app)
    hanging = HangingChannel()
    stuck = Dispatcher(services.sessions, {"webchat": hanging}, Hub(), clock, services.settings.policy)
    dying = asyncio.create_task(stuck.dispatch_due())  # another instance claims the first, then hangs
    await asyncio.wait_for(hanging.sending.wait(), timeout=30)

    assert await services.dispatcher.dispatch_due() == 0  # not the second while the first is in flight
    assert [d.status for d in await rows(db, Delivery)] == ["sending", "pending", "pending"]
    dying.cancel()
    clock.advance(timedelta(seconds=61))  # the other instance died: its lease runs out
    assert [await services.dispatcher.dispatch_due() for _ in range(4)] == [1, 1, 1, 0]
    assert [(await next_from(ws, "bot"))["text"] for _ in range(3)] == ["Notice 1", "Notice 2", "Notice 3"]
