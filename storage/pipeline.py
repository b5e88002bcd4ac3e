"""The pipeline board's queries: the leads now in a stage, newest activity first, a page at a time.

Pages are keyset pages on (last activity, id): a lead's last activity is `Lead.updated_at` (intake sets it on
every inbound, and every change to the lead sets it too), and the partial index `ix_lead_board` (stage,
updated_at, id) of leads not merged away serves every page, however deep, from where the last one ended.
Counts and medians come from `ix_lead_stage_at` (stage, stage_at), or with filters from one pass over the matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, tuple_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Conversation, Enrollment, Handoff, Lead, Operator

OWNERS = ("bot", "queued", "human", "closed")  # a conversation's owner; anything else is an operator's name
_LIVE = ("active", "paused")
_OPEN = ("waiting", "claimed")


@dataclass(frozen=True)
class BoardFilter:
    """What the board narrows by; None means any."""

    source: str | None = None  # the first touch's source
    campaign: str | None = None  # the first touch's campaign
    channel: str | None = None  # has a conversation on this channel
    owner: str | None = None  # a conversation owned by bot/queued/human/closed, or held by this operator
    flow: str | None = None  # enrolled in this flow now (active or paused)

    @property
    def any(self) -> bool:
        """Whether any filter is set."""
        return any(value is not None for value in (self.source, self.campaign, self.channel, self.owner, self.flow))


@dataclass(frozen=True)
class Cursor:
    """Where a column's page ended: the last card's activity and id; the next page starts after it."""

    at: datetime
    lead_id: int


@dataclass(frozen=True)
class Column:
    """One stage's count and the median time in stage of its leads (seconds; None for none)."""

    stage: str
    count: int
    median_seconds: float | None


def conditions(wanted: BoardFilter) -> list[Any]:
    """The filters as SQL conditions on Lead rows (not merged away)."""
    where: list[Any] = [col(Lead.merged_into_id).is_(None)]
    if wanted.source is not None:
        where.append(col(Lead.first_touch)["source"].as_string() == wanted.source)
    if wanted.campaign is not None:
        where.append(col(Lead.first_touch)["campaign"].as_string() == wanted.campaign)
    if wanted.channel is not None:
        where.append(exists().where(col(Conversation.lead_id) == Lead.id, Conversation.channel == wanted.channel))
    if wanted.owner in OWNERS:
        where.append(exists().where(col(Conversation.lead_id) == Lead.id, Conversation.owner == wanted.owner))
    elif wanted.owner is not None:
        held = (col(Handoff.lead_id) == Lead.id, Handoff.status == "claimed", Operator.name == wanted.owner)
        where.append(exists().where(col(Handoff.claimed_by_id) == Operator.id, *held))
    if wanted.flow is not None:
        in_flow = (col(Enrollment.status).in_(_LIVE), Enrollment.flow_slug == wanted.flow)
        where.append(exists().where(col(Enrollment.lead_id) == Lead.id, *in_flow))
    return where


async def column_page(
    session: AsyncSession, stage: str, wanted: BoardFilter, after: Cursor | None, size: int
) -> tuple[list[Lead], Cursor | None]:
    """Up to `size` leads in `stage`, newest activity first, after `after`; and the cursor of the next page."""
    statement = select(Lead).where(Lead.stage == stage, *conditions(wanted))
    if after is not None:
        statement = statement.where(tuple_(Lead.updated_at, Lead.id) < (after.at, after.lead_id))
    statement = statement.order_by(col(Lead.updated_at).desc(), col(Lead.id).desc()).limit(size + 1)
    leads = list((await session.exec(statement)).all())
    more = len(leads) > size
    leads = leads[:size]
    last = leads[-1] if more else None
    return leads, Cursor(last.updated_at, last.id) if last is not None else None


