"""Business hours in the business's time zone; an operator online in the console is never "out"."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient

from flows.hours import BusinessHours
from storage.models import Handoff

from conftest import rows
from test_console_auth import log_in
from test_handoff import COMING, bot_texts, visitor
from test_webchat import say

# Monday 12 January 2026, 17:30 UTC: 18:30 in Berlin, so the Berlin team has gone home (UTC hours would be open).
BERLIN_EVENING = datetime(2026, 1, 12, 17, 30, tzinfo=UTC)
OUT = "when we're back: Tuesday at 03:00 (America/New_York)."  # 09:00 Berlin, in the visitor's zone


@pytest.fixture
def berlin(settings):
    """Mon-Fri 09:00-18:00 in Europe/Berlin."""
    hours = BusinessHours.parse("Mon-Fri 09:00-18:00", "Europe/Berlin")
    return settings.with_(handoff=replace(settings.handoff, hours=hours))


@pytest.fixture
async def app(make_client, berlin):
    return await make_client(berlin)


async def asks_for_a_person(app) -> str:
    ws = await visitor(app)
    await say(app, ws, "call me please")
    [text] = await bot_texts(ws, 1)
    await ws.close()
    return text


async def test_hours_are_in_the_business_time_zone(app, db, clock):
    clock.advance(BERLIN_EVENING - timedelta(hours=1) - clock.now())  # 17:30 in Berlin: open
    assert COMING in await asks_for_a_person(app)

    clock.advance(timedelta(hours=1))  # 18:30 in Berlin, nobody at the console
    assert (await asks_for_a_person(app)).endswith(OUT)
    last = (await rows(db, Handoff))[-1]
    assert last.sla_due_at == datetime(2026, 1, 13, 8, 5, tzinfo=UTC)  # Tuesday 09:05 Berlin


async def test_an_operator_with_the_console_open_is_never_out(make_client, berlin, app, db, add_operator, clock):
    clock.advance(BERLIN_EVENING - timedelta(minutes=10) - clock.now())
    await add_operator("ann", "operator")
    other = await make_client(berlin)  # another instance on the same database: the operator's console is there
    assert (await log_in(other, "ann")).status == 303
    clock.advance(timedelta(minutes=10))  # logged in, but away from the console since
    assert (await asks_for_a_person(app)).endswith(OUT)

    page = await other.ws_connect("/console/ws?queue=1")
    await page.receive_json(timeout=5)  # the queue: the console is open (its socket checks in every 30 s)
    assert COMING in await asks_for_a_person(app)  # the visitor writes on this instance
    assert (await rows(db, Handoff))[-1].sla_due_at == clock.now() + timedelta(minutes=5)  # the SLA runs now

    await page.close()
    clock.advance(timedelta(minutes=3))  # the operator left a while ago
    assert (await asks_for_a_person(app)).endswith(OUT)


async def test_a_marketer_at_the_console_does_not_count_as_online(app, add_operator, clock):
    clock.advance(BERLIN_EVENING - clock.now())
    await add_operator("mo", "marketer")
    second = TestClient(app.server)
    try:
        assert (await log_in(second, "mo")).status == 303
        assert (await second.get("/console/leads")).status == 200
        assert (await asks_for_a_person(app)).endswith(OUT)
    finally:
        await second.session.close()
