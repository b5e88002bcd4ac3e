"""Finding leads for the console: search by name, email, phone or id; a lead's transcript."""

from __future__ import annotations

from sqlalchemy import func, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.leads import LeadNotFound, get_lead
from storage.models import Conversation, Lead, Message

MAX_ID = 2**31 - 1


def _like(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with LIKE's own wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search_leads(session: AsyncSession, query: str, offset: int, limit: int) -> list[Lead]:
    """Leads (not merged away) whose name, email or phone contains `query`, or whose id it is (`#12`: only the id)."""
    statement = select(Lead).where(col(Lead.merged_into_id).is_(None))
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
