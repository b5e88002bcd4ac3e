"""Messenger and Instagram over real HTTP: Meta's webhook in, the fake Graph API's Send API out, the windows."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from bot.channels.meta import signature
from flows.lint import lint_paths
from storage.models import Conversation, Delivery, Event, Handoff, Identity, Lead, Message

from conftest import rows, services_of, templates_with
from fake_graph import APP_SECRET, ERRORS, VERIFY_TOKEN, meta_settings
from test_console_auth import csrf_of, log_in
from test_console_queue import operator
from test_console_queue import post as console_post
from test_webchat import hello

PAYLOADS = Path(__file__).parent / "payloads"
PSID, IGSID = "1254477777772919", "1914016008677135"
HUMAN = "Can I talk to a human?"
NURTURE = """+++
name = "Follow up"
trigger = "message"
exit = ["opt_out"]
+++
{% step "follow-up", after="10m", buttons=["Yes please", "Not now"] %}Still thinking about the Pro plan?{% endstep %}
"""


def payload(name: str, **replace: str) -> dict:
    """A notification from tests/payloads/<messenger|instagram>/<name>.json, placeholders replaced."""
    text = (PAYLOADS / f"{name}.json").read_text(encoding="utf-8")
    for placeholder, value in replace.items():
        text = text.replace(placeholder, value)
    return json.loads(text)


def said(name: str, text: str, sender: str = PSID) -> dict:
    """A text message from `sender` (Messenger's documented text payload with other words and id)."""
    data = payload(name)
    event = data["entry"][0]["messaging"][0]
    event["sender"]["id"] = sender
    event["message"]["text"] = text
    event["message"]["mid"] += f"-{abs(hash((sender, text)))}"
    return data


async def post(client, data: dict, secret: str = APP_SECRET, headers: dict | None = None):  # type: ignore[no-untyped-def]
    """POST a notification as Meta does (signed with `secret`), then wait for the replies to go out."""
    body = json.dumps(data).encode()
    signed = {"X-Hub-Signature-256": signature(secret, body), "Content-Type": "application/json"}
    response = await client.post("/webhooks/messenger", data=body, headers=signed if headers is None else headers)
    await services_of(client).drain()
    return response


def sends(fake_graph, to: str | None = None) -> list[dict]:
    """The Send API bodies the fake answered 200, to `to` if given."""
    return [body for body in fake_graph.delivered("/me/messages") if to is None or body["recipient"]["id"] == to]


@pytest.fixture
def ms_settings(settings, fake_graph):  # type: ignore[no-untyped-def]
    return settings.with_(meta=meta_settings(fake_graph))


@pytest.fixture
async def client(make_client, ms_settings):  # type: ignore[no-untyped-def]
    return await make_client(ms_settings)


async def test_meta_verification_of_the_messenger_webhook(client):
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    ok = await client.get("/webhooks/messenger", params=query)
    assert ok.status == 200 and await ok.text() == "1158201444"
    assert (await client.get("/webhooks/messenger", params={**query, "hub.verify_token": "guess"})).status == 403


@pytest.mark.parametrize("how", ["wrong secret", "no header", "tampered body"])
async def test_an_unsigned_notification_is_refused_and_nothing_stored(client, db, fake_graph, how):
    data = payload("messenger/text")
    if how == "wrong secret":
        response = await post(client, data, secret="not-the-app-secret")
    elif how == "no header":
        response = await post(client, data, headers={"Content-Type": "application/json"})
    else:
        body = json.dumps(data).encode()
        headers = {"X-Hub-Signature-256": signature(APP_SECRET, body), "Content-Type": "application/json"}
        response = await client.post(
            "/webhooks/messenger", data=body.replace(b"Pro plan", b"Max plan"), headers=headers
        )
    assert response.status == 403
    assert await rows(db, Lead) == [] and await rows(db, Event) == [] and sends(fake_graph) == []


async def test_a_messenger_message_makes_a_lead_answered_through_the_send_api(client, db, fake_graph):
    response = await post(client, payload("messenger/text"))

    assert response.status == 200 and (await response.json())["messages"] == 1
    [lead] = await rows(db, Lead)
    assert {(i.kind, i.value) for i in await rows(db, Identity)} == {("messenger", PSID)}
    [conversation] = await rows(db, Conversation)
    assert (conversation.channel, conversation.external_id) == ("messenger", PSID)
    [message] = await rows(db, Message, Message.direction == "in")
    assert message.text == "Hi, how much is the Pro plan?"
    [reply] = sends(fake_graph, PSID)
    assert reply["messaging_type"] == "RESPONSE" and reply["message"]["text"]
    assert fake_graph.sends[0].token == "EAAGfakePageTokenForKindlingTests"
    [delivery] = await rows(db, Delivery)
    assert delivery.status == "sent" and delivery.provider_message_id.startswith("m_")


async def test_an_instagram_message_is_its_own_channel_answered_with_the_page_token(client, db, fake_graph):
    assert (await post(client, payload("instagram/text"))).status == 200

    assert {(i.kind, i.value) for i in await rows(db, Identity)} == {("instagram", IGSID)}
    [conversation] = await rows(db, Conversation)
    assert conversation.channel == "instagram"
    [reply] = sends(fake_graph, IGSID)
    assert reply["messaging_type"] == "RESPONSE" and len(reply["message"]["text"].encode()) <= 1000
    [delivery] = await rows(db, Delivery)
    assert delivery.channel == "instagram" and delivery.status == "sent"


@pytest.mark.parametrize("name", ["messenger/quick_reply", "instagram/quick_reply"])
async def test_a_tapped_quick_reply_is_a_button_press_with_its_payload(client, db, name):
    await post(client, payload(name))
    [event] = await rows(db, Event, Event.type == "button")
    assert event.payload["value"] == "Send me a summary"


async def test_the_phone_quick_reply_is_a_message_claiming_the_number(client, db):
    await post(client, payload("messenger/quick_reply_phone"))
    assert await rows(db, Event, Event.type == "button") == []
    [message] = await rows(db, Message, Message.direction == "in")
    assert message.text == "+16505551234"
    [lead] = await rows(db, Lead)
    assert lead.phone == "+16505551234"  # a claim fills the empty field
    assert ("phone", "+16505551234") not in {(i.kind, i.value) for i in await rows(db, Identity)}  # never merges


@pytest.mark.parametrize(
    ("name", "note"),
    [
        ("messenger/attachment_image", "(an image)"),
        ("messenger/attachment_video", "(a video)"),
        ("messenger/attachment_audio", "(an audio message)"),
        ("messenger/attachment_file", "(a file)"),
        ("messenger/attachment_location", "(a location: Pinned Location)"),
        ("messenger/attachment_fallback", "(a link: Kindling - lead nurturing for chat) have a look"),
        ("instagram/attachment_image", "(an image)"),
        ("instagram/attachment_video", "(a video)"),
        ("instagram/attachment_audio", "(an audio message)"),
        ("instagram/attachment_file", "(a file)"),
        ("instagram/attachment_share", "(a shared post)"),
        ("instagram/attachment_ig_reel", "(a reel)"),
        ("instagram/story_mention", "(a mention of you in their story)"),
        ("instagram/story_reply", "(a reply to your story) Love this! Is it in stock?"),
    ],
)
async def test_attachments_are_kept_as_notes_in_the_transcript(client, db, name, note):
    assert (await post(client, payload(name))).status == 200
    [message] = await rows(db, Message, Message.direction == "in")
    assert message.text == note
    [event] = await rows(db, Event, Event.type == "message")
    assert event.payload["attachments"][0]["type"] in name or "story" in name


async def test_a_postback_is_a_button_press_and_a_get_started_with_a_ref_is_the_leads_source(client, db):
    await post(client, payload("messenger/postback"))
    [button] = await rows(db, Event, Event.type == "button")
    assert button.payload["value"] == "Talk to a human"

    await post(client, payload("instagram/postback"))
    assert len(await rows(db, Event, Event.type == "button")) == 2

    data = payload("messenger/postback_referral")
    data["entry"][0]["messaging"][0]["sender"]["id"] = "3456789012345678"
    await post(client, data)
    [start] = await rows(db, Event, Event.type == "start")
    lead = (await rows(db, Lead, Lead.id == start.lead_id))[0]
    touch = {key: lead.first_touch.get(key) for key in ("source", "medium", "campaign", "channel")}
    assert touch == {"source": "newsletter", "medium": "email", "campaign": "spring", "channel": "messenger"}


async def test_an_m_me_link_with_a_signed_visitor_link_joins_the_web_visitor(client, db):
    ws = await client.ws_connect("/chat/ws")
    welcome = await hello(ws)
    await ws.close()
    [visitor_lead] = await rows(db, Lead)

    await post(client, payload("messenger/referral_shortlink", REF_PLACEHOLDER=f"v-{welcome['link']}_s-site_c-chat"))

    assert [lead.id for lead in await rows(db, Lead, Lead.merged_into_id.is_(None))] == [visitor_lead.id]
    kinds = {i.kind for i in await rows(db, Identity, Identity.lead_id == visitor_lead.id)}
    assert {"visitor", "messenger"} <= kinds
    [start] = await rows(db, Event, Event.type == "start")
    assert start.payload["referral"]["source"] == "SHORTLINK"


async def test_a_forged_visitor_link_joins_nobody(client, db):
    ws = await client.ws_connect("/chat/ws")
    welcome = await hello(ws)
    await ws.close()
    forged = welcome["link"][:-4] + "0000"
    await post(client, payload("messenger/referral_shortlink", REF_PLACEHOLDER=f"v-{forged}_s-site"))
    assert len(await rows(db, Lead, Lead.merged_into_id.is_(None))) == 2


@pytest.mark.parametrize(
    ("name", "source", "campaign"),
    [
        ("messenger/referral_ad", "messenger_ad", "Spring sale: Pro plan 30% off"),
        ("messenger/message_referral_ad", "messenger_ad", "Spring sale: Pro plan 30% off"),
        ("instagram/referral_ad", "instagram_ad", "Spring sale on Instagram"),
        ("instagram/referral", "instagram", "spring"),
    ],
)
async def test_an_ad_or_link_that_opened_the_chat_is_the_leads_first_touch(client, db, name, source, campaign):
    assert (await post(client, payload(name))).status == 200
    [lead] = await rows(db, Lead)
    assert lead.first_touch["source"] == source and lead.first_touch["campaign"] == campaign
    if source.endswith("_ad"):
        assert lead.first_touch["medium"] == "paid_social" and lead.first_touch["content"].isdigit()


@pytest.mark.parametrize("name", ["messenger/echo", "instagram/echo", "instagram/deleted", "messenger/reaction"])
async def test_echoes_of_the_pages_own_messages_and_unread_events_are_answered_200_and_ignored(
    client, db, fake_graph, name
):
    response = await post(client, payload(name))
    assert response.status == 200 and (await response.json())["ignored"]
    assert await rows(db, Lead) == [] and sends(fake_graph) == []


async def test_another_object_is_answered_200_and_ignored(client, db):
    data = {**payload("messenger/text"), "object": "user"}
    response = await post(client, data)
    assert response.status == 200 and (await response.json())["ignored"] == ["object 'user'"]
    assert await rows(db, Lead) == []


async def test_meta_retrying_a_notification_stores_it_once(client, db, fake_graph):
    for _ in range(3):
        assert (await post(client, payload("messenger/text"))).status == 200
    assert len(await rows(db, Message, Message.direction == "in")) == 1
    assert len(sends(fake_graph)) == 1


async def test_a_batch_of_entries_takes_in_every_event(client, db, fake_graph):
    response = await post(client, payload("messenger/batched"))

    assert response.status == 200 and (await response.json())["messages"] == 3
    texts = sorted(m.text for m in await rows(db, Message, Message.direction == "in"))
    assert texts == ["First message", "Hello from Ann", "Second message"]
    assert len(await rows(db, Lead)) == 2
    assert {body["recipient"]["id"] for body in sends(fake_graph)} == {PSID, "2345678901234567"}


def _ms(moment) -> str:  # type: ignore[no-untyped-def]
    return str(int(moment.timestamp() * 1000))


async def test_a_read_before_its_delivery_ends_as_seen_and_later_messages_stay_unread(client, db, clock):
    await post(client, said("messenger/text", "Hi"))
    [first] = await rows(db, Delivery)
    clock.advance(timedelta(minutes=1))
    read = payload("messenger/read", **{"1458668856253": _ms(clock.now()), "1458668856463": _ms(clock.now())})
    clock.advance(timedelta(minutes=1))
    await post(client, said("messenger/text", "ok"))  # answered after the read's watermark
    assert (await post(client, read)).status == 200
    delivery = payload("messenger/delivery", MID_PLACEHOLDER=first.provider_message_id)
    assert (await post(client, delivery)).status == 200  # old watermark: only the mid counts

    first, *later = await rows(db, Delivery)
    assert first.seen_at is not None and first.delivered_at is not None and first.status == "sent"
    assert later and all(row.seen_at is None and row.delivered_at is None for row in later)


async def test_a_delivery_report_by_mid_and_an_instagram_seen(client, db):
    await post(client, payload("messenger/text"))
    await post(client, payload("instagram/text"))
    messenger, instagram = await rows(db, Delivery)
    await post(client, payload("messenger/delivery", MID_PLACEHOLDER=messenger.provider_message_id))
    await post(client, payload("instagram/seen", MID_PLACEHOLDER=instagram.provider_message_id))

    messenger, instagram = await rows(db, Delivery)
    assert messenger.delivered_at is not None and messenger.seen_at is None
    assert instagram.seen_at is not None and instagram.delivered_at is not None


@pytest.fixture
async def nurtured(make_client, ms_settings, tmp_path):  # type: ignore[no-untyped-def]
    templates = templates_with(tmp_path / "templates", {"follow-up": NURTURE})
    return await make_client(ms_settings.with_(templates=templates))


@pytest.mark.parametrize(
    ("wait", "goes"), [(timedelta(hours=23, minutes=59), True), (timedelta(hours=24, minutes=1), False)]
)
async def test_a_nurture_step_goes_inside_the_24_hour_window_and_is_held_back_after(
    nurtured, db, fake_graph, clock, run_kindling, wait, goes
):
    await post(nurtured, said("messenger/text", "Hi"))
    clock.advance(wait)
    services = services_of(nurtured)
    await services.runner.run_due()
    await services.dispatcher.dispatch_due()

    [step] = await rows(db, Delivery, Delivery.kind == "nurture")
    if goes:
        [sent] = [body for body in sends(fake_graph) if body["message"]["text"].startswith("Still thinking")]
        assert sent["messaging_type"] == "RESPONSE" and "tag" not in sent
        assert [reply["title"] for reply in sent["message"]["quick_replies"]] == ["Yes please", "Not now"]
        assert step.status == "sent"
    else:
        assert not [body for body in sends(fake_graph) if body["message"]["text"].startswith("Still thinking")]
        assert step.status == "skipped" and step.last_error.startswith("outside Messenger's 24-hour window")
        status, out, _ = await run_kindling("lead", "show", str(step.lead_id))
        assert status == 0 and "outside Messenger's 24-hour window" in out


async def _held_by_ann(client, db, add_operator, channel: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A Messenger or Instagram lead who asked for a person, taken by Ann; her CSRF token and the handoff's page."""
    csrf = await operator(client, add_operator, "ann")
    await post(client, said(f"{channel}/text", HUMAN, sender=PSID if channel == "messenger" else IGSID))
    [handoff] = await rows(db, Handoff)
    page = f"/console/handoffs/{handoff.id}"
    assert (await console_post(client, f"{page}/take", csrf)).status == 303
    return csrf, page


async def _log_in_again(client) -> str:  # type: ignore[no-untyped-def]
    """Days later Ann's console session has ended: she logs in again; her new CSRF token."""
    assert (await log_in(client, "ann")).status == 303
    return await csrf_of(client, "/console/leads")


@pytest.mark.parametrize(("channel", "name"), [("messenger", "Messenger"), ("instagram", "Instagram")])
async def test_an_operator_reply_on_day_6_goes_as_a_human_agent_and_on_day_8_is_refused(
    client, db, fake_graph, clock, add_operator, channel, name
):
    csrf, page = await _held_by_ann(client, db, add_operator, channel)
    text = await (await client.get(page)).text()
    assert f"{name}&#39;s 24-hour window is open until 2026-01-06 12:00 UTC" in text

    clock.advance(timedelta(days=6))
    csrf = await _log_in_again(client)
    text = await (await client.get(page)).text()
    assert f"{name}&#39;s 24-hour window closed at" in text and "an operator may reply (as a human agent) until" in text
    assert (await console_post(client, f"{page}/reply", csrf, text="Sorry for the wait!")).status == 303
    [sent] = [body for body in sends(fake_graph) if body["message"]["text"] == "Sorry for the wait!"]
    assert sent["messaging_type"] == "MESSAGE_TAG" and sent["tag"] == "HUMAN_AGENT"

    clock.advance(timedelta(days=2))
    csrf = await _log_in_again(client)
    refused = await console_post(client, f"{page}/reply", csrf, text="Still there?")
    text = await refused.text()
    assert refused.status == 422 and f"more than 7 days since the person&#39;s last message on {name}" in text
    assert "Still there?" in text  # the draft is kept
    assert not [body for body in sends(fake_graph) if body["message"]["text"] == "Still there?"]
    assert await rows(db, Delivery, Delivery.text == "Still there?") == []


async def test_an_operator_reply_queued_in_time_but_sent_after_7_days_is_held_back(client, db, fake_graph, clock):
    await post(client, payload("messenger/text"))
    [conversation] = await rows(db, Conversation)
    services = services_of(client)
    clock.advance(timedelta(days=7, minutes=1))
    row = Delivery(
        lead_id=conversation.lead_id, conversation_id=conversation.id, channel="messenger", address=PSID,
        kind="operator", priority=0, text="Late", idempotency_key="late", not_before=clock.now(),
        created_at=clock.now(),
    )  # fmt: skip
    async with services.sessions() as session:
        session.add(row)
        await session.commit()
    await services.dispatcher.dispatch_due()
    [late] = await rows(db, Delivery, Delivery.text == "Late")
    assert late.status == "skipped" and "more than 7 days" in late.last_error
    assert not [body for body in sends(fake_graph) if body["message"]["text"] == "Late"]


@pytest.mark.parametrize(
    ("error", "status", "remark"),
    [
        ("messenger_rate_limit", "pending", "(#4)"),
        ("messenger_call_limit", "pending", "(#613)"),
        ("messenger_page_limit", "pending", "(#32)"),
        ("unavailable", "pending", "131016"),
        ("server_error", "pending", "131000"),
        ("messenger_outside_window", "skipped", "24-hour window"),
        ("messenger_unavailable", "dead", "551"),
        ("invalid_parameter", "dead", "(#100)"),
    ],
)
async def test_each_send_api_error_is_retried_held_back_or_final(client, db, fake_graph, error, status, remark):
    fake_graph.fail_next(error)
    await post(client, payload("messenger/text"))

    [reply] = await rows(db, Delivery)
    assert reply.status == status and remark in reply.last_error
    assert fake_graph.sends[0].status == ERRORS[error][0]
    [lead] = await rows(db, Lead)
    assert bool(lead.channel_marketing.get("messenger", {}).get("opted_out_at")) == (error == "messenger_unavailable")


async def test_a_rate_limited_reply_goes_on_the_retry(client, db, fake_graph, clock):
    fake_graph.fail_next("messenger_rate_limit")
    await post(client, payload("messenger/text"))
    clock.advance(timedelta(minutes=1))
    await services_of(client).dispatcher.dispatch_due()
    [reply] = await rows(db, Delivery)
    assert reply.status == "sent" and len(sends(fake_graph, PSID)) == 1


async def test_messenger_without_its_settings_is_off_with_one_line_naming_what_is_missing(
    make_client, settings, caplog
):
    caplog.set_level(logging.INFO)
    client = await make_client(settings)
    assert (await client.get("/webhooks/messenger")).status in (404, 405)
    lines = [r.getMessage() for r in caplog.records if "channel messenger is disabled" in r.getMessage()]
    assert lines == [
        "channel messenger is disabled: KINDLING_MESSENGER_PAGE_TOKEN, KINDLING_META_APP_SECRET, "
        "KINDLING_META_VERIFY_TOKEN are not set"
    ]


MANY = ", ".join(f'"Option {n}"' for n in range(1, 15))
BUTTONY = f"""+++
name = "Buttons"
trigger = "message"
+++
{{% step "many", after="1h", channel="messenger", buttons=[{MANY}] %}}Pick one.{{% endstep %}}
{{% step "long", after="2h", buttons=["Send me the full price list"] %}}Want it?{{% endstep %}}
{{% step "fine", after="3h", channel="instagram", buttons=["Yes please", "Not now"] %}}OK?{{% endstep %}}
"""


async def test_lint_warns_about_buttons_messenger_and_instagram_cannot_show(run_kindling, tmp_path):
    flow = templates_with(tmp_path / "templates", {"buttons": BUTTONY}) / "flows" / "buttons.j2"

    status, out, _ = await run_kindling("lint", str(flow))  # Messenger is off: only the step naming it
    assert status == 1
    assert out.splitlines() == [
        f"{flow}:5: step 'many': Messenger and Instagram show at most 13 quick replies (this step has 14): "
        "they would go as a list in the text"
    ]

    problems = [str(p) for p in lint_paths([flow], messenger=True)]  # on: every step that may go there
    assert len(problems) == 2 and "'Send me the full price list' is longer" in problems[1]


async def test_buttons_that_do_not_fit_go_as_a_list_in_the_text(
    make_client, ms_settings, tmp_path, db, fake_graph, clock
):
    templates = templates_with(tmp_path / "templates", {"buttons": BUTTONY})
    client = await make_client(ms_settings.with_(templates=templates))
    await post(client, said("messenger/text", "Hi"))
    clock.advance(timedelta(hours=1, minutes=1))
    await services_of(client).runner.run_due()
    await services_of(client).dispatcher.dispatch_due()

    [sent] = [body for body in sends(fake_graph) if body["message"]["text"].startswith("Pick one.")]
    assert "quick_replies" not in sent["message"] and "- Option 14" in sent["message"]["text"]


async def test_the_funnel_report_breaks_down_by_messenger_and_instagram(client, run_kindling):
    await post(client, payload("messenger/text"))
    await post(client, payload("instagram/text"))
    await post(client, said("messenger/text", "Hi from someone else", sender="2345678901234567"))

    period = ("--since", "2026-01-01", "--until", "2026-01-31")  # the test clock's month
    status, out, _ = await run_kindling("report", "funnel", *period, "--by", "channel", "--format", "csv")
    assert status == 0
    rows_by = {line.split(",")[0]: line for line in out.splitlines()[1:] if ",visitor," in line}
    assert {"messenger", "instagram"} <= set(rows_by)
    assert rows_by["messenger"].startswith("messenger,visitor,2") and rows_by["instagram"].startswith(
        "instagram,visitor,1"
    )


async def test_a_reply_to_an_earlier_message_reads_as_its_text_and_an_unsupported_one_is_kept(client, db):
    await post(client, payload("messenger/reply_to"))
    [message] = await rows(db, Message, Message.direction == "in")
    assert message.text == "hello, world!"

    response = await post(client, payload("instagram/unsupported"))
    assert response.status == 200
    [kept] = await rows(db, Event, Event.type == "unsupported")
    assert kept.payload["mid"].endswith("unsupported")


async def test_simulate_shows_which_steps_messenger_would_hold_back_and_where_the_default_goes_instead(
    tmp_path, run_kindling, monkeypatch
):
    steps = (
        '{% step "same-day", after="23h" %}Any questions about the Pro plan?{% endstep %}\n'
        '{% step "next-day", after="2h" %}Here is 20% off the Pro plan.{% endstep %}\n'
        '{% step "only-messenger", after="1h", channel="messenger" %}Still there?{% endstep %}\n'
    )
    root = templates_with(tmp_path / "t", {"later": NURTURE.split("+++\n{%")[0] + "+++\n" + steps})
    monkeypatch.setenv("KINDLING_TEMPLATES", str(root))
    monkeypatch.setenv("KINDLING_QUIET_HOURS", "off")
    sample = tmp_path / "lead.json"
    sample.write_text(json.dumps({"first_name": "Ann", "first_touch": {"channel": "messenger"}}))

    status, out, err = await run_kindling("simulate", "later", "--days", "3", "--sample", str(sample))

    assert status == 0, err
    line = {name: next(line for line in out.splitlines() if f"{name}:" in line) for name in ("same-day", "next-day")}
    assert "[messenger: wrote from messenger; inside the 24-hour window]" in line["same-day"]
    assert "messenger's 24-hour window has closed" in line["next-day"]  # the default looks elsewhere, and says why
    only = next(line for line in out.splitlines() if "only-messenger:" in line)
    assert "held back: outside Messenger's 24-hour window" in only
