"""The read API as a CRM sync would use it: leads filtered and paged, stage and tag changes,
conversations, messages, events, flows and handoffs."""

from __future__ import annotations

import base64

import pytest

from storage.models import Enrollment, Event

from conftest import API_KEY, SHIPPED_FLOWS, rows, services_of, templates_with
from test_handoff import add_operator
from test_webchat import hello, say

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def backend_event(client, kind: str, **lead) -> int:  # type: ignore[no-untyped-def]
    answer = await client.post("/api/events", json={"type": kind, "lead": lead}, headers=AUTH)
    assert answer.status in (200, 201), await answer.text()
    return (await answer.json())["lead_id"]


async def get(client, path: str, **query) -> dict:  # type: ignore[no-untyped-def]
    answer = await client.get(path, params=query, headers=AUTH)
    assert answer.status == 200, await answer.text()
    return await answer.json()


async def ids(client, path: str, **query) -> list[int]:  # type: ignore[no-untyped-def]
    return [item["id"] for item in (await get(client, path, **query))["items"]]


async def every_page(client, path: str, limit: int, between=None, **query) -> list[int]:  # type: ignore[no-untyped-def]
    """Follow next_cursor to the end; `between` runs after each page (to insert rows while paging)."""
    seen, cursor = [], None
    while True:
        params = {**query, "limit": limit, **({"cursor": cursor} if cursor else {})}
        body = await get(client, path, **params)
        seen += [item["id"] for item in body["items"]]
        if between is not None:
            await between()
        cursor = body["next_cursor"]
        if cursor is None:
            return seen


async def test_leads_are_filtered_by_stage_score_tag_and_source(client):
    signed_up = await backend_event(client, "signup", email="a@example.com")  # +20, stage lead
    carted = await backend_event(client, "signup", email="b@example.com")
    await backend_event(client, "cart", email="b@example.com")  # 35, stage mql
    ws = await client.ws_connect("/chat/ws")
    visitor = (await hello(ws, url="https://shop.example/?utm_source=newsletter"))["lead"]  # no score rule: 0
    await ws.close()
    tagged = await client.patch(f"/api/leads/{carted}", json={"add_tags": ["vip", "eu"]}, headers=AUTH)
    assert tagged.status == 200

    assert await ids(client, "/api/leads") == [visitor, carted, signed_up]  # newest first
    assert await ids(client, "/api/leads", stage="mql") == [carted]
    assert await ids(client, "/api/leads", min_score=20) == [carted, signed_up]
    assert await ids(client, "/api/leads", min_score=20, max_score=30) == [signed_up]
    assert await ids(client, "/api/leads", tag="vip") == [carted]
    assert await ids(client, "/api/leads", tag="vi") == []
    assert await ids(client, "/api/leads", source="newsletter") == [visitor]
    lead = (await get(client, "/api/leads", tag="eu"))["items"][0]
    assert lead["email"] == "b@example.com" and lead["tags"] == ["eu", "vip"] and lead["score"] == 35


async def test_a_merged_away_lead_is_not_listed(client):
    web = await backend_event(client, "signup", visitor_id="v-1")
    crm = await backend_event(client, "cart", email="m@example.com")
    merged = await backend_event(client, "purchase", email="m@example.com", visitor_id="v-1")  # one person
    assert merged in (web, crm)
    assert await ids(client, "/api/leads") == [merged]


async def test_page_only_visitors_are_left_out_when_asked(client):
    buyer = await backend_event(client, "signup", email="b@example.com")
    looker = await client.ws_connect("/chat/ws")
    await hello(looker)  # a page view, nothing else
    everyone = await ids(client, "/api/leads")
    assert len(everyone) == 2 and everyone[-1] == buyer
    assert await ids(client, "/api/leads", page_only="false") == [buyer]
    assert (await client.get("/api/leads", params={"page_only": "no"}, headers=AUTH)).status == 400


