"""Bounces: a hard one marks the address undeliverable (flows.optout.email_bounced), a soft one is an event.

They come as RFC 3464 delivery status notifications (`multipart/report; report-type=delivery-status`) at the
SMTP receiver, or from a provider's bounce webhook (bot/mail/providers.py). A soft bounce (`4.x.x`, `delayed`)
changes nothing: the relay, or the sending side on a 4xx, tries again by itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.utils import parseaddr

from sqlmodel.ext.asyncio.session import AsyncSession

from bot.services import Services
from flows.optout import email_bounced
from storage import leads as q
from storage.db import transaction
from storage.models import Event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bounce:
    """One address that mail did not reach: `hard` (never will) or not (not yet); `key` makes it count once."""

    address: str
    hard: bool
    reason: str
    key: str


def dsn_bounces(message: EmailMessage, key: str) -> list[Bounce]:
    """The failed and delayed recipients a delivery status notification reports; [] if the message is none."""
    if message.get_content_type() != "multipart/report" or message.get_param("report-type") != "delivery-status":
        return []
    bounces = []
    for part in message.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()  # the per-message block, then one block per recipient
        for fields in blocks if isinstance(blocks, list) else []:  # a report too broken to read is no report
            bounce = _recipient_bounce(fields, key) if isinstance(fields, Message) else None
            if bounce is not None:
                bounces.append(bounce)
    return bounces


def _recipient_bounce(fields: Message, key: str) -> Bounce | None:
    action = str(fields.get("Action", "")).strip().lower()
    status = str(fields.get("Status", "")).strip()
    recipient = str(fields.get("Final-Recipient") or fields.get("Original-Recipient") or "")
    address = parseaddr(recipient.partition(";")[2].strip() or recipient)[1].lower()
    if not address or action not in ("failed", "delayed"):
        return None
    hard = action == "failed" and status.startswith("5.")
    diagnostic = " ".join(str(fields.get("Diagnostic-Code", "")).split())
    reason = " ".join(part for part in (status, diagnostic) if part) or action
    return Bounce(address, hard, reason, f"{key}:{address}")


async def record_bounces(services: Services, bounces: list[Bounce]) -> int:
    """Mark hard-bounced addresses and record soft bounces on their leads; returns how many named a lead.
    Raises DatabaseUnavailable."""
    return await transaction(services.sessions, lambda session: _record(session, services, bounces))


async def _record(session: AsyncSession, services: Services, bounces: list[Bounce]) -> int:
    now, found = services.clock.now(), 0
    for bounce in bounces:
        lead_id = await q.lead_by_email(session, bounce.address)
        if lead_id is None:
            log.info("a bounce for %s, which no lead has", bounce.address)
            continue
        found += 1
        if bounce.hard:
            await email_bounced(session, lead_id, bounce.address, bounce.reason, now)
        elif not await q.event_exists(session, f"email-bounce:{bounce.key}"):
            payload = {"address": bounce.address, "reason": bounce.reason[:300]}
            session.add(
                Event(
                    lead_id=lead_id,
                    type="email_soft_bounce",
                    payload=payload,
                    dedup_key=f"email-bounce:{bounce.key}"[:400],
                    at=now,
                )
            )
    return found
