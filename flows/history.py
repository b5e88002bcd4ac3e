"""What the reports need, written when it happens, in the same transaction as its cause.

Reports never scan the event log. Instead:

- **Stage history** (`StageEntry`): one row per lead and stage, the first time the lead reached it.
  A jump over stages enters the skipped ones at the same moment; moving back changes nothing.
  `left_at` is when the lead first reached a later stage. The lead's breakdown dimensions (first
  touch source, campaign, channel) are copied into its rows and kept in step when they change.
- **Credit** (`Delivery.replied_at`, `button_at`, `handed_off_at`, `opted_out_at`): what a lead did
  is credited to the last nurture message sent to it within the 24 hours before, once per message.
- **Goals** (`Enrollment.goal_reached_at`): a lead first reaching a flow's goal stage while in the
  flow, or within 7 days after it ended, counts for that flow.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from flows.stages import Stages
from storage.known import known
from storage.models import Delivery, Enrollment, Lead, StageEntry

NONE = "(none)"
CREDIT_WINDOW = timedelta(hours=24)
GOAL_WINDOW = timedelta(days=7)
CREDITS = ("replied_at", "button_at", "handed_off_at", "opted_out_at")
_LIVE = ("active", "paused")


def dimensions(lead: Lead, channel: str | None = None) -> dict[str, str]:
    """The lead's breakdown values: first touch's source and campaign; its channel, else `channel`."""
    touch = lead.first_touch or {}
    return {
        "source": str(touch.get("source") or NONE),
        "campaign": str(touch.get("campaign") or NONE),
        "channel": str(touch.get("channel") or channel or NONE),
    }


async def entries(session: AsyncSession, lead_id: int) -> list[StageEntry]:
    """The stages a lead has reached, first reach first."""
    query = select(StageEntry).where(StageEntry.lead_id == lead_id).order_by(StageEntry.entered_at, StageEntry.id)
    return list((await session.exec(query)).all())


def start(session: AsyncSession, lead: Lead, channel: str) -> None:
    """A new lead enters the funnel at its first stage; `channel` is where it first came from."""
    session.add(
        StageEntry(
            lead_id=lead.id,
            stage=lead.stage,
            entered_at=lead.created_at,
            cohort_at=lead.created_at,
            **dimensions(lead, channel),
        )
    )


async def reach(session: AsyncSession, stages: Stages, lead: Lead, stage: str, now: datetime) -> None:
    """Record the lead moving to `stage`: first reaches (skipped stages too), what they left, flow goals."""
    rank = stages.rank(stage)
    if rank < 0:
        return
    known = {entry.stage: entry for entry in await entries(session, lead.id)}
    fresh = [name for name in stages.order[: rank + 1] if name not in known]
    if not fresh:  # moving back, or again into a stage reached before: nothing new to count
        return
    earlier = next(iter(known.values()), None)
    dims = _dims_of(earlier) if earlier is not None else dimensions(lead)
    for entry in known.values():
        if entry.left_at is None and 0 <= stages.rank(entry.stage) < rank:
            entry.left_at = now
            session.add(entry)
    for name in fresh:
        left = None if name == stage else now
        session.add(
            StageEntry(lead_id=lead.id, stage=name, entered_at=now, left_at=left, cohort_at=lead.created_at, **dims)
        )
    await session.exec(
        update(Enrollment)
        .where(
            Enrollment.lead_id == lead.id,
            Enrollment.goal.in_(fresh),
            Enrollment.goal_reached_at.is_(None),
            Enrollment.enrolled_at <= now,
            or_(Enrollment.status.in_(_LIVE), Enrollment.updated_at >= now - GOAL_WINDOW),
        )
        .values(goal_reached_at=now)
    )


async def retouch(session: AsyncSession, lead: Lead) -> None:
    """The lead's first touch changed: its funnel rows move to the new source, campaign (and channel)."""
    values = {key: value for key, value in dimensions(lead).items() if value != NONE}
    if values:
        await session.exec(update(StageEntry).where(StageEntry.lead_id == lead.id).values(**values))


async def merge(session: AsyncSession, stages: Stages, survivor: Lead, other: Lead) -> None:
    """Two leads became one: per stage the earlier first reach, with the survivor's dimensions."""
    mine, theirs = await entries(session, survivor.id), await entries(session, other.id)
    first: dict[str, datetime] = {}
    for entry in (*mine, *theirs):
        if entry.stage not in first or entry.entered_at < first[entry.stage]:
            first[entry.stage] = entry.entered_at
    if not first:
        return
    known = mine[0] if mine else theirs[0]
    dims = dimensions(survivor, known.channel if known.channel != NONE else None)
    await session.exec(delete(StageEntry).where(StageEntry.lead_id.in_([survivor.id, other.id])))
    for stage, entered in first.items():
        later = [at for name, at in first.items() if stages.rank(name) > stages.rank(stage) >= 0]
        session.add(
            StageEntry(
                lead_id=survivor.id,
                stage=stage,
                entered_at=entered,
                left_at=min(later) if later else None,
                cohort_at=survivor.created_at,
                **dims,
            )
        )
    await session.flush()


async def credit(session: AsyncSession, lead_id: int, what: str, now: datetime) -> None:
    """Credit `what` (a Delivery column in CREDITS) to the last nurture message sent to the lead within 24 h."""
    answers = known(session)
    if answers is not None and answers.creditable.get(lead_id) is False:
        return  # read ahead: no nurture message was sent to the lead lately
    column = getattr(Delivery, what)
    last = (
        select(Delivery.id)
        .where(
            Delivery.lead_id == lead_id,
            Delivery.kind == "nurture",
            Delivery.sent_at >= now - CREDIT_WINDOW,
            Delivery.sent_at <= now,
        )
        .order_by(Delivery.sent_at.desc(), Delivery.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    await session.exec(update(Delivery).where(Delivery.id == last, column.is_(None)).values({what: now}))


def _dims_of(entry: StageEntry) -> dict[str, str]:
    return {"source": entry.source, "campaign": entry.campaign, "channel": entry.channel}
