"""A lead's learned likelihood follows what it does inside its window, right after it acts, and stays once past it."""

from __future__ import annotations

import uuid
from datetime import timedelta

from storage.models import Lead

from conftest import services_of
from test_learned_scoring import fit, lately, made_up, write
from test_webchat import hello, say


async def likelihood_of(client, db, lead_id: int) -> int | None:  # type: ignore[no-untyped-def]
    await services_of(client).drain()  # the rescore runs right after the intake's commit
    async with db() as session:
        return (await session.get(Lead, lead_id)).likelihood


async def view(client, ws, path: str) -> None:  # type: ignore[no-untyped-def]
    page = {"id": str(uuid.uuid4()), "url": f"https://shop.example{path}", "referrer": "https://shop.example/"}
    await ws.send_json({"type": "page_view", "view": page})
    await say(client, ws, "hi")  # acknowledged once stored, after the page view: frames are taken in order


async def test_visiting_pricing_raises_a_new_leads_likelihood_until_its_cut_off(client, db, database_url, clock):
    now = lately()
    clock.advance(now - clock.now())
    await write(db, made_up(900, seed=7, now=now))
    assert (await fit(db, database_url, now=now)).fit.accepted  # /pricing raises success most in this history

    ws = await client.ws_connect("/chat/ws")
    welcome = await hello(ws, url="https://shop.example/blog/hello")
    lead_id = welcome["lead"]
    first = await likelihood_of(client, db, lead_id)
    assert first is not None  # scored the moment it arrived, not at the next fit
    await view(client, ws, "/pricing")
    second = await likelihood_of(client, db, lead_id)
    assert second > first
    await view(client, ws, "/pricing/teams")
    third = await likelihood_of(client, db, lead_id)
    assert third > second

    clock.advance(timedelta(days=8))  # past its cut-off (scoring.window, 7 days): what it does no longer counts
    await view(client, ws, "/pricing")
    assert await likelihood_of(client, db, lead_id) == third
    await ws.close()


async def test_without_a_model_nothing_is_scored_and_nothing_fails(client, db):
    ws = await client.ws_connect("/chat/ws")
    welcome = await hello(ws, url="https://shop.example/pricing")
    await view(client, ws, "/pricing")
    assert await likelihood_of(client, db, welcome["lead"]) is None
    await ws.close()
