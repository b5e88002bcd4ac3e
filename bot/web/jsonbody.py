"""JSON from outside (request bodies, widget frames), refused unless every part of it can be stored.

Python's `json` reads more than a database can keep: a NUL character (PostgreSQL text refuses it), an
unpaired surrogate like `"\\ud800"` (not encodable as UTF-8, so neither SQLite nor PostgreSQL takes it),
a number past a float's range like `1e400` (read as Infinity: SQLite stored it and every later read of the
row was invalid JSON, PostgreSQL refused it so the sender retried for ever) or the `NaN` and `Infinity`
literals, and nesting deep enough to exhaust the stack when it is written back out. Such input is refused
here, once, naming the field, instead of failing as a 500 or a 503 half-way through a transaction.
"""

from __future__ import annotations

import json
import math
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
        value = json.loads(raw)
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


def unstorable(value: Any) -> str | None:
    """Why a parsed JSON value cannot be stored (too deep, NUL, unpaired surrogate, not finite); None if it can."""
    pending: list[tuple[Any, str, int]] = [(value, "", 0)]
    while pending:
        item, path, depth = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{_field(path)} must be a finite number, not {_NON_FINITE.get(item, 'NaN')}"
        if isinstance(item, str) and _UNSTORABLE.search(item):
            return f"{_field(path)}: {_BAD_TEXT}"
        if not isinstance(item, dict | list):
            continue
        if depth >= MAX_DEPTH:
            return f"the JSON is nested more than {MAX_DEPTH} levels deep"
        if isinstance(item, list):
            pending.extend((child, f"{path}[{index}]", depth + 1) for index, child in enumerate(item))
        elif any(_UNSTORABLE.search(key) for key in item):  # checked first: a path never holds one
            return f"{_field(path)}: {_BAD_TEXT} in a key"
        else:
            pending.extend((child, f"{path}.{key}" if path else key, depth + 1) for key, child in item.items())
    return None


_BAD_TEXT = "the JSON holds a NUL character or an unpaired surrogate (\\u0000, \\ud800-\\udfff)"
_NON_FINITE = {math.inf: "Infinity (or a number too large, like 1e400)", -math.inf: "-Infinity (or a number too large)"}


def _field(path: str) -> str:
    """A field as an error names it: `'properties.items[2].price'`, shortened if long."""
    if not path:
        return "the body"
    return f"'{path}'" if len(path) <= 200 else f"'{path[:100]}...{path[-100:]}'"
