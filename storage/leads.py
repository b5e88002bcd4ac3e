"""Lead queries: find by identity, create, attach identities, merge two people into one."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, Table, insert, update
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.db import Conflict
from storage.known import known
from storage.models import Conversation, Delivery, Enrollment, Event, Handoff, Identity, Lead, Message, PointsEntry
from storage.rowids import numbering

LIVE = ("active", "paused")
HANDED = ("waiting", "claimed")  # open handoffs: at most one per lead


class LeadNotFound(Exception):
    """No lead has that id."""


async def get_lead(session: AsyncSession, lead_id: int) -> Lead:
    """The lead with that id, following merges to the surviving lead."""
    if not 0 < lead_id < 2**31:
        raise LeadNotFound(lead_id)
    lead = await _lead(session, lead_id)
    while lead is not None and lead.merged_into_id is not None:
        lead = await _lead(session, lead.merged_into_id)
    if lead is None:
        raise LeadNotFound(lead_id)
    return lead


async def _lead(session: AsyncSession, lead_id: int) -> Lead | None:
    """A lead by id: one read ahead or made in this transaction (maybe not written yet), else the session's."""
    answers = known(session)
    if answers is not None and lead_id in answers.leads:
        return answers.leads[lead_id]
    return await session.get(Lead, lead_id)


async def leads_by_identities(session: AsyncSession, identities: list[tuple[str, str]]) -> list[Lead]:
    """The distinct leads any of these identities point at, oldest first."""
    found: dict[int, Lead] = {}
    for kind, value in identities:
        lead_id = await _identity_lead(session, kind, value)
        if lead_id is not None:
            lead = await get_lead(session, lead_id)
            found[lead.id] = lead
    return [found[key] for key in sorted(found)]


async def _identity_lead(session: AsyncSession, kind: str, value: str) -> int | None:
    """The lead id an identity points at (maybe merged since), or None."""
    answers = known(session)
    if answers is not None and (kind, value) in answers.identities:
        return answers.identities[(kind, value)]
    query = select(Identity.lead_id).where(Identity.kind == kind, Identity.value == value)
    return (await session.exec(query)).first()


async def identity_owner(session: AsyncSession, kind: str, value: str | None) -> int | None:
    """The id of the (surviving) lead an identity points at, if any."""
    if not value:
        return None
    lead_id = await _identity_lead(session, kind, value)
    return None if lead_id is None else (await get_lead(session, lead_id)).id


async def contacts_shared(session: AsyncSession, lead_id: int) -> list[tuple[str, str, bool]]:
    """The emails and phones the lead shared in chats, oldest first: (kind, value, verified)."""
    query = select(Event.payload).where(Event.lead_id == lead_id, Event.type == "contact_shared").order_by(Event.id)
    payloads = (await session.exec(query)).all()
    return [(each["kind"], each["value"], each.get("verified", True)) for each in payloads]


async def claims(session: AsyncSession, lead_id: int) -> list[dict[str, Any]]:
    """The addresses a lead typed that are not its verified identities, each with the lead owning it (or None).

    A claim is never merged on: an operator who knows better merges by hand. Should an email link or code
    confirm one some day, `attach_identities` makes it an identity and it leaves this list.
    """
    found: dict[tuple[str, str], int | None] = {}
    for kind, value, verified in await contacts_shared(session, lead_id):
        if not verified and (kind, value) not in found:
            found[(kind, value)] = await identity_owner(session, kind, value)
    return [
        {"kind": kind, "value": value, "lead_id": owner} for (kind, value), owner in found.items() if owner != lead_id
    ]


async def create_lead(session: AsyncSession, now: datetime, lead: Lead | None = None) -> Lead:
    """A new lead in the first stage (`lead`: one made but not stored yet)."""
    lead = lead or Lead(created_at=now, updated_at=now, stage_at=now)
    await insert_now(session, lead)
    answers = known(session)
    if answers is not None:  # a lead made just now has no enrollments, handoffs or messages yet
        answers.leads[lead.id] = lead
        answers.enrollments[lead.id], answers.handoffs[lead.id], answers.creditable[lead.id] = [], None, False
    return lead


