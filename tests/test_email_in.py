"""Email in: replies over SMTP into Kindling's own receiver and through Mailgun's and Postmark's webhooks,
unsubscribes by mail, bounces (DSNs and the providers' bounce webhooks)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest

from bot.config import ConfigError, EmailSettings, load_settings
from bot.mail.tokens import REPLY_DAYS, reply_address, unsubscribe_token
from storage.leads import email_conversation
from storage.models import Conversation, Delivery, Enrollment, Event, Lead, Message

from conftest import API_KEY, rows, services_of, templates_with

PAYLOADS = Path(__file__).parent / "payloads" / "email"
DOMAIN = "reply.acme.example"
MAILGUN_KEY = "key-test-mailgun-signing"
POSTMARK_AUTH = "postmark:inbound-secret"
ANN = "ann@example.com"
FLOW = """+++
name = "Welcome by email"
trigger = "custom:signup"
exit = ["reply"]
+++
{% step "welcome", after="1d" %}Welcome aboard!{% endstep %}
{% step "tips", after="2d" %}Three tips.{% endstep %}
"""


@pytest.fixture
async def app(make_client, settings, tmp_path):
    """The app with its SMTP receiver on a local port, both providers' webhooks on, and a test-owned flow."""
    email = EmailSettings(
        reply_domain=DOMAIN,
        inbound=("127.0.0.1", 0),  # the receiver takes a free port: no other process can take it first
        mailgun_signing_key=MAILGUN_KEY,
        postmark_inbound_auth=POSTMARK_AUTH,
    )
    templates = templates_with(tmp_path / "templates", {"welcome": FLOW})
    return await make_client(settings.with_(email=email, templates=templates))


@pytest.fixture
def port(app) -> int:
    """The port the app's SMTP receiver listens on."""
    return services_of(app).receiver.sockets[0].getsockname()[1]


