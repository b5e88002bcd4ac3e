"""Opening a handoff: the Handoff row with its SLA and context card, the bot stepping aside, nurture pausing.

Both intake (warm signals) and the flow runner (`action="handoff"`) call `open_handoff` inside their own
transaction, so the handoff (and its `lead.warm` webhook rows) commits with whatever caused it. Notifying
operators is the bot's job: a Handoff row whose `console_notified_at` / `telegram_notified_at` is empty is
still to be announced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from flows import history
from flows.handoff_card import build_card, lead_flows
from flows.hours import BusinessHours
from flows.outgoing import Subscriptions, handoff_summary, queue_webhook
from flows.scoring import Scoring
from flows.spec import FlowSpec
from storage.known import known
from storage.models import Conversation, Enrollment, Event, Handoff, Lead
from storage.operators import operator_at_console

OPEN = ("waiting", "claimed")
QUESTION = "question"  # the trigger of a handoff opened because a lead wrote something only a person can answer
INTENT_WORDS = ("talk to a human", "call me", "price", "оператор", "позвоните", "人工", "客服")
HANDOFF_BUTTONS = ("Talk to a human", "Talk to a person", "Поговорить с человеком", "联系人工客服")


@dataclass(frozen=True)
class HandoffPolicy:
    """When a lead is warm, how fast a human must answer, and when humans are in."""

    warm_score: float | None = 75.0
    intent_words: tuple[str, ...] = INTENT_WORDS
    buttons: tuple[str, ...] = HANDOFF_BUTTONS
    sla: timedelta = timedelta(minutes=5)
    hours: BusinessHours | None = None
    escalation: timedelta | None = timedelta(minutes=15)
    questions: bool = True  # whatever else a lead writes (not small talk) goes to a person as trigger `question`

    def sla_due(self, now: datetime) -> datetime:
        """The deadline for a first answer: the SLA counts from the next opening when out of hours."""
        start = self.hours.next_open(now) if self.hours is not None else now
        return start + self.sla

    def is_open(self, now: datetime) -> bool:
        """Whether operators are in now."""
        return self.hours is None or self.hours.is_open(now)


class EngineParts(Protocol):
    """What opening a handoff needs of the flow engine (a protocol: flows.engine imports this module)."""

    scoring: Scoring
    handoff: HandoffPolicy
    webhooks: Subscriptions

    async def spec_of(self, session: AsyncSession, enrollment: Enrollment) -> FlowSpec | None: ...


def one_line(text: str, limit: int) -> str:
    """A text on one line, at most `limit` characters, ending in an ellipsis where it was cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


async def open_handoff_of(session: AsyncSession, lead_id: int) -> Handoff | None:
    """The lead's waiting or claimed handoff, if any."""
    answers = known(session)
    if answers is not None and lead_id in answers.handoffs:
        return answers.handoffs[lead_id]
    query = select(Handoff).where(Handoff.lead_id == lead_id, Handoff.status.in_(OPEN))
    return (await session.exec(query)).first()


async def _sla_due(session: AsyncSession, policy: HandoffPolicy, now: datetime) -> datetime:
    """The SLA counts from now in hours or while an operator is online in the console, else from the opening."""
    if not policy.is_open(now) and await operator_at_console(session, now):
        return now + policy.sla
    return policy.sla_due(now)


async def open_handoff(
    session: AsyncSession,
    engine: EngineParts,
    lead: Lead,
    *,
    trigger: str,
    reason: str,
    now: datetime,
    warm_at: datetime | None = None,
    conversation: Conversation | None = None,
) -> tuple[Handoff, bool]:
    """Open a handoff for the lead, or return its open one; True when this call opened it."""
    existing = await open_handoff_of(session, lead.id)
    if existing is not None:
        return existing, False
    conversation = conversation or await latest_conversation(session, lead.id)
    handoff = Handoff(
        lead_id=lead.id,
        conversation_id=conversation.id if conversation else None,
        trigger=trigger,
        reason=reason,
        card=await build_card(session, engine.scoring, lead, conversation, now),
        warm_at=warm_at or now,
        created_at=now,
        sla_due_at=await _sla_due(session, engine.handoff, now),
        **await history.dimensions_now(session, lead),
    )
    session.add(handoff)
    await session.flush()  # a second open handoff breaks the unique index; the caller's transaction retries
    if (answers := known(session)) is not None:
        answers.handoffs[lead.id] = handoff
    await _step_aside(session, engine, lead.id, conversation, now)
    handoff.card = {**handoff.card, "flows": await lead_flows(session, lead.id)}  # paused or ended just now
    await history.credit(session, lead.id, "handed_off_at", now)
    payload = {"handoff_id": handoff.id, "trigger": trigger, "reason": reason, "sla_due_at": handoff.sla_due_at}
    session.add(
        Event(lead_id=lead.id, conversation_id=handoff.conversation_id, type="handoff", payload=_json(payload), at=now)
    )
    await session.flush()
    await queue_webhook(session, engine.webhooks, "lead.warm", lead, {"handoff": handoff_summary(handoff)}, now)
    return handoff, True


