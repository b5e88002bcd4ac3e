"""Marketing on a messenger: consent and opt-out per channel (WhatsApp; Messenger and Instagram alike).

WhatsApp allows marketing templates only to people who opted in to them on WhatsApp; consent comes from a
button in chat, the site's backend (the events API), the widget or an operator, like email consent
(flows.consent). A person the channel cannot reach (WhatsApp error 131026) or who asked it to stop marketing
is opted out of marketing on that channel: queued nurture there is skipped with the reason, and chat goes
on. Both live in `lead.channel_marketing[channel]`; a STOP (flows.optout) stops everything everywhere.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Delivery, Event, Lead

SOURCES = ("chat", "widget", "api", "operator")
WHATSAPP_CONSENT = "whatsapp_consent"  # the key an inbound's properties carry WhatsApp marketing consent under
CONSENT_EVENT = "channel_consent"
OPT_OUT_EVENT = "marketing_opt_out"


def marketing_block(lead: Lead, channel: str) -> str | None:
    """Why marketing may not go to the lead on `channel` (None: it may)."""
    state = lead.channel_marketing.get(channel) or {}
    if state.get("opted_out_at"):
        return f"opted out of marketing on {channel}: {state.get('opted_out_reason') or 'asked to stop'}"
    if not state.get("consent_at"):
        return f"no {channel} marketing consent"
    return None


async def set_channel_consent(
    session: AsyncSession, lead: Lead, channel: str, consent: bool, source: str, now: datetime
) -> Event | None:
    """Give or withdraw marketing consent on `channel`; None when it already was so."""
    if source not in SOURCES:
        raise ValueError(f"unknown consent source {source!r}")
    state = dict(lead.channel_marketing.get(channel) or {})
    if consent == bool(state.get("consent_at")):
        return None
    state.update(consent_at=now.isoformat() if consent else None, consent_source=source if consent else None)
    event = Event(
        lead_id=lead.id, type=CONSENT_EVENT, payload={"channel": channel, "consent": consent, "source": source}, at=now
    )
    await _save(session, lead, channel, state, event, now)
    if not consent:
        await skip_queued_nurture(session, lead.id, channel, f"no {channel} marketing consent")
    return event


async def marketing_opt_out(
    session: AsyncSession, lead: Lead, channel: str, reason: str, now: datetime
) -> Event | None:
    """Stop marketing to the lead on `channel` (chat goes on); None if it had stopped already."""
    state = dict(lead.channel_marketing.get(channel) or {})
    if state.get("opted_out_at"):
        return None
    state.update(opted_out_at=now.isoformat(), opted_out_reason=reason[:300])
    event = Event(lead_id=lead.id, type=OPT_OUT_EVENT, payload={"channel": channel, "reason": reason[:300]}, at=now)
    await _save(session, lead, channel, state, event, now)
    await skip_queued_nurture(session, lead.id, channel, f"opted out of marketing on {channel}: {reason[:300]}")
    return event


async def skip_queued_nurture(session: AsyncSession, lead_id: int, channel: str, reason: str) -> None:
    """Skip the lead's nurture still waiting in the outbox on `channel`, saying why."""
    queued = (Delivery.lead_id == lead_id, Delivery.channel == channel, Delivery.status == "pending")
    await session.exec(
        update(Delivery).where(*queued, Delivery.kind == "nurture").values(status="skipped", last_error=reason)
    )
    await session.flush()


async def _save(session: AsyncSession, lead: Lead, channel: str, state: dict, event: Event, now: datetime) -> None:
    lead.channel_marketing = {**lead.channel_marketing, channel: state}  # a new dict: the JSON column sees the change
    lead.updated_at = now
    session.add_all([lead, event])
    await session.flush()
