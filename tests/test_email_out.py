"""Email out: deliveries reach a real SMTP relay (aiosmtpd) with the right headers and parts, the relay's
answers decide what happens next, and one-click unsubscribe stops nurture email."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import update

from bot.config import EmailSettings
from bot.mail.compose import WIRE
from bot.mail.smtp import CONNECTIONS, Pacer
from bot.mail.tokens import read_reply_token, unsubscribe_token
from flows.clock import FrozenClock
from storage.models import Conversation, Delivery, Event, Lead

from conftest import rows, services_of, shipped_templates
from fake_smtp import DROP, FakeRelay

PUBLIC = "https://kindling.example"
FROM = "Acme <hello@acme.example>"
REPLIES = "reply.acme.example"
AT = FrozenClock().now()  # when the test clock starts: leads and deliveries are made then
STEP = "Hi **Ada**, here is [our pricing](https://acme.example/pricing).\n\nTalk soon."


@pytest.fixture
def email_settings(settings, fake_smtp: FakeRelay):
    email = EmailSettings(smtp_url=fake_smtp.url, from_address=FROM, reply_domain=REPLIES, rate=10_000)
    return settings.with_(public_url=PUBLIC, email=email)


@pytest.fixture
async def app(make_client, email_settings):
    return await make_client(email_settings)


async def email_lead(db, address: str = "ada@example.com") -> tuple[int, int]:
    """A lead who gave email consent, with an email conversation, as a flow or an operator would have it:
    (lead id, conversation id)."""
    async with db() as session:
        lead = Lead(
            first_name="Ada", email=address, email_consent_at=AT, email_consent_source="api",
            created_at=AT, updated_at=AT, stage_at=AT,
        )  # fmt: skip
        session.add(lead)
        await session.flush()
        conversation = Conversation(lead_id=lead.id, channel="email", external_id=address, created_at=AT)
        session.add(conversation)
        await session.commit()
        return lead.id, conversation.id


async def queue(
    db,
    lead: tuple[int, int],
    kind: str = "nurture",
    text: str = STEP,
    channel: str = "email",
    subject: str | None = None,
) -> int:
    """An outbox row for the lead's email (or another channel), due now; its id."""
    count = len(await rows(db, Delivery))
    async with db() as session:
        address = (await session.get(Conversation, lead[1])).external_id
        delivery = Delivery(
            lead_id=lead[0], conversation_id=lead[1], channel=channel, address=address, kind=kind,
            priority={"operator": 0, "nurture": 2}.get(kind, 1), text=text,
            subject=subject or f"About pricing ({kind})", idempotency_key=f"test:{lead[0]}:{count}",
            not_before=AT, created_at=AT,
        )  # fmt: skip
        session.add(delivery)
        await session.commit()
        return delivery.id


async def send_due(app) -> None:
    """What the outbox tick does, until nothing is due."""
    while await services_of(app).dispatcher.dispatch_due():
        pass


async def delivery(db, delivery_id: int) -> Delivery:
    [row] = await rows(db, Delivery, Delivery.id == delivery_id)
    return row


def parts(message) -> tuple[str, str]:
    """The text/plain and text/html bodies of a received message."""
    return message.get_body(("plain",)).get_content(), message.get_body(("html",)).get_content()


async def test_a_nurture_email_reaches_the_relay_with_its_parts_reply_to_and_one_click_unsubscribe(app, db, fake_smtp):
    lead = await email_lead(db)
    sent = await queue(db, lead, "nurture")
    await send_due(app)

    [received] = fake_smtp.messages
    message = received.message
    assert received.rcpt_tos == ("ada@example.com",)
    assert received.mail_from == f"bounces@{REPLIES}"  # delivery reports come back to the built-in receiver
    assert message["From"] == FROM and message["To"] == "ada@example.com"
    assert message["Subject"] == "About pricing (nurture)" and message["Date"]
    assert message["Message-ID"].endswith("@acme.example>")
    reply_token = message["Reply-To"].removeprefix("reply+").removesuffix(f"@{REPLIES}")
    services = services_of(app)
    assert read_reply_token(services.secret_key, reply_token, services.clock.now().date()) == lead[1]
    link = f"{PUBLIC}/email/unsubscribe/{unsubscribe_token(services.secret_key, lead[0])}"
    mailto = f"mailto:unsubscribe+{unsubscribe_token(services.secret_key, lead[0])}@{REPLIES}"
    assert message["List-Unsubscribe"] == f"<{link}>, <{mailto}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = parts(message)
    assert text.startswith(STEP) and link in text  # the Markdown as written, the link under it
    assert "<strong>Ada</strong>" in html and '<a href="https://acme.example/pricing">our pricing</a>' in html
    assert f'href="{link}"' in html  # the layout's footer
    row = await delivery(db, sent)
    assert row.status == "sent" and row.delivered_at is not None and row.provider_message_id == message["Message-ID"]