async def test_paging_is_stable_while_leads_arrive(client):
    made = [await backend_event(client, "signup", email=f"p{n}@example.com") for n in range(7)]
    arrivals = iter(range(100))

    async def someone_new() -> None:
        await backend_event(client, "signup", email=f"new{next(arrivals)}@example.com")

    paged = await every_page(client, "/api/leads", limit=3, between=someone_new)
    assert paged == list(reversed(made))  # no shifts, no repeats, no newcomers in the middle
    assert len(await ids(client, "/api/leads", limit=200)) == 7 + 3  # a fresh first page shows them


@pytest.mark.parametrize(
    "query, complaint",
    [
        ({"limit": "0"}, "'limit'"),
        ({"limit": "201"}, "'limit'"),
        ({"limit": "ten"}, "'limit'"),
        ({"cursor": "not a cursor!"}, "'cursor'"),
        ({"cursor": base64.urlsafe_b64encode(b"desc:99999999999").decode()}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"asc:5").decode()}, "another list"),
        ({"stage": "champion"}, "visitor, lead, mql, sql, customer"),
        ({"min_score": "lots"}, "'min_score'"),
        ({"max_score": "nan"}, "'max_score'"),
        ({"tag": "a\x00"}, "NUL"),
        ({"source": ""}, "'source'"),
    ],
)
async def test_bad_list_parameters_are_a_400_that_says_which(client, query, complaint):
    answer = await client.get("/api/leads", params=query, headers=AUTH)
    assert answer.status == 400
    assert complaint in (await answer.json())["error"]


STAGED = """+++
name = "Sales qualified welcome"
trigger = "stage:sql"
+++
{% step "hello", after="1h" %}A person from sales will call you.{% endstep %}
"""


async def test_a_stage_change_is_recorded_and_starts_the_flows_of_that_stage(make_client, settings, tmp_path, db):
    client = await make_client(settings.with_(templates=templates_with(tmp_path / "t", {"sales-welcome": STAGED})))
    lead_id = await backend_event(client, "signup", email="s@example.com")

    answer = await client.patch(f"/api/leads/{lead_id}", json={"stage": "sql", "add_tags": ["called"]}, headers=AUTH)
    assert answer.status == 200
    lead = await answer.json()
    assert lead["stage"] == "sql" and lead["tags"] == ["called"]
    [change] = await rows(db, Event, Event.type == "stage_changed", Event.payload["to"].as_string() == "sql")
    assert change.payload == {"from": "lead", "to": "sql", "reason": "api"}
    [enrollment] = await rows(db, Enrollment)
    assert enrollment.flow_slug == "sales-welcome" and enrollment.lead_id == lead_id

    again = await client.patch(f"/api/leads/{lead_id}", json={"stage": "sql", "remove_tags": ["called"]}, headers=AUTH)
    assert (await again.json())["tags"] == []
    assert len(await rows(db, Event, Event.type == "stage_changed")) == 2  # signup made it a lead; no repeat


@pytest.mark.parametrize(
    "body, status, complaint",
    [
        ({"stage": "champion"}, 422, "visitor, lead, mql, sql, customer"),
        ({"tags": ["x"]}, 422, "'tags'"),
        ({}, 422, "nothing to change"),
        ([], 422, "JSON object"),
        ({"add_tags": "vip"}, 422, "add_tags"),
        ({"add_tags": ["two words"]}, 422, "'two words'"),
    ],
)
async def test_a_bad_change_is_refused_and_changes_nothing(client, body, status, complaint):
    lead_id = await backend_event(client, "signup", email="x@example.com")
    answer = await client.patch(f"/api/leads/{lead_id}", json=body, headers=AUTH)
    assert answer.status == status
    assert complaint in (await answer.json())["error"]
    lead = (await get(client, "/api/leads"))["items"][0]
    assert lead["stage"] == "lead" and lead["tags"] == []


async def test_changing_an_unknown_lead_is_a_404(client):
    answer = await client.patch("/api/leads/4242", json={"stage": "sql"}, headers=AUTH)
    assert answer.status == 404 and "4242" in (await answer.json())["error"]
    assert (await client.patch("/api/leads/x1", json={"stage": "sql"}, headers=AUTH)).status == 400