async def _step_aside(
    session: AsyncSession, engine: EngineParts, lead_id: int, conversation: Conversation | None, now: datetime
) -> None:
    """The bot falls silent (owner `queued`) and nurture pauses."""
    await session.exec(
        update(Conversation).where(Conversation.lead_id == lead_id, Conversation.owner == "bot").values(owner="queued")
    )
    if conversation is not None and conversation.owner == "bot":
        conversation.owner = "queued"
    await pause_nurture(session, engine, lead_id, now)


async def pause_nurture(session: AsyncSession, engine: EngineParts, lead_id: int, now: datetime) -> None:
    """Live enrollments pause, or end where their flow exits on handoff."""
    for enrollment in await _enrollments(session, lead_id, ("active", "paused")):
        spec = await engine.spec_of(session, enrollment)
        if spec is None or spec.exits_on("handoff"):
            enrollment.status, enrollment.exit_reason = "exited", "handoff"
        else:
            enrollment.status = "paused"
        enrollment.lease_until, enrollment.updated_at = None, now
        enrollment.handed_off_at = enrollment.handed_off_at or now
        session.add(enrollment)


async def resume_nurture(session: AsyncSession, lead_id: int, now: datetime) -> int:
    """Paused enrollments go on, their next step due no earlier than now; returns how many."""
    paused = await _enrollments(session, lead_id, ("paused",))
    for enrollment in paused:
        enrollment.status, enrollment.updated_at = "active", now
        enrollment.due_at = max(enrollment.due_at, now)
        session.add(enrollment)
    return len(paused)


async def end_paused(session: AsyncSession, lead_id: int, reason: str, now: datetime) -> int:
    """Paused enrollments end (the lead won or was lost); returns how many."""
    paused = await _enrollments(session, lead_id, ("paused",))
    for enrollment in paused:
        enrollment.status, enrollment.exit_reason, enrollment.updated_at = "exited", reason, now
        session.add(enrollment)
    return len(paused)


WON_BY = "handoffs_won"  # session.info key: ids of handoffs `close_won` closed in this transaction


def wins(lead: Lead, events: Sequence[Event]) -> str | None:
    """Why these events make the lead a won customer (a `purchase`, or stage `customer`), or None."""
    for event in events:
        if event.type == "custom" and event.name == "purchase":
            return "purchase"
        if event.type == "stage_changed" and event.payload.get("to") == "customer":
            return "stage customer"
    return None


async def close_won(session: AsyncSession, engine: EngineParts, lead: Lead, why: str, now: datetime) -> Handoff | None:
    """Close the lead's waiting or claimed handoff as won (nobody needs to answer a buyer); the bot owns again."""
    handoff = await open_handoff_of(session, lead.id)
    if handoff is None or handoff.status not in OPEN:
        return None
    handoff.status, handoff.closed_at, handoff.outcome, handoff.outcome_reason = "closed", now, "won", why
    session.add(handoff)
    if (answers := known(session)) is not None:
        answers.handoffs[lead.id] = None
    await session.flush()
    await session.exec(
        update(Conversation)
        .where(Conversation.lead_id == lead.id, Conversation.owner.in_(["queued", "human"]))
        .values(owner="bot")
    )
    await end_paused(session, lead.id, "handoff won", now)
    payload = {"handoff_id": handoff.id, "outcome": "won", "reason": why, "operator": None, "resumed": 0, "flow": None}
    session.add(Event(lead_id=lead.id, type="handoff_closed", payload=payload, at=now))
    await queue_webhook(session, engine.webhooks, "handoff.closed", lead, {"handoff": handoff_summary(handoff)}, now)
    session.info.setdefault(WON_BY, []).append(handoff.id)
    return handoff


async def latest_conversation(session: AsyncSession, lead_id: int) -> Conversation | None:
    """The lead's most recently active conversation."""
    rows = (await session.exec(select(Conversation).where(Conversation.lead_id == lead_id))).all()
    return max(rows, key=lambda c: (c.last_message_at or c.created_at, c.id), default=None)


async def _enrollments(session: AsyncSession, lead_id: int, statuses: Sequence[str]) -> list[Enrollment]:
    answers = known(session)
    if answers is not None and lead_id in answers.enrollments:  # the same objects, so their status is current
        return [enrollment for enrollment in answers.enrollments[lead_id] if enrollment.status in statuses]
    query = select(Enrollment).where(Enrollment.lead_id == lead_id, Enrollment.status.in_(list(statuses)))
    return list((await session.exec(query.order_by(Enrollment.id))).all())


def _json(payload: dict) -> dict:
    """Event payloads are JSON: times as ISO text."""
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in payload.items()}