async def columns(session: AsyncSession, stages: tuple[str, ...], wanted: BoardFilter, now: datetime) -> list[Column]:
    """Every stage's count and median time in stage, in the stages' order."""
    if wanted.any and session.bind.dialect.name == "postgresql":
        return await _summary_in_one_pass(session, stages, wanted, now)
    # One count per stage, each from its own stretch of `ix_lead_stage_at` (a GROUP BY scans the whole table).
    each = [select(func.count()).where(Lead.stage == stage, *conditions(wanted)).scalar_subquery() for stage in stages]
    counts = dict(zip(stages, (await session.exec(select(*each))).one(), strict=True))
    found = []
    for stage in stages:
        count = counts.get(stage, 0)
        since = await _middle_since(session, stage, wanted, count) if count else None
        found.append(Column(stage, count, (now - since).total_seconds() if since is not None else None))
    return found


async def _summary_in_one_pass(
    session: AsyncSession, stages: tuple[str, ...], wanted: BoardFilter, now: datetime
) -> list[Column]:
    """Counts and medians with filters on PostgreSQL: one scan of the matching leads, not one per stage and twice.

    (Without filters the index answers faster: counts from `ix_lead_stage_at` alone, the middle by skipping.)"""
    entered = func.percentile_cont(0.5).within_group(func.extract("epoch", Lead.stage_at))
    query = select(Lead.stage, func.count(), entered).where(*conditions(wanted)).group_by(Lead.stage)
    found = {stage: (count, middle) for stage, count, middle in (await session.exec(query)).all()}
    summary = []
    for stage in stages:
        count, middle = found.get(stage, (0, None))
        summary.append(Column(stage, count, now.timestamp() - middle if middle is not None else None))
    return summary


async def _middle_since(session: AsyncSession, stage: str, wanted: BoardFilter, count: int) -> datetime | None:
    """When the median one of the `count` matching leads entered `stage` (between the middle two for an even count)."""
    statement = (
        select(Lead.stage_at)
        .where(Lead.stage == stage, *conditions(wanted))
        .order_by(col(Lead.stage_at))
        .offset((count - 1) // 2)
        .limit(2 - count % 2)
    )
    middle = list((await session.exec(statement)).all())
    return middle[0] + (middle[-1] - middle[0]) / 2 if middle else None


async def leads_on_board(session: AsyncSession, lead_ids: list[int], wanted: BoardFilter) -> list[Lead]:
    """Those of the leads the board with these filters shows (in whichever column), by id."""
    statement = select(Lead).where(col(Lead.id).in_(lead_ids), *conditions(wanted)).order_by(col(Lead.id))
    return list((await session.exec(statement)).all()) if lead_ids else []


async def card_details(session: AsyncSession, lead_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Per lead: its conversations' channels (newest first) and its open handoff (status, holder), if any."""
    details: dict[int, dict[str, Any]] = {lead_id: {"channels": [], "handoff": None} for lead_id in lead_ids}
    if not lead_ids:
        return details
    talks = select(Conversation.lead_id, Conversation.channel).where(col(Conversation.lead_id).in_(lead_ids))
    for lead_id, channel in (await session.exec(talks.order_by(col(Conversation.id).desc()))).all():
        if channel not in details[lead_id]["channels"]:
            details[lead_id]["channels"].append(channel)
    open_handoffs = (
        select(Handoff.lead_id, Handoff.id, Handoff.status, Handoff.reason, Operator.name)
        .outerjoin(Operator, col(Operator.id) == Handoff.claimed_by_id)
        .where(col(Handoff.lead_id).in_(lead_ids), col(Handoff.status).in_(_OPEN))
    )
    for lead_id, handoff_id, status, reason, holder in (await session.exec(open_handoffs)).all():
        details[lead_id]["handoff"] = {"id": handoff_id, "status": status, "reason": reason, "holder": holder}
    return details


async def choices(session: AsyncSession) -> dict[str, list[str]]:
    """What the filters' lists offer: the operators' names (owners); sources, campaigns and channels are typed."""
    names = select(Operator.name).where(col(Operator.removed_at).is_(None)).order_by(Operator.name)
    return {"operators": list((await session.exec(names)).all())}