async def test_a_leads_conversations_messages_and_events(client):
    ws = await client.ws_connect("/chat/ws")
    lead_id = (await hello(ws))["lead"]
    for text in ("one", "two", "three"):
        await say(client, ws, text)
    await ws.close()

    [conversation] = (await get(client, f"/api/leads/{lead_id}/conversations"))["items"]
    # "one" is no small talk: it went to a person, who holds the conversation now.
    assert conversation["channel"] == "webchat" and conversation["owner"] == "queued"
    path = f"/api/conversations/{conversation['id']}/messages"
    transcript = [m["text"] for m in (await get(client, path, limit=200))["items"] if m["author"] == "visitor"]
    assert transcript == ["one", "two", "three"]  # oldest first, as a transcript reads
    assert await every_page(client, path, limit=2) == await ids(client, path, limit=200)

    events = (await get(client, "/api/events", lead_id=lead_id, type="message"))["items"]
    assert [event["payload"]["text"] for event in events] == ["three", "two", "one"]
    assert all(event["lead_id"] == lead_id for event in (await get(client, "/api/events"))["items"])

    assert (await client.get("/api/conversations/999/messages", headers=AUTH)).status == 404
    assert (await client.get("/api/leads/999/conversations", headers=AUTH)).status == 404
    assert (await client.get("/api/events", params={"lead_id": 999}, headers=AUTH)).status == 404


BROKEN = """+++
name = "Broken"
trigger = "message"
+++
{% step "hi", after="1m" %}Hello {{ lead.first_name | nosuchfilter }}{% endstep %}
"""


async def test_flows_with_lint_status_and_stats(client, make_client, settings, tmp_path):
    lead_id = await backend_event(client, "signup", email="f@example.com")
    assert lead_id
    flows = {flow["slug"]: flow for flow in (await get(client, "/api/flows"))["items"]}
    assert set(flows) == set(SHIPPED_FLOWS)  # the test's copy of the shipped flows, none a marketer added
    assert all(flow["lint"] == {"ok": True, "problems": []} and flow["state"] == "running" for flow in flows.values())
    stats = {slug: flow["stats"]["enrolled"] for slug, flow in flows.items()}
    assert sum(stats.values()) >= 1  # the signup started a flow
    one = await get(client, "/api/flows/pricing-not-ready")
    assert one["trigger"] == "page_view" and one["steps"]
    assert (await client.get("/api/flows/no-such-flow", headers=AUTH)).status == 404

    broken = await make_client(settings.with_(templates=templates_with(tmp_path / "t", {"broken": BROKEN})))
    answer = await broken.get("/api/flows/broken", headers=AUTH)
    flow = await answer.json()
    assert flow["state"] == "not loaded" and flow["lint"]["ok"] is False
    assert "nosuchfilter" in flow["lint"]["problems"][0]["message"]


async def test_handoffs_by_status_with_their_outcome(client, db):
    handoff_ids = []
    for _ in range(3):
        ws = await client.ws_connect("/chat/ws")
        await hello(ws)
        await say(client, ws, "Can I talk to a human?")
        await ws.close()
        handoff_ids.append((await get(client, "/api/handoffs", limit=1))["items"][0]["id"])
    first, second, third = handoff_ids
    handoffs = services_of(client).handoffs
    ana = await add_operator(db, "Ana")
    assert (await handoffs.claim(first, ana)).ok and (await handoffs.claim(second, ana)).ok
    await handoffs.hand_back(first, ana, "lost", reason="just browsing")

    assert await ids(client, "/api/handoffs") == [third, second, first]
    assert await ids(client, "/api/handoffs", status="waiting") == [third]
    [claimed] = (await get(client, "/api/handoffs", status="claimed"))["items"]
    assert claimed["id"] == second and claimed["claimed_by"] == "Ana" and claimed["outcome"] is None
    [closed] = (await get(client, "/api/handoffs", status="closed"))["items"]
    assert (closed["outcome"], closed["outcome_reason"]) == ("lost", "just browsing") and closed["closed_at"]
    assert await every_page(client, "/api/handoffs", limit=1) == [third, second, first]
    answer = await client.get("/api/handoffs", params={"status": "open"}, headers=AUTH)
    assert answer.status == 400 and "waiting, claimed, closed" in (await answer.json())["error"]
