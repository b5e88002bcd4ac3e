"""The pipeline board: columns in stage order with counts and medians, filters, keyset pages, moving a card."""

from __future__ import annotations

import html
import re
from datetime import timedelta

from storage.models import Conversation, Enrollment, Event, Handoff, Lead, Operator, StageEntry

from conftest import API_KEY, rows
from test_console_queue import operator, post

CARD = re.compile(r'<li class="card" data-lead="(\d+)" data-stage="(\w+)"')
MORE = re.compile(r'<a class="more" data-more href="([^"]+)">More</a>')


async def add_leads(db, clock, *leads: dict) -> list[int]:  # type: ignore[no-untyped-def]
    """Leads stored as intake leaves them (each `dict` sets fields; `ago`: its last activity that long before now)."""
    made = []
    async with db() as session:
        for fields in leads:
            fields = dict(fields)
            at = clock.now() - fields.pop("ago", timedelta())
            since = clock.now() - fields.pop("in_stage", timedelta())
            lead = Lead(created_at=since, updated_at=at, stage_at=since, **fields)
            session.add(lead)
            made.append(lead)
        await session.commit()
    return [lead.id for lead in made]


async def cards(client, path: str = "/console/pipeline") -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    answer = await client.get(path)
    assert answer.status == 200, await answer.text()
    return [(int(lead), stage) for lead, stage in CARD.findall(await answer.text())]


def column_heads(page: str) -> list[tuple[str, str]]:
    """Each column's stage and count as shown, in page order."""
    return re.findall(r'data-column="(\w+)".*?class="count" data-count="\d+"[^>]*>([\d,+]+)</span>', page, re.S)


async def test_columns_come_in_stage_order_with_counts_and_median_time_in_stage(client, db, clock, add_operator):
    hours = timedelta(hours=1)
    await add_leads(
        db,
        clock,
        {"stage": "mql", "first_name": "Ann", "in_stage": 2 * hours},
        {"stage": "mql", "first_name": "Bob", "in_stage": 4 * hours},
        {"stage": "mql", "first_name": "Cy", "in_stage": 30 * hours},
        {"stage": "visitor", "in_stage": timedelta(minutes=12), "first_touch": {"source": "google"}},
        {"stage": "customer", "first_name": "Dee", "in_stage": timedelta(days=3)},
    )
    [merged] = await add_leads(db, clock, {"stage": "mql", "first_name": "Gone"})
    async with db() as session:  # a lead merged into another is not on the board
        lead = await session.get(Lead, merged)
        lead.merged_into_id = merged - 1
        session.add(lead)
        await session.commit()
    await add_operator("mia", "marketer")
    await operator(client, add_operator, "ann")

    page = html.unescape(await (await client.get("/console/pipeline")).text())
    heads = [("visitor", "1"), ("lead", "0"), ("mql", "3"), ("sql", "0"), ("customer", "1")]
    assert column_heads(page) == heads
    medians = re.findall(r"<span data-median>([^<]+)</span>", page)
    assert medians == ["12 min", "-", "4 h", "-", "3 d"]
    assert "Visitor from google" in page and "Gone" not in page
    filtered = html.unescape(await (await client.get("/console/pipeline?source=google")).text())
    assert column_heads(filtered) == [("visitor", "1"), ("lead", "0"), ("mql", "0"), ("sql", "0"), ("customer", "0")]
    assert re.findall(r"<span data-median>([^<]+)</span>", filtered) == ["12 min", "-", "-", "-", "-"]
    assert '<a href="/console/pipeline">Pipeline</a>' in page  # in the nav
    assert 'draggable="true"' in page and 'action="/console/pipeline/leads/' in page


async def test_a_marketer_reads_the_board_but_cannot_move_a_card(client, db, clock, add_operator):
    [lead_id] = await add_leads(db, clock, {"stage": "lead", "first_name": "Ann"})
    csrf = await operator(client, add_operator, "mia", role="marketer")
    page = await (await client.get("/console/pipeline")).text()
    assert f'data-lead="{lead_id}"' in page and 'draggable="true"' not in page and 'class="move"' not in page

    answer = await post(client, f"/console/pipeline/leads/{lead_id}/stage", csrf, stage="sql")
    assert answer.status == 403
    answer = await client.post(
        f"/console/pipeline/leads/{lead_id}/stage",
        data={"stage": "sql"},
        headers={"Accept": "application/json", "X-CSRF-Token": csrf},
    )
    assert answer.status == 403 and "marketer" in (await answer.json())["error"]
    assert [lead.stage for lead in await rows(db, Lead)] == ["lead"]


