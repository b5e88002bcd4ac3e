"""Who a lead is: verified identities merge leads; an email or phone typed (or forwarded) into a chat does not.

Ann is a paying customer: she chatted on the widget and the site's backend reported her purchase with her
email and phone. Bob is a stranger writing to the bot on Telegram.
"""

from __future__ import annotations

import html
import re

import pytest

from storage.models import Conversation, Event, Handoff, Identity, Lead

from conftest import API_KEY, TELEGRAM_SECRET, rows, services_of
from test_console_auth import log_in
from test_webchat import hello, next_from, say

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ANN_EMAIL, ANN_PHONE = "ann@example.com", "+14155552671"
ANN_TELEGRAM = {"id": 5550001, "is_bot": False, "first_name": "Ann", "last_name": "Lee", "language_code": "en"}
BOB = {"id": 6660002, "is_bot": False, "first_name": "Bob", "username": "bob_k", "language_code": "en"}
SENT = 1767614400  # when the forwarded message was first sent (Unix time)


async def customer(client) -> tuple[int, str]:
    """Ann chats on the widget and buys: the backend vouches for her email and phone. Her lead id and link."""
    ws = await client.ws_connect("/chat/ws")
    welcome = await hello(ws)
    await say(client, ws, "Hi, is the pro plan monthly?")
    lead = {"email": ANN_EMAIL, "phone": ANN_PHONE, "visitor_id": welcome["visitor"], "first_name": "Ann"}
    answer = await client.post("/api/events", json={"type": "purchase", "lead": lead}, headers=AUTH)
    assert answer.status == 201 and (await answer.json())["lead_id"] == welcome["lead"]
    await ws.close()
    return welcome["lead"], welcome["link"]


def from_bob(update_id: int, text: str, **fields) -> dict:
    """A message Bob sends the bot in his private chat, with any further Bot API fields."""
    message = {
        "message_id": update_id % 1000,
        "from": BOB,
        "chat": {"id": BOB["id"], "first_name": "Bob", "username": "bob_k", "type": "private"},
        "date": SENT + 600,
        "text": text,
        **fields,
    }
    return {"update_id": update_id, "message": message}


async def telegram(client, update: dict) -> None:
    """Post an update as Telegram does; the replies go out."""
    answer = await client.post(
        "/webhooks/telegram", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
    )
    assert answer.status == 200, await answer.text()
    await services_of(client).drain()


async def lead_of(db, channel: str) -> Lead:
    """The (surviving) lead that holds the one conversation on a channel."""
    [conversation] = await rows(db, Conversation, Conversation.channel == channel)
    [lead] = await rows(db, Lead, Lead.id == conversation.lead_id)
    return lead


async def report(client, lead_id: int) -> dict:
    answer = await client.get(f"/api/leads/{lead_id}", headers=AUTH)
    assert answer.status == 200
    return await answer.json()


