"""Everything about one lead, for `kindling lead show` and `GET /api/leads/{id}`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import select

from bot.config import Settings
from bot.delivery.states import delivery_state
from flows.consent import email_state
from flows.likelihood import likelihood_line
from flows.reach import EmailPolicy, email_block
from flows.reactions import claim_text, lead_contacts, lead_label, ledger
from flows.scoring import explanation_text
from storage.db import Sessions
from storage.leads import claims, get_lead
from storage.models import Conversation, Delivery, Enrollment, Event, Identity
from storage.webhooks import list_deliveries, summary

EVENT_LIMIT = 200


async def lead_report(sessions: Sessions, settings: Settings, lead_id: int, now: datetime) -> dict[str, Any]:
    """The lead with score explanation, stage history, identities, conversations, events, deliveries, webhooks."""
    async with sessions() as session:
        lead = await get_lead(session, lead_id)
        lines = await ledger(session, lead.id)
        identities = (await session.exec(select(Identity).where(Identity.lead_id == lead.id))).all()
        claimed = await claims(session, lead.id)
        conversations = (
            await session.exec(select(Conversation).where(Conversation.lead_id == lead.id).order_by(Conversation.id))
        ).all()
        events = (
            await session.exec(
                select(Event)
                .where(Event.lead_id == lead.id)
                .order_by(Event.at.desc(), Event.id.desc())
                .limit(EVENT_LIMIT)
            )
        ).all()
        deliveries = (
            await session.exec(select(Delivery).where(Delivery.lead_id == lead.id).order_by(Delivery.id))
        ).all()
        enrollments = (
            await session.exec(select(Enrollment).where(Enrollment.lead_id == lead.id).order_by(Enrollment.id))
        ).all()
        webhooks = await list_deliveries(session, lead_id=lead.id, limit=EVENT_LIMIT)
    score = settings.scoring.score(lines, now)
    reasons = settings.scoring.explain(lines, now)
    return {
        "id": lead.id,
        **lead_contacts(lead),
        "stage": lead.stage,
        "stage_since": lead.stage_at.isoformat(),
        "score": score,
        "score_explained": explanation_text(score, reasons),
        "score_reasons": reasons,
        "first_touch": lead.first_touch,
        "last_touch": lead.last_touch,
        "first_name": lead.first_name,
        "last_name": lead.last_name,
        "tags": lead.tags,
        "note": lead.note,
        "opted_out_at": lead.opted_out_at.isoformat() if lead.opted_out_at else None,
        **email_state(lead),
        "channel_marketing": lead.channel_marketing,
        "email_nurture_held": email_block(
            lead, EmailPolicy(not settings.email.disabled(), settings.email.require_consent)
        ),
        "enrollments": [
            {
                "flow": e.flow_slug,
                "version": e.flow_version,
                "status": e.status,
                "next_step": e.step_index,
                "due_at": e.due_at.isoformat(),
                "exit_reason": e.exit_reason,
            }
            for e in enrollments
        ],  # fmt: skip
        "created_at": lead.created_at.isoformat(),
        "identities": [{"kind": i.kind, "value": i.value} for i in identities],
        "claims": claimed,
        "stages": [
            {
                "from": e.payload.get("from"),
                "to": e.payload.get("to"),
                "reason": e.payload.get("reason"),
                "at": e.at.isoformat(),
            }
            for e in reversed(events)
            if e.type == "stage_changed"
        ],
        "conversations": [
            {
                "id": c.id,
                "channel": c.channel,
                "external_id": c.external_id,
                "owner": c.owner,
                "created_at": c.created_at.isoformat(),
            }
            for c in conversations
        ],
        "events": [
            {"id": e.id, "type": e.type, "name": e.name, "at": e.at.isoformat(), "payload": e.payload} for e in events
        ],
        "deliveries": [
            {
                "id": d.id,
                "channel": d.channel,
                "kind": d.kind,
                "subject": d.subject,
                "flow": d.flow_slug,
                "step": d.step,
                "text": d.text,
                "status": d.status,
                "state": delivery_state(d.channel, d.status, d.delivered_at, d.seen_at, d.bounced_at),
                "attempts": d.attempts,
                "error": d.last_error,
                "sent_at": _iso(d.sent_at),
                "delivered_at": _iso(d.delivered_at),
                "seen_at": _iso(d.seen_at),
            }
            for d in deliveries
        ],
        "webhooks": [summary(row) for row in reversed(webhooks)],
    }


def _email_policy(settings: Settings) -> EmailPolicy:
    return EmailPolicy(not settings.email.disabled(), settings.email.require_consent)


def format_lead(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    lines = [
        f"Lead {report['id']}: {lead_label(report)}",
        f"  email {report['email'] or '-'}   phone {report['phone'] or '-'}   locale {report['locale'] or '-'}   "
        f"time zone {report['timezone'] or '-'}",
        *[f"  {claim_text(claim)}" for claim in report["claims"]],
        f"  {_email_line(report)}",
        *[f"  {_marketing_line(channel, state)}" for channel, state in sorted(report["channel_marketing"].items())],
        f"  stage {report['stage']} since {report['stage_since']}",
        f"  score {report['score_explained']}",
        *([f"  likelihood {_likelihood(report)}"] if report.get("likelihood") is not None else []),
        f"  first touch {_touch(report['first_touch'])}",
        f"  last touch  {_touch(report['last_touch'])}",
        "",
        "Stages:",
        *[f"  {s['at']}  {s['from']} -> {s['to']}  ({s['reason']})" for s in report["stages"]],
        "",
        "Conversations:",
        *[f"  #{c['id']} {c['channel']} {c['external_id']} (owner: {c['owner']})" for c in report["conversations"]],
        "",
        "Events (newest first):",
        *[
            f"  {e['at']}  {e['type']}{':' + e['name'] if e['name'] else ''}  {_event_detail(e)}"
            for e in report["events"]
        ],
        f"  opted out {report['opted_out_at']}" if report["opted_out_at"] else "  not opted out",
        "",
        "Flows:",
        *[
            f"  {e['flow']} ({e['version']}): {e['status']}"
            f"{', next step ' + str(e['next_step']) + ' due ' + e['due_at'] if e['status'] == 'active' else ''}"
            f"{' (' + e['exit_reason'] + ')' if e['exit_reason'] else ''}"
            for e in report["enrollments"]
        ],
        "",
        "Deliveries:",
        *[_delivery_line(d) for d in report["deliveries"]],
        "",
        "Webhooks:",
        *[f"  {webhook_line(w)}" for w in report["webhooks"]],
    ]
    return "\n".join(lines)


def _email_line(report: dict[str, Any]) -> str:
    """`email consent yes (widget, 2026-...)` or `email consent no`, and why nurture email is held, if it is."""
    consent = (
        f"yes ({report['email_consent_source']}, {report['email_consent_at']})" if report["email_consent"] else "no"
    )
    held = report["email_nurture_held"]
    return f"email consent {consent}   nurture email: {'held: ' + held if held else 'allowed'}"


def _marketing_line(channel: str, state: dict[str, Any]) -> str:
    """`whatsapp marketing consent yes (chat, 2026-...)`, and whether it stopped (and why)."""
    consent = f"yes ({state.get('consent_source')}, {state['consent_at']})" if state.get("consent_at") else "no"
    stopped = (
        f"   stopped {state['opted_out_at']}: {state.get('opted_out_reason')}" if state.get("opted_out_at") else ""
    )
    return f"{channel} marketing consent {consent}{stopped}"


def _delivery_line(d: dict) -> str:
    """`#3 telegram nurture drip/two queued (quiet hours): 'Two.'`; a webchat one may be `sent, not seen`."""
    where = f" {d['flow']}/{d['step']}" if d["flow"] else ""
    why = f" ({d['error']})" if d["error"] else ""
    return f"  #{d['id']} {d['channel']} {d['kind']}{where} {d['state']}{why}: {d['text'][:60]!r}"


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def webhook_line(row: dict) -> str:
    """`#7 crm lead.warm lead 3 dead after 1 attempt: answered 400 Bad Request: ...`."""
    attempts = f"{row['attempts']} attempt{'s' if row['attempts'] != 1 else ''}"
    state = {
        "delivered": f"delivered {row['delivered_at']}",
        "pending": f"pending, next try {row['next_attempt_at']}",
        "sending": "sending",
        "dead": f"dead after {attempts}",
    }[row["status"]]
    if row["status"] == "pending" and row["attempts"]:
        state += f" ({attempts} so far)"
    why = f": {row['last_error']}" if row["last_error"] and row["status"] != "delivered" else ""
    return f"#{row['id']} {row['endpoint']} {row['event_type']} lead {row['lead_id']} {state}{why}"


def _touch(touch: dict) -> str:
    if not touch:
        return "-"
    keys = ("source", "medium", "campaign", "landing", "channel", "at")
    return ", ".join(f"{key}={touch[key]}" for key in keys if touch.get(key))


def _event_detail(event: dict) -> str:
    payload = event["payload"]
    for key in ("text", "path", "value", "reason"):
        if payload.get(key):
            return repr(payload[key])[:80]
    return ""


def _likelihood(report: dict[str, Any]) -> str:
    shown = {"likelihood": report["likelihood"], "model": report["likelihood_model"]}
    return likelihood_line({**shown, "factors": report.get("likelihood_factors", [])})
