"""Email steps in flows: the channel a step takes and why, email consent, and what lint, preview and simulate show."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from test_cli import run

from bot.config import EmailSettings
from flows.lint import lint_file
from storage.models import Delivery, Event, Lead

from conftest import API_KEY, rows, services_of, templates_with
from test_webchat import hello

AUTH = {"Authorization": f"Bearer {API_KEY}"}
EMAIL_ON = EmailSettings(smtp_url="smtp://127.0.0.1:2525", from_address="Acme <hello@acme.example>")
SIGNUP = """+++
name = "Welcome"
trigger = "custom:signup"
+++
{% step "welcome", after="10m", channel="email", subject="Welcome, {{ lead.first_name or 'friend' }}!" %}
Hi {{ lead.first_name or "there" }}, here is [your guide](https://acme.example/guide).
{% endstep %}
"""
VISIT = """+++
name = "Pricing follow-up"
trigger = "page_view"
+++
{% step "nudge", after="10m", channel=["webchat", "email"], subject="About our plans" %}
Questions about plans?{% endstep %}
{% step "later", after="1h" %}Still thinking it over?{% endstep %}
"""


@pytest.fixture
def clock(clock):
    clock.advance(datetime(2026, 1, 6, 15, 0, tzinfo=UTC) - clock.now())  # 10:00 in New York: no quiet hours
    return clock


@pytest.fixture
async def app(make_client, settings, tmp_path):
    templates = templates_with(tmp_path / "templates", {"signup": SIGNUP, "visit": VISIT})
    return await make_client(settings.with_(templates=templates, email=EMAIL_ON))


async def signup(client, email, consent=None):
    body = {"type": "signup", "lead": {"email": email, "first_name": "Zoe"}}
    body |= {"consent": {"email": consent}} if consent is not None else {}
    answer = await client.post("/api/events", json=body, headers=AUTH)
    assert answer.status == 201, await answer.text()
    return (await answer.json())["lead_id"]


async def run_steps(client, clock, delta):
    clock.advance(delta)
    await services_of(client).runner.run_due()


async def consent_frame(ws, email, consent=True):
    frame_id = str(uuid.uuid4())
    await ws.send_json({"type": "consent", "id": frame_id, "email": email, "consent": consent})
    while (frame := await ws.receive_json(timeout=5))["type"] != "ack":
        assert frame["type"] != "error", frame
    assert frame["id"] == frame_id


async def skipped_reasons(db, lead_id):
    return [e.payload["reason"] for e in await rows(db, Event, Event.lead_id == lead_id, Event.type == "step_skipped")]


async def test_an_email_step_goes_by_email_with_its_subject_only_with_consent(app, clock, db):
    willing = await signup(app, "Zoe@Example.com", consent=True)
    unwilling = await signup(app, "max@example.com")
    await run_steps(app, clock, timedelta(minutes=10))
    [email] = await rows(db, Delivery)
    assert (email.lead_id, email.channel, email.address) == (willing, "email", "zoe@example.com")
    assert email.subject == "Welcome, Zoe!" and "[your guide](https://acme.example/guide)" in email.text
    assert await skipped_reasons(db, unwilling) == ["no email consent"]


async def test_a_channel_list_takes_the_widget_while_the_visitor_is_on_it_and_email_once_they_left(app, clock, db):
    staying = await app.ws_connect("/chat/ws")
    await hello(staying)
    await consent_frame(staying, "stay@example.com")
    leaving = await app.ws_connect("/chat/ws")
    await hello(leaving)
    await consent_frame(leaving, "leave@example.com")
    await leaving.close()
    await run_steps(app, clock, timedelta(minutes=10))
    by_address = {d.address: d for d in await rows(db, Delivery)}
    assert by_address["leave@example.com"].channel == "email"
    assert by_address["leave@example.com"].subject == "About our plans"
    [widget] = [d for d in by_address.values() if d.channel == "webchat"]
    assert widget.text == "Questions about plans?"
    await staying.close()


async def test_the_default_channel_emails_a_web_visitor_who_left_with_consent(app, clock, db):
    ws = await app.ws_connect("/chat/ws")
    await hello(ws)
    await consent_frame(ws, "gone@example.com")
    await ws.close()
    await run_steps(app, clock, timedelta(minutes=10))
    await run_steps(app, clock, timedelta(hours=1))
    later = (await rows(db, Delivery, Delivery.step == "later"))[0]
    assert (later.channel, later.address, later.subject) == ("email", "gone@example.com", "Pricing follow-up")


async def test_without_consent_a_channel_list_skips_the_step_and_says_why(app, clock, db):
    ws = await app.ws_connect("/chat/ws")
    await hello(ws)
    await ws.close()
    await run_steps(app, clock, timedelta(minutes=10))
    [lead] = await rows(db, Lead)
    assert await skipped_reasons(db, lead.id) == ["not on the widget now, no email address"]


async def test_consent_from_the_widget_the_events_api_and_an_operator_and_withdrawn(app, clock, db):
    ws = await app.ws_connect("/chat/ws")
    await hello(ws)
    await consent_frame(ws, "ann@example.com")
    [lead] = await rows(db, Lead)
    assert (lead.email, lead.email_consent_source) == ("ann@example.com", "widget")
    await ws.close()

    from_api = await signup(app, "bo@example.com", consent=True)
    [bo] = await rows(db, Lead, Lead.id == from_api)
    assert bo.email_consent_source == "api" and bo.email_consent_at == clock.now()
    refused = await app.post("/api/events", json={"type": "x", "lead": {"id": from_api}, "consent": True}, headers=AUTH)
    assert refused.status == 422 and "consent" in (await refused.json())["error"]

    withdrawn = await app.patch(f"/api/leads/{from_api}", json={"email_consent": False}, headers=AUTH)
    assert withdrawn.status == 200 and (await withdrawn.json())["email_consent"] is False
    await run_steps(app, clock, timedelta(minutes=10))
    assert await rows(db, Delivery, Delivery.lead_id == from_api) == []
    assert await skipped_reasons(db, from_api) == ["no email consent"]
    given = await app.patch(f"/api/leads/{from_api}", json={"email_consent": True}, headers=AUTH)
    assert (await given.json())["email_consent_source"] == "operator"
    bad = await app.patch(f"/api/leads/{from_api}", json={"email_consent": "yes"}, headers=AUTH)
    assert bad.status == 422


async def test_withdrawing_consent_skips_queued_nurture_email(app, clock, db):
    lead_id = await signup(app, "zoe@example.com", consent=True)
    clock.advance(datetime(2026, 1, 7, 3, 0, tzinfo=UTC) - clock.now())  # 22:00 in New York: quiet hours
    await services_of(app).runner.run_due()
    await services_of(app).dispatcher.dispatch_due()
    [queued] = await rows(db, Delivery)
    assert queued.channel == "email" and queued.status == "pending"
    await app.patch(f"/api/leads/{lead_id}", json={"email_consent": False}, headers=AUTH)
    [skipped] = await rows(db, Delivery)
    assert (skipped.status, skipped.last_error) == ("skipped", "no email consent")


async def test_lead_show_says_no_email_consent(app, clock, db, database_url, tmp_path):
    lead_id = await signup(app, "max@example.com")
    await run_steps(app, clock, timedelta(minutes=10))
    env = {"KINDLING_DATABASE_URL": database_url, "KINDLING_SMTP_URL": EMAIL_ON.smtp_url,
           "KINDLING_EMAIL_FROM": EMAIL_ON.from_address}  # fmt: skip
    shown = run("lead", "show", str(lead_id), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "email consent no   nurture email: held: no email consent" in shown.stdout
    assert "step_skipped  'no email consent'" in shown.stdout
    report = await (await app.get(f"/api/leads/{lead_id}", headers=AUTH)).json()
    assert report["email_consent"] is False and report["email_nurture_held"] == "no email consent"


def test_lint_wants_a_subject_and_valid_links_in_email_steps(tmp_path):
    broken = SIGNUP.replace(", subject=\"Welcome, {{ lead.first_name or 'friend' }}!\"", "")
    bad_link = VISIT.replace("Questions about plans?", "See [plans](/pricing) or {{ 'htps://x' }}.")
    templates = templates_with(tmp_path / "t", {"signup": broken, "visit": bad_link})
    [missing] = lint_file(templates / "flows" / "signup.j2", templates)
    assert missing.line == 5 and "needs a subject" in missing.message
    [link] = lint_file(templates / "flows" / "visit.j2", templates)
    assert link.line == 5 and "'/pricing'" in link.message and str(link).startswith(str(templates / "flows"))


def test_preview_shows_an_email_steps_subject_text_and_html(tmp_path):
    templates = templates_with(tmp_path / "t", {"signup": SIGNUP})
    shown = run("preview", "signup", env={"KINDLING_TEMPLATES": str(templates)})
    assert shown.returncode == 0, shown.stderr
    assert "channel: email" in shown.stdout and "subject: Welcome, Ann!" in shown.stdout
    assert "Hi Ann, here is [your guide](https://acme.example/guide)." in shown.stdout
    assert '<a href="https://acme.example/guide">your guide</a>' in shown.stdout  # the HTML part, in the layout
    assert "/email/unsubscribe/" in shown.stdout.partition("-- HTML --")[2]


def test_simulate_shows_the_channel_each_step_takes_and_why(tmp_path):
    templates = templates_with(tmp_path / "t", {"visit": VISIT})
    env = {"KINDLING_TEMPLATES": str(templates), "KINDLING_SMTP_URL": EMAIL_ON.smtp_url,
           "KINDLING_EMAIL_FROM": EMAIL_ON.from_address}  # fmt: skip
    shown = run("simulate", "visit", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "[email: not on the widget now, has consent]" in shown.stdout
    sample = tmp_path / "lead.json"
    sample.write_text(json.dumps({"email_consent": False}))
    refused = run("simulate", "visit", "--sample", str(sample), env=env)
    assert "[not sent: not on the widget now, no email consent]" in refused.stdout
    assert "[webchat: not on the widget now, no email consent, stored until they return]" in refused.stdout
