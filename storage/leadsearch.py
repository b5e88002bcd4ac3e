"""Finding leads: the console's search by name, email, phone or id, the API's filtered list; a transcript."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, literal, or_
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.leads import LeadNotFound, get_lead
from storage.models import Conversation, Event, Handoff, Lead, Message

MAX_ID = 2**31 - 1


def _like(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with LIKE's own wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# What a person does, other than viewing a page (the inbound kinds; flows and scoring add events of their own).
ACTS = ("message", "button", "contact_shared", "custom", "start")


def engaged() -> Any:
    """A lead who is more than a page-only visitor: a name or contact, or something they did besides a page view."""
    contact = [col(Lead.first_name).is_not(None), col(Lead.last_name).is_not(None)]
    contact += [col(Lead.email).is_not(None), col(Lead.phone).is_not(None)]
    acted = exists().where(col(Event.lead_id) == Lead.id, col(Event.type).in_(ACTS))
    return or_(*contact, acted)


async def search_leads(
    session: AsyncSession, query: str, offset: int, limit: int, page_only: bool = True
) -> list[Lead]:
    """Leads (not merged away) whose name, email or phone contains `query`, or whose id it is (`#12`: only the id).

    With `page_only=False`, visitors who only viewed pages (no message, contact or other event) are left out."""
    statement = select(Lead).where(col(Lead.merged_into_id).is_(None))
    if not page_only:
        statement = statement.where(engaged())
    text = query.strip()
    if text.startswith("#") and text[1:].isdigit():  # "#12" is an id and nothing else
        return await _by_id(session, int(text[1:]))
    if text:
        pattern = _like(text)
        full_name = func.coalesce(Lead.first_name, "") + " " + func.coalesce(Lead.last_name, "")
        matches = [
            full_name.ilike(pattern, escape="\\"),
            col(Lead.email).ilike(pattern, escape="\\"),
            col(Lead.phone).ilike(pattern, escape="\\"),
        ]
        if text.isdigit() and int(text) <= MAX_ID:
            matches.append(col(Lead.id) == int(text))
        statement = statement.where(or_(*matches))
    statement = statement.order_by(col(Lead.id).desc()).offset(offset).limit(limit)
    return list((await session.exec(statement)).all())


async def _by_id(session: AsyncSession, lead_id: int) -> list[Lead]:
    """The lead with that id (following merges), as a one-row search result."""
    try:
        return [await get_lead(session, lead_id)]
    except LeadNotFound:
        return []


async def transcript(session: AsyncSession, lead_id: int, limit: int) -> list[tuple[Message, str]]:
    """The lead's last `limit` messages, oldest first, each with its conversation's channel."""
    statement = (
        select(Message, Conversation.channel)
        .join(Conversation, col(Conversation.id) == Message.conversation_id)
        .where(Message.lead_id == lead_id)
        .order_by(col(Message.id).desc())
        .limit(limit)
    )
    rows = (await session.exec(statement)).all()
    return [(message, channel) for message, channel in reversed(rows)]


async def conversation_messages(session: AsyncSession, conversation_id: int, since: int, limit: int) -> list[Message]:
    """One conversation's newest `limit` messages after message id `since`, oldest first."""
    statement = (
        select(Message)
        .where(Message.conversation_id == conversation_id, col(Message.id) > since)
        .order_by(col(Message.id).desc())
        .limit(limit)
    )
    return list(reversed((await session.exec(statement)).all()))


@dataclass(frozen=True)
class LeadFilter:
    """What the API's lead list narrows by; None means any."""

    stage: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    tag: str | None = None
    source: str | None = None  # the first touch's source (attribution)
    page_only: bool = True  # False: visitors who only viewed pages are left out (see `engaged`)
    channel: str | None = None  # has a conversation on this channel
    needs_reply: bool = False  # only leads someone should answer now (see `needs_reply`)
    active_since: datetime | None = None  # only leads with an event at or after this time


def filtered_leads(dialect: str, wanted: LeadFilter) -> Any:
    """A select of the leads (not merged away) that match; the caller orders and pages it."""
    statement = select(Lead).where(col(Lead.merged_into_id).is_(None))
    if wanted.stage is not None:
        statement = statement.where(Lead.stage == wanted.stage)
    if wanted.min_score is not None:
        statement = statement.where(Lead.score >= wanted.min_score)
    if wanted.max_score is not None:
        statement = statement.where(Lead.score <= wanted.max_score)
    if wanted.source is not None:
        statement = statement.where(col(Lead.first_touch)["source"].as_string() == wanted.source)
    if wanted.tag is not None:
        statement = statement.where(_has_tag(dialect, wanted.tag))
    if not wanted.page_only:
        statement = statement.where(engaged())
    if wanted.channel is not None:
        on_channel = exists().where(col(Conversation.lead_id) == Lead.id, Conversation.channel == wanted.channel)
        statement = statement.where(on_channel)
    if wanted.needs_reply:
        statement = statement.where(needs_reply())
    if wanted.active_since is not None:
        statement = statement.where(last_activity() >= wanted.active_since)
    return statement


def last_activity() -> Any:
    """When the lead's latest event happened (a message, a page view, a stage change, ...); per row of Lead."""
    return select(func.max(Event.at)).where(col(Event.lead_id) == Lead.id).scalar_subquery()


def needs_reply() -> Any:
    """A lead a person should answer now: it has an open handoff whose conversation needs a reply
    (`handoff_needs_reply`). A condition on Lead rows, for `filtered_leads` and `kindling lead list --needs-reply`.
    """
    return exists().where(col(Handoff.lead_id) == Lead.id, handoff_needs_reply())


def handoff_needs_reply() -> Any:
    """The SQL condition, on a query of `Handoff` rows, that the handoff's conversation needs a reply now.

    True for a waiting handoff, and for a claimed one whose conversation's last message from the lead came
    after the last message an operator sent in it (false for a closed one). The console's inbox, the API's
    `GET /api/handoffs?needs_reply=` and the command line all count with it.
    """
    answered_up_to = func.coalesce(last_message_id("author", "operator"), 0)
    lead_wrote_since = func.coalesce(last_message_id("direction", "in"), 0) > answered_up_to
    return or_(Handoff.status == "waiting", and_(Handoff.status == "claimed", lead_wrote_since))


def last_message_id(column: str, value: str) -> Any:
    """The id of the last message of the handoff's conversation whose `column` is `value` (correlated)."""
    message = aliased(Message)
    mine = and_(message.conversation_id == Handoff.conversation_id, getattr(message, column) == value)
    return select(func.max(message.id)).where(mine).scalar_subquery()


def _has_tag(dialect: str, tag: str) -> Any:
    """The lead's JSON list of tags contains `tag` (each database spells the unnesting differently)."""
    unnest = func.json_each if dialect == "sqlite" else func.json_array_elements_text
    elements = unnest(col(Lead.tags)).table_valued("value")
    return exists(select(literal(1)).select_from(elements).where(elements.c.value == tag))