async def test_a_card_shows_the_learned_likelihood_once_a_model_gave_one(client, db, clock, add_operator):
    scored, unscored = await add_leads(
        db, clock, {"stage": "lead", "first_name": "Ann", "likelihood": 72}, {"stage": "lead", "first_name": "Bo"}
    )
    await operator(client, add_operator, "mia", role="marketer")
    page = await (await client.get("/console/pipeline")).text()
    ann = page.split(f'data-lead="{scored}"', 1)[1].split("</li>", 1)[0]
    bo = page.split(f'data-lead="{unscored}"', 1)[1].split("</li>", 1)[0]
    assert "likelihood 72%" in ann and "likelihood" not in bo


async def test_moving_a_card_is_a_stage_change_by_the_operator(client, db, clock, add_operator):
    [lead_id] = await add_leads(db, clock, {"stage": "lead", "first_name": "Ann", "ago": timedelta(days=1)})
    csrf = await operator(client, add_operator, "ann")
    clock.advance(timedelta(minutes=5))

    answer = await client.post(
        f"/console/pipeline/leads/{lead_id}/stage",
        data={"stage": "sql"},
        headers={"Accept": "application/json", "X-CSRF-Token": csrf},
    )
    assert answer.status == 200 and await answer.json() == {"lead": lead_id, "from": "lead", "to": "sql"}
    [lead] = await rows(db, Lead)
    assert (lead.stage, lead.stage_at, lead.updated_at) == ("sql", clock.now(), clock.now())
    [moved] = await rows(db, Event, Event.type == "stage_changed")
    assert moved.payload == {"from": "lead", "to": "sql", "reason": "moved by ann on the pipeline board"}
    assert [entry.stage for entry in await rows(db, StageEntry)] == ["visitor", "lead", "mql", "sql"]
    lead_page = html.unescape(await (await client.get(f"/console/leads/{lead_id}")).text())
    assert "moved by ann on the pipeline board" in lead_page

    # The form on the card (no script): back to the board as it was filtered; moving back is allowed.
    back = "/console/pipeline?source=google"
    answer = await post(client, f"/console/pipeline/leads/{lead_id}/stage", csrf, stage="mql", back=back)
    assert answer.status == 303 and answer.headers["Location"] == back
    assert (await rows(db, Lead))[0].stage == "mql"
    answer = await post(client, f"/console/pipeline/leads/{lead_id}/stage", csrf, stage="mql", back="https://evil")
    assert answer.status == 303 and answer.headers["Location"] == "/console/pipeline"
    assert len(await rows(db, Event, Event.type == "stage_changed")) == 2  # the same stage again: no change


async def test_an_unknown_lead_is_404_a_bad_stage_400_and_no_token_403(client, db, clock, add_operator):
    [lead_id] = await add_leads(db, clock, {"stage": "lead"})
    csrf = await operator(client, add_operator, "ann")
    json = {"Accept": "application/json", "X-CSRF-Token": csrf}
    for path in ("/console/pipeline/leads/999/stage", "/console/pipeline/leads/99999999999/stage"):
        answer = await client.post(path, data={"stage": "sql"}, headers=json)
        assert answer.status == 404 and "There is no lead" in (await answer.json())["error"]
    answer = await client.post(f"/console/pipeline/leads/{lead_id}/stage", data={"stage": "won"}, headers=json)
    assert answer.status == 400
    assert (await answer.json())[
        "error"
    ] == "There is no stage “won”: the stages are visitor, lead, mql, sql, customer."
    answer = await client.post(f"/console/pipeline/leads/{lead_id}/stage", data={"stage": "sql"})
    assert answer.status == 403  # no CSRF token
    assert (await client.get("/console/pipeline/stages/won")).status == 404
    for odd in ("²-1", "1-²", "x", "-", "1-99999999999", "9" * 30 + "-1"):  # the first page, never a 500
        assert (await client.get("/console/pipeline/stages/lead", params={"after": odd})).status == 200
    assert CARD.findall(await (await client.get("/console/pipeline/cards?ids=99999999999,0")).text()) == []
    assert [lead.stage for lead in await rows(db, Lead)] == ["lead"]