def visible_text(page: str) -> str:
    """A page's text as a person reads it: tags gone, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


FORWARDS = {
    "Bot API 7 (forward_origin, with the older fields Telegram still sends)": {
        "forward_origin": {"type": "user", "date": SENT, "sender_user": ANN_TELEGRAM},
        "forward_from": ANN_TELEGRAM,
        "forward_date": SENT,
    },
    "a sender who hides their account": {
        "forward_origin": {"type": "hidden_user", "date": SENT, "sender_user_name": "Ann Lee"},
        "forward_sender_name": "Ann Lee",
        "forward_date": SENT,
    },
    "before Bot API 7 (forward_from only)": {"forward_from": ANN_TELEGRAM, "forward_date": SENT},
}


@pytest.mark.parametrize("forward", FORWARDS.values(), ids=FORWARDS.keys())
async def test_a_forwarded_message_with_a_customers_email_does_not_give_the_sender_her_lead(
    telegram_client, db, fake_telegram, forward
):
    ann, _ = await customer(telegram_client)

    text = f"My details for the order: {ANN_EMAIL}, {ANN_PHONE}"
    await telegram(telegram_client, from_bob(730300001, text, **forward))

    bob = await lead_of(db, "telegram")
    assert bob.id != ann and bob.merged_into_id is None
    assert (bob.email, bob.phone) == (None, None)  # not even a claim: the words are Ann's, not Bob's
    assert (await lead_of(db, "webchat")).id == ann  # her conversation stays hers: replies to it reach her only
    [customer_lead] = await rows(db, Lead, Lead.id == ann)
    assert (customer_lead.email, customer_lead.merged_into_id) == (ANN_EMAIL, None)
    assert {(i.kind, i.value) for i in await rows(db, Identity, Identity.lead_id == bob.id)} == {
        ("telegram", str(BOB["id"]))
    }
    assert await rows(db, Event, Event.type.in_(["merged", "contact_shared"])) == []
    [forwarded] = await rows(db, Event, Event.lead_id == bob.id, Event.type == "message")
    assert forwarded.payload["text"] == text and "origin" in forwarded.payload["forwarded"]
    assert not any(ANN_EMAIL in said or ANN_PHONE in said for said in fake_telegram.texts(BOB["id"]))
    assert (await report(telegram_client, bob.id))["claims"] == []


async def test_a_reply_quoting_someone_elses_address_claims_nothing(telegram_client, db):
    ann, _ = await customer(telegram_client)
    group = {"id": -1001234567890, "title": "Shop friends", "type": "supergroup"}
    forwarded_before = from_bob(730300009, f"Write me: {ANN_EMAIL}", **FORWARDS["before Bot API 7 (forward_from only)"])
    reply = {
        "external_reply": {
            "origin": {"type": "user", "date": SENT, "sender_user": ANN_TELEGRAM},
            "chat": group,
            "message_id": 42,
        },
        "quote": {"text": ANN_EMAIL, "position": 10, "is_manual": True},
    }

    await telegram(telegram_client, from_bob(730300010, "Is this the right address to order?", **reply))
    await telegram(telegram_client, from_bob(730300011, "Or this?", reply_to_message=forwarded_before["message"]))

    bob = await lead_of(db, "telegram")
    assert bob.id != ann and (bob.email, bob.merged_into_id) == (None, None)
    assert await rows(db, Event, Event.type.in_(["merged", "contact_shared"])) == []


async def test_a_forwarded_deep_link_does_not_join_the_web_visitor_it_was_made_for(telegram_client, db):
    ann, link = await customer(telegram_client)

    forward = FORWARDS["Bot API 7 (forward_origin, with the older fields Telegram still sends)"]
    await telegram(telegram_client, from_bob(730300002, f"/start v-{link}", **forward))

    bob = await lead_of(db, "telegram")
    assert bob.id != ann and bob.email is None
    assert (await lead_of(db, "webchat")).id == ann
    types = [e.type for e in await rows(db, Event, Event.lead_id == bob.id)]
    assert types[0] == "message" and "start" not in types  # not a start (a person will answer this message)


async def test_an_email_typed_that_belongs_to_another_lead_is_shown_as_a_claim_and_never_merged(
    telegram_client, db, fake_telegram, add_operator
):
    ann, _ = await customer(telegram_client)

    await telegram(telegram_client, from_bob(730300003, "Hello"))
    await telegram(telegram_client, from_bob(730300004, f"It's me, {ANN_EMAIL.upper()}"))

    bob = await lead_of(db, "telegram")
    assert bob.id != ann and (bob.email, bob.merged_into_id) == (None, None)
    assert (await lead_of(db, "webchat")).id == ann
    assert await rows(db, Event, Event.type == "merged") == []
    assert f"reach you at {ANN_EMAIL}" not in " ".join(fake_telegram.texts(BOB["id"]))
    claim = {"kind": "email", "value": ANN_EMAIL, "lead_id": ann}
    assert (await report(telegram_client, bob.id))["claims"] == [claim]
    assert (await report(telegram_client, ann))["claims"] == []
    # Operators see it on the lead page and on the context card of the handoff Bob asks for.
    await telegram(telegram_client, from_bob(730300005, "Can I talk to a human please?"))
    [handoff] = await rows(db, Handoff, Handoff.lead_id == bob.id)  # (Ann's question went to a person too)
    await add_operator("ola", "operator")
    await log_in(telegram_client, "ola")
    for page in (f"/console/leads/{bob.id}", f"/console/handoffs/{handoff.id}"):
        answer = await telegram_client.get(page)
        assert answer.status == 200
        assert f"also claims {ANN_EMAIL} of lead #{ann}" in visible_text(await answer.text()), page


async def test_a_claim_does_not_lead_the_real_owner_to_the_claimants_lead_later(telegram_client, db):
    await telegram(telegram_client, from_bob(730300006, f"Sign me up: {ANN_EMAIL}"))  # nobody has it yet
    bob = await lead_of(db, "telegram")
    assert bob.email == ANN_EMAIL  # his lead's address, typed: a claim, not an identity

    signup = {"type": "signup", "lead": {"email": ANN_EMAIL, "first_name": "Ann"}}
    answer = await telegram_client.post("/api/events", json=signup, headers=AUTH)

    ann = (await answer.json())["lead_id"]
    assert answer.status == 201 and ann != bob.id  # Ann's own lead: messages for her never reach Bob's chat
    assert (await lead_of(db, "telegram")).id == bob.id
    assert (await report(telegram_client, bob.id))["claims"] == [{"kind": "email", "value": ANN_EMAIL, "lead_id": ann}]


CARDS = {
    "a card": {"first_name": "Ann", "last_name": "Lee"},
    "a card saved under her email": {"first_name": ANN_EMAIL},
}


@pytest.mark.parametrize("names", CARDS.values(), ids=CARDS.keys())
async def test_someone_elses_contact_card_is_not_the_senders_identity(telegram_client, db, names):
    ann, _ = await customer(telegram_client)
    vcard = f"BEGIN:VCARD\nVERSION:3.0\nFN:Ann Lee\nTEL;TYPE=CELL:{ANN_PHONE}\nEMAIL:{ANN_EMAIL}\nEND:VCARD"
    card = {"phone_number": ANN_PHONE.lstrip("+"), **names, "user_id": ANN_TELEGRAM["id"], "vcard": vcard}

    update = from_bob(730300007, "", contact=card)
    del update["message"]["text"]
    await telegram(telegram_client, update)

    bob = await lead_of(db, "telegram")
    assert bob.id != ann and (bob.email, bob.phone) == (None, None)
    assert await rows(db, Event, Event.type.in_(["merged", "contact_shared"])) == []
    assert (await report(telegram_client, bob.id))["claims"] == []


async def test_the_senders_own_contact_button_joins_the_lead_with_that_phone(telegram_client, db, fake_telegram):
    ann, _ = await customer(telegram_client)
    ann_on_telegram = {"id": ANN_TELEGRAM["id"], "first_name": "Ann", "last_name": "Lee", "type": "private"}
    hello_update = {
        "update_id": 730300008,
        "message": {"message_id": 8, "from": ANN_TELEGRAM, "chat": ann_on_telegram, "date": SENT, "text": "Hi!"},
    }
    await telegram(telegram_client, hello_update)
    assert (await lead_of(db, "telegram")).id != ann  # a new Telegram account: nobody knows it is Ann yet

    own = {
        "phone_number": ANN_PHONE.lstrip("+"),
        "first_name": "Ann",
        "last_name": "Lee",
        "user_id": ANN_TELEGRAM["id"],
    }
    shared = {"message_id": 9, "from": ANN_TELEGRAM, "chat": ann_on_telegram, "date": SENT + 60, "contact": own}
    await telegram(telegram_client, {"update_id": 730300009, "message": shared})

    [lead] = await rows(db, Lead, Lead.merged_into_id.is_(None))
    assert lead.id == ann and (lead.email, lead.phone) == (ANN_EMAIL, ANN_PHONE)
    assert {c.channel for c in await rows(db, Conversation, Conversation.lead_id == ann)} == {"webchat", "telegram"}
    [event] = await rows(db, Event, Event.type == "contact_shared")
    assert event.payload["value"] == ANN_PHONE and event.payload["verified"] is True
    assert fake_telegram.texts(ANN_TELEGRAM["id"])[-1] == f"Thanks! We'll reach you at {ANN_PHONE}."
    assert (await report(telegram_client, ann))["claims"] == []


async def test_the_backend_naming_the_visitor_and_the_email_joins_their_leads(client, db):
    signup = {"type": "signup", "lead": {"email": ANN_EMAIL}}
    signed_up = (await (await client.post("/api/events", json=signup, headers=AUTH)).json())["lead_id"]
    ws = await client.ws_connect("/chat/ws")
    welcome = await hello(ws)
    await say(client, ws, f"I'm {ANN_EMAIL}")  # a claim: two leads still
    assert len(await rows(db, Lead, Lead.merged_into_id.is_(None))) == 2

    login = {"type": "login", "lead": {"email": ANN_EMAIL, "visitor_id": welcome["visitor"]}}
    answer = await client.post("/api/events", json=login, headers=AUTH)

    assert answer.status == 201
    [lead] = await rows(db, Lead, Lead.merged_into_id.is_(None))
    assert lead.id == signed_up and lead.email == ANN_EMAIL
    assert (await lead_of(db, "webchat")).id == signed_up
    assert (await report(client, signed_up))["claims"] == []  # the claim is verified now


# --- opt-out words: the whole message asks to stop, whatever its punctuation and case ----------------


async def widget_says(client, text: str):
    """A visitor says hi, then `text`; the open socket."""
    ws = await client.ws_connect("/chat/ws")
    await hello(ws)
    await say(client, ws, "hi")
    await say(client, ws, text)
    return ws


@pytest.mark.parametrize("text", ["STOP!", "Unsubscribe.", "opt out", "Отписаться!", "Opt-Out!!", " stop all… "])
async def test_a_stop_with_punctuation_or_in_several_words_opts_out(client, db, text):
    ws = await widget_says(client, text)

    confirmation = await next_from(ws, "bot")
    while "won't get any more" not in confirmation["text"]:
        confirmation = await next_from(ws, "bot")
    [lead] = await rows(db, Lead)
    assert lead.opted_out_at is not None


@pytest.mark.parametrize("text", ["Don't stop, tell me more!", "How do I opt out later?", "stopwatch"])
async def test_a_message_that_only_mentions_stopping_does_not_opt_out(client, db, text):
    await widget_says(client, text)

    [lead] = await rows(db, Lead)
    assert lead.opted_out_at is None


async def test_an_opt_out_phrase_of_several_words_from_the_config_opts_out(make_client, settings, db):
    client = await make_client(settings.with_(opt_out_words=("leave me alone",)))

    await widget_says(client, "Leave me ALONE!!!")

    [lead] = await rows(db, Lead)
    assert lead.opted_out_at is not None
