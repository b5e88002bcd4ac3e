"""How far a delivery got, in words: `queued -> sent -> delivered -> seen`, or failed / bounced / skipped."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from storage.models import Delivery

# Channels whose client tells us what was shown on screen: the widget does; Telegram gives bots no read receipts.
REPORTS_SEEN = frozenset({"webchat"})


def delivery_state(
    channel: str, status: str, delivered_at: datetime | None, seen_at: datetime | None, bounced_at: datetime | None
) -> str:
    """The state as people read it: never a bare "sent" that hides whether it reached the person."""
    if status in ("pending", "sending"):
        return "queued"
    if status == "skipped":
        return "skipped"
    if status == "dead":
        return "bounced" if bounced_at else "failed"
    if seen_at is not None:
        return "seen"
    sees = channel in REPORTS_SEEN
    if delivered_at is not None:
        return "delivered, not seen" if sees else "delivered"
    return "sent, not seen" if sees else "sent, delivery unknown"


def states_by_delivery(deliveries: Mapping[int, Delivery]) -> dict[int, str]:
    """Each delivery's state by its id, for transcripts showing how far each outgoing message got."""
    return {
        delivery_id: delivery_state(d.channel, d.status, d.delivered_at, d.seen_at, d.bounced_at)
        for delivery_id, d in deliveries.items()
    }
