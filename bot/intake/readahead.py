"""Read ahead for group commit: what a batch of inbounds will look up, in a few set-based queries.

Intake calls `read_ahead` at the start of each transaction; the answers go in `session.info` (see
storage/known.py), where the lookups intake makes for each inbound find them. Per inbound that saves the
queries for its dedup key, identities, lead, conversation, enrollments, open handoff, a nurture message
to credit and suppressed identities: the batch asks each question once, for all of its inbounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import tuple_
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.intake.contacts import normalize_email, normalize_phone
from bot.intake.inbound import Inbound
from flows.handoff import OPEN
from flows.history import CREDIT_WINDOW
from storage.known import Known
from storage.models import Conversation, Delivery, Enrollment, Event, Handoff, Identity, Lead, Suppression
from storage.privacy import suppression_hash

SLACK = timedelta(minutes=1)  # the credit window read a little wider: inbounds later in the batch see later times


def identity_keys(inbound: Inbound) -> list[tuple[str, str]]:
    """The identities an inbound names: its verified ones (the channel's first), and its profile's email and phone."""
    email = inbound.profile.email and normalize_email(inbound.profile.email)
    phone = inbound.profile.phone and normalize_phone(inbound.profile.phone)
    return [*inbound.identities, *([("email", email)] if email else []), *([("phone", phone)] if phone else [])]


async def read_ahead(session: AsyncSession, inbounds: Sequence[Inbound], secret: bytes, now: datetime) -> Known:
    """What these inbounds will look up; leads land in the session, so getting them by id asks nothing."""
    answers = Known()
    await _events(session, answers, {inbound.dedup_key for inbound in inbounds if inbound.dedup_key})
    leads = await _identities(session, answers, {key for inbound in inbounds for key in identity_keys(inbound)})
    await _suppressed(session, answers, secret)
    await _conversations(session, answers, {(i.channel, i.external_id) for i in inbounds if i.external_id})
    if leads:
        await _about_leads(session, answers, sorted(leads), now)
    return answers


async def _events(session: AsyncSession, answers: Known, keys: set[str]) -> None:
    if keys:
        answers.events = dict.fromkeys(keys)
        for event in (await session.exec(select(Event).where(Event.dedup_key.in_(keys)))).all():
            answers.events[event.dedup_key] = event


async def _identities(session: AsyncSession, answers: Known, keys: set[tuple[str, str]]) -> set[int]:
    """Who the identities point at; returns the ids of those leads (not merged away) for the next questions."""
    if not keys:
        return set()
    answers.identities = dict.fromkeys(keys)
    query = (
        select(Identity.kind, Identity.value, Lead)
        .join(Lead, Lead.id == Identity.lead_id)
        .where(tuple_(Identity.kind, Identity.value).in_(list(keys)))
    )
    for kind, value, lead in (await session.exec(query)).all():
        answers.identities[(kind, value)] = lead.id
        answers.leads[lead.id] = lead  # so that getting it by id asks nothing
    return {lead.id for lead in answers.leads.values() if lead.merged_into_id is None}


async def _suppressed(session: AsyncSession, answers: Known, secret: bytes) -> None:
    """Whether the identities nobody has yet belong to an erased person (the only ones intake asks about)."""
    hashes = {suppression_hash(secret, kind, value) for (kind, value), lead in answers.identities.items() if not lead}
    if hashes:
        answers.suppressed = dict.fromkeys(hashes)
        query = select(Suppression.hash, Suppression.kind).where(Suppression.hash.in_(list(hashes)))
        for digest, kind in (await session.exec(query)).all():
            answers.suppressed[digest] = kind


async def _conversations(session: AsyncSession, answers: Known, places: set[tuple[str, str]]) -> None:
    if places:
        answers.conversations = dict.fromkeys(places)
        query = select(Conversation).where(tuple_(Conversation.channel, Conversation.external_id).in_(list(places)))
        for conversation in (await session.exec(query)).all():
            answers.conversations[(conversation.channel, conversation.external_id)] = conversation


async def _about_leads(session: AsyncSession, answers: Known, ids: list[int], now: datetime) -> None:
    """The leads' enrollments, open handoffs, and whether any nurture message was sent to them lately."""
    answers.enrollments = {lead_id: [] for lead_id in ids}
    enrollments = select(Enrollment).where(Enrollment.lead_id.in_(ids)).order_by(Enrollment.id)
    for enrollment in (await session.exec(enrollments)).all():
        answers.enrollments[enrollment.lead_id].append(enrollment)
    answers.handoffs = dict.fromkeys(ids)
    for handoff in (
        await session.exec(select(Handoff).where(Handoff.lead_id.in_(ids), Handoff.status.in_(OPEN)))
    ).all():
        answers.handoffs[handoff.lead_id] = handoff
    nurtured = select(Delivery.lead_id).where(
        Delivery.lead_id.in_(ids), Delivery.kind == "nurture", Delivery.sent_at >= now - CREDIT_WINDOW - SLACK
    )
    sent = set((await session.exec(nurtured.distinct())).all())
    answers.creditable = {lead_id: lead_id in sent for lead_id in ids}
