"""Privacy: everything stored about a person, to export or to erase, found from the schema's foreign keys.

A person is a lead and every lead merged into it. Their rows are found generically: the rows of any
table with a foreign key to one of their leads, then the rows with a foreign key to those rows, and so
on (messages of their conversations, deliveries of their enrollments, ...). So a table added later is
covered without editing this file, as long as it links to what it is about with a foreign key. Every
link to a lead is one today (tests/test_privacy.py fails on a `lead_id` column without one); the
exceptions are `Erasure.lead_id` (deliberate) and the shared send budgets keyed by Telegram chat
(`Pace`, see `_forget_paces`), which are not about a lead but still name its chat.

A row reached through a nullable link that belongs to another lead (one of its own lead columns points
outside the person) is that other person's: the export leaves it out and erasure only clears the link.

Erasure keeps only suppression entries: HMAC-SHA256(secret key, "kind:value") of each email, phone and
identity, so intake can tell that someone who comes back asked to be erased without storing who.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, ColumnElement, Table, delete, insert, inspect, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.db import Sessions, checkpoint, create_engine, inbox_url, sessionmaker, transaction
from storage.known import known
from storage.leads import LeadNotFound, get_lead
from storage.models import Conversation, Erasure, Handoff, Identity, InboxEntry, Lead, Pace, Suppression
from storage.pace import chat_key

log = logging.getLogger(__name__)
LEAD: Table = Lead.__table__  # type: ignore[attr-defined]
IDENTITY: Table = Identity.__table__  # type: ignore[attr-defined]
CONVERSATION: Table = Conversation.__table__  # type: ignore[attr-defined]
HANDOFF: Table = Handoff.__table__  # type: ignore[attr-defined]
OPEN_HANDOFF = ("waiting", "claimed")  # flows.handoff.OPEN: the handoffs the console's queue shows
CHUNK = 500  # values per IN (...), well under every driver's parameter limit

Key = tuple[Any, ...]  # a row's primary key values


class LeadErased(LeadNotFound):
    """The lead was erased before (answered 410); its id is never given to anyone else."""

    def __str__(self) -> str:
        lead_id, erased_at = self.args
        return f"lead {lead_id} was erased on {erased_at:%Y-%m-%d %H:%M} UTC; nothing about it is left"


@dataclass
class Person:
    """The rows about one person, by table and primary key, and the links to clear in other people's rows."""

    lead_id: int
    rows: dict[Table, dict[Key, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    unlink: dict[tuple[Table, str], set[Key]] = field(default_factory=lambda: defaultdict(set))

    @property
    def lead_ids(self) -> set[int]:
        return {row["id"] for row in self.rows[LEAD].values()}

    def counts(self) -> dict[str, int]:
        """Rows per table, in dependency order: what an export holds and an erasure removes."""
        return {table.name: len(self.rows[table]) for table in _tables() if self.rows.get(table)}


async def find_person(session: AsyncSession, lead_id: int) -> Person:
    """Every row about the lead `lead_id` names (followed to the lead it was merged into); LeadNotFound if none."""
    survivor = await get_lead(session, lead_id)
    person = Person(lead_id=survivor.id)
    [row] = await _select(session, LEAD, LEAD.c.id, [survivor.id])
    person.rows[LEAD][_key(LEAD, row)] = row
    await _follow(session, person, [LEAD], owners=None)  # first the leads merged into it, all the way down
    await _follow(session, person, _tables(), owners=person.lead_ids)
    return person


async def export_person(session: AsyncSession, lead_id: int, now: datetime) -> dict[str, Any]:
    """The person as JSON: every row of every table about them, grouped by table."""
    person = await find_person(session, lead_id)
    tables = {
        table.name: [_jsonable(row) for _, row in sorted(person.rows[table].items())]
        for table in _tables()
        if person.rows.get(table)
    }
    return {
        "lead_id": person.lead_id,
        "lead_ids": sorted(person.lead_ids),
        "exported_at": now.isoformat(),
        "tables": tables,
    }


@dataclass(frozen=True)
class Erased:
    """What an erasure did: the person's lead id (a merged-away id leads to it) and rows removed per table.

    `conversation_ids` and `open_handoff_ids` name what live sockets were showing (ids, no personal data):
    the app closes the person's widget sockets and drops their handoffs from the console's queue.
    """

    lead_id: int
    removed: dict[str, int]
    conversation_ids: tuple[int, ...] = ()
    open_handoff_ids: tuple[int, ...] = ()
    addresses: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (channel, external id): for the inbox


async def erase_person(session: AsyncSession, lead_id: int, secret: bytes, by: str, now: datetime) -> Erased:
    """Delete every row about the person, keep hashed suppression entries and an audit row.

    Pending and in-flight deliveries go with the lead: the dispatcher finds their rows gone and stops.
    Run it in one transaction (`erase_everywhere` does): a row another transaction adds meanwhile fails its
    foreign key, and the retry finds it.
    """
    try:
        await _lock(session, lead_id)
        person = await find_person(session, lead_id)
    except LeadNotFound:
        await _erased_before(session, lead_id)
        raise
    keys = suppression_keys(person)
    for (table, column), row_keys in person.unlink.items():
        for chunk in _chunks(sorted(row_keys)):
            await session.exec(update(table).where(_pk_in(table, chunk)).values({column: None}))
    for table in reversed(_tables()):  # children first, so no foreign key is left dangling
        for chunk in _chunks(sorted(person.rows.get(table, {}))):
            await session.exec(delete(table).where(_pk_in(table, chunk)))
    await _forget_paces(session, person)
    await _suppress(session, secret, keys, now)
    removed = person.counts()
    session.add(Erasure(lead_id=person.lead_id, erased_at=now, erased_by=by, removed=removed))
    await session.flush()
    log.info("lead %s erased by %s: %d rows in %d tables", person.lead_id, by, sum(removed.values()), len(removed))
    conversations = sorted(person.rows.get(CONVERSATION, {}).items())
    handoffs = sorted(key for key, row in person.rows.get(HANDOFF, {}).items() if row["status"] in OPEN_HANDOFF)
    return Erased(
        person.lead_id,
        removed,
        conversation_ids=tuple(key[0] for key, _ in conversations),
        open_handoff_ids=tuple(key[0] for key in handoffs),
        addresses=tuple((row["channel"], row["external_id"]) for _, row in conversations),
    )


async def erase_everywhere(sessions: Sessions, lead_id: int, secret: bytes, by: str, now: datetime) -> Erased:
    """`erase_person` in its own transaction, then the deleted rows are flushed out of SQLite's log too."""
    erased = await transaction(sessions, lambda session: erase_person(session, lead_id, secret, by, now))
    waiting = await _forget_inbox(sessions.kw["bind"], erased.addresses)
    if waiting:
        erased = replace(erased, removed={**erased.removed, "inbox": waiting})
    if not await checkpoint(sessions):
        log.warning("lead %s: erased rows stay in the write-ahead log until the next checkpoint", erased.lead_id)
    return erased


async def _forget_inbox(engine: AsyncEngine, addresses: tuple[tuple[str, str], ...]) -> int:
    """Delete the person's inbounds still in the inbox (bot/intake/inbox.py); returns how many.

    One whose intake kept failing stays there with its error, message and all, until someone deletes it;
    one not taken in yet would otherwise be taken in after the erasure (as a suppressed newcomer). After the
    erasure's commit, because on SQLite the inbox is a file of its own, so it cannot share the transaction.
    On SQLite the inbox's log is then emptied even when nothing was left to delete: the updates taken in
    were deleted from the table, but their raw JSON (name, phone, chat id) stays in old frames of the log.
    """
    url = engine.url.render_as_string(hide_password=False)
    own = inbox_url(url)
    if own == url:
        return await _delete_inbounds(engine, addresses)
    if not Path(own.split(":///", 1)[1]).exists():
        return 0
    inbox = create_engine(own)
    try:
        removed = await _delete_inbounds(inbox, addresses)
        if not await checkpoint(sessionmaker(inbox)):
            log.warning("erased inbounds stay in the inbox's write-ahead log until its next checkpoint")
        return removed
    finally:
        await inbox.dispose()


async def _delete_inbounds(engine: AsyncEngine, addresses: tuple[tuple[str, str], ...]) -> int:
    table: Table = InboxEntry.__table__  # type: ignore[attr-defined]
    inbound = table.c.inbound
    address = tuple_(inbound["channel"].as_string(), inbound["external_id"].as_string())
    removed = 0
    async with engine.begin() as connection:
        if not addresses or not await connection.run_sync(lambda sync: inspect(sync).has_table(table.name)):
            return 0  # an in-memory SQLite database whose app never started: no inbox yet
        for chunk in _chunks(sorted(addresses)):
            removed += (await connection.execute(delete(table).where(address.in_(chunk)))).rowcount
    return removed


async def _forget_paces(session: AsyncSession, person: Person) -> None:
    """The person's Telegram chats' send budgets: their keys hold the chat id."""
    conversations = person.rows.get(CONVERSATION, {}).values()
    chats = [row["external_id"] for row in conversations if row["channel"] == "telegram"]
    if chats:
        await session.exec(delete(Pace).where(Pace.key.in_([chat_key(chat) for chat in chats])))


def suppression_keys(person: Person) -> set[tuple[str, str]]:
    """(kind, value) of each email, phone and identity of the person, as intake stores them (normalised)."""
    keys = {(row["kind"], row["value"]) for row in person.rows.get(IDENTITY, {}).values()}
    for lead in person.rows[LEAD].values():
        keys |= {(kind, lead[kind]) for kind in ("email", "phone") if lead[kind]}
    return keys


def suppression_hash(secret: bytes, kind: str, value: str) -> str:
    """The keyed hash a suppression entry stores: without the secret key no one can test a guess against it."""
    return hmac.new(secret, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


async def suppressed_kinds(session: AsyncSession, secret: bytes, keys: Iterable[tuple[str, str]]) -> list[str]:
    """The kinds among `keys` that belong to an erased person (one indexed lookup)."""
    hashes = {suppression_hash(secret, kind, value) for kind, value in keys}
    if not hashes:
        return []
    answers = known(session)
    if answers is not None and hashes <= answers.suppressed.keys():
        return sorted({kind for digest in hashes if (kind := answers.suppressed[digest]) is not None})
    found = await session.exec(select(Suppression.kind).where(Suppression.hash.in_(hashes)))
    return sorted(set(found.scalars().all()))


async def _lock(session: AsyncSession, lead_id: int) -> None:
    """Wait for a concurrent erasure of the same person, which then leaves nothing: LeadNotFound (PostgreSQL).

    SQLite needs no lock: its transactions write one at a time.
    """
    survivor = (await get_lead(session, lead_id)).id
    if (await session.exec(select(LEAD.c.id).where(LEAD.c.id == survivor).with_for_update())).first() is None:
        raise LeadNotFound(lead_id)


async def _erased_before(session: AsyncSession, lead_id: int) -> None:
    """Raise LeadErased if the erasure log names this lead id (a retried erasure, say)."""
    query = select(Erasure.erased_at).where(Erasure.lead_id == lead_id).order_by(Erasure.id).limit(1)
    erased_at = (await session.exec(query)).scalars().first()
    if erased_at is not None:
        raise LeadErased(lead_id, erased_at)


async def _suppress(session: AsyncSession, secret: bytes, keys: set[tuple[str, str]], now: datetime) -> None:
    hashes = {suppression_hash(secret, kind, value): kind for kind, value in keys}
    if not hashes:
        return
    stored = await session.exec(select(Suppression.hash).where(Suppression.hash.in_(list(hashes))))
    known = set(stored.scalars().all())
    fresh = [
        {"hash": digest, "kind": kind, "created_at": now} for digest, kind in hashes.items() if digest not in known
    ]
    if fresh:
        await session.exec(insert(Suppression), params=fresh)


async def _follow(session: AsyncSession, person: Person, tables: list[Table], owners: set[int] | None) -> None:
    """Add rows of `tables` that point at the person's rows, then rows pointing at those, until none are new."""
    fresh = {table: dict(rows) for table, rows in person.rows.items() if rows}
    while fresh:
        found: dict[Table, dict[Key, dict[str, Any]]] = defaultdict(dict)
        for table in tables:
            for link in table.foreign_keys:
                values = {row[link.column.name] for row in fresh.get(link.column.table, {}).values()}
                if not values:
                    continue
                for row in await _select(session, table, link.parent, values):
                    key = _key(table, row)
                    if key in person.rows[table] or key in found[table]:
                        continue
                    if owners is not None and _belongs_elsewhere(table, row, link.parent, owners):
                        person.unlink[(table, link.parent.name)].add(key)
                    else:
                        found[table][key] = row
        for table, rows in found.items():
            person.rows[table].update(rows)
        fresh = {table: rows for table, rows in found.items() if rows}


def _belongs_elsewhere(table: Table, row: dict[str, Any], via: Column, owners: set[int]) -> bool:
    """Whether a row reached through the nullable link `via` is another lead's (keep it, clear the link)."""
    if not via.nullable or table is LEAD:
        return False
    return any(
        link.column.table is LEAD and link.parent is not via and row[link.parent.name] not in (None, *owners)
        for link in table.foreign_keys
    )


async def _select(session: AsyncSession, table: Table, column: Column, values: Iterable[Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for chunk in _chunks(sorted(values)):
        result = await session.exec(select(table).where(column.in_(chunk)))
        rows += [dict(row) for row in result.mappings().all()]
    return rows


def _tables() -> list[Table]:
    """Every table, parents before children."""
    return list(SQLModel.metadata.sorted_tables)


def _key(table: Table, row: dict[str, Any]) -> Key:
    return tuple(row[column.name] for column in table.primary_key.columns)


def _pk_in(table: Table, keys: list[Key]) -> ColumnElement[bool]:
    columns = list(table.primary_key.columns)
    if len(columns) == 1:
        return columns[0].in_([key[0] for key in keys])
    return tuple_(*columns).in_(keys)


def _chunks(values: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """Times as ISO 8601; JSON columns are already lists and dicts."""
    return {name: value.isoformat() if isinstance(value, datetime | date) else value for name, value in row.items()}
