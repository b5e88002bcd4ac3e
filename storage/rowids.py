"""SQLite: intake numbers its new rows itself, so that they are all written at the commit, one statement a table.

To learn a new row's id, SQLAlchemy sends `INSERT ... RETURNING id`, and on SQLite it cannot tell which
returned id belongs to which row of a many-row INSERT: it sends one statement per row, each a round trip
through aiosqlite's thread. And a new lead's, conversation's or inbound event's id is needed at once (the
rows after it name it), so each was inserted on its own as soon as it was made. Intake's group commit
makes some fifty of each kind per transaction.

Numbered here instead, a lead, conversation or event gets its id when it is added to the session, and
every other new row at the flush; all are then written at the commit, an `executemany` per table. The ids
are the ones SQLite would give: a table whose key is `id INTEGER PRIMARY KEY` numbers a new row one above
the largest id in it, an AUTOINCREMENT one above the largest it ever held (`sqlite_sequence`, which SQLite
raises when we write a larger id ourselves), and a transaction here holds the write lock from its
BEGIN (storage/db.py), so nobody else inserts meanwhile. Rows now reach the database in another order
than before (a message may be written before its event), so the transaction checks foreign keys at its
commit (`defer_foreign_keys`), where a row that names a missing one still fails the whole transaction.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any

from sqlalchemy import ColumnElement, Table, column, event, func, inspect, select, table
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Conversation, Event, Lead

KEY = "kindling.rowids"
AT_ONCE = (Lead, Conversation, Event)  # numbered when added: their ids are read right away
SEQUENCE = table("sqlite_sequence", column("name"), column("seq"))


async def number_rows(session: AsyncSession) -> None:
    """From now on this session's transaction numbers its new rows itself (SQLite; elsewhere nothing)."""
    if session.bind is None or session.bind.dialect.name != "sqlite":
        return
    connection = await session.connection()
    await connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")  # until the transaction ends
    last = (await connection.execute(select(*(_top(model.__table__) for model in AT_ONCE)))).one()
    session.info[KEY] = dict(zip((model.__table__ for model in AT_ONCE), last, strict=True))


def numbering(session: AsyncSession) -> bool:
    """Whether this session numbers its rows (and so writes them only at a flush)."""
    return KEY in session.info


@event.listens_for(Session, "transient_to_pending")
def _number_at_once(session: Session, row: Any) -> None:
    last = session.info.get(KEY)
    table = getattr(type(row), "__table__", None)
    if last is not None and table in last and row.id is None:
        last[table] += 1
        row.id = last[table]


@event.listens_for(Session, "before_flush")
def _number_the_rest(session: Session, _context: Any, _instances: Any) -> None:
    last = session.info.get(KEY)
    if last is None:
        return
    rows: dict[Any, list[Any]] = defaultdict(list)
    for row in session.new:
        table = getattr(type(row), "__table__", None)
        if table is not None and table not in last and _numbered(table) and row.id is None:
            rows[table].append(row)
    connection = session.connection()  # not session.execute: no autoflush from inside a flush
    for table, new in rows.items():
        if len(new) < 2:  # one row is one statement either way
            continue
        top = connection.execute(select(_top(table))).scalar_one()
        for number, row in enumerate(sorted(new, key=lambda row: inspect(row).insert_order), top + 1):
            row.id = number


@functools.cache
def _numbered(table: Any) -> bool:
    """Whether SQLite numbers this table's rows: a single integer key named id."""
    key = table.primary_key.columns
    return len(key) == 1 and "id" in key and key["id"].type.python_type is int


def _top(numbered: Table) -> ColumnElement[int]:
    """The id SQLite numbers the table's next row above: the largest it holds, or (AUTOINCREMENT) ever held."""
    largest = func.coalesce(select(func.max(numbered.c.id)).scalar_subquery(), 0)
    if not numbered.dialect_options["sqlite"]["autoincrement"]:
        return largest
    used = select(SEQUENCE.c.seq).where(SEQUENCE.c.name == numbered.name).scalar_subquery()
    return func.max(largest, func.coalesce(used, 0))  # SQLite's max of two values
