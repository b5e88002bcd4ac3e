"""Meta's webhooks and Graph API, through WhatsApp: verification, signatures, the durable inbox, statuses, errors."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from bot.channels.meta import signature
from storage.models import Delivery, Event, Identity, Lead, Message

from conftest import rows, services_of
from fake_graph import APP_SECRET, ERRORS, PHONE_ID, VERIFY_TOKEN, meta_settings

PAYLOADS = Path(__file__).parent / "payloads" / "whatsapp"
SENDER = "16505551234"
PLACEHOLDER = "wamid.HBgLMTY1MDUwNzY1MjAVAgARGBIWAMID"  # the status payloads' message id, replaced by a real one


def payload(name: str, wamid: str | None = None) -> dict:
    """A WhatsApp notification from tests/payloads/whatsapp, its statuses about `wamid` if given."""
    text = (PAYLOADS / f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text.replace(PLACEHOLDER, wamid) if wamid else text)


async def post(client, data: dict, secret: str = APP_SECRET, headers: dict | None = None):  # type: ignore[no-untyped-def]
    """POST a notification as Meta does (signed with `secret`), then wait for the replies to go out."""
    body = json.dumps(data).encode()
    signed = {"X-Hub-Signature-256": signature(secret, body), "Content-Type": "application/json"}
    response = await client.post("/webhooks/whatsapp", data=body, headers=signed if headers is None else headers)
    await services_of(client).drain()
    return response


@pytest.fixture
def wa_settings(settings, fake_graph):  # type: ignore[no-untyped-def]
    return settings.with_(meta=meta_settings(fake_graph))


@pytest.fixture
async def client(make_client, wa_settings):  # type: ignore[no-untyped-def]
    return await make_client(wa_settings)


async def test_meta_verification_echoes_the_challenge_only_for_our_token(client):
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    ok = await client.get("/webhooks/whatsapp", params=query)
    assert ok.status == 200 and await ok.text() == "1158201444"
    wrong = await client.get("/webhooks/whatsapp", params={**query, "hub.verify_token": "guess"})
    assert wrong.status == 403
    unsubscribe = await client.get("/webhooks/whatsapp", params={**query, "hub.mode": "unsubscribe"})
    assert unsubscribe.status == 403


@pytest.mark.parametrize("how", ["wrong secret", "no header", "tampered body"])
async def test_a_notification_not_signed_with_the_app_secret_is_refused_and_nothing_stored(client, db, how):
    data = payload("text")
    if how == "wrong secret":
        response = await post(client, data, secret="not-the-app-secret")
    elif how == "no header":
        response = await post(client, data, headers={"Content-Type": "application/json"})
    else:
        body = json.dumps(data).encode()
        tampered = body.replace(b"Pro plan", b"Max plan")
        headers = {"X-Hub-Signature-256": signature(APP_SECRET, body), "Content-Type": "application/json"}
        response = await client.post("/webhooks/whatsapp", data=tampered, headers=headers)
    assert response.status == 403
    assert await rows(db, Lead) == [] and await rows(db, Event) == []


async def test_a_text_message_makes_a_lead_with_a_verified_whatsapp_number_and_is_answered(client, db, fake_graph):
    response = await post(client, payload("text"))

    assert response.status == 200
    [lead] = await rows(db, Lead)
    assert (lead.first_name, lead.last_name, lead.phone) == ("Kerry", "Fisher", "+16505551234")
    assert {(i.kind, i.value) for i in await rows(db, Identity)} == {("whatsapp", SENDER), ("phone", "+16505551234")}
    [message] = await rows(db, Message, Message.direction == "in")
    assert message.text == "Hi, how much is the Pro plan?"
    [send] = fake_graph.delivered()
    assert send["to"] == SENDER and send["messaging_product"] == "whatsapp" and send["type"] == "text"
    # A question for a person: the bot says one will reply (and the conversation is in the console's inbox).
    assert fake_graph.whatsapp_texts(SENDER) == [
        "Thanks, Kerry! A person from our team will reply here within 5 minutes."
    ]
    assert await rows(db, Event, Event.type == "contact_shared") == []  # their number came with WhatsApp: not "shared"
    [delivery] = await rows(db, Delivery)
    assert delivery.status == "sent" and delivery.provider_message_id.startswith("wamid.")


async def test_meta_retrying_a_notification_stores_it_once(client, db, fake_graph):
    for _ in range(3):
        assert (await post(client, payload("text"))).status == 200
    assert len(await rows(db, Message, Message.direction == "in")) == 1
    assert len(fake_graph.delivered()) == 1  # answered once


async def test_a_batch_of_entries_takes_in_every_message_and_status(client, db, fake_graph):
    await post(client, payload("text"))
    [reply] = await rows(db, Delivery)

    response = await post(client, payload("batched", wamid=reply.provider_message_id))

    assert response.status == 200 and (await response.json())["messages"] == 3
    texts = [m.text for m in await rows(db, Message, Message.direction == "in")]
    assert sorted(texts) == sorted(
        ["Hi, how much is the Pro plan?", "First message", "Hello from Ann", "Second message"]
    )
    assert len(await rows(db, Lead)) == 2
    [reply] = await rows(db, Delivery, Delivery.id == reply.id)
    assert reply.delivered_at is not None and reply.seen_at is not None  # read, then delivered: seen


async def test_statuses_move_forward_only_and_a_repeat_changes_nothing(client, db, run_kindling, clock):
    await post(client, payload("text"))
    [reply] = await rows(db, Delivery)
    clock.advance(timedelta(minutes=1))
    for name in ("status_read", "status_delivered", "status_read", "status_sent", "status_failed"):
        assert (await post(client, payload(name, wamid=reply.provider_message_id))).status == 200

    [reply] = await rows(db, Delivery)
    assert reply.status == "sent" and reply.seen_at is not None and reply.last_error is None
    assert reply.seen_at.timestamp() == 1767614403  # dated by Meta's first read report
    status, out, _ = await run_kindling("lead", "show", str(reply.lead_id))
    assert status == 0 and "seen" in out


async def test_a_failed_status_fails_the_delivery_and_an_unreachable_number_stops_marketing(client, db):
    await post(client, payload("text"))
    [reply] = await rows(db, Delivery)
    await post(client, payload("status_failed", wamid=reply.provider_message_id))

    [reply] = await rows(db, Delivery)
    assert reply.status == "dead" and "131026" in reply.last_error
    [lead] = await rows(db, Lead)
    assert lead.channel_marketing["whatsapp"]["opted_out_at"] and lead.opted_out_at is None  # chat goes on
    assert [e.payload["channel"] for e in await rows(db, Event, Event.type == "marketing_opt_out")] == ["whatsapp"]


async def test_other_fields_and_other_phone_numbers_are_answered_200_and_ignored(client, db):
    response = await post(client, payload("account_update"))
    assert response.status == 200 and "ignored" in await response.json()
    other = payload("text")
    other["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999999999999999"
    assert (await post(client, other)).status == 200
    assert await rows(db, Lead) == []


async def test_a_body_that_is_no_notification_is_400_never_500(client, db):
    for body in (b"[]", b'{"object": "whatsapp_business_account"}', b"not json"):
        headers = {"X-Hub-Signature-256": signature(APP_SECRET, body), "Content-Type": "application/json"}
        response = await client.post("/webhooks/whatsapp", data=body, headers=headers)
        assert response.status == 400, body
    assert await rows(db, Lead) == []


@pytest.mark.parametrize(
    ("error", "status", "remark"),
    [
        ("rate_limit", "pending", "130429"),
        ("spam_rate_limit", "pending", "131056"),
        ("server_error", "pending", "131000"),
        ("unavailable", "pending", "131016"),
        ("invalid_parameter", "dead", "100"),
        ("undeliverable", "dead", "131026"),
        ("marketing_stopped", "dead", "131050"),
        ("reengagement", "skipped", "24-hour window"),
    ],
)
async def test_each_graph_error_is_retried_held_back_or_final(client, db, fake_graph, error, status, remark):
    fake_graph.fail_next(error)
    await post(client, payload("text"))

    [reply] = await rows(db, Delivery)
    assert reply.status == status and remark in reply.last_error
    assert fake_graph.sends[0].status == ERRORS[error][0]
    [lead] = await rows(db, Lead)
    stopped = bool(lead.channel_marketing.get("whatsapp", {}).get("opted_out_at"))
    assert stopped == (error in ("undeliverable", "marketing_stopped"))


@pytest.mark.parametrize(("error", "seconds"), [("rate_limit", 2), ("spam_rate_limit", 6)])
async def test_whatsapp_throughput_errors_go_again_within_seconds_once(client, db, clock, fake_graph, error, seconds):
    # WhatsApp's limits are per second (130429) or a few seconds per person (131056): a reply refused for
    # them goes again that soon, not half a minute later, and exactly once.
    fake_graph.fail_next(error)
    await post(client, payload("text"))
    [reply] = await rows(db, Delivery)
    assert reply.status == "pending"
    dispatcher = services_of(client).dispatcher
    clock.advance(timedelta(seconds=seconds - 1))
    assert await dispatcher.dispatch_due() == 0
    clock.advance(timedelta(seconds=1))
    assert await dispatcher.dispatch_due() == 1
    [reply] = await rows(db, Delivery)
    assert reply.status == "sent"
    assert len(fake_graph.whatsapp_texts()) == 1


async def test_whatsapp_without_its_settings_is_off_with_one_line_naming_what_is_missing(make_client, settings, caplog):
    caplog.set_level(logging.INFO)
    client = await make_client(settings)
    assert (await client.get("/webhooks/whatsapp")).status in (404, 405)
    lines = [r.getMessage() for r in caplog.records if "channel whatsapp is disabled" in r.getMessage()]
    assert lines == [
        "channel whatsapp is disabled: KINDLING_WHATSAPP_TOKEN, KINDLING_WHATSAPP_PHONE_ID, "
        "KINDLING_META_APP_SECRET, KINDLING_META_VERIFY_TOKEN are not set"
    ]
    assert PHONE_ID  # the fake's phone number id is what the settings name


async def test_ill_formed_parts_of_a_notification_are_answered_200_and_store_nothing(client, db):
    odd = payload("text")
    value = odd["entry"][0]["changes"][0]["value"]
    value["metadata"] = "not an object"
    value["messages"] = [{"id": "wamid.no-sender", "type": "text", "text": {"body": "hi"}}, "not a message", 7]
    value["statuses"] = [{"status": "read"}, None]
    odd["entry"].append({"id": "1", "changes": "not a list"})
    response = await post(client, odd)
    assert response.status == 200 and (await response.json())["ignored"] == ["a message without a sender or id"]
    assert await rows(db, Lead) == []


async def test_a_failed_status_for_the_closed_window_holds_the_message_back_and_a_throughput_one_retries(client, db):
    hello = payload("text")
    hello["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "Hi"  # small talk: the bot answers
    await post(client, hello)
    [reply] = await rows(db, Delivery)
    await post(client, payload("status_failed_reengagement", wamid=reply.provider_message_id))
    [reply] = await rows(db, Delivery)
    assert reply.status == "skipped" and "outside WhatsApp's 24-hour window" in reply.last_error

    throttled = payload("status_failed")
    [status] = throttled["entry"][0]["changes"][0]["value"]["statuses"]
    status["errors"] = [{"code": 130429, "title": "Rate limit hit", "message": "Rate limit hit"}]
    await post(client, hello)  # no new reply: a repeat
    await post(client, payload("referral"))  # a second message, answered
    second = (await rows(db, Delivery))[-1]
    status["id"] = second.provider_message_id
    await post(client, throttled)
    [second] = await rows(db, Delivery, Delivery.id == second.id)
    assert second.status == "pending" and "130429" in second.last_error and second.provider_message_id is None


async def test_a_graph_api_that_cannot_be_reached_is_tried_again_later(make_client, settings, fake_graph, db):
    unreachable = meta_settings(fake_graph, graph_api_url="http://127.0.0.1:9/v21.0")  # the discard port: refused
    client = await make_client(settings.with_(meta=unreachable))
    await post(client, payload("text"))
    [reply] = await rows(db, Delivery)
    assert reply.status == "pending" and reply.last_error.startswith("the Graph API cannot be reached")
    assert fake_graph.sends == []


async def test_a_status_that_comes_before_its_send_is_recorded_is_asked_again_and_an_old_stranger_ignored(
    client, db, clock
):
    await post(client, payload("text"))
    early = await post(client, payload("status_read", wamid="wamid.not-recorded-yet"))
    assert early.status == 503  # Meta sends it again; by then the send is recorded

    clock.advance(timedelta(minutes=5))  # a status of a message some other tool sent on this number
    late = await post(client, payload("status_read", wamid="wamid.not-recorded-yet"))
    assert late.status == 200
    [reply] = await rows(db, Delivery)
    assert reply.seen_at is None