async def insert_now(session: AsyncSession, row: SQLModel, attach: bool = True) -> None:
    """Give a new row its id at once; `attach`: the session then holds it (later changes to it are written
    too), else it is left out of the session (a row nothing changes afterwards).

    For intake's group commit: a new lead's, conversation's or event's id is needed at once (the rows after
    it name it), but `session.flush()` would also write every earlier inbound's pending rows, a statement
    each, instead of one statement per table at the commit. On SQLite intake numbers the row itself and it
    is written at the commit with the others of its table (storage/rowids.py); elsewhere it is inserted
    alone, now, and a unique key taken already fails here, as a flush would.
    """
    if numbering(session):
        session.add(row)  # numbered as it is added
        return
    table = row.__table__
    values = {column.name: getattr(row, column.name) for column in table.columns if column.name != "id"}
    connection = await session.connection()  # not session.exec: that would flush everything first
    row.id = (await connection.execute(_insert(table), values)).scalar_one()
    if attach:
        make_transient_to_detached(row)
        session.add(row)


async def attach_identities(
    session: AsyncSession, lead: Lead, identities: list[tuple[str, str]], now: datetime
) -> list[tuple[str, str]]:
    """Point identities that point nowhere yet at `lead` (callers merge the others first); returns those added.

    Raises Conflict when one points at another lead: a concurrent transaction committed it after the caller
    looked (on PostgreSQL each statement sees the latest commits), and the caller must look again.
    """
    added = []
    answers = known(session)
    for kind, value in identities:
        stored = await _stored_identity(session, kind, value)
        owner = None if stored is None else (await get_lead(session, stored)).id
        if owner is None:
            session.add(Identity(lead_id=lead.id, kind=kind, value=value, created_at=now))
            added.append((kind, value))
            if answers is not None:
                answers.identities[(kind, value)] = lead.id
        elif owner != lead.id:
            raise Conflict(f"identity {kind} was given to lead {owner} meanwhile")
    if added and answers is None:
        await session.flush()
    return added


async def _stored_identity(session: AsyncSession, kind: str, value: str) -> int | None:
    """The lead id an identity points at, for attaching it: from the read-ahead if it has the identity.

    The read-ahead is exact on SQLite (the transaction holds the write lock from its start). On PostgreSQL
    another transaction may commit the identity after it was read; the identity added here then fails its
    unique key at the commit, and the transaction runs again (as intake's batches do on any unique key),
    seeing the other's lead. Not read ahead: asked straight from the database.
    """
    answers = known(session)
    if answers is not None and (kind, value) in answers.identities:
        return answers.identities[(kind, value)]
    query = select(Identity.lead_id).where(Identity.kind == kind, Identity.value == value)
    with session.no_autoflush:  # the batch's pending rows can wait for the commit
        return (await session.exec(query)).first()


