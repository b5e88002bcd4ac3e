"""Reading path and query parameters: a wrong value is a 400 that names the parameter, never a 500."""

from __future__ import annotations

import math
from collections.abc import Sequence

from aiohttp import web

MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL: a larger one must not reach the database


def bad(message: str) -> web.HTTPBadRequest:
    """A 400 that the error middleware answers as {"error": message}."""
    return web.HTTPBadRequest(text=message)


def parse_id(text: str, what: str) -> int:
    """A row id written in ASCII digits, within the 32-bit range; raises a 400 otherwise."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= MAX_ID:
        raise bad(f"{what} must be a whole number from 1 to {MAX_ID}, got {text!r}")
    return int(text)


def path_id(request: web.Request) -> int:
    """The `{id}` in the path."""
    return parse_id(request.match_info["id"], "the id in the path")


def query_id(request: web.Request, name: str) -> int | None:
    """An optional id in the query string."""
    text = request.query.get(name)
    return None if text is None else parse_id(text, f"'{name}'")


def query_number(request: web.Request, name: str) -> float | None:
    """An optional finite number in the query string."""
    text = request.query.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise bad(f"'{name}' must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise bad(f"'{name}' must be a finite number, got {text!r}")
    return value


def query_choice(request: web.Request, name: str, choices: Sequence[str]) -> str | None:
    """An optional value that must be one of `choices`."""
    text = request.query.get(name)
    if text is not None and text not in choices:
        raise bad(f"'{name}' must be one of {', '.join(choices)}; got {text!r}")
    return text


def query_text(request: web.Request, name: str, max_length: int = 64) -> str | None:
    """An optional non-empty string of at most `max_length` characters."""
    text = request.query.get(name)
    if text is not None and not 0 < len(text) <= max_length:
        raise bad(f"'{name}' must be 1 to {max_length} characters long")
    if text is not None and "\x00" in text:
        raise bad(f"'{name}' must not contain NUL characters")  # PostgreSQL text cannot hold them
    return text
