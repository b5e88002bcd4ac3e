"""Opt-out: a lead who says stop (or blocks the bot) gets no more nurture on any channel."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import update
from sqlmodel.ext.asyncio.session import AsyncSession

from flows import history
from storage.models import Delivery, Enrollment, Event, Lead

OPT_OUT_WORDS = ("stop", "unsubscribe", "opt out", "optout", "stop all", "отписаться", "отписка", "退订")
_NOT_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Lower-case words separated by single spaces: `STOP!` -> `stop`."""
    return _NOT_WORD.sub(" ", text).strip().casefold()


def is_opt_out(text: str | None, extra_words: Iterable[str] = ()) -> bool:
    """Whether a whole message asks to stop (`stop`, `Unsubscribe.`, `退订`), not one that mentions it."""
    if not text:
        return False
    words = {normalize(word) for word in (*OPT_OUT_WORDS, *extra_words)}
    return normalize(text) in words


async def opt_out(session: AsyncSession, lead: Lead, reason: str, now: datetime) -> Event | None:
    """Suppress the lead: exit its flows and skip queued nurture; None if it had opted out already."""
    if lead.opted_out_at is not None:
        return None
    lead.opted_out_at, lead.updated_at = now, now
    event = Event(lead_id=lead.id, type="opt_out", payload={"reason": reason}, at=now)
    session.add_all([lead, event])
    await session.exec(
        update(Enrollment)
        .where(Enrollment.lead_id == lead.id, Enrollment.status.in_(("active", "paused")))
        .values(status="exited", exit_reason="opt_out", updated_at=now)
    )
    await session.exec(
        update(Delivery)
        .where(Delivery.lead_id == lead.id, Delivery.kind == "nurture", Delivery.status == "pending")
        .values(status="skipped", last_error="opted out")
    )
    await history.credit(session, lead.id, "opted_out_at", now)
    await session.flush()
    return event


async def email_bounced(session: AsyncSession, lead_id: int, address: str, reason: str, now: datetime) -> Event | None:
    """A hard bounce: nothing more goes to that address (queued email is skipped); None if it is not the lead's."""
    lead = await session.get(Lead, lead_id)
    if lead is None or (lead.email or "").lower() != address.lower() or lead.email_bounced_at is not None:
        return None
    reason = reason[:300]
    lead.email_bounced_at, lead.email_bounce_reason, lead.updated_at = now, reason, now
    event = Event(lead_id=lead.id, type="email_bounced", payload={"address": address, "reason": reason}, at=now)
    session.add_all([lead, event])
    await skip_queued_email(session, lead.id, "email bounced", nurture_only=False)
    return event


async def email_opt_out(session: AsyncSession, lead: Lead, how: str, now: datetime) -> Event | None:
    """The lead wants no more nurture email (chat and replies go on): date it, record `email_opt_out`, skip queued
    nurture email; None if it had opted out of email already. `how`: link, mailto, ..."""
    first = await session.exec(  # a conditional update: of two clicks at once, one records the opt-out
        update(Lead).where(Lead.id == lead.id, Lead.email_opted_out_at.is_(None)).values(email_opted_out_at=now)
    )
    if first.rowcount != 1:
        return None
    lead.email_opted_out_at, lead.updated_at = now, now
    event = Event(lead_id=lead.id, type="email_opt_out", payload={"how": how}, at=now)
    session.add_all([lead, event])
    await skip_queued_email(session, lead.id, "unsubscribed from email")
    return event


async def skip_queued_email(session: AsyncSession, lead_id: int, reason: str, nurture_only: bool = True) -> None:
    """Skip the lead's email still waiting in the outbox (nurture only, or all of it), saying why."""
    queued = [Delivery.lead_id == lead_id, Delivery.channel == "email", Delivery.status == "pending"]
    if nurture_only:
        queued.append(Delivery.kind == "nurture")
    await session.exec(update(Delivery).where(*queued).values(status="skipped", last_error=reason))
    await session.flush()
