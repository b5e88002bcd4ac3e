"""What an event does to a lead inside the intake transaction: points, score, stage."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from flows import history
from flows.outgoing import Subscriptions, queue_webhook
from flows.scoring import LedgerLine, Scoring
from flows.stages import Stages
from storage.models import Event, Lead, PointsEntry


def event_subject(event: Event) -> str | None:
    """What a scoring rule's `match` is compared with, per event type."""
    payload = event.payload
    return {
        "page_view": payload.get("path"),
        "message": payload.get("text"),
        "button": payload.get("value"),
        "custom": event.name,
        "contact_shared": payload.get("kind"),
    }.get(event.type)


# `likelihood`: 0-100 from the accepted learned model (flows/learned_fit.py), None until a model scored the lead.
LEAD_CONTEXT_KEYS = (
    "id", "first_name", "last_name", "email", "phone", "locale", "timezone", "stage", "score", "likelihood",
    "tags", "first_touch", "last_touch",
)  # fmt: skip


def lead_context(lead: Lead | Row[Any]) -> dict[str, Any]:
    """What stage rules and flow expressions see as `lead` (LEAD_CONTEXT_KEYS), from a Lead or a row of them."""
    context = {key: getattr(lead, key) for key in LEAD_CONTEXT_KEYS}
    context["tags"], context["first_touch"], context["last_touch"] = (
        list(lead.tags),
        dict(lead.first_touch),
        dict(lead.last_touch),
    )
    return context


def lead_label(who: Lead | dict[str, Any]) -> str:
    """What to call a lead, never "(no name)": name, else email, phone, else "Visitor from <source or channel>".

    `who` is a lead, or a dict with `name`, `email`, `phone` and `first_touch` (a context card, a lead report)."""
    if isinstance(who, Lead):
        name = " ".join(part for part in (who.first_name, who.last_name) if part)
        email, phone, touch, channel = who.email, who.phone, who.first_touch or {}, None
    else:
        name, email, phone = who.get("name"), who.get("email"), who.get("phone")
        touch, channel = who.get("first_touch") or {}, who.get("channel")
    if name or email or phone:
        return str(name or email or phone)
    source = touch.get("source")
    where = source if source and source != history.NONE else touch.get("channel") or channel
    return f"Visitor from {where}" if where else "Visitor"


def lead_contacts(lead: Lead) -> dict[str, Any]:
    """Who the lead is and how to reach them, as the context card and the lead report show it."""
    return {
        "name": " ".join(part for part in (lead.first_name, lead.last_name) if part) or None,
        "email": lead.email,
        "phone": lead.phone,
        "locale": lead.locale,
        "timezone": lead.timezone,
    }


def claim_text(claim: dict[str, Any]) -> str:
    """An address the lead typed, as operators read it: `also claims ann@example.com of lead #12`."""
    if claim["lead_id"] is not None:
        return f"also claims {claim['value']} of lead #{claim['lead_id']}"
    return f"claims {claim['value']} (typed, not confirmed)"


def event_context(event: Event) -> dict[str, Any]:
    """What stage rules and flow expressions see as `event`; every key present."""
    payload = event.payload
    return {
        "type": event.type,
        "name": event.name,
        "path": payload.get("path"),
        "url": payload.get("url"),
        "text": payload.get("text"),
        "value": payload.get("value"),
        "properties": payload.get("properties", {}),
        "channel": payload.get("channel"),
    }


async def ledger(session: AsyncSession, lead_id: int) -> list[LedgerLine]:
    """Every points entry of a lead, oldest first."""
    rows = await session.exec(select(PointsEntry).where(PointsEntry.lead_id == lead_id).order_by(PointsEntry.id))
    return [LedgerLine(row.rule, row.points, row.at) for row in rows]


async def score_event(session: AsyncSession, scoring: Scoring, lead: Lead, event: Event, now: datetime) -> None:
    """Write the event's points to the ledger and refresh the lead's score."""
    earned = scoring.earn(event.type, event.name, event_subject(event))
    if any(rule.cap for rule in earned):
        earned = scoring.within_caps(earned, await ledger(session, lead.id), now)
    at = min(event.at, now)  # a backfilled event's points decay from when it happened
    for rule in earned:
        session.add(PointsEntry(lead_id=lead.id, event_id=event.id, rule=rule.name, points=rule.points, at=at))
    if earned:
        await session.flush()
        lead.score = scoring.score(await ledger(session, lead.id), now)


async def advance_stage(
    session: AsyncSession, stages: Stages, webhooks: Subscriptions, lead: Lead, event: Event, now: datetime
) -> Event | None:
    """Move the lead forward if a stage rule holds; the change is an event with its reason, at the event's time."""
    rule = stages.advance(lead.stage, lead_context(lead), event_context(event))
    if rule is None:
        return None
    reason, at = f"{rule.stage}: {rule.source}", stage_time(stages, lead, event, now)
    return await set_stage(session, stages, webhooks, lead, rule.stage, reason, now, at=at)


def stage_time(stages: Stages, lead: Lead, event: Event, now: datetime) -> datetime:
    """When the stage change an event causes happened: the event's time (a backfilled purchase is dated when it
    was made; one dated ahead, now), but not before the lead's last stage change, so the history stays in order."""
    at = min(event.at, now)
    moved = lead.stage_at > lead.created_at or lead.stage != stages.order[0]  # else still where it arrived
    return max(at, lead.stage_at) if moved else at


async def set_stage(
    session: AsyncSession,
    stages: Stages,
    webhooks: Subscriptions,
    lead: Lead,
    stage: str,
    reason: str,
    now: datetime,
    at: datetime | None = None,
) -> Event:
    """Record a stage change (by rule, operator or API) made `at` (default now): a `stage_changed` event, the
    stage history and `lead.stage_changed` webhooks."""
    at = at or now
    change = Event(
        lead_id=lead.id,
        type="stage_changed",
        payload={"from": lead.stage, "to": stage, "reason": reason},
        at=at,
    )
    await history.reach(session, stages, lead, stage, at)
    lead.stage, lead.stage_at, lead.updated_at = stage, at, now
    session.add_all([change, lead])
    await session.flush()
    await queue_webhook(session, webhooks, "lead.stage_changed", lead, {"stage": change.payload}, now)
    return change
