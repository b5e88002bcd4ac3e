"""Cursor pagination for every API list: keyset on the row id, so rows inserted while a client pages
never shift what it gets next or make it see a row twice.

A page is `{"items": [...], "next_cursor": "..." | null}`; the client passes `next_cursor` back as
`?cursor=` until it is null. The cursor is opaque to clients: base64url of `"<order>:<last id>"`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlmodel import col

from bot.api.params import bad, parse_id

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
ORDERS = ("asc", "desc")


@dataclass(frozen=True)
class Page:
    """Which page a request asks for: how many rows, after which id, in which order."""

    limit: int
    after: int | None
    order: str

    def apply(self, statement: Any, id_column: Any) -> Any:
        """The statement narrowed to this page (one row extra, to know whether another page follows)."""
        column = col(id_column)
        if self.after is not None:
            statement = statement.where(column < self.after if self.order == "desc" else column > self.after)
        ordered = column.desc() if self.order == "desc" else column.asc()
        return statement.order_by(ordered).limit(self.limit + 1)

    def body(self, rows: Sequence[Any], item: Callable[[Any], dict]) -> dict:
        """The JSON answer for rows fetched with `apply`."""
        shown = list(rows[: self.limit])
        following = encode(self.order, shown[-1].id) if len(rows) > self.limit else None
        return {"items": [item(row) for row in shown], "next_cursor": following}


def page_of(request: web.Request, order: str = "desc") -> Page:
    """The page a request asks for with `?limit=` and `?cursor=`; a bad value is a 400 saying why."""
    text = request.query.get("limit")
    limit = DEFAULT_LIMIT if text is None else _limit(text)
    cursor = request.query.get("cursor")
    return Page(limit=limit, after=None if cursor is None else decode(cursor, order), order=order)


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise bad(f"'limit' must be a whole number from 1 to {MAX_LIMIT}, got {text!r}")
    return int(text)


def encode(order: str, last_id: int) -> str:
    """The cursor that continues after `last_id`."""
    return base64.urlsafe_b64encode(f"{order}:{last_id}".encode()).decode().rstrip("=")


def decode(cursor: str, order: str) -> int:
    """The last id a cursor carries; a 400 if it is not one of ours or belongs to a list in the other order."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        raise bad("'cursor' is not a cursor from this API: pass back next_cursor as it was given") from None
    written, _, last = text.partition(":")
    if written not in ORDERS or not last:
        raise bad("'cursor' is not a cursor from this API: pass back next_cursor as it was given")
    if written != order:
        raise bad("'cursor' belongs to another list: pass back the next_cursor of this one")
    return parse_id(last, "the id in 'cursor'")
