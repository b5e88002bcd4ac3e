"""How far a delivery got, in words: `queued -> sent -> delivered -> seen`, or failed / bounced / skipped."""

from __future__ import annotations

from datetime import datetime

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
