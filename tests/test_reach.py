"""Honest delivery states: a drip stored for an absent web visitor is "sent, not seen" until their widget shows it.

The widget reports `received` (it has the message: delivered) and `seen` (shown on screen) with message ids,
on whichever instance its socket is open; the flow report and `kindling lead show` say how far each got.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storage.models import Delivery, Message

from conftest import API_KEY, rows, services_of, templates_with
from test_webchat import hello, next_from

FOLLOW_UP = """+++
name = "Follow up"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
exit = ["opt_out"]
+++
{% step "nudge", after="10m" %}Still comparing plans?{% endstep %}
"""
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PRICING = "https://shop.example/pricing?utm_source=google"


@pytest.fixture
def clock(clock):
    clock.advance(datetime(2026, 1, 6, 15, 0, tzinfo=UTC) - clock.now())  # Tuesday, 10:00 in New York
    return clock


@pytest.fixture
def reach_settings(settings, tmp_path):
    return settings.with_(templates=templates_with(tmp_path / "templates", {"follow-up": FOLLOW_UP}))


@pytest.fixture
async def app(make_client, reach_settings):
    return await make_client(reach_settings)


async def drip_while_away(app, clock) -> dict:
    """A visitor looks at pricing and closes the tab; ten minutes later the drip is sent. Returns their welcome."""
    ws = await app.ws_connect("/chat/ws")
    welcome = await hello(ws, url=PRICING)
    await ws.close()
    clock.advance(timedelta(minutes=10))
    services = services_of(app)
    await services.runner.run_due()
    await services.dispatcher.dispatch_due()
    return welcome


async def come_back(app, welcome: dict):  # type: ignore[no-untyped-def]
    """The visitor opens a page again: the widget says hello with its id and gets what it missed."""
    ws = await app.ws_connect("/chat/ws")
    await hello(ws, visitor=welcome["visitor"], token=welcome["token"], url="https://shop.example/")
    return ws


async def report_receipt(ws, kind: str, ids: list) -> None:
    """Send a receipt, then a frame the server refuses: its answer means the receipt before it was handled."""
    await ws.send_json({"type": kind, "ids": ids})
    await ws.send_json({"type": "nonsense"})
    answer = await ws.receive_json(timeout=5)
    assert answer["type"] == "error" and "unknown frame" in answer["error"]


async def drip(db) -> Delivery:
    [delivery] = await rows(db, Delivery, Delivery.kind == "nurture")
    return delivery


async def test_a_drip_for_an_absent_visitor_is_sent_not_seen_until_their_widget_shows_it(
    make_client, reach_settings, db, clock, run_kindling
):
    sender = await make_client(reach_settings)
    welcome = await drip_while_away(sender, clock)
    sent_at = clock.now()
    delivery = await drip(db)
    assert (delivery.status, delivery.delivered_at, delivery.seen_at) == ("sent", None, None)
    status, out, _ = await run_kindling("lead", "show", str(welcome["lead"]))
    assert status == 0 and "webchat nurture follow-up/nudge sent, not seen: 'Still comparing plans?'" in out

    # They come back an hour later, through another instance than the one that sent it.
    clock.advance(timedelta(hours=1))
    other = await make_client(reach_settings)
    ws = await come_back(other, welcome)
    frame = await next_from(ws, "bot")
    assert frame["text"] == "Still comparing plans?"
    assert (await drip(db)).delivered_at is None  # replayed is not received: the widget says when it has it

    await report_receipt(ws, "received", [frame["id"]])
    delivery = await drip(db)
    assert (delivery.delivered_at, delivery.seen_at) == (clock.now(), None)
    status, out, _ = await run_kindling("lead", "show", str(welcome["lead"]))
    assert "follow-up/nudge delivered, not seen" in out

    clock.advance(timedelta(minutes=2))  # the visitor opens the chat
    await report_receipt(ws, "seen", [frame["id"]])
    await report_receipt(ws, "received", [frame["id"]])  # a second tab's late receipt changes nothing
    delivery = await drip(db)
    assert delivery.sent_at == sent_at
    assert (delivery.delivered_at, delivery.seen_at) == (clock.now() - timedelta(minutes=2), clock.now())
    status, out, _ = await run_kindling("lead", "show", str(welcome["lead"]))
    assert "follow-up/nudge seen: 'Still comparing plans?'" in out


async def test_a_visitor_cannot_mark_another_visitors_message_delivered_or_seen(app, db, clock):
    await drip_while_away(app, clock)
    [theirs] = await rows(db, Message, Message.author == "bot")

    intruder = await app.ws_connect("/chat/ws")
    await hello(intruder, url="https://shop.example/")
    await report_receipt(intruder, "received", [theirs.id])
    await report_receipt(intruder, "seen", [theirs.id, theirs.id + 1])
    delivery = await drip(db)
    assert (delivery.delivered_at, delivery.seen_at) == (None, None)


@pytest.mark.parametrize(
    "ids", [None, [], "1", [0], [-3], [True], [1.5], ["1"], [2**31], list(range(1, 202))], ids=repr
)
async def test_a_malformed_receipt_is_refused_with_a_clear_error(app, ids):
    ws = await app.ws_connect("/chat/ws")
    await hello(ws, url="https://shop.example/")
    await ws.send_json({"type": "seen", **({} if ids is None else {"ids": ids})})
    answer = await ws.receive_json(timeout=5)
    assert answer == {"type": "error", "error": "seen needs ids: 1 to 200 message ids"}


async def test_the_flow_report_shows_sent_reached_and_seen_per_step(app, db, clock, run_kindling):
    reader = await drip_while_away(app, clock)  # comes back and reads it
    glancer = await drip_while_away(app, clock)  # comes back: the widget has it, the chat stays closed
    await drip_while_away(app, clock)  # never comes back
    for welcome, receipts in ((reader, ("received", "seen")), (glancer, ("received",))):
        ws = await come_back(app, welcome)
        frame = await next_from(ws, "bot")
        for kind in receipts:
            await report_receipt(ws, kind, [frame["id"]])

    answer = await app.get("/api/reports/flows?since=2026-01-06&until=2026-01-06", headers=AUTH)
    [flow] = (await answer.json())["flows"]
    [step] = flow["steps"]
    assert (step["step"], step["sent"], step["reached"], step["seen"]) == ("nudge", 3, 2, 1)
    status, out, _ = await run_kindling("report", "flows", "--since", "2026-01-06", "--until", "2026-01-06")
    table = out.splitlines()
    at = next(i for i, line in enumerate(table) if line.split()[:5] == ["step", "variant", "sent", "reached", "seen"])
    assert status == 0 and table[at + 1].split()[:4] == ["nudge", "3", "2", "1"]
