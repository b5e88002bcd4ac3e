"""WhatsApp: every message type Meta documents, ads as the first touch, the 24-hour window, templates, consent."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from bot.config import EmailSettings, MetaSettings
from flows.lint import lint_paths
from flows.whatsapp_rules import WhatsAppTemplate, by_name
from storage.models import Conversation, Delivery, Event, Handoff, Identity, Lead, Message

from conftest import API_KEY, rows, services_of, templates_with
from fake_graph import WABA_ID, WHATSAPP_TOKEN, meta_settings
from test_console_auth import csrf_of, log_in
from test_console_queue import operator
from test_console_queue import post as console_post
from test_meta import SENDER, payload, post
from test_webchat import hello

FOLLOW_UP = WhatsAppTemplate("follow_up", "en_US", parameters=1, category="marketing")
ORDER_UPDATE = WhatsAppTemplate("order_update", "en_US", parameters=0, category="utility")
FLOW = """+++
name = "WhatsApp follow-up"
trigger = "message"
+++
{% step "almost-a-day", after="1439m" %}Still thinking about the Pro plan, {{ lead.first_name or "you" }}?{% endstep %}
{% step "next-day", after="2m"TEMPLATE %}Here is 20% off the Pro plan, {{ lead.first_name or "there" }}.{% endstep %}
"""
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TEMPLATE = ', whatsapp_template="follow_up", whatsapp_parameters=["{{ lead.first_name or \'there\' }}"]'


def small_talk() -> dict:
    """The lead's text as small talk ("Hi"): their question would go to a person and pause nurture."""
    data = payload("text")
    data["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "Hi"
    return data


def flow(template: str = "") -> dict[str, str]:
    return {"whatsapp-follow-up": FLOW.replace("TEMPLATE", template)}


@pytest.fixture
def wa(settings, fake_graph):  # type: ignore[no-untyped-def]
    """Settings with WhatsApp on the fake Graph API, two templates configured."""
    return settings.with_(meta=meta_settings(fake_graph, whatsapp_templates=(FOLLOW_UP, ORDER_UPDATE)))


@pytest.fixture
async def client(make_client, wa):  # type: ignore[no-untyped-def]
    return await make_client(wa)


async def tick(client, clock, by: timedelta) -> None:  # type: ignore[no-untyped-def]
    """Time passes: due steps run and the outbox is sent."""
    clock.advance(by)
    services = services_of(client)
    await services.runner.run_due()
    await services.dispatcher.dispatch_due()
    await services.drain()


async def in_messages(db) -> list[Message]:  # type: ignore[no-untyped-def]
    return await rows(db, Message, Message.direction == "in")


# --- what comes in ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "text"),
    [
        ("text", "message", "Hi, how much is the Pro plan?"),
        ("interactive_button_reply", "button", "Talk to a human"),
        ("interactive_list_reply", "button", "Pro plan"),
        ("button", "button", "Yes, send me offers"),
        ("location", "message", "(location: Meta Headquarters, 1 Hacker Way, Menlo Park, CA 94025)"),
        ("image", "message", "(an image) This is the error I get"),
        ("document", "message", "(a document: requirements.pdf) Our requirements"),
        ("audio", "message", "(an audio)"),
        ("video", "message", "(a video) How it looks on my side"),
        ("sticker", "message", "(a sticker)"),
        ("order", "message", "(an order: 1 x pro-plan-annual, 2 x onboarding) Please deliver on Friday"),
    ],
)
async def test_each_message_type_is_taken_in_as_people_read_it(client, db, name, kind, text):
    response = await post(client, payload(name))

    assert response.status == 200
    [event] = await rows(db, Event, Event.type == kind)
    assert event.payload["channel"] == "whatsapp" and event.payload["text"] == text
    [message] = await in_messages(db)
    assert message.text == text


async def test_media_and_orders_keep_what_came_with_them(client, db):
    await post(client, payload("document"))
    await post(client, payload("order"))
    [document, order] = await rows(db, Event, Event.type == "message")
    assert document.payload["media"] == {
        "type": "document",
        "id": "1003383421387257",
        "mime_type": "application/pdf",
        "filename": "requirements.pdf",
        "caption": "Our requirements",
    }
    assert [item["product_retailer_id"] for item in order.payload["order"]["items"]] == [
        "pro-plan-annual",
        "onboarding",
    ]