async def merge_leads(session: AsyncSession, survivor: Lead, other: Lead, now: datetime) -> None:
    """Move everything of `other` to `survivor`; `other` stays as a pointer so old ids resolve."""
    answers = known(session)
    if answers is not None:
        answers.forget(survivor.id, other.id)
    # One live enrollment per flow: where both are in a flow, the survivor's continues.
    taken = select(Enrollment.flow_slug).where(Enrollment.lead_id == survivor.id, Enrollment.status.in_(LIVE))
    await session.exec(
        update(Enrollment)
        .where(Enrollment.lead_id == other.id, Enrollment.status.in_(LIVE), Enrollment.flow_slug.in_(taken))
        .values(status="exited", exit_reason="merged into another lead", updated_at=now)
    )
    # Handoffs go along (else the person could get a second one); where both wait for a person, the survivor's does.
    handed = select(Handoff.id).where(Handoff.lead_id == survivor.id, Handoff.status.in_(HANDED))
    if (await session.exec(handed)).first() is not None:
        await session.exec(
            update(Handoff)
            .where(Handoff.lead_id == other.id, Handoff.status.in_(HANDED))
            .values(status="closed", closed_at=now, outcome_reason="merged into another lead")
        )
    for table in (Identity, Conversation, Event, Message, PointsEntry, Delivery, Enrollment, Handoff):
        await session.exec(update(table).where(table.lead_id == other.id).values(lead_id=survivor.id))
    for name in ("first_name", "last_name", "email", "phone", "locale", "timezone"):
        if getattr(survivor, name) is None:
            setattr(survivor, name, getattr(other, name))
    if other.first_touch and (
        not survivor.first_touch or other.first_touch.get("at", "") < survivor.first_touch.get("at", "")
    ):
        survivor.first_touch = other.first_touch
    if other.last_touch.get("at", "") > survivor.last_touch.get("at", ""):
        survivor.last_touch = other.last_touch
    survivor.tags = sorted(set(survivor.tags) | set(other.tags))
    if other.opted_out_at is not None and survivor.opted_out_at is None:
        survivor.opted_out_at = other.opted_out_at  # a person who said stop stays opted out
    if other.channel_marketing:  # an opt-out of marketing on a channel anywhere wins; consent is kept
        survivor.channel_marketing = merged_channel_marketing(survivor.channel_marketing, other.channel_marketing)
    survivor.created_at = min(survivor.created_at, other.created_at)
    survivor.updated_at = now
    other.merged_into_id = survivor.id
    other.updated_at = now
    session.add_all([survivor, other])
    await session.flush()


def merged_channel_marketing(survivor: dict, other: dict) -> dict:
    """Two leads' per-channel marketing states (consent, opt-out) as one person's: what either has is kept."""
    merged = {channel: dict(state) for channel, state in survivor.items()}
    for channel, state in other.items():
        mine = merged.setdefault(channel, {})
        for key, value in state.items():
            if value and not mine.get(key):
                mine[key] = value
    return merged


async def find_conversation(session: AsyncSession, channel: str, external_id: str) -> Conversation | None:
    """The conversation on a channel with that channel-side id."""
    answers = known(session)
    if answers is not None and (channel, external_id) in answers.conversations:
        return answers.conversations[(channel, external_id)]
    return (
        await session.exec(
            select(Conversation).where(Conversation.channel == channel, Conversation.external_id == external_id)
        )
    ).one_or_none()


async def stored_event(session: AsyncSession, dedup_key: str) -> Event | None:
    """The inbound event stored with this dedup key, if any."""
    answers = known(session)
    if answers is not None and dedup_key in answers.events:
        return answers.events[dedup_key]
    return (await session.exec(select(Event).where(Event.dedup_key == dedup_key))).first()


@functools.cache
def _insert(table: Table) -> Insert:
    """INSERT ... RETURNING id, built once per table (building it per row cost more than running it)."""
    return insert(table).returning(table.c.id)


async def insert_event(session: AsyncSession, event: Event) -> None:
    """Store an inbound's event at once and set its id (see `insert_now`); a duplicate dedup key fails here."""
    await insert_now(session, event, attach=False)
    answers = known(session)
    if answers is not None and event.dedup_key:
        answers.events[event.dedup_key] = event


async def event_exists(session: AsyncSession, dedup_key: str) -> bool:
    """Whether an inbound with this dedup key was stored already."""
    return (await session.exec(select(Event.id).where(Event.dedup_key == dedup_key))).first() is not None


async def email_conversation(session: AsyncSession, lead: Lead, now: datetime) -> Conversation | None:
    """The lead's email conversation (channel "email", its address in lowercase), made if need be; None without
    an address."""
    if not lead.email:
        return None
    address = lead.email.lower()
    conversation = await find_conversation(session, "email", address)
    if conversation is None:
        conversation = Conversation(lead_id=lead.id, channel="email", external_id=address, created_at=now)
        session.add(conversation)
        await session.flush()
    return conversation


async def lead_by_email(session: AsyncSession, address: str) -> int | None:
    """The lead an email address reaches: its email conversation's, else the lead with that address."""
    address = address.lower()
    conversation = await find_conversation(session, "email", address)
    if conversation is not None:
        return conversation.lead_id
    return (await session.exec(select(Lead.id).where(Lead.email == address).order_by(Lead.id))).first()
