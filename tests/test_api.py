"""The events API and lead API: the site's backend reports signups, carts and purchases."""

from __future__ import annotations

from datetime import timedelta

import pytest

from storage.models import Event, Lead, StageEntry

from conftest import API_KEY, rows

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def event(client, body, headers=AUTH):
    return await client.post("/api/events", json=body, headers=headers)


async def test_a_purchase_makes_the_lead_a_customer_with_the_reason_recorded(client, db):
    response = await event(
        client, {"type": "purchase", "lead": {"email": "bo@example.com"}, "properties": {"total": 99}}
    )
    assert response.status == 201
    [lead] = await rows(db, Lead)
    assert lead.stage == "customer" and lead.email == "bo@example.com"
    [change] = await rows(db, Event, Event.type == "stage_changed")
    assert change.payload["from"] == "visitor" and change.payload["to"] == "customer"
    assert "purchase" in change.payload["reason"]
    [purchase] = await rows(db, Event, Event.type == "custom")
    assert purchase.name == "purchase" and purchase.payload["properties"] == {"total": 99}


async def test_a_backfilled_purchase_moves_the_stage_as_of_its_own_time(client, db, clock):
    """A CRM backfilling last quarter's purchases: stage_since and the stage history said today."""
    last_quarter = clock.now() - timedelta(days=90)
    body = {"type": "purchase", "lead": {"email": "fa@example.com"}, "at": last_quarter.isoformat()}
    lead_id = (await (await event(client, body)).json())["lead_id"]

    lead = await (await client.get(f"/api/leads/{lead_id}", headers=AUTH)).json()
    assert lead["stage"] == "customer" and lead["stage_since"] == last_quarter.isoformat()
    assert [(stage["to"], stage["at"]) for stage in lead["stages"]] == [("customer", last_quarter.isoformat())]
    funnel = {entry.stage: entry.entered_at for entry in await rows(db, StageEntry)}
    assert funnel["customer"] == funnel["sql"] == last_quarter  # the funnel counts it last quarter too


async def test_a_backfilled_event_scores_as_of_its_own_time(client, clock):
    """Points fade from when the event happened: last month's signup counts half today (half-life 30 days)."""
    last_month = clock.now() - timedelta(days=30)
    body = {"type": "signup", "lead": {"email": "ha@example.com"}, "at": last_month.isoformat()}
    lead_id = (await (await event(client, body)).json())["lead_id"]

    lead = await (await client.get(f"/api/leads/{lead_id}", headers=AUTH)).json()
    assert lead["score"] == 10  # 20 points a month ago, not 20 today


async def test_a_late_event_never_dates_a_stage_before_the_lead_last_moved(client, clock):
    now = clock.now()
    lead_id = (await (await event(client, {"type": "signup", "lead": {"email": "gu@example.com"}})).json())["lead_id"]
    # three days late: its points have faded a little (a cart 90 days old would no longer make an mql)
    late = {"type": "cart", "lead": {"id": lead_id}, "at": (now - timedelta(days=3)).isoformat()}
    assert (await event(client, late)).status == 201  # signup and cart: the lead is an mql now
    ahead = {"type": "purchase", "lead": {"id": lead_id}, "at": (now + timedelta(days=1)).isoformat()}
    assert (await event(client, ahead)).status == 201

    lead = await (await client.get(f"/api/leads/{lead_id}", headers=AUTH)).json()
    assert [(stage["to"], stage["at"]) for stage in lead["stages"]] == [
        ("lead", now.isoformat()), ("mql", now.isoformat()), ("customer", now.isoformat())
    ]  # fmt: skip
    assert lead["stage"] == "customer" and lead["stage_since"] == now.isoformat()


async def test_an_event_sent_twice_with_the_same_id_counts_once(client, db):
    body = {"id": "order-1001", "type": "signup", "lead": {"email": "cy@example.com"}}
    first, again = await event(client, body), await event(client, body)
    assert (first.status, again.status) == (201, 200)
    assert (await again.json())["duplicate"] is True
    assert len(await rows(db, Event, Event.type == "custom")) == 1
    [lead] = await rows(db, Lead)
    assert lead.score == 20


