"""Missed messages: widget messages a visitor has not seen within `channels.webchat.email_after` go by email.

One digest per conversation covers every unseen message since the last digest, with a signed link that reopens
the conversation in the widget (`/?kindling=<visitor link>`). Exactly once: in one transaction the covered
deliveries get `emailed_at` and the digest becomes an email Delivery keyed by the conversation and the last
message it covers; the outbox sends it. Answers (operator, reply, system) are service messages and go without
marketing consent; nurture is quoted only with consent, and a digest of nurture alone needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from email.utils import parseaddr

from sqlalchemy import ColumnElement, and_, or_, true, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.services import Services
from bot.web.signing import visitor_link
from flows.reach import EmailPolicy, email_block
from storage.db import Conflict, transaction
from storage.leads import email_conversation, get_lead
from storage.models import Conversation, Delivery, Lead

BATCH = 100  # conversations per run; the next tick takes the rest
MAX_AGE = timedelta(days=2)  # older unseen messages are stale news (and a first run does not email the past)
DIGEST_SECONDS = 30.0
PARAMETER = "kindling"  # the query parameter the widget reads (bot/static/widget.js)


async def send_digests(services: Services, now: datetime) -> int:
    """Queue a digest email for each conversation with widget messages unseen for `email_after`; how many."""
    after, policy = services.settings.webchat_email_after, services.engine.email
    if after is None or not policy.enabled or not services.settings.public_url:
        return 0
    async with services.sessions() as session:
        query = (
            select(Delivery.conversation_id)
            .join(Conversation, Conversation.id == Delivery.conversation_id)
            .join(Lead, Lead.id == Conversation.lead_id)
            .where(_unseen(now), Delivery.sent_at <= now - after, _may_email(policy))
            .distinct()
            .limit(BATCH)
        )
        conversations = (await session.exec(query)).all()
    queued = 0
    for conversation_id in conversations:
        queued += await transaction(services.sessions, lambda s, c=conversation_id: _digest(s, services, c, now))
    return queued


def _unseen(now: datetime) -> ColumnElement[bool]:
    """Widget messages the visitor has, but has not seen, and no digest covered yet (`ix_delivery_unseen`)."""
    return and_(
        Delivery.channel == "webchat",
        col(Delivery.seen_at).is_(None),
        col(Delivery.emailed_at).is_(None),
        Delivery.status == "sent",
        col(Delivery.sent_at) >= now - MAX_AGE,
    )


def _may_email(policy: EmailPolicy) -> ColumnElement[bool]:
    """What `email_block` allows, in SQL, so leads who cannot get one never fill a batch."""
    usable = and_(col(Lead.email).is_not(None), col(Lead.email_bounced_at).is_(None))
    consent = col(Lead.email_consent_at).is_not(None) if policy.require_consent else true()
    nurture_ok = and_(col(Lead.email_opted_out_at).is_(None), consent)
    return and_(usable, or_(Delivery.kind != "nurture", nurture_ok))


async def _digest(session: AsyncSession, services: Services, conversation_id: int, now: datetime) -> int:
    """The conversation's digest, marked and queued in this transaction; 1, or 0 when nothing is due."""
    chat = await session.get(Conversation, conversation_id)
    assert chat is not None
    lead, policy = await get_lead(session, chat.lead_id), services.engine.email
    query = select(Delivery).where(Delivery.conversation_id == conversation_id, _unseen(now)).order_by(Delivery.id)
    messages = [m for m in (await session.exec(query)).all() if m.kind != "nurture" or not email_block(lead, policy)]
    after = services.settings.webchat_email_after
    service = any(m.kind != "nurture" for m in messages)
    if not any(m.sent_at <= now - after for m in messages) or email_block(lead, policy, service=service):
        return 0  # seen, or covered, since the scan; or the lead cannot get it
    email = await email_conversation(session, lead, now)
    if email is None or email.lead_id != lead.id:  # an address two leads claim: it is the other one's
        return 0
    ids = [m.id for m in messages]
    marked = await session.exec(
        update(Delivery).where(col(Delivery.id).in_(ids), col(Delivery.emailed_at).is_(None)).values(emailed_at=now)
    )
    if marked.rowcount != len(ids):
        raise Conflict("another instance emailed some of these messages")  # run again: it sees what they took
    brand = _brand(services.settings.email.from_address)
    link = f"{services.settings.public_url}/?{PARAMETER}={visitor_link(services.secret_key, chat.external_id)}"
    session.add(
        Delivery(
            lead_id=lead.id, conversation_id=email.id, channel="email", address=email.external_id, kind="system",
            priority=1, text=digest_text(messages, brand, link), idempotency_key=f"digest:{conversation_id}:{ids[-1]}",
            subject=f"You have a reply from {brand}" if service else f"New messages from {brand}",
            not_before=now, created_at=now,
        )
    )  # fmt: skip
    return 1


def digest_text(messages: Sequence[Delivery], brand: str, link: str) -> str:
    """The digest in Markdown: each unseen message quoted with who wrote it, then the link back to the chat."""
    count = "a message" if len(messages) == 1 else f"{len(messages)} messages"
    quotes = [_quote("Team" if m.kind == "operator" else brand, m.text) for m in messages]
    return "\n\n".join([f"You have {count} in your chat with {brand} that you have not read yet:", *quotes,
                        f"[Open the conversation]({link}) to read and answer."])  # fmt: skip


def _quote(author: str, text: str) -> str:
    lines = text.strip().splitlines() or [""]
    return "\n".join([f"> **{author}:**", ">", *(f"> {line}" for line in lines)])


def _brand(from_address: str | None) -> str:
    """Who the site is, from the From address: `Acme <hello@acme.example>` is Acme."""
    name, address = parseaddr(from_address or "")
    return name or address.partition("@")[2] or "us"
