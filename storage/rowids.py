"""SQLite: number a flush's new rows before they are written, so that each table's go out in one statement.

To learn a new row's id, SQLAlchemy sends `INSERT ... RETURNING id`, and on SQLite it cannot tell which
returned id belongs to which row of a many-row INSERT: it sends one statement per row (one round trip
through aiosqlite's thread each). Intake's group commit writes some fifty messages and replies per batch.
Rows that come with their id need no RETURNING and go out in one `executemany` per table.

The ids given are the ones SQLite would give: a table whose key is `id INTEGER PRIMARY KEY` (none here
is AUTOINCREMENT) numbers a new row one above the largest id in it, and a transaction here holds the
write lock from its BEGIN (storage/db.py), so nobody else inserts meanwhile. The largest id is read at
each flush, after whatever this transaction inserted before it.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any

from sqlalchemy import event, func, inspect, select
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession

KEY = "kindling.rowids"


def number_rows(session: AsyncSession) -> None:
    """From now on, this session's flushes number their new rows themselves (SQLite; elsewhere nothing)."""
    if session.bind is not None and session.bind.dialect.name == "sqlite":
        session.info[KEY] = True


@event.listens_for(Session, "before_flush")
def _number(session: Session, _context: Any, _instances: Any) -> None:
    if not session.info.get(KEY):
        return
    rows: dict[Any, list[Any]] = defaultdict(list)
    for row in session.new:
        table = getattr(type(row), "__table__", None)
        if table is not None and _numbered(table) and row.id is None:
            rows[table].append(row)
    connection = session.connection()  # not session.execute: no autoflush from inside a flush
    for table, new in rows.items():
        if len(new) < 2:  # one row is one statement either way
            continue
        top = connection.execute(select(func.max(table.c.id))).scalar() or 0
        for number, row in enumerate(sorted(new, key=lambda row: inspect(row).insert_order), top + 1):
            row.id = number


@functools.cache
def _numbered(table: Any) -> bool:
    """Whether SQLite numbers this table's rows: a single integer key named id."""
    key = table.primary_key.columns
    return len(key) == 1 and "id" in key and key["id"].type.python_type is int
