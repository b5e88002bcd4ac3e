"""The context card: everything an operator needs about a lead, frozen at the moment of the handoff."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from flows.likelihood import lead_likelihood, likelihood_line
from flows.reactions import claim_text, lead_contacts, lead_label, ledger
from flows.scoring import Scoring, explanation_text
from storage.leads import claims
from storage.models import Conversation, Delivery, Enrollment, Event, Lead, Message

TRANSCRIPT = 10
PAGES = 15
TOP_REASONS = 5
CARD_FACTORS = 3  # the learned likelihood's top factors on the card


async def build_card(
    session: AsyncSession, scoring: Scoring, lead: Lead, conversation: Conversation | None, now: datetime
) -> dict[str, Any]:
    """The card as JSON: who (and what they claim), channel, touches, score, stages, pages, flows, transcript."""
    lines = await ledger(session, lead.id)
    score, reasons = scoring.score(lines, now), scoring.explain(lines, now)[:TOP_REASONS]
    return {
        "lead_id": lead.id,
        **lead_contacts(lead),
        "claims": await claims(session, lead.id),
        "channel": conversation.channel if conversation else None,
        "conversation_id": conversation.id if conversation else None,
        "first_touch": dict(lead.first_touch),
        "last_touch": dict(lead.last_touch),
        "score": score,
        "score_explained": explanation_text(score, reasons),
        "score_reasons": reasons,
        "likelihood": await lead_likelihood(session, lead, now, CARD_FACTORS),  # None before a model scored it
        "stage": lead.stage,
        "stages": await _stages(session, lead.id),
        "pages": await _pages(session, lead.id),
        "flows": await lead_flows(session, lead.id),
        "transcript": await _transcript(session, lead.id),
    }


async def _events(session: AsyncSession, lead_id: int, kind: str, limit: int) -> list[Event]:
    query = select(Event).where(Event.lead_id == lead_id, Event.type == kind)
    rows = await session.exec(query.order_by(Event.at.desc(), Event.id.desc()).limit(limit))
    return list(reversed(rows.all()))


async def _stages(session: AsyncSession, lead_id: int) -> list[dict]:
    changes = await _events(session, lead_id, "stage_changed", 20)
    return [{"from": e.payload.get("from"), "to": e.payload.get("to"), "at": e.at.isoformat()} for e in changes]


async def _pages(session: AsyncSession, lead_id: int) -> list[dict]:
    views = await _events(session, lead_id, "page_view", PAGES)
    return [{"path": e.payload.get("path"), "title": e.payload.get("title"), "at": e.at.isoformat()} for e in views]


async def lead_flows(session: AsyncSession, lead_id: int) -> list[dict]:
    """Each flow the lead was in, as it is now (active, paused, exited, completed), with the steps already sent."""
    enrollments = (await session.exec(select(Enrollment).where(Enrollment.lead_id == lead_id))).all()
    sent = await session.exec(
        select(Delivery).where(Delivery.lead_id == lead_id, Delivery.kind == "nurture", Delivery.status == "sent")
    )
    steps: dict[int, list[str]] = {}
    for delivery in sent.all():
        steps.setdefault(delivery.enrollment_id or 0, []).append(delivery.step or "")
    return [
        {"flow": e.flow_slug, "status": e.status, "steps_sent": steps.get(e.id or 0, [])}
        for e in sorted(enrollments, key=lambda e: e.id or 0)
    ]


async def _transcript(session: AsyncSession, lead_id: int) -> list[dict]:
    query = select(Message).where(Message.lead_id == lead_id).order_by(Message.id.desc()).limit(TRANSCRIPT)
    messages = reversed((await session.exec(query)).all())
    return [{"from": m.author, "text": m.text, "at": m.at.isoformat()} for m in messages]


def card_text(card: dict[str, Any], reason: str) -> str:
    """The card as plain text, for the Telegram operators' group."""
    contacts = ", ".join(value for value in (card.get("email"), card.get("phone")) if value) or "no contacts"
    first, last = card.get("first_touch") or {}, card.get("last_touch") or {}
    lines = [
        f"Warm lead #{card['lead_id']}: {lead_label(card)} ({contacts})",
        *([f"Note: {'; '.join(map(claim_text, card['claims']))}"] if card.get("claims") else []),
        f"Why: {reason}",
        f"Channel: {card.get('channel') or '-'}   stage: {card.get('stage')}",
        f"Score: {card.get('score_explained')}",
        *([f"Likelihood: {likelihood_line(card['likelihood'])}"] if card.get("likelihood") else []),
        f"First touch: {_touch(first)}",
        f"Last touch: {_touch(last)}",
    ]
    if card.get("pages"):
        lines.append("Pages: " + ", ".join(page["path"] or "?" for page in card["pages"][-5:]))
    for flow in card.get("flows", []):
        lines.append(f"Flow {flow['flow']} ({flow['status']}): sent {', '.join(flow['steps_sent']) or 'nothing yet'}")
    if card.get("transcript"):
        lines += ["", *(f"{line['from']}: {line['text']}" for line in card["transcript"])]
    return "\n".join(lines)[:3900]  # Telegram allows 4096 characters; the ending note needs room


def _touch(touch: dict) -> str:
    keys = ("source", "medium", "campaign", "landing", "channel")
    return ", ".join(f"{key} {touch[key]}" for key in keys if touch.get(key)) or "-"
