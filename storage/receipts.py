"""Receipts: a person's client says which messages reached it and which it showed on screen."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Delivery, Message


async def mark_reached(
    session: AsyncSession, conversation_id: int, message_ids: Sequence[int], seen: bool, now: datetime
) -> int:
    """Date the deliveries behind these transcript messages delivered (and seen); returns how many rows changed.

    Only messages of `conversation_id` count: a client reports for its own conversation, so ids of someone
    else's messages change nothing. The first report wins; seen implies delivered.
    """
    own = select(Message.delivery_id).where(
        Message.conversation_id == conversation_id,
        col(Message.id).in_(list(message_ids)),
        col(Message.delivery_id).is_not(None),
    )
    values = {"delivered_at": func.coalesce(Delivery.delivered_at, now)}
    pending = col(Delivery.delivered_at).is_(None)
    if seen:
        values["seen_at"] = func.coalesce(Delivery.seen_at, now)
        pending = col(Delivery.seen_at).is_(None)
    statement = (
        update(Delivery)
        .where(col(Delivery.id).in_(own), Delivery.conversation_id == conversation_id, pending)
        .values(values)
        .execution_options(synchronize_session=False)
    )
    return (await session.exec(statement)).rowcount


async def reach_of(session: AsyncSession, delivery_ids: Sequence[int | None]) -> dict[int, Delivery]:
    """The deliveries behind transcript messages, by id, in one query (their channel, status and dates)."""
    wanted = [delivery_id for delivery_id in delivery_ids if delivery_id is not None]
    if not wanted:
        return {}
    rows = await session.exec(select(Delivery).where(col(Delivery.id).in_(wanted)))
    return {row.id: row for row in rows.all() if row.id is not None}


async def known_provider_ids(session: AsyncSession, channel: str, provider_ids: Sequence[str]) -> set[str]:
    """Which of these provider message ids a delivery on `channel` was sent as."""
    if not provider_ids:
        return set()
    statement = select(Delivery.provider_message_id).where(
        Delivery.channel == channel, col(Delivery.provider_message_id).in_(list(provider_ids))
    )
    return {found for found in (await session.exec(statement)).all() if found is not None}


async def mark_by_provider_id(
    session: AsyncSession, channel: str, provider_id: str, state: str, at: datetime, error: str | None = None
) -> Delivery | None:
    """Apply a channel's status report (`delivered`, `read`, `failed`) to the delivery it sent as `provider_id`.

    States only move forward and a repeat changes nothing: `read` implies delivered (a read reported before
    its delivered ends as seen, dated by the first report); `failed` counts only for a message not yet
    delivered or seen. Returns the delivery a `failed` report failed, else None.
    """
    row = (
        await session.exec(
            select(Delivery)
            .where(Delivery.provider_message_id == provider_id, Delivery.channel == channel)
            .with_for_update()
        )
    ).first()
    if row is None or row.status != "sent":
        return None
    if state in ("delivered", "read"):
        row.delivered_at = row.delivered_at or at
        if state == "read":
            row.seen_at = row.seen_at or at
        session.add(row)
        return None
    if state == "failed" and row.delivered_at is None and row.seen_at is None:
        row.status, row.last_error = "dead", (error or "failed")[:500]
        session.add(row)
        return row
    return None


async def mark_until(
    session: AsyncSession, lead_id: int, conversation_id: int, until: datetime, seen: bool, at: datetime
) -> int:
    """Date delivered (and seen) every message of a conversation sent by `until` (a channel's watermark).

    The first report wins; seen implies delivered. Returns how many rows changed.
    """
    values = {"delivered_at": func.coalesce(Delivery.delivered_at, at)}
    pending = col(Delivery.delivered_at).is_(None)
    if seen:
        values["seen_at"] = func.coalesce(Delivery.seen_at, at)
        pending = col(Delivery.seen_at).is_(None)
    statement = (
        update(Delivery)
        .where(
            Delivery.lead_id == lead_id,  # indexed: a lead has few deliveries
            Delivery.conversation_id == conversation_id,
            Delivery.status == "sent",
            col(Delivery.sent_at) <= until,
            pending,
        )
        .values(values)
        .execution_options(synchronize_session=False)
    )
    return (await session.exec(statement)).rowcount