async def test_a_reaction_is_an_event_not_a_message_and_unknown_types_are_kept_and_ignored(client, db):
    assert (await post(client, payload("reaction"))).status == 200
    assert (await post(client, payload("unsupported"))).status == 200

    [reaction] = await rows(db, Event, Event.type == "reaction")
    assert reaction.payload["reaction"]["emoji"] == "\U0001f44d"
    [unsupported] = await rows(db, Event, Event.type == "unsupported")
    assert unsupported.payload["errors"] == [{"code": 131051, "title": "Message type unknown"}]
    assert await in_messages(db) == []
    assert len(await rows(db, Lead)) == 1  # the same person both times


async def test_someone_elses_contact_card_is_a_claim_and_ones_own_is_not(client, db):
    await post(client, payload("contacts"))
    claims = {
        (e.payload["kind"], e.payload["value"], e.payload["verified"])
        for e in await rows(db, Event, Event.type == "contact_shared")
    }
    assert claims == {("phone", "+14155552671", False), ("email", "ann.lee@example.com", False)}
    assert ("phone", "+14155552671") not in {(i.kind, i.value) for i in await rows(db, Identity)}  # never merges

    await post(client, payload("contacts_own"))
    verified = [e.payload for e in await rows(db, Event, Event.type == "contact_shared") if e.payload["verified"]]
    assert [(p["kind"], p["value"]) for p in verified] == [("phone", "+16505551234")]
    assert len(await rows(db, Lead)) == 1