async def signed_up(app, db, email=ANN) -> Conversation:
    """A lead made by the site's backend (enrolled in the flow), and its email conversation."""
    body = {"type": "signup", "lead": {"email": email}}
    response = await app.post("/api/events", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status == 201, await response.text()
    await services_of(app).drain()
    async with db() as session:
        [lead] = [each for each in await rows(db, Lead) if each.email == email]
        conversation = await email_conversation(session, lead, services_of(app).clock.now())
        await session.commit()
    return conversation


def address_of(app, conversation: Conversation, days_ago: int = 0) -> str:
    services = services_of(app)
    today = services.clock.now().date() - timedelta(days=days_ago)
    return reply_address(services.secret_key, conversation.id, DOMAIN, today)


def reply(to: str, text: str, message_id: str = "<r1@mail.example.com>", html: str | None = None) -> EmailMessage:
    """A reply as a mail client writes it."""
    message = EmailMessage()
    message["From"] = f"Ann Smith <{ANN}>"
    message["To"] = to
    message["Subject"] = "Re: Welcome aboard!"
    message["Message-ID"] = message_id
    message["In-Reply-To"] = "<welcome-1@acme.example>"
    message["Date"] = "Mon, 07 Dec 2026 10:05:00 +0000"
    if text:
        message.set_content(text)
    if html is not None:
        if text:
            message.add_alternative(html, subtype="html")
        else:
            message.set_content(html, subtype="html")
    return message


async def send(port: int, message: EmailMessage, to: str | None = None) -> None:
    """Deliver a message to the receiver over a real SMTP conversation."""
    await aiosmtplib.send(message, hostname="127.0.0.1", port=port, recipients=[to] if to else None)


async def messages_of(db) -> list[str]:
    return [each.text for each in await rows(db, Message, Message.direction == "in")]


# --- replies over SMTP ---------------------------------------------------------------------------


async def test_a_reply_lands_on_the_lead_as_a_message_and_ends_its_flow(app, db, port):
    conversation = await signed_up(app, db)
    [enrollment] = await rows(db, Enrollment)
    assert enrollment.status == "active"
    await send(port, reply(address_of(app, conversation), "Yes please, call me on Tuesday."))
    await services_of(app).drain()
    [message] = await rows(db, Message, Message.direction == "in")
    assert (message.conversation_id, message.lead_id, message.text) == (
        conversation.id,
        conversation.lead_id,
        "Yes please, call me on Tuesday.",
    )
    [event] = await rows(db, Event, Event.type == "message")
    assert event.payload["subject"] == "Re: Welcome aboard!" and event.dedup_key == "email:<r1@mail.example.com>"
    [enrollment] = await rows(db, Enrollment)
    assert (enrollment.status, enrollment.exit_reason) == ("exited", "reply")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    response = await app.get(f"/api/conversations/{conversation.id}/messages", headers=auth)
    assert "Yes please, call me on Tuesday." in await response.text()  # what the console shows
    [notice] = await rows(db, Delivery)  # "call me": a person is coming, and the lead hears so by email
    assert (notice.channel, notice.address, notice.kind) == ("email", ANN, "system")


async def test_a_forged_or_expired_token_is_refused_at_rcpt_and_nothing_is_stored(app, db, port):
    conversation = await signed_up(app, db)
    good = address_of(app, conversation)
    forged = good.replace(good.split("-")[-1].split("@")[0], "0" * 20)
    expired = address_of(app, conversation, days_ago=REPLY_DAYS + 1)
    for address in (forged, expired, f"ann@{DOMAIN}", "reply+1-1-00000000000000000000@elsewhere.example"):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await send(port, reply(address, "Let me in"))
        assert refused.value.recipients[0].code == 550
    await services_of(app).drain()
    assert await messages_of(db) == []


async def test_an_out_of_office_auto_reply_is_accepted_but_neither_stored_nor_ends_the_flow(app, db, port):
    conversation = await signed_up(app, db)
    message = reply(address_of(app, conversation), "I am out of the office until Monday, call me then.")
    message["Auto-Submitted"] = "auto-replied"
    await send(port, message)
    await services_of(app).drain()
    assert await messages_of(db) == []
    [enrollment] = await rows(db, Enrollment)
    assert enrollment.status == "active"


async def test_the_same_message_id_twice_is_stored_once(app, db, port):
    conversation = await signed_up(app, db)
    for _ in range(2):
        await send(port, reply(address_of(app, conversation), "Only once, please."))
        await services_of(app).drain()
    assert await messages_of(db) == ["Only once, please."]
    assert await rows(db, Delivery) == []  # no chat greeting or "got it" mailed back to a reply


QUOTED = {
    "en": (
        "Sounds good, call me Tuesday.\n\nBest regards,\nAnn Smith\nCEO, Foo Ltd\n\n"
        "On Mon, Dec 7, 2026 at 10:00 AM Acme <hello@acme.example> wrote:\n"
        + "".join(f"> Line {n} of our welcome email, with the whole offer.\n>\n" for n in range(40)),
        "Sounds good, call me Tuesday.",
    ),
    "ru": (
        "Да, интересно. Позвоните мне во вторник.\n\n-- \nАнна Петрова\nМенеджер\n\n"
        "пн, 7 дек. 2026 г. в 10:00, Acme <hello@acme.example>:\n"
        + "".join(f"> Строка {n} нашего письма с предложением.\n" for n in range(40)),
        "Да, интересно. Позвоните мне во вторник.",
    ),
    "zh": (
        "好的，请周二给我打电话。\n\n"
        "发件人: Acme <hello@acme.example>\n发送时间: 2026年12月7日 10:00\n收件人: Ann\n主题: 欢迎\n\n"
        + "".join(f"您好，这是我们报价的第{n}行。\n" for n in range(40)),
        "好的，请周二给我打电话。",
    ),
}


@pytest.mark.parametrize("language", sorted(QUOTED))
async def test_only_the_new_text_of_a_reply_with_long_quoted_history_is_stored(app, db, port, language):
    conversation = await signed_up(app, db)
    text, new = QUOTED[language]
    await send(port, reply(address_of(app, conversation), text))
    await services_of(app).drain()
    assert await messages_of(db) == [new]


async def test_an_html_only_reply_is_stored_as_text_without_its_quote(app, db, port):
    conversation = await signed_up(app, db)
    html = (
        "<html><head><style>p{color:red}</style></head><body><div dir='ltr'><p>Yes, <b>book</b> a demo &amp; "
        "send the deck.</p><p>Thanks!</p></div><div class='gmail_quote'><div class='gmail_attr'>On Mon, Dec 7, "
        "2026 Acme wrote:</div><blockquote>Hi Ann, welcome aboard! Here is everything.</blockquote></div></body></html>"
    )
    await send(port, reply(address_of(app, conversation), "", html=html))
    await services_of(app).drain()
    assert await messages_of(db) == ["Yes, book a demo & send the deck.\n\nThanks!"]


async def test_an_attachment_becomes_a_note_and_is_not_kept(app, db, port):
    conversation = await signed_up(app, db)
    message = reply(address_of(app, conversation), "Here is our brief.")
    message.add_attachment(
        b"%PDF-1.7 " + b"x" * (120 * 1024 - 9), maintype="application", subtype="pdf", filename="brief.pdf"
    )
    await send(port, message)
    await services_of(app).drain()
    assert await messages_of(db) == ["Here is our brief.\n\n(attachment: brief.pdf, 120 KB)"]
    [event] = await rows(db, Event, Event.type == "message")
    assert "PDF" not in json.dumps(event.payload)


async def test_a_message_over_25_mb_is_refused_by_size(app, db, port):
    conversation = await signed_up(app, db)
    message = reply(address_of(app, conversation), "Huge.")
    message.add_attachment(
        b"x" * (26 * 1024 * 1024), maintype="application", subtype="octet-stream", filename="big.bin"
    )
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port)
    async with client:
        await client.mail(ANN)
        await client.rcpt(address_of(app, conversation))
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await client.data(message.as_bytes())
    assert refused.value.code == 552
    await services_of(app).drain()
    assert await messages_of(db) == []