@pytest.mark.parametrize("kind", ["reply", "system", "operator"])
async def test_service_email_has_a_reply_to_and_no_unsubscribe_header(app, db, fake_smtp, kind):
    lead = await email_lead(db)
    await queue(db, lead, kind)
    await send_due(app)

    [received] = fake_smtp.messages
    assert received.message["Reply-To"].startswith("reply+") and received.message["Reply-To"].endswith(REPLIES)
    assert received.message["List-Unsubscribe"] is None and received.message["List-Unsubscribe-Post"] is None
    assert "unsubscribe" not in parts(received.message)[1].lower()


async def test_raw_html_in_a_step_is_shown_as_text_never_run(app, db, fake_smtp):
    await queue(db, await email_lead(db), text='Hello <script>alert("x")</script> <img src=x onerror=alert(1)>')
    await send_due(app)

    html = parts(fake_smtp.messages[0].message)[1]
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html


async def test_a_broken_layout_falls_back_to_the_built_in_one_logged_once(
    make_client, email_settings, db, fake_smtp, caplog, tmp_path
):
    templates = shipped_templates(tmp_path / "templates")
    (templates / "_email" / "layout.html.j2").write_text("{% if %}broken")
    app = await make_client(email_settings.with_(templates=templates))
    caplog.set_level(logging.ERROR)
    await queue(db, await email_lead(db, "ada@example.com"))
    await queue(db, await email_lead(db, "bob@example.com"))
    await send_due(app)

    assert len(fake_smtp.messages) == 2
    assert all("<strong>Ada</strong>" in parts(received.message)[1] for received in fake_smtp.messages)
    assert len([r for r in caplog.records if "layout" in r.getMessage()]) == 1


# What arrives is byte for byte what the standard library's email package writes for the same message
# (bot.mail.compose writes the bytes itself, for speed): plain and non-ASCII text, long lines (quoted-printable),
# subjects it must encode or fold, a display name it must quote, service email without the unsubscribe headers.
SAMPLES = [
    ("nurture", "About pricing", STEP),
    ("nurture", "Цены для вас, Ада", "Привет, **Ада**! Вот [наши цены](https://acme.example/ru/pricing).\n\nДо связи."),
    ("reply", "关于价格", "你好 **Ada**，这是我们的[价格](https://acme.example/zh)。"),
    ("nurture", "=?utf-8?q?looks_encoded?= but  is   not", "A line " + "that goes on and on " * 12 + "\n\n. a dot"),
    ("operator", "A subject " + "long " * 250, "Tabs\tand trailing spaces   \nand a \r\nCRLF, \u2028 a separator"),
    ("system", "Naïve café", "--===============0000000000000000001==\n\nA boundary look-alike, and 100% = fine"),
]


@pytest.mark.parametrize("sender", [FROM, "Acme, Inc. — Sales <hello@acme.example>"])
async def test_every_email_is_byte_for_byte_what_the_standard_library_writes(
    make_client, email_settings, db, fake_smtp, sender
):
    settings = email_settings.with_(email=replace(email_settings.email, from_address=sender))
    app = await make_client(settings)
    for number, (kind, subject, text) in enumerate(SAMPLES):
        await queue(db, await email_lead(db, f"lead{number}@example.com"), kind, text, subject=subject)
    await send_due(app)

    channel = services_of(app).dispatcher.channels["email"]
    received = {r.rcpt_tos[0]: r for r in fake_smtp.messages}
    assert len(received) == len(SAMPLES)
    for row in await rows(db, Delivery):
        assert row.status == "sent"
        data = received[row.address].data
        reference = channel.composer.compose(channel._letter(row), row.text)
        reference.set_boundary(received[row.address].message.get_boundary())  # the one random part
        assert data == reference.as_bytes(policy=WIRE), row.subject
        assert row.provider_message_id == reference["Message-ID"] == received[row.address].message["Message-ID"]
    encodings = {part["Content-Transfer-Encoding"] for r in fake_smtp.messages for part in r.message.iter_parts()}
    assert encodings == {"7bit", "8bit", "quoted-printable", "base64"}  # every way a part can be written


