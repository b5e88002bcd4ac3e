"""JSON from outside (request bodies, widget frames), refused unless every part of it can be stored.

Python's `json` reads more than a database can keep: a NUL character (PostgreSQL text refuses it), an
unpaired surrogate like `"\\ud800"` (not encodable as UTF-8, so neither SQLite nor PostgreSQL takes it),
and nesting deep enough to exhaust the stack when it is written back out. Such input is refused as
malformed here, once, instead of failing as a 500 or a 503 half-way through a transaction.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32  # objects and arrays inside each other; real payloads use fewer than 10
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class BadJson(ValueError):
    """The input is not JSON (answered 400); the message says why."""

    status = 400


class Unstorable(BadJson):
    """JSON holding what no database stores (answered 422, like any other field that is wrong)."""

    status = 422


def parse_json(raw: bytes | str) -> Any:
    """The JSON value of `raw`. Raises BadJson (a ValueError) if it is malformed, Unstorable if it cannot be kept."""
    try:
        value = json.loads(raw, parse_constant=_not_a_number)
    except UnicodeDecodeError:
        raise BadJson("the body is not valid UTF-8") from None
    except json.JSONDecodeError:
        raise BadJson("the body is not valid JSON") from None
    except RecursionError:
        raise BadJson(f"the JSON is nested more than {MAX_DEPTH} levels deep") from None
    problem = unstorable(value)
    if problem is not None:
        raise Unstorable(problem)
    return value


def _not_a_number(name: str) -> Any:
    raise BadJson(f"{name} is not a JSON number")  # Python reads NaN and Infinity; databases' JSON does not


def unstorable(value: Any) -> str | None:
    """Why a parsed JSON value cannot be stored (too deep, NUL, unpaired surrogate); None if it can."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return "the JSON holds a NUL character or an unpaired surrogate (\\u0000, \\ud800-\\udfff)"
            continue
        if not isinstance(item, dict | list):
            continue
        if depth > MAX_DEPTH:
            return f"the JSON is nested more than {MAX_DEPTH} levels deep"
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        pending.extend((child, depth + 1) for child in children)
    return None