async def test_a_mailto_unsubscribe_stops_nurture_email(app, db, port):
    conversation = await signed_up(app, db)
    services = services_of(app)
    message = reply(f"unsubscribe+{unsubscribe_token(services.secret_key, conversation.lead_id)}@{DOMAIN}", "")
    message.set_content("This message will unsubscribe you.")
    await send(port, message)
    await send(port, message)  # a second one changes nothing
    [lead] = await rows(db, Lead, Lead.id == conversation.lead_id)
    assert lead.email_opted_out_at == services.clock.now()
    assert len(await rows(db, Event, Event.type == "email_opt_out")) == 1
    assert await messages_of(db) == []


# --- bounces by mail -----------------------------------------------------------------------------


def dsn(action: str, status: str) -> bytes:
    """A delivery status notification (RFC 3464) as Postfix sends it."""
    return f"""From: Mail Delivery System <MAILER-DAEMON@relay.example>
To: bounces@{DOMAIN}
Subject: Undelivered Mail Returned to Sender
Date: Mon, 7 Dec 2026 10:00:05 +0000
Message-ID: <dsn-{action}@relay.example>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B0UND"

--B0UND
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host relay.example.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--B0UND
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example
X-Postfix-Queue-ID: 4B7C21E0
Arrival-Date: Mon, 7 Dec 2026 10:00:00 +0000

Final-Recipient: rfc822; {ANN}
Original-Recipient: rfc822;{ANN}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.com
Diagnostic-Code: smtp; {status[0]}50 {status} mailbox unavailable

--B0UND
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Return-Path: <bounces@{DOMAIN}>
From: Acme <hello@acme.example>
To: {ANN}
Subject: Welcome aboard!
Message-ID: <welcome-1@acme.example>

--B0UND--
""".replace("\n", "\r\n").encode()


async def test_a_dsn_hard_bounce_marks_the_leads_address_and_a_delay_is_only_an_event(app, db, port):
    conversation = await signed_up(app, db)
    await aiosmtplib.send(
        dsn("delayed", "4.4.1"),
        recipients=[f"bounces@{DOMAIN}"],
        sender="MAILER-DAEMON@relay.example",
        hostname="127.0.0.1",
        port=port,
    )
    [lead] = await rows(db, Lead, Lead.id == conversation.lead_id)
    assert lead.email_bounced_at is None
    [soft] = await rows(db, Event, Event.type == "email_soft_bounce")
    assert soft.payload["address"] == ANN and soft.payload["reason"].startswith("4.4.1")
    verp = address_of(app, conversation)  # a relay may send the report to the reply address
    await aiosmtplib.send(
        dsn("failed", "5.1.1"), recipients=[verp], sender="MAILER-DAEMON@relay.example", hostname="127.0.0.1", port=port
    )
    [lead] = await rows(db, Lead, Lead.id == conversation.lead_id)
    assert lead.email_bounced_at is not None and lead.email_bounce_reason.startswith("5.1.1")
    assert len(await rows(db, Event, Event.type == "email_bounced")) == 1
    assert await messages_of(db) == []


async def test_mail_to_the_bounce_address_that_is_no_report_is_refused(app, db, port):
    await signed_up(app, db)
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(port, reply(f"bounces@{DOMAIN}", "Buy cheap watches"))
    assert refused.value.code == 550
    assert await messages_of(db) == []


