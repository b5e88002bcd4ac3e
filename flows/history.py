"""What the reports need, written when it happens, in the same transaction as its cause.

Reports never scan the event log. Instead:

- **Stage history** (`StageEntry`): one row per lead and stage, the first time the lead reached it.
  A jump over stages enters the skipped ones at the same moment; moving back changes nothing.
  `left_at` is when the lead first reached a later stage; `stay_seconds` and `stay_bucket` are the time
  it stayed and that time on a log scale, so medians over a million stays come from a histogram (with
  each bucket's smallest and largest stay) instead of a sort. The lead's breakdown dimensions (first
  touch source, campaign, channel) are copied into its rows, and into its handoffs, and kept in step
  when they change.
- **Credit** (`Delivery.replied_at`, `button_at`, `handed_off_at`, `opted_out_at`): what a lead did
  is credited to the last nurture message sent to it within the 24 hours before, once per message.
- **Goals** (`Enrollment.goal_reached_at`): a lead first reaching a flow's goal stage while in the
  flow, or within 7 days after it ended, counts for that flow.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from flows.stages import Stages
from storage.known import known
from storage.models import Delivery, Enrollment, Handoff, Lead, StageEntry

NONE = "(none)"
CREDIT_WINDOW = timedelta(hours=24)
GOAL_WINDOW = timedelta(days=7)
CREDITS = ("replied_at", "button_at", "handed_off_at", "opted_out_at")
_LIVE = ("active", "paused")
STAY_STEPS = 32  # histogram buckets per doubling of a stay: a median read from them is within 2.2%


def stay(entered: datetime, left: datetime | None) -> dict[str, float | int | None]:
    """A stage row's stay from `entered` to `left`: its seconds, and its histogram bucket (0 under a second,
    then 32 per doubling). None for both when there was no stay: not moved on, or passed through in a jump.
    """
    if left is None or left <= entered:
        return {"stay_seconds": None, "stay_bucket": None}
    seconds = (left - entered).total_seconds()
    bucket = 0 if seconds < 1 else 1 + math.floor(math.log2(seconds) * STAY_STEPS)
    return {"stay_seconds": seconds, "stay_bucket": bucket}


def dimensions(lead: Lead, channel: str | None = None) -> dict[str, str]:
    """The lead's breakdown values: first touch's source and campaign; its channel, else `channel`."""
    touch = lead.first_touch or {}
    return {
        "source": str(touch.get("source") or NONE),
        "campaign": str(touch.get("campaign") or NONE),
        "channel": str(touch.get("channel") or channel or NONE),
    }


async def dimensions_now(session: AsyncSession, lead: Lead) -> dict[str, str]:
    """The breakdown values the lead's stage history holds (they are kept in step); its own without history."""
    query = select(StageEntry).where(StageEntry.lead_id == lead.id).limit(1)
    entry = (await session.exec(query)).first()
    return _dims_of(entry) if entry is not None else dimensions(lead)


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
            entry.sqlmodel_update(stay(entry.entered_at, now))
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
        await session.exec(update(Handoff).where(Handoff.lead_id == lead.id).values(**values))


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
    await session.exec(update(Handoff).where(Handoff.lead_id.in_([survivor.id, other.id])).values(**dims))
    for stage, entered in first.items():
        later = [at for name, at in first.items() if stages.rank(name) > stages.rank(stage) >= 0]
        left = min(later) if later else None
        session.add(
            StageEntry(
                lead_id=survivor.id,
                stage=stage,
                entered_at=entered,
                left_at=left,
                **stay(entered, left),
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
