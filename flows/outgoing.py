"""Outgoing webhooks: the rows a lead's milestones leave for the bot to POST to a CRM.

`lead.warm` (a handoff opened), `lead.stage_changed` and `handoff.closed` each write one `WebhookDelivery`
row per subscribed endpoint, inside the transaction of whatever caused them: a crash loses both or neither,
and a rolled-back change never reaches the CRM. Each body is a snapshot of the lead at that moment.
The transaction's session is marked (`QUEUED` in `session.info`) so the sender can go right after the commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Handoff, Lead, WebhookDelivery

WEBHOOK_EVENTS = ("lead.warm", "lead.stage_changed", "handoff.closed")
QUEUED = "webhooks_queued"  # session.info key: this transaction added outgoing webhook rows


@dataclass(frozen=True)
class Subscriptions:
    """Which endpoints (by name) want which event types; `public_url` links the lead's console page."""

    endpoints: Mapping[str, frozenset[str]] = field(default_factory=dict)
    public_url: str = ""

    def wanting(self, event_type: str) -> list[str]:
        """The endpoints subscribed to an event type, by name."""
        return sorted(name for name, events in self.endpoints.items() if event_type in events)


async def queue_webhook(
    session: AsyncSession, webhooks: Subscriptions, event_type: str, lead: Lead, data: dict[str, Any], now: datetime
) -> None:
    """Add one outbox row per subscribed endpoint, in the caller's transaction; the body is built now."""
    if event_type not in WEBHOOK_EVENTS:
        raise ValueError(f"unknown webhook event {event_type!r}")
    names = webhooks.wanting(event_type)
    if not names:
        return
    event_id = str(uuid.uuid4())  # one event, one id, whichever endpoints get it
    body = {
        "id": event_id,
        "type": event_type,
        "occurred_at": now.isoformat(),
        "lead": lead_summary(lead, webhooks.public_url),
        **data,
    }
    for name in names:
        session.add(
            WebhookDelivery(
                event_id=event_id, endpoint=name, event_type=event_type, lead_id=lead.id,
                body=body, next_attempt_at=now, created_at=now,
            )
        )  # fmt: skip
    session.info[QUEUED] = True
    await session.flush()


def lead_summary(lead: Lead, public_url: str = "") -> dict[str, Any]:
    """What a CRM needs to file the lead: who, how to reach them, where they came from, how far along.

    Listed field by field rather than taken from `lead_context`: this is a contract with receivers, and it
    must not change when flow templates get a new field.
    """
    return {
        "id": lead.id,
        "name": " ".join(part for part in (lead.first_name, lead.last_name) if part) or None,
        "first_name": lead.first_name,
        "last_name": lead.last_name,
        "email": lead.email,
        "phone": lead.phone,
        "locale": lead.locale,
        "timezone": lead.timezone,
        "stage": lead.stage,
        "score": round(lead.score, 2),
        "tags": list(lead.tags),
        "first_touch": dict(lead.first_touch),
        "last_touch": dict(lead.last_touch),
        "created_at": _iso(lead.created_at),
        "url": f"{public_url}/console/leads/{lead.id}" if public_url else None,
    }


def handoff_summary(handoff: Handoff) -> dict[str, Any]:
    """The handoff as a CRM sees it: why the lead turned warm, the deadline, and how it ended."""
    card = handoff.card or {}
    return {
        "id": handoff.id,
        "trigger": handoff.trigger,
        "reason": handoff.reason,
        "channel": card.get("channel"),
        "score_explained": card.get("score_explained"),
        "warm_at": _iso(handoff.warm_at),
        "sla_due_at": _iso(handoff.sla_due_at),
        "claimed_at": _iso(handoff.claimed_at),
        "closed_at": _iso(handoff.closed_at),
        "outcome": handoff.outcome,
        "outcome_reason": handoff.outcome_reason,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