# --- Mailgun -------------------------------------------------------------------------------------


def mailgun_signature(timestamp: str = "1765101900", token: str = "c" * 50) -> dict[str, str]:
    digest = hmac.new(MAILGUN_KEY.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": timestamp, "token": token, "signature": digest}


def mailgun_form(to: str, attachment: bool = False, signature: str | None = None) -> aiohttp.FormData:
    """A Mailgun route's forward() POST (documented fields), multipart when the mail has an attachment."""
    fields = json.loads((PAYLOADS / "mailgun_route.json").read_text())
    fields.update(recipient=to, To=to, **mailgun_signature())
    fields["signature"] = signature or fields["signature"]
    form = aiohttp.FormData()
    for key, value in fields.items():
        form.add_field(key, value)
    if attachment:
        form.add_field("attachment-count", "1")
        form.add_field("attachment-1", b"%PDF" + b"0" * 2044, filename="quote.pdf", content_type="application/pdf")
    return form


async def test_a_mailgun_reply_with_a_valid_signature_is_stored_once(app, db):
    conversation = await signed_up(app, db)
    for _ in range(2):  # a retry by Mailgun stores nothing more
        response = await app.post("/webhooks/email/mailgun", data=mailgun_form(address_of(app, conversation), True))
        assert (response.status, (await response.json())["status"]) == (200, "reply")
        await services_of(app).drain()
    assert await messages_of(db) == ["Sure, let's talk on Thursday.\n\n(attachment: quote.pdf, 2 KB)"]


async def test_a_mailgun_post_with_a_wrong_signature_is_refused_and_stores_nothing(app, db):
    conversation = await signed_up(app, db)
    form = mailgun_form(address_of(app, conversation), signature="0" * 64)
    response = await app.post("/webhooks/email/mailgun", data=form)
    assert response.status == 403
    await services_of(app).drain()
    assert await messages_of(db) == []


async def test_a_mailgun_reply_with_a_forged_token_is_answered_200_and_ignored(app, db):
    conversation = await signed_up(app, db)
    genuine = address_of(app, conversation)[: -len(DOMAIN) - 1]
    forged = genuine[:-1] + ("1" if genuine.endswith("0") else "0") + "@" + DOMAIN  # one character changed
    response = await app.post("/webhooks/email/mailgun", data=mailgun_form(forged))
    assert (response.status, (await response.json())["status"]) == (200, "ignored")
    assert await messages_of(db) == []


def mailgun_failed(severity: str) -> dict:
    body = json.loads((PAYLOADS / "mailgun_failed.json").read_text())
    body["signature"] = mailgun_signature(token="d" * 50)
    body["event-data"]["severity"] = severity
    body["event-data"]["id"] = f"failed-{severity}"
    return body


async def test_mailgun_failed_events_permanent_marks_the_address_temporary_is_an_event(app, db):
    conversation = await signed_up(app, db)
    response = await app.post("/webhooks/email/mailgun/events", json=mailgun_failed("temporary"))
    assert (response.status, (await response.json())["status"]) == (200, "recorded")
    [lead] = await rows(db, Lead, Lead.id == conversation.lead_id)
    assert lead.email_bounced_at is None and len(await rows(db, Event, Event.type == "email_soft_bounce")) == 1
    bad = mailgun_failed("permanent")
    bad["signature"]["signature"] = "f" * 64
    assert (await app.post("/webhooks/email/mailgun/events", json=bad)).status == 403
    [lead] = await rows(db, Lead, Lead.id == conversation.lead_id)
    assert lead.email_bounced_at is None
    response = await app.post("/webhooks/email/mailgun/events", json=mailgun_failed("permanent"))
    assert response.status == 200
    [lead] = await rows(db, Lead, Lead.id == conversation.lead_id)
    assert lead.email_bounced_at is not None and "550" in lead.email_bounce_reason


# --- Postmark ------------------------------------------------------------------------------------


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def postmark_inbound(to: str) -> dict:
    body = json.loads((PAYLOADS / "postmark_inbound.json").read_text())
    body["To"] = body["OriginalRecipient"] = to
    body["ToFull"][0]["Email"] = to
    return body


async def test_a_postmark_reply_with_the_right_login_is_stored_and_a_wrong_one_is_refused(app, db):
    conversation = await signed_up(app, db)
    body = postmark_inbound(address_of(app, conversation))
    for credentials in ("postmark:wrong", "", "postmark"):
        response = await app.post("/webhooks/email/postmark", json=body, headers=basic(credentials))
        assert response.status == 403
    assert (await app.post("/webhooks/email/postmark", json=body)).status == 403  # no login at all
    await services_of(app).drain()
    assert await messages_of(db) == []
    response = await app.post("/webhooks/email/postmark", json=body, headers=basic(POSTMARK_AUTH))
    assert (response.status, (await response.json())["status"]) == (200, "reply")
    await services_of(app).drain()
    assert await messages_of(db) == ["Thursday works. What does the Pro plan cost?\n\n(attachment: myimage.png, 4 KB)"]


async def test_postmark_bounce_webhook_hard_marks_the_address_soft_is_an_event(app, db):
    conversation = await signed_up(app, db)
    body = json.loads((PAYLOADS / "postmark_bounce.json").read_text())
    soft = {**body, "ID": 43, "Type": "SoftBounce", "TypeCode": 4096, "Inactive": False}
    response = await app.post("/webhooks/email/postmark/bounce", json=soft, headers=basic(POSTMARK_AUTH))
    assert response.status == 200
    assert (await app.post("/webhooks/email/postmark/bounce", json=body, headers=basic("x:y"))).status == 403
    [lead] = await rows(db, Lead, Lead.id == conversation.lead_id)
    assert lead.email_bounced_at is None and len(await rows(db, Event, Event.type == "email_soft_bounce")) == 1
    response = await app.post("/webhooks/email/postmark/bounce", json=body, headers=basic(POSTMARK_AUTH))
    assert response.status == 200
    [lead] = await rows(db, Lead, Lead.id == conversation.lead_id)
    assert lead.email_bounced_at is not None and "HardBounce" in lead.email_bounce_reason


async def test_providers_without_their_secret_have_no_routes(make_client, settings, db):
    app = await make_client(settings.with_(email=EmailSettings(reply_domain=DOMAIN)))
    for path in ("/webhooks/email/mailgun", "/webhooks/email/mailgun/events", "/webhooks/email/postmark"):
        assert (await app.post(path, json={})).status == 404
    assert await rows(db, Delivery) == []


async def test_malformed_provider_posts_get_a_clear_answer_never_a_500(app, db):
    await signed_up(app, db)
    login = basic(POSTMARK_AUTH)
    for path in ("/webhooks/email/postmark", "/webhooks/email/postmark/bounce"):
        assert (await app.post(path, data=b"{not json", headers=login)).status == 400
        assert (await app.post(path, json=[1, 2], headers=login)).status == 400
    odd = {"OriginalRecipient": 7, "ToFull": "x", "Headers": [1], "Attachments": [{"ContentLength": "big"}]}
    response = await app.post("/webhooks/email/postmark", json=odd, headers=login)
    assert (response.status, (await response.json())["status"]) == (200, "ignored")
    response = await app.post("/webhooks/email/postmark/bounce", json={"Email": 5, "Type": []}, headers=login)
    assert (response.status, (await response.json())["status"]) == (200, "ignored")
    signed = {"signature": mailgun_signature(), "event-data": "failed"}
    response = await app.post("/webhooks/email/mailgun/events", json=signed)
    assert (response.status, (await response.json())["status"]) == (200, "ignored")
    assert (await app.post("/webhooks/email/mailgun/events", json={"signature": "x"})).status == 403
    assert (await app.post("/webhooks/email/mailgun", data={"recipient": "x"})).status == 403
    assert await messages_of(db) == [] and await rows(db, Event, Event.type == "email_soft_bounce") == []


def test_provider_secrets_come_from_the_environment_and_a_login_without_password_stops_start_up(tmp_path):
    env = {"KINDLING_MAILGUN_SIGNING_KEY": MAILGUN_KEY, "KINDLING_POSTMARK_INBOUND_AUTH": POSTMARK_AUTH}
    email = load_settings(tmp_path / "none.toml", env=env).email
    assert (email.mailgun_signing_key, email.postmark_inbound_auth) == (MAILGUN_KEY, POSTMARK_AUTH)
    with pytest.raises(ConfigError, match="KINDLING_POSTMARK_INBOUND_AUTH"):
        load_settings(tmp_path / "none.toml", env={"KINDLING_POSTMARK_INBOUND_AUTH": "postmark"})
