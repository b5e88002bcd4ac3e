"""Email consent: what lets nurture email go to a lead when `email.require_consent` is on.

Consent comes from the widget (a checkbox or a button), the site's backend (the events API) or an operator;
each change is an `email_consent` event saying who gave or withdrew it. Withdrawing stops nurture email at
once: queued nurture email is skipped with the reason. An unsubscribe (RFC 8058) is separate and wins: a
later consent does not undo it, so a backend that repeats consent on every event never resubscribes anyone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from flows.optout import skip_queued_email
from storage.models import Event, Lead

SOURCES = ("widget", "api", "operator")
NO_CONSENT = "no email consent"
CONSENT = "email_consent"  # the key an inbound's properties carry consent under (true or false)


async def set_email_consent(
    session: AsyncSession, lead: Lead, consent: bool, source: str, now: datetime
) -> Event | None:
    """Give or withdraw the lead's email consent; None when it already was so."""
    if source not in SOURCES:
        raise ValueError(f"unknown consent source {source!r}")
    if consent == (lead.email_consent_at is not None):
        return None
    lead.email_consent_at, lead.email_consent_source = (now, source) if consent else (None, None)
    lead.updated_at = now
    event = Event(lead_id=lead.id, type=CONSENT, payload={"email": consent, "source": source}, at=now)
    session.add_all([lead, event])
    if not consent:
        await skip_queued_email(session, lead.id, NO_CONSENT)
    await session.flush()
    return event


def email_state(lead: Lead) -> dict[str, Any]:
    """Whether nurture email may reach the lead: consent (when and from whom), unsubscribed, bounced."""
    return {
        "email_consent": lead.email_consent_at is not None,
        "email_consent_at": _iso(lead.email_consent_at),
        "email_consent_source": lead.email_consent_source,
        "email_opted_out_at": _iso(lead.email_opted_out_at),
        "email_bounced_at": _iso(lead.email_bounced_at),
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
