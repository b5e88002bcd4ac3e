"""Signed webhooks from another chat provider: verified, stored once, answered with signed POSTs."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from aiohttp import web

from bot.config import WebhookSource
from bot.web.signing import sign, signed_headers
from storage.models import Delivery, Event, Lead, Message

from conftest import rows, services_of

SECRET = "acme-webhook-secret"


class Provider:
    """The other chat provider: receives our replies and checks their signatures."""

    def __init__(self) -> None:
        self.replies: list[dict] = []
        self.bad_signatures = 0
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = sign(SECRET, request.headers["X-Kindling-Timestamp"], body)
        if request.headers.get("X-Kindling-Signature") != expected:
            self.bad_signatures += 1
        if self.status == 200:
            self.replies.append(json.loads(body))
        return web.json_response({}, status=self.status)


@pytest.fixture
async def provider(aiohttp_server):  # type: ignore[no-untyped-def]
    provider = Provider()
    app = web.Application()
    app.router.add_post("/replies", provider.handle)
    provider.server = await aiohttp_server(app)
    return provider


@pytest.fixture
async def acme(make_client, settings, provider):  # type: ignore[no-untyped-def]
    source = WebhookSource("acme", SECRET, str(provider.server.make_url("/replies")))
    return await make_client(settings.with_(webhook_sources={"acme": source}))


def payload(delivery_id="d-1", text="Hi, is there a free trial?", **user):
    user = {"id": "u-7", "name": "Ann Lee", **user}
    return json.dumps({"id": delivery_id, "conversation": "t-42", "user": user, "text": text}).encode()


async def post(client, body, clock, secret=SECRET, headers=None):
    headers = headers if headers is not None else signed_headers(secret, body, clock.now())
    return await client.post("/webhooks/inbound/acme", data=body, headers=headers)


async def test_a_signed_message_becomes_a_lead_and_the_reply_goes_back_signed(acme, provider, clock, db):
    response = await post(acme, payload(), clock)
    assert response.status == 200
    await services_of(acme).drain()

    [lead] = await rows(db, Lead)
    assert (lead.first_name, lead.last_name) == ("Ann", "Lee")
    [message] = await rows(db, Message, Message.direction == "in")
    assert message.text == "Hi, is there a free trial?"
    [reply] = provider.replies
    # A common question: its quick answer (templates/_answers/en.toml), sent back signed.
    assert reply["conversation"] == "t-42" and reply["text"].startswith(
        "Yes: every plan comes with a 14-day free trial"
    )
    assert provider.bad_signatures == 0


async def test_a_replayed_delivery_is_stored_and_answered_once(acme, provider, clock, db):
    first = await post(acme, payload(), clock)
    again = await post(acme, payload(), clock)
    await services_of(acme).drain()
    assert (first.status, again.status) == (200, 200)
    assert (await again.json())["duplicate"] is True
    assert len(await rows(db, Message, Message.direction == "in")) == 1
    assert len(provider.replies) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Kindling-Timestamp": "1767614400", "X-Kindling-Signature": "sha256=00"},
        "wrong secret",
        "stale",
        "from the future",
    ],
)
async def test_unsigned_or_badly_signed_or_stale_posts_are_refused_and_nothing_is_stored(acme, clock, db, headers):
    body = payload()
    if headers == "wrong secret":
        headers = signed_headers("not-the-secret", body, clock.now())
    elif headers == "stale":
        headers = signed_headers(SECRET, body, clock.now() - timedelta(seconds=301))
    elif headers == "from the future":  # signed to be replayed later: the window is 300 s both ways
        headers = signed_headers(SECRET, body, clock.now() + timedelta(seconds=301))
    response = await post(acme, body, clock, headers=headers)
    assert response.status == 403
    assert await rows(db, Lead) == [] and await rows(db, Event) == []


async def test_bad_bodies_get_a_clear_4xx(acme, clock, db):
    assert (await post(acme, b"{not json", clock)).status == 400
    missing_text = json.dumps({"id": "d-2", "conversation": "t", "user": {"id": "u"}}).encode()
    response = await post(acme, missing_text, clock)
    assert response.status == 422 and "text" in (await response.json())["error"]
    assert (await acme.post("/webhooks/inbound/nobody", data=b"{}")).status == 404
    assert await rows(db, Lead) == []


async def test_a_provider_outage_is_retried_and_a_refusal_is_visible(acme, provider, clock, db):
    provider.status = 503
    await post(acme, payload(text="Hi"), clock)  # small talk: the bot answers each message (a question: a person)
    await services_of(acme).drain()
    [delivery] = await rows(db, Delivery)
    assert delivery.status == "pending" and "503" in delivery.last_error and delivery.delivered_at is None

    provider.status = 200
    clock.advance(timedelta(seconds=31))
    await services_of(acme).dispatcher.dispatch_due()
    [delivery] = await rows(db, Delivery)
    assert delivery.status == "sent" and len(provider.replies) == 1
    assert delivery.delivered_at == clock.now()  # the provider answered 2xx: it has the message

    provider.status = 400
    await post(acme, payload("d-2", "ok"), clock)
    await services_of(acme).drain()
    refused = await rows(db, Delivery, Delivery.status == "dead")
    assert refused and "400" in refused[0].last_error


async def test_the_same_email_on_the_webhook_and_the_events_api_is_one_lead(acme, clock, db):
    response = await acme.post(
        "/api/events",
        json={"type": "signup", "lead": {"email": "ann@example.com"}},
        headers={"Authorization": "Bearer test-api-key"},
    )
    assert response.status == 201
    await post(acme, payload(email="Ann@Example.com"), clock)
    live = [lead for lead in await rows(db, Lead) if lead.merged_into_id is None]
    assert len(live) == 1 and live[0].email == "ann@example.com"
    assert {event.type for event in await rows(db, Event, Event.lead_id == live[0].id)} >= {"custom", "message"}