async def test_the_lead_api_explains_the_score_and_decays_it(client, clock):
    await event(client, {"type": "signup", "lead": {"email": "di@example.com"}})
    created = await event(client, {"type": "cart", "lead": {"email": "di@example.com"}})
    lead_id = (await created.json())["lead_id"]

    lead = await (await client.get(f"/api/leads/{lead_id}", headers=AUTH)).json()
    assert lead["score"] == 35 and lead["stage"] == "mql"
    assert lead["score_explained"] == "35 = signup (+20), cart (+15)"
    assert [s["to"] for s in lead["stages"]] == ["lead", "mql"]

    clock.advance(timedelta(days=30))  # one half-life
    lead = await (await client.get(f"/api/leads/{lead_id}", headers=AUTH)).json()
    assert lead["score"] == 17.5


async def test_events_for_a_lead_by_id_and_an_unknown_lead(client):
    created = await event(client, {"type": "signup", "lead": {"phone": "+1 415 555 2671"}})
    lead_id = (await created.json())["lead_id"]
    again = await event(client, {"type": "cart", "lead": {"id": lead_id}})
    assert (await again.json())["lead_id"] == lead_id
    assert (await event(client, {"type": "cart", "lead": {"id": 999999}})).status == 404
    assert (await client.get("/api/leads/999999", headers=AUTH)).status == 404
    assert (await client.get("/api/leads/abc", headers=AUTH)).status == 400
    lead = await (await client.get(f"/api/leads/{lead_id}", headers=AUTH)).json()
    assert lead["phone"] == "+14155552671"


@pytest.mark.parametrize(
    "body, complaint",
    [
        ([1, 2], "JSON object"),
        ({"lead": {"email": "a@example.com"}}, "'type'"),
        ({"type": "Bad Name!", "lead": {"email": "a@example.com"}}, "'type'"),
        ({"type": "signup"}, "'lead'"),
        ({"type": "signup", "lead": {}}, "at least one"),
        ({"type": "signup", "lead": {"email": "not-an-email"}}, "email"),
        ({"type": "signup", "lead": {"phone": "12"}}, "phone"),
        ({"type": "signup", "lead": {"email": "a@example.com"}, "at": "yesterday"}, "'at'"),
        (
            {"type": "signup", "lead": {"email": "a@example.com"}, "at": "0001-01-01T00:00:00+14:00"},
            "'at' must be between",
        ),
        (
            {"type": "signup", "lead": {"email": "a@example.com"}, "at": "9999-12-31T23:59:59-12:00"},
            "'at' must be between",
        ),
        ({"type": "signup", "lead": {"email": "a@example.com"}, "at": "0001-01-01T00:00:00Z"}, "'at' must be between"),
        ({"type": "signup", "lead": {"email": "a@example.com"}, "properties": [1]}, "properties"),
        ({"type": "signup", "lead": {"email": "a@example.com", "first_name": "A\x00"}}, "NUL"),
    ],
)
async def test_bad_event_bodies_are_refused_with_a_reason(client, db, body, complaint):
    response = await event(client, body)
    assert response.status == 422
    assert complaint in (await response.json())["error"]
    assert await rows(db, Lead) == []


async def test_keys_and_malformed_json(client, make_client, settings):
    assert (await event(client, {"type": "signup", "lead": {"email": "a@example.com"}}, headers={})).status == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await event(client, {"type": "signup", "lead": {"email": "a@example.com"}}, headers=wrong)).status == 401
    malformed = await client.post("/api/events", data=b"{oops", headers=AUTH)
    assert malformed.status == 400 and "JSON" in (await malformed.json())["error"]
    too_big = await client.post("/api/events", data=b"x" * (settings.max_body_bytes + 1), headers=AUTH)
    assert too_big.status == 413

    keyless = await make_client(settings.with_(api_key=None))
    response = await keyless.post("/api/events", json={}, headers=AUTH)
    assert response.status == 401 and "KINDLING_API_KEY" in (await response.json())["error"]