async def test_filters_by_source_campaign_channel_owner_and_flow(client, db, clock, add_operator):
    google = {"source": "google", "campaign": "spring"}
    ids = await add_leads(
        db,
        clock,
        {"stage": "lead", "first_touch": google},
        {"stage": "mql", "first_touch": {"source": "google", "campaign": "fall"}},
        {"stage": "lead", "first_touch": {"source": "newsletter"}},
        {"stage": "sql"},
    )
    await operator(client, add_operator, "ann")
    async with db() as session:
        ann = (await session.exec(Operator.__table__.select())).first()
        session.add(
            Conversation(lead_id=ids[2], channel="telegram", external_id="t1", owner="human", created_at=clock.now())
        )
        session.add(
            Conversation(lead_id=ids[3], channel="webchat", external_id="w1", owner="queued", created_at=clock.now())
        )
        now = {"created_at": clock.now(), "warm_at": clock.now(), "sla_due_at": clock.now()}
        held = {"status": "claimed", "claimed_by_id": ann.id}
        session.add(Handoff(lead_id=ids[2], trigger="intent", reason="call me", **held, **now))
        for lead, status in ((ids[1], "paused"), (ids[3], "exited")):
            times = {"due_at": clock.now(), "enrolled_at": clock.now(), "updated_at": clock.now()}
            session.add(Enrollment(lead_id=lead, flow_slug="drip", flow_version="v1", status=status, **times))
        await session.commit()

    assert {lead for lead, _ in await cards(client, "/console/pipeline?source=google")} == {ids[0], ids[1]}
    assert await cards(client, "/console/pipeline?source=google&campaign=fall") == [(ids[1], "mql")]
    assert await cards(client, "/console/pipeline?channel=telegram") == [(ids[2], "lead")]
    assert await cards(client, "/console/pipeline?owner=queued") == [(ids[3], "sql")]
    assert await cards(client, "/console/pipeline?owner=ann") == [(ids[2], "lead")]
    assert await cards(client, "/console/pipeline?flow=drip") == [(ids[1], "mql")]
    page = html.unescape(await (await client.get("/console/pipeline?channel=telegram")).text())
    assert 'value="telegram"' in page and column_heads(page)[1] == ("lead", "1")
    assert "handoff claimed</a> by ann" in page

    # Cards as the script fetches them when leads move in live: those the filters leave out are not sent.
    asked = {"ids": f"{ids[0]},{ids[2]},{ids[1]},999,x,²", "source": "google"}
    some = await client.get("/console/pipeline/cards", params=asked)
    assert some.status == 200 and CARD.findall(await some.text()) == [(str(ids[0]), "lead"), (str(ids[1]), "mql")]


async def test_more_pages_through_a_column_with_every_lead_once_newest_activity_first(client, db, clock, add_operator):
    # 130 leads, with ties in last activity (keyset on activity and id), and a few in other stages.
    made = [{"stage": "lead", "ago": timedelta(minutes=n // 3)} for n in range(130)]
    ids = await add_leads(db, clock, *made, {"stage": "mql"}, {"stage": "sql"})
    await operator(client, add_operator, "ann")
    page = await (await client.get("/console/pipeline")).text()
    seen = [lead for lead, stage in await cards(client) if stage == "lead"]
    assert len(seen) == 50
    [more] = MORE.findall(page)
    pages = 1
    while more:
        answer = await client.get(html.unescape(more) + "&fragment=1")
        text = await answer.text()
        assert answer.status == 200 and "<html" not in text
        seen += [int(lead) for lead, _ in CARD.findall(text)]
        more = (MORE.findall(text) or [None])[0]
        pages += 1
    assert pages == 3 and len(seen) == len(set(seen)) == 130
    assert seen == [ids[n] for n in sorted(range(130), key=lambda n: (n // 3, -n))]  # ties: the higher id first
    # The "More" link works without the script too: a page of its own.
    answer = await client.get(html.unescape(MORE.findall(page)[0]))
    assert answer.status == 200 and "Back to the board" in await answer.text()


async def test_every_stage_change_reaches_open_boards_live(client, db, clock, add_operator):
    [lead_id] = await add_leads(db, clock, {"stage": "visitor"})
    csrf = await operator(client, add_operator, "ann")
    ws = await client.ws_connect("/console/pipeline/ws")
    json = {"Accept": "application/json", "X-CSRF-Token": csrf}
    answer = await client.post(f"/console/pipeline/leads/{lead_id}/stage", data={"stage": "mql"}, headers=json)
    assert answer.status == 200
    assert await ws.receive_json(timeout=5) == {"type": "stage", "lead": lead_id, "from": "visitor", "to": "mql"}

    # A change made elsewhere (the API) comes the same way.
    patch = await client.patch(
        f"/api/leads/{lead_id}", json={"stage": "sql"}, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert patch.status == 200
    assert await ws.receive_json(timeout=5) == {"type": "stage", "lead": lead_id, "from": "mql", "to": "sql"}
    await ws.close()
