"""Faults a sender must be able to rely on: retries are safe, outages are answered so they retry."""

from __future__ import annotations

import asyncio
import json

from bot.channels.base import Inbound, Profile
from bot.config import WebhookSource
from bot.signing import signed_headers
from storage.models import Delivery, Enrollment, Event, Lead, Message

from conftest import API_KEY, rows, services_of

UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
SOURCE = WebhookSource("acme", "s3cret", None)


async def test_concurrent_replays_of_one_webhook_delivery_store_one_message_and_one_reply(
    make_client, settings, clock, db
):
    client = await make_client(settings.with_(webhook_sources={"acme": SOURCE}))
    body = json.dumps({"id": "d-9", "conversation": "t-1", "user": {"id": "u-1"}, "text": "hello"}).encode()
    headers = signed_headers("s3cret", body, clock.now())
    answers = await asyncio.gather(
        *[client.post("/webhooks/inbound/acme", data=body, headers=headers) for _ in range(6)]
    )
    assert [answer.status for answer in answers] == [200] * 6
    assert sorted([(await answer.json())["duplicate"] for answer in answers]) == [False] + [True] * 5
    await services_of(client).drain()
    assert len(await rows(db, Message, Message.direction == "in")) == 1
    assert len(await rows(db, Delivery)) == 1
    assert len(await rows(db, Lead)) == 1


async def test_concurrent_events_for_a_new_person_make_one_lead(client, db):
    bodies = [{"id": f"e-{n}", "type": "cart", "lead": {"email": "gil@example.com"}} for n in range(5)]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    answers = await asyncio.gather(*[client.post("/api/events", json=body, headers=auth) for body in bodies])
    assert [answer.status for answer in answers] == [201] * 5
    assert len(await rows(db, Lead)) == 1
    assert len(await rows(db, Event, Event.type == "custom")) == 5


async def test_an_inbound_that_fails_does_not_fail_those_stored_together_with_it(client, db):
    auth = {"Authorization": f"Bearer {API_KEY}"}
    bodies = [{"id": f"ok-{n}", "type": "signup", "lead": {"email": f"p{n}@example.com"}} for n in range(4)]
    bodies.insert(2, {"id": "bad", "type": "signup", "lead": {"id": 999_999}})  # no such lead
    answers = await asyncio.gather(*[client.post("/api/events", json=body, headers=auth) for body in bodies])
    assert [answer.status for answer in answers] == [201, 201, 404, 201, 201]
    assert len(await rows(db, Event, Event.type == "custom")) == 4
    assert len(await rows(db, Lead)) == 4


async def test_inbounds_stored_together_act_as_if_stored_one_after_the_other(client, db, clock):
    """A shared phone starts flows; the reply right behind it, in the same transaction, ends them."""

    def telegram(update_id: int, text: str) -> Inbound:
        return Inbound(
            channel="telegram", external_id="777", kind="message", dedup_key=f"telegram:update:{update_id}",
            identities=(("telegram", "777"),), at=clock.now(), text=text, profile=Profile(first_name="Ana"),
        )  # fmt: skip

    intake = services_of(client).intake
    shared, reply = await asyncio.gather(
        intake.receive(telegram(1, "+14155550123")), intake.receive(telegram(2, "great, tell me more"))
    )
    assert shared.lead_id == reply.lead_id and not reply.duplicate
    enrollments = {row.flow_slug: (row.status, row.exit_reason) for row in await rows(db, Enrollment)}
    assert enrollments["speed-to-lead"] == ("exited", "reply")  # and the stage:lead flow the phone started
    assert set(enrollments.values()) == {("exited", "reply")}


async def test_a_flood_from_a_few_people_at_once_is_all_stored_one_lead_each(client, db, clock):
    """Batches stored side by side (PostgreSQL) must not trip over each other on the same people.

    Two batches with the same person both wrote that person's rows and deadlocked: their inbounds were
    refused as if the database were down (the inbox then left them for a sweep a minute later).
    """

    def telegram(person: int, update_id: int) -> Inbound:
        return Inbound(
            channel="telegram", external_id=f"90{person}", kind="message", dedup_key=f"telegram:update:{update_id}",
            identities=(("telegram", f"90{person}"),), at=clock.now(), text="hello", profile=Profile(first_name="Bo"),
        )  # fmt: skip

    intake = services_of(client).intake
    floods = [[telegram(n % 6, 1000 * round_ + n) for n in range(200)] for round_ in range(2)]
    for flood in floods:  # the first makes the six people, the second finds them
        received = await asyncio.gather(*(intake.receive(inbound) for inbound in flood))  # raises if one failed
        assert len({each.lead_id for each in received}) == 6
    assert len(await rows(db, Lead)) == 6
    assert len(await rows(db, Message, Message.direction == "in")) == 400


async def test_when_the_database_is_down_senders_get_503_to_retry(make_client, settings, clock):
    down = settings.with_(database_url=UNREACHABLE, secret_key="k", webhook_sources={"acme": SOURCE})
    client = await make_client(down)
    body = json.dumps({"id": "d-1", "conversation": "t-1", "user": {"id": "u-1"}, "text": "hello"}).encode()
    webhook = await client.post(
        "/webhooks/inbound/acme", data=body, headers=signed_headers("s3cret", body, clock.now())
    )
    event = await client.post(
        "/api/events",
        json={"type": "signup", "lead": {"email": "a@example.com"}},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    health = await client.get("/healthz")
    assert (webhook.status, event.status, health.status) == (503, 503, 503)
    assert "retry" in (await webhook.json())["error"]

    ws = await client.ws_connect("/chat/ws")
    await ws.send_json({"type": "hello", "view": {"url": "https://shop.example/"}})
    frame = await ws.receive_json()
    assert frame["type"] == "error" and frame["retry"] is True
