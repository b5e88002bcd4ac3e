"""Queries over outgoing webhook deliveries: list them, count them, requeue a dead one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import Select

from storage.models import WebhookDelivery

STATUSES = ("pending", "sending", "delivered", "dead")
WAITING = ("pending", "sending")


class WebhookDeliveryNotFound(LookupError):
    """No outgoing webhook delivery with that id."""


class NotDead(ValueError):
    """Only a dead delivery can be requeued; the message says what it is instead."""


def deliveries_query(
    status: str | None = None, endpoint: str | None = None, failed: bool = False, lead_id: int | None = None
) -> Select:
    """Deliveries filtered; `failed` means dead ones and those waiting to retry after a failure."""
    query = select(WebhookDelivery)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if endpoint is not None:
        query = query.where(WebhookDelivery.endpoint == endpoint)
    if failed:
        query = query.where(WebhookDelivery.status != "delivered", WebhookDelivery.last_error.is_not(None))
    if lead_id is not None:
        query = query.where(WebhookDelivery.lead_id == lead_id)
    return query


async def list_deliveries(session: AsyncSession, *, limit: int = 100, **filters: Any) -> list[WebhookDelivery]:
    """The newest deliveries matching `deliveries_query`'s filters."""
    query = deliveries_query(**filters).order_by(WebhookDelivery.id.desc()).limit(limit)
    return list((await session.exec(query)).all())


async def counts(session: AsyncSession) -> dict[tuple[str, str], int]:
    """How many deliveries each endpoint has in each status."""
    query = select(WebhookDelivery.endpoint, WebhookDelivery.status, func.count()).group_by(
        WebhookDelivery.endpoint, WebhookDelivery.status
    )
    return {(endpoint, status): count for endpoint, status, count in (await session.exec(query)).all()}


async def requeue(session: AsyncSession, delivery_id: int) -> WebhookDelivery:
    """A dead delivery goes back to pending with a fresh set of attempts, due at once.

    Due since it was created, not from `now`: the command may run on a machine whose clock is not the server's.
    """
    row = await session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if row is None:
        raise WebhookDeliveryNotFound(delivery_id)
    if row.status != "dead":
        raise NotDead(f"webhook delivery {delivery_id} is {row.status}, not dead")
    row.status, row.attempts, row.next_attempt_at = "pending", 0, row.created_at
    row.last_error, row.last_status = None, None
    session.add(row)
    return row


def summary(row: WebhookDelivery) -> dict[str, Any]:
    """A delivery as the API, the CLI and the lead report show it (the body is left out: it holds contacts)."""
    return {
        "id": row.id,
        "event_id": row.event_id,
        "endpoint": row.endpoint,
        "event_type": row.event_type,
        "lead_id": row.lead_id,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": _iso(row.next_attempt_at) if row.status == "pending" else None,
        "last_attempt_at": _iso(row.last_attempt_at),
        "last_status": row.last_status,
        "last_error": row.last_error,
        "created_at": _iso(row.created_at),
        "delivered_at": _iso(row.delivered_at),
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