async def test_email_is_off_with_one_log_line_without_a_relay(make_client, settings, caplog):
    caplog.set_level(logging.INFO)
    app = await make_client(settings.with_(public_url=PUBLIC, email=EmailSettings(from_address=FROM)))

    assert "email" not in services_of(app).dispatcher.channels
    assert [r.getMessage() for r in caplog.records if "channel email" in r.getMessage()] == [
        "channel email is disabled: KINDLING_SMTP_URL is not set"
    ]


# One-click unsubscribe


async def test_one_click_unsubscribe_stops_nurture_email_once_and_leaves_chat_alone(app, db, fake_smtp):
    lead = await email_lead(db)
    queued_email = await queue(db, lead, "nurture")
    async with db() as session:  # the same lead on the widget, with a drip step waiting there
        session.add(Conversation(lead_id=lead[0], channel="webchat", external_id="visitor-1", created_at=AT))
        await session.commit()
    queued_chat = await queue(db, lead, "nurture", channel="webchat")
    url = f"/email/unsubscribe/{unsubscribe_token(services_of(app).secret_key, lead[0])}"

    for _ in range(2):  # a mail provider's one-click POST, replayed
        answer = await app.post(
            url, data="List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert answer.status == 200 and "unsubscribed" in await answer.text()

    [row] = await rows(db, Lead, Lead.id == lead[0])
    assert row.email_opted_out_at is not None and row.opted_out_at is None  # email only
    assert len(await rows(db, Event, Event.type == "email_opt_out")) == 1
    assert (await delivery(db, queued_email)).status == "skipped"
    assert (await delivery(db, queued_chat)).status == "pending"
    answer_to_their_question = await queue(db, lead, "reply")
    await send_due(app)
    assert [r.message["Subject"] for r in fake_smtp.messages] == ["About pricing (reply)"]
    assert (await delivery(db, answer_to_their_question)).status == "sent"


async def test_the_unsubscribe_link_opened_shows_a_button_and_changes_nothing(app, db):
    lead = await email_lead(db)
    answer = await app.get(f"/email/unsubscribe/{unsubscribe_token(services_of(app).secret_key, lead[0])}")

    page = await answer.text()
    assert answer.status == 200 and '<form method="post">' in page and "Unsubscribe</button>" in page
    assert (await rows(db, Lead))[0].email_opted_out_at is None


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_forged_unsubscribe_link_is_a_404_page(app, db, method):
    lead = await email_lead(db)
    forged = f"{lead[0]}-{'0' * 20}"
    answer = await app.request(method, f"/email/unsubscribe/{forged}", data="List-Unsubscribe=One-Click")

    assert answer.status == 404 and "not valid" in await answer.text()
    assert (await rows(db, Lead))[0].email_opted_out_at is None and await rows(db, Event) == []


async def test_nurture_email_to_an_unsubscribed_lead_is_skipped_at_send_time(app, db, fake_smtp):
    lead = await email_lead(db)
    async with db() as session:
        await session.exec(update(Lead).where(Lead.id == lead[0]).values(email_opted_out_at=AT))
        await session.commit()
    queued = await queue(db, lead, "nurture")  # queued after the opt-out, by a flow that did not check
    await send_due(app)

    row = await delivery(db, queued)
    assert fake_smtp.messages == [] and row.status == "skipped" and row.last_error == "unsubscribed from email"


# The relay's answers


async def test_a_relay_that_is_down_gets_the_email_later_exactly_once(app, db, fake_smtp, clock):
    queued = await queue(db, await email_lead(db))
    await fake_smtp.stop()
    await send_due(app)

    row = await delivery(db, queued)
    assert row.status == "pending" and "relay unreachable" in row.last_error and row.not_before > clock.now()
    await fake_smtp.start()
    await send_due(app)  # not due yet
    assert fake_smtp.messages == []
    clock.advance(timedelta(minutes=1))
    await send_due(app)
    clock.advance(timedelta(hours=1))
    await send_due(app)

    assert len(fake_smtp.messages) == 1 and (await delivery(db, queued)).status == "sent"


async def test_a_421_is_retried_and_the_email_goes_once(app, db, fake_smtp, clock):
    queued = await queue(db, await email_lead(db))
    fake_smtp.answer("MAIL", "421 4.7.0 Try again later")
    await send_due(app)

    row = await delivery(db, queued)
    assert row.status == "pending" and row.last_error.startswith("relay answered 421") and fake_smtp.messages == []
    clock.advance(timedelta(minutes=1))
    await send_due(app)
    assert len(fake_smtp.messages) == 1 and (await delivery(db, queued)).status == "sent"


async def test_a_connection_lost_during_data_is_not_counted_as_sent(app, db, fake_smtp, clock):
    queued = await queue(db, await email_lead(db))
    fake_smtp.answer("DATA", DROP)
    await send_due(app)

    assert (await delivery(db, queued)).status == "pending" and fake_smtp.messages == []
    clock.advance(timedelta(minutes=1))
    await send_due(app)
    assert len(fake_smtp.messages) == 1 and (await delivery(db, queued)).status == "sent"


async def test_a_550_bounces_the_address_and_later_email_to_it_is_skipped(app, db, fake_smtp, clock):
    lead = await email_lead(db)
    first = await queue(db, lead, "reply")
    fake_smtp.answer("RCPT", "550 5.1.1 <ada@example.com>: user unknown")
    await send_due(app)

    row = await delivery(db, first)
    assert row.status == "dead" and row.bounced_at is not None and "550" in row.last_error
    [marked] = await rows(db, Lead)
    assert marked.email_bounced_at is not None and "user unknown" in marked.email_bounce_reason
    later = await queue(db, lead, "operator")
    await send_due(app)
    assert fake_smtp.messages == []
    skipped = await delivery(db, later)
    assert skipped.status == "skipped" and skipped.last_error == "email bounced"


async def test_other_5xx_answers_fail_the_delivery_without_a_bounce(app, db, fake_smtp):
    lead = await email_lead(db)
    queued = await queue(db, lead)
    fake_smtp.answer("DATA", "554 5.7.1 Message rejected as spam")
    await send_due(app)

    row = await delivery(db, queued)
    assert row.status == "dead" and row.bounced_at is None and "554" in row.last_error
    assert (await rows(db, Lead))[0].email_bounced_at is None


# Connections and pacing


async def test_many_emails_share_a_few_connections_and_reconnect_when_the_relay_closed_them(app, db, fake_smtp):
    for number in range(12):
        await queue(db, await email_lead(db, f"lead{number}@example.com"), "system")
    await send_due(app)
    assert len(fake_smtp.messages) == 12 and fake_smtp.connections <= CONNECTIONS

    fake_smtp.close_connections()  # the relay's idle timeout
    await asyncio.sleep(0.05)  # let both ends see the close (socket events, not the app's clock)
    for number in range(12, 20):
        await queue(db, await email_lead(db, f"lead{number}@example.com"), "system")
    await send_due(app)

    assert len(fake_smtp.messages) == 20 and len(set(fake_smtp.message_ids())) == 20
    assert fake_smtp.connections <= 2 * CONNECTIONS
    assert {row.status for row in await rows(db, Delivery)} == {"sent"}


async def test_the_pacer_hands_out_slots_at_the_rate_with_no_burst():
    now, slept = [100.0], []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    pacer = Pacer(rate=4, time=lambda: now[0], sleep=sleep)
    await asyncio.gather(*(pacer.wait() for _ in range(5)))  # five at once: 0, 1/4, 2/4, 3/4, 4/4 s from now
    assert slept == [0.25, 0.5, 0.75, 1.0]
    now[0] += 10  # idle for a while: the next one goes at once, and no burst was saved up
    await pacer.wait()
    await pacer.wait()
    assert slept[4:] == [0.25]
