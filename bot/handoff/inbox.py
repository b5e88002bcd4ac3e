"""The conversation inbox: every open handoff's conversation, and which of them need a reply now.

One place answers "who is waiting for us?" for the console's inbox page, the Telegram operators' group
(`/inbox`) and the CLI. A conversation **needs a reply** when its handoff is waiting for an operator, or
an operator holds it and the lead's last message came after the last message an operator sent in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func
from sqlalchemy.orm import aliased
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.handoff.notify import LIKELIEST_FIRST, summary
from flows.handoff import OPEN, one_line
from storage.leadsearch import handoff_needs_reply, last_message_id
from storage.models import Conversation, Handoff, Lead, Message

SHOWS = ("needs_reply", "mine", "all")
PAGE_SIZE = 50
SNIPPET = 80  # characters of the last message (the lead's or an operator's, not the bot's) a row shows


class InboxError(ValueError):
    """A filter the inbox does not have (an unknown `show`, a page below 1); says which."""


@dataclass(frozen=True)
class InboxView:
    """Which rows: `show` needs_reply (default), mine (held by `operator_id`) or all; a channel; a page."""

    show: str = "needs_reply"
    channel: str | None = None
    operator_id: int | None = None
    page: int = 1
    size: int = PAGE_SIZE

    def __post_init__(self) -> None:
        if self.show not in SHOWS:
            raise InboxError(f"show: one of {', '.join(SHOWS)}, not {self.show!r}")
        if self.page < 1:
            raise InboxError(f"page: 1 or more, not {self.page}")


@dataclass(frozen=True)
class InboxPage:
    """One page of inbox rows (dicts: a handoff summary plus the conversation's state) and how many in all."""

    rows: list[dict]
    total: int
    page: int
    size: int

    @property
    def pages(self) -> int:
        """How many pages there are (at least one, even when empty)."""
        return max(1, -(-self.total // self.size))


async def inbox(session: AsyncSession, view: InboxView, now: datetime) -> InboxPage:
    """One page of the inbox, conversations needing a reply first, then the likeliest leads, then by SLA deadline."""
    query, needs = _rows(view)
    total = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    likeliest = query.outerjoin(Lead, Lead.id == Handoff.lead_id).add_columns(Lead.likelihood)
    ordered = likeliest.order_by(case((needs, 0), else_=1), *LIKELIEST_FIRST, Handoff.sla_due_at, Handoff.id)
    found = (await session.exec(ordered.offset((view.page - 1) * view.size).limit(view.size))).all()
    rows = [await _row(session, handoff, rest, now) for handoff, *rest in found]
    return InboxPage(rows, int(total), view.page, view.size)


def waited(seconds: float) -> str:
    """How long someone has waited: `under 1 min`, `12 min`, `2 h 5 min`."""
    minutes = int(max(seconds, 0)) // 60
    if not minutes:
        return "under 1 min"
    hours, rest = divmod(minutes, 60)
    return " ".join(part for part in (f"{hours} h" if hours else "", f"{rest} min" if rest else "") if part)


def _rows(view: InboxView) -> tuple[Any, Any]:
    """The query of the view's rows (not yet ordered or paged) and its needs-a-reply condition."""
    last_operator = last_message_id("author", "operator")
    answered_up_to = func.coalesce(last_operator, 0)
    needs = handoff_needs_reply()
    unanswered = aliased(Message)
    first_unanswered = (
        select(func.min(unanswered.at))
        .where(
            unanswered.conversation_id == Handoff.conversation_id,
            unanswered.direction == "in",
            unanswered.id > answered_up_to,
        )
        .scalar_subquery()
    )
    latest = aliased(Message)
    said = and_(latest.conversation_id == Handoff.conversation_id, latest.author != "bot")  # the bot's notices aside
    last_id = select(func.max(latest.id)).where(said).scalar_subquery()
    query = (
        select(Handoff, Conversation.channel, needs, last_operator, first_unanswered, last_id)
        .outerjoin(Conversation, Conversation.id == Handoff.conversation_id)
        .where(Handoff.status.in_(OPEN))
    )
    if view.show == "needs_reply":
        query = query.where(needs)
    elif view.show == "mine":
        query = query.where(Handoff.status == "claimed", Handoff.claimed_by_id == view.operator_id)
    if view.channel:
        query = query.where(Conversation.channel == view.channel)
    return query, needs


async def _row(session: AsyncSession, handoff: Handoff, rest: list, now: datetime) -> dict:
    channel, needs, last_operator, first_unanswered, last_id, likelihood = rest
    last = await session.get(Message, last_id) if last_id else None
    since = handoff.warm_at if last_operator is None or first_unanswered is None else _aware(first_unanswered)
    if not needs:
        since = None
    return {
        **await summary(session, handoff, now, likelihood),
        "channel": channel or handoff.card.get("channel"),
        "needs_reply": bool(needs),
        "last_text": one_line(last.text, SNIPPET) if last else "",
        "last_from": last.author if last else None,
        "waiting_since": since.isoformat() if since else None,
        "waiting_seconds": (now - since).total_seconds() if since else None,
        "waiting": waited((now - since).total_seconds()) if since else "",
    }


def _aware(moment: datetime) -> datetime:
    """A time read back through an aggregate (SQLite may return it naive): in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