async def test_a_whatsapp_number_merges_with_the_lead_the_site_already_knows_by_phone(client, db):
    event = {"type": "signup", "lead": {"phone": "+16505551234", "email": "kerry@example.com"}}
    response = await client.post("/api/events", json=event, headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status in (200, 201)

    await post(client, small_talk())

    [lead] = await rows(db, Lead, Lead.merged_into_id.is_(None))
    assert lead.email == "kerry@example.com"
    assert {i.kind for i in await rows(db, Identity, Identity.lead_id == lead.id)} >= {"whatsapp", "phone", "email"}


async def test_an_ad_that_opened_the_chat_is_the_leads_first_touch(client, db, run_kindling):
    await post(client, payload("referral"))

    [lead] = await rows(db, Lead)
    touch = lead.first_touch
    assert (touch["source"], touch["medium"], touch["channel"]) == ("whatsapp_ad", "paid_social", "whatsapp")
    assert touch["campaign"] == "Spring sale: Pro plan 20% off" and touch["content"] == "6462812960130"
    period = ("--since", "2026-01-05", "--until", "2026-01-05")
    status, out, _ = await run_kindling("report", "funnel", *period, "--by", "source", "--format", "csv")
    assert status == 0 and "whatsapp_ad" in out


# --- the 24-hour window -------------------------------------------------------------------------


async def test_a_step_due_at_23h59m_goes_free_form_and_one_at_24h01m_without_a_template_is_held_back(
    make_client, wa, tmp_path, db, clock, fake_graph, run_kindling, add_operator
):
    client = await make_client(wa.with_(templates=templates_with(tmp_path / "t", flow())))
    await post(client, small_talk())
    await tick(client, clock, timedelta(minutes=1439))
    await tick(client, clock, timedelta(minutes=2))

    assert fake_graph.whatsapp_texts(SENDER)[-1] == "Still thinking about the Pro plan, Kerry?"
    [late] = await rows(db, Delivery, Delivery.step == "next-day")
    assert late.status == "skipped"
    assert late.last_error == "outside WhatsApp's 24-hour window; the step has no template"
    assert len(fake_graph.sends) == 2  # the greeting and the first step: nothing went out for the held one
    status, out, _ = await run_kindling("lead", "show", str(late.lead_id))
    assert status == 0 and "outside WhatsApp's 24-hour window; the step has no template" in out
    status, out, _ = await run_kindling("report", "flows", "--since", "2026-01-05", "--until", "2026-01-06")
    assert status == 0 and "outside WhatsApp's 24-hour window; the step has no template" in out
    await add_operator("ann", "operator")
    assert (await log_in(client, "ann")).status == 303
    page = await (await client.get(f"/console/leads/{late.lead_id}")).text()
    assert "outside WhatsApp&#39;s 24-hour window; the step has no template" in page


async def test_after_the_window_a_step_without_a_channel_goes_by_email_to_a_lead_who_consented(
    make_client, wa, tmp_path, db, clock, fake_graph, fake_smtp
):
    email = EmailSettings(smtp_url=fake_smtp.url, from_address="Acme <hello@acme.example>")
    templates = templates_with(tmp_path / "t", flow())
    client = await make_client(wa.with_(templates=templates, email=email, public_url="https://acme.example"))
    event = {"type": "signup", "lead": {"phone": "+16505551234", "email": "kerry@example.com"}}
    answer = await client.post("/api/events", json=event | {"consent": {"email": True}}, headers=AUTH)
    assert answer.status in (200, 201)
    await post(client, small_talk())
    await tick(client, clock, timedelta(minutes=1439))
    await tick(client, clock, timedelta(minutes=2))

    assert fake_graph.whatsapp_texts(SENDER)[-1] == "Still thinking about the Pro plan, Kerry?"
    [late] = await rows(db, Delivery, Delivery.step == "next-day")
    assert (late.channel, late.status, late.address, late.last_error) == ("email", "sent", "kerry@example.com", None)
    assert [m.message["To"] for m in fake_smtp.messages] == ["kerry@example.com"]
    assert "Here is 20% off the Pro plan, Kerry." in fake_smtp.messages[0].message.get_body(("plain",)).get_content()


async def test_a_step_at_24h01m_goes_as_its_template_with_rendered_parameters_to_a_lead_who_opted_in(
    make_client, wa, tmp_path, db, clock, fake_graph
):
    client = await make_client(wa.with_(templates=templates_with(tmp_path / "t", flow(TEMPLATE))))
    await post(client, small_talk())
    await post(client, payload("button"))  # "Yes, send me offers": consent to WhatsApp marketing
    await tick(client, clock, timedelta(minutes=1439))
    await tick(client, clock, timedelta(minutes=2))

    [lead] = await rows(db, Lead)
    assert lead.channel_marketing["whatsapp"]["consent_source"] == "chat"
    [sent] = [body for body in fake_graph.delivered() if body["type"] == "template"]
    assert sent["template"] == {
        "name": "follow_up",
        "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "Kerry"}]}],
    }
    [late] = await rows(db, Delivery, Delivery.step == "next-day")
    assert late.status == "sent"
    [early] = await rows(db, Delivery, Delivery.step == "almost-a-day")
    assert (early.status, early.template) == ("sent", None)  # inside the window: free-form


async def test_a_marketing_template_is_held_back_without_whatsapp_consent_and_stop_promotions_withdraws_it(
    make_client, wa, tmp_path, db, clock, fake_graph, run_kindling
):
    client = await make_client(wa.with_(templates=templates_with(tmp_path / "t", flow(TEMPLATE))))
    await post(client, small_talk())
    await tick(client, clock, timedelta(minutes=1439))
    await tick(client, clock, timedelta(minutes=2))

    [late] = await rows(db, Delivery, Delivery.step == "next-day")
    assert late.status == "skipped" and late.last_error == (
        "a marketing template needs WhatsApp consent: no whatsapp marketing consent"
    )
    assert [body["type"] for body in fake_graph.delivered()].count("template") == 0

    stop = payload("button")
    pressed = stop["entry"][0]["changes"][0]["value"]["messages"][0]
    pressed["id"] += "stop"  # another message than the consent press
    pressed["button"] = {"payload": "STOP", "text": "Stop promotions"}
    await post(client, payload("button"))
    await post(client, stop)
    [lead] = await rows(db, Lead)
    assert not lead.channel_marketing["whatsapp"]["consent_at"]
    assert [e.payload["consent"] for e in await rows(db, Event, Event.type == "channel_consent")] == [True, False]
    status, out, _ = await run_kindling("lead", "show", str(lead.id))
    assert status == 0 and "whatsapp marketing consent no" in out


async def test_whatsapp_consent_from_the_sites_backend_and_an_operator(client, db):
    await post(client, small_talk())
    [lead] = await rows(db, Lead)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    event = {"type": "newsletter", "lead": {"phone": "+16505551234"}, "consent": {"whatsapp": True}}
    assert (await client.post("/api/events", json=event, headers=headers)).status in (200, 201)
    [lead] = await rows(db, Lead)
    assert lead.channel_marketing["whatsapp"]["consent_source"] == "api"
    answer = await client.get(f"/api/leads/{lead.id}", headers=headers)
    assert (await answer.json())["channel_marketing"]["whatsapp"]["consent_source"] == "api"

    response = await client.patch(f"/api/leads/{lead.id}", json={"whatsapp_consent": False}, headers=headers)
    assert response.status == 200
    [lead] = await rows(db, Lead)
    assert not lead.channel_marketing["whatsapp"]["consent_at"]


async def test_whatsapp_consent_from_the_widget_and_a_frame_without_any_consent_is_refused(client, db):
    ws = await client.ws_connect("/chat/ws")
    await hello(ws)
    await ws.send_json({"type": "consent", "id": str(uuid.uuid4()), "email": None})
    refused = await ws.receive_json(timeout=5)
    assert refused["type"] == "error" and "whatsapp (true or false)" in refused["error"]

    frame_id = str(uuid.uuid4())
    await ws.send_json({"type": "consent", "id": frame_id, "whatsapp": True})
    while (frame := await ws.receive_json(timeout=5))["type"] != "ack":
        assert frame["type"] != "error", frame
    await ws.close()

    [lead] = await rows(db, Lead)
    assert lead.channel_marketing["whatsapp"]["consent_source"] == "widget"
    assert lead.email_consent_at is None  # WhatsApp consent is not email consent


async def test_stop_opts_out_on_whatsapp_as_everywhere(client, db, fake_graph):
    stop = small_talk()
    stop["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "STOP"
    await post(client, stop)
    [lead] = await rows(db, Lead)
    assert lead.opted_out_at is not None
    assert len(fake_graph.whatsapp_texts(SENDER)) == 1  # only the confirmation


# --- sending ------------------------------------------------------------------------------------


async def test_step_buttons_go_as_reply_buttons_when_whatsapp_can_show_them_else_as_text(
    make_client, wa, tmp_path, clock, fake_graph
):
    flows = {
        "buttons": """+++
name = "Buttons"
trigger = "message"
+++
{% step "three", after="1m", buttons=["Pricing", "A demo", "Talk to a human"] %}What next?{% endstep %}
{% step "four", after="1m", buttons=["Pricing", "A demo", "Case studies", "Talk to a human"] %}And now?{% endstep %}
"""
    }
    client = await make_client(wa.with_(templates=templates_with(tmp_path / "t", flows)))
    await post(client, small_talk())
    await tick(client, clock, timedelta(minutes=1))
    await tick(client, clock, timedelta(minutes=1))

    three, four = [body for body in fake_graph.delivered() if "What next" in str(body) or "And now" in str(body)]
    assert three["type"] == "interactive"
    assert [b["reply"]["title"] for b in three["interactive"]["action"]["buttons"]] == [
        "Pricing",
        "A demo",
        "Talk to a human",
    ]
    assert four["type"] == "text" and "- Case studies" in four["text"]["body"]


async def test_pressing_a_reply_button_reads_like_pressing_it_anywhere(client, db):
    await post(client, payload("interactive_button_reply"))
    [button] = await rows(db, Event, Event.type == "button")
    assert button.payload["value"] == "Talk to a human"
    assert len(await rows(db, Handoff)) == 1  # "Talk to a human" calls a human, as on every channel


# --- lint and simulate --------------------------------------------------------------------------


def test_lint_checks_whatsapp_buttons_and_templates_against_the_configured_ones(tmp_path):
    source = """+++
name = "Lint me"
trigger = "message"
+++
{% step "many", after="1m", buttons=["One", "Two", "Three", "Four"] %}Hi{% endstep %}
{% step "long", after="1m", buttons=["A button label that is too long"] %}Hi{% endstep %}
{% step "unknown", after="1d", whatsapp_template="no_such_template" %}Hi{% endstep %}
{% step "language", after="1d", whatsapp_template="follow_up", whatsapp_language="de",
   whatsapp_parameters=["x"] %}Hi{% endstep %}
{% step "count", after="1d", whatsapp_template="follow_up" %}Hi{% endstep %}
{% step "fine", after="1d", whatsapp_template="follow_up",
   whatsapp_parameters=["{{ lead.first_name or 'there' }}"] %}Hi{% endstep %}
{% step "telegram-only", after="1m", channel="telegram", buttons=["One", "Two", "Three", "Four"] %}Hi{% endstep %}
"""
    root = templates_with(tmp_path / "t", {"lint-me": source})
    problems = [p.message for p in lint_paths([root / "flows" / "lint-me.j2"], root, whatsapp=by_name((FOLLOW_UP,)))]

    assert problems == [
        "step 'many': WhatsApp shows at most 3 buttons (this step has 4): they would go as text",
        "step 'long': WhatsApp buttons take 20 characters; 'A button label that is too long' is longer: "
        "they would go as text",
        "step 'unknown': WhatsApp template 'no_such_template' is not configured ([[channels.whatsapp.templates]]; "
        "`kindling whatsapp templates` lists Meta's): known: follow_up",
        "step 'language': WhatsApp template 'follow_up' has no language 'de' (it has en_US)",
        "step 'count': WhatsApp template 'follow_up' (en_US) takes 1 parameters; the step gives 0",
    ]
    assert lint_paths([root / "flows" / "lint-me.j2"], root) == []  # WhatsApp off: nothing to say


async def test_simulate_shows_which_steps_go_free_form_as_a_template_or_are_held_back(
    tmp_path, run_kindling, monkeypatch
):
    flows = flow()
    flows["with-template"] = FLOW.replace("TEMPLATE", TEMPLATE)
    root = templates_with(tmp_path / "t", flows)
    monkeypatch.setenv("KINDLING_TEMPLATES", str(root))
    monkeypatch.setenv("KINDLING_QUIET_HOURS", "off")  # quiet hours could push a step out of the window too
    sample = tmp_path / "lead.json"
    sample.write_text(json.dumps({"first_name": "Kerry", "first_touch": {"channel": "whatsapp"}}))

    status, out, err = await run_kindling("simulate", "whatsapp-follow-up", "--days", "3", "--sample", str(sample))
    assert status == 0, err
    lines = out.splitlines()
    assert "inside the 24-hour window: free-form" in next(line for line in lines if "almost-a-day" in line)
    assert "held back: outside WhatsApp's 24-hour window; the step has no template" in next(
        line for line in lines if "next-day" in line
    )
    status, out, err = await run_kindling("simulate", "with-template", "--days", "3", "--sample", str(sample))
    assert "window closed: goes as template 'follow_up'" in next(
        line for line in out.splitlines() if "next-day" in line
    )


def test_meta_settings_name_every_missing_one():
    assert MetaSettings(whatsapp_token="x", app_secret="y").whatsapp_missing() == [
        "KINDLING_WHATSAPP_PHONE_ID",
        "KINDLING_META_VERIFY_TOKEN",
    ]
    assert Path(__file__).parent.joinpath("payloads", "whatsapp", "text.json").exists()


async def test_whatsapp_templates_prints_the_approved_ones_as_config_tables(fake_graph, run_kindling, monkeypatch):
    fake_graph.templates = [
        {
            "name": "follow_up",
            "components": [
                {"type": "HEADER", "format": "TEXT", "text": "Pro plan"},
                {"type": "BODY", "text": "Hi {{1}}! Still interested in the Pro plan? {{2}} off until Friday."},
                {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Stop promotions"}]},
            ],
            "language": "en_US",
            "status": "APPROVED",
            "category": "MARKETING",
            "id": "1152544135489041",
        },
        {
            "name": "order_update",
            "components": [{"type": "BODY", "text": "Your order is on its way."}],
            "language": "en_US",
            "status": "PENDING",
            "category": "UTILITY",
            "id": "1152544135489042",
        },
    ]
    monkeypatch.setenv("KINDLING_GRAPH_API_URL", fake_graph.url)
    monkeypatch.setenv("KINDLING_WHATSAPP_TOKEN", WHATSAPP_TOKEN)
    monkeypatch.setenv("KINDLING_WHATSAPP_BUSINESS_ID", WABA_ID)

    status, out, err = await run_kindling("whatsapp", "templates")

    assert status == 0, err
    assert out == (
        '[[channels.whatsapp.templates]]\nname = "follow_up"\nlanguage = "en_US"\nparameters = 2\n'
        'category = "marketing"\n\n'
    )
    status, out, _ = await run_kindling("whatsapp", "templates", "--all", "--format", "json")
    assert [(t["name"], t["status"]) for t in json.loads(out)] == [
        ("follow_up", "APPROVED"),
        ("order_update", "PENDING"),
    ]
    monkeypatch.setenv("KINDLING_WHATSAPP_TOKEN", "a-token-meta-does-not-know")
    status, _, err = await run_kindling("whatsapp", "templates")
    assert status == 1 and "190" in err and "Invalid OAuth access token" in err


# --- the console --------------------------------------------------------------------------------


async def again(client) -> str:  # type: ignore[no-untyped-def]
    """Ann logs in again; her CSRF token."""
    assert (await log_in(client, "ann")).status == 303
    return await csrf_of(client, "/console/leads")


async def test_an_operator_reply_outside_the_window_is_refused_and_a_template_offered_and_sent(
    client, db, clock, fake_graph, add_operator
):
    await post(client, payload("interactive_button_reply"))  # "Talk to a human"
    csrf = await operator(client, add_operator, "ann")
    [handoff] = await rows(db, Handoff)
    page = f"/console/handoffs/{handoff.id}"
    assert (await console_post(client, f"{page}/take", csrf)).status == 303
    clock.advance(timedelta(hours=23))
    csrf = await again(client)  # a console session lasts 12 hours
    assert (await console_post(client, f"{page}/reply", csrf, text="Hi Kerry, Ann here")).status == 303

    clock.advance(timedelta(hours=2))  # 25 hours since Kerry's last message
    csrf = await again(client)
    refused = await console_post(client, f"{page}/reply", csrf, text="Are you still there?")
    assert refused.status == 422
    shown = await refused.text()
    assert "outside WhatsApp&#39;s 24-hour window: only an approved template may go" in shown
    assert 'action="/console/handoffs/1/template"' in shown and "order_update (en_US, utility, 0 parameters)" in shown
    assert "WhatsApp&#39;s 24-hour window closed at 2026-01-06 12:00 UTC" in shown
    assert "Are you still there?" in shown  # the draft, not sent, is kept on the page

    sent = await console_post(client, f"{page}/template", csrf, template="order_update:en_US", parameters="")
    assert sent.status == 303
    await services_of(client).drain()
    assert fake_graph.whatsapp_texts(SENDER)[-2:] == ["Hi Kerry, Ann here", "template:order_update"]
    assert "Are you still there?" not in str(fake_graph.delivered())
    wrong = await console_post(client, f"{page}/template", csrf, template="follow_up:en_US", parameters="")
    assert wrong.status == 422 and "takes 1 parameters" in await wrong.text()


async def test_a_backlog_goes_batch_after_batch_once_each_in_order_within_the_daily_cap(
    make_client, wa, db, clock, fake_graph
):
    # The outbox tick sends a backlog claiming the next batch while the last one's sends are in flight:
    # still every message once, each person's in order, and the daily cap (2) holds back the third.
    meta = meta_settings(fake_graph, whatsapp_templates=(FOLLOW_UP, ORDER_UPDATE), whatsapp_recipient_gap=timedelta(0))
    client = await make_client(wa.with_(meta=meta))
    people = [str(16505551000 + i) for i in range(5)]
    for i, person in enumerate(people):
        text = json.dumps(small_talk()).replace(SENDER, person).replace("wamid.HBgL", f"wamid.{i}HBgL")
        assert (await post(client, json.loads(text))).status == 200
    services = services_of(client)
    conversations = await rows(db, Conversation)
    assert len(conversations) == len(people)
    async with db() as session:
        for conversation in conversations:
            for step in range(3):
                session.add(
                    Delivery(
                        lead_id=conversation.lead_id, conversation_id=conversation.id, channel="whatsapp",
                        address=conversation.external_id, kind="nurture", priority=2,
                        text=f"step {step} for {conversation.external_id}",
                        idempotency_key=f"backlog:{conversation.id}:{step}", not_before=clock.now(),
                        created_at=clock.now(),
                    )
                )  # fmt: skip
        await session.commit()

    assert await services.dispatcher.dispatch_backlog(limit=2) == 3 * len(people)  # each claimed once

    for person in people:
        assert [t for t in fake_graph.whatsapp_texts(person) if t.startswith("step")] == [
            f"step 0 for {person}",
            f"step 1 for {person}",
        ]
    nurture = await rows(db, Delivery, Delivery.idempotency_key.startswith("backlog:"))
    assert sorted(d.status for d in nurture) == ["pending"] * len(people) + ["sent"] * 2 * len(people)
    assert all("daily" in d.last_error for d in nurture if d.status == "pending")
