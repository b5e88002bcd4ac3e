"""Hypothesis strategies for malformed input: nasty strings, arbitrary JSON, and valid payloads gone wrong.

Shared by the raw-bytes fuzz of the inbound endpoints (test_fuzz_inbound.py) and the property tests of
the inbound parsers (test_parser_properties.py).
"""

from __future__ import annotations

import copy
import gzip
import json
from typing import Any

from hypothesis import strategies as st

# Characters that have broken chat servers: NUL (PostgreSQL text refuses it), lone surrogates (not
# encodable as UTF-8), BOM, right-to-left override, zero-width joiner, a 4-byte emoji, a combining mark.
NASTY = ["\x00", "\ud800", "\udfff", "\ufeff", "\u202e", "\u200d", "\U0001f525", "\u0301", "\n", "\\", '"']
nasty_text = st.text(alphabet=st.one_of(st.characters(), st.sampled_from(NASTY)), max_size=40)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**62, max_value=2**80),  # past int64: database integer columns overflow
    st.floats(),  # NaN and Infinity too: Python's json writes and reads them
    nasty_text,
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(nasty_text, children, max_size=4),
    max_leaves=12,
)
# Mostly payloads gone slightly wrong, which get furthest into the code; some valid ones to compare.
KINDS = ["bytes", "truncated", "flipped", *["mutated"] * 3, "nested", "nested-inside", "oversize", "valid"]
CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=latin-1",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
]


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON value (objects and arrays), the root excluded."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


@st.composite
def mutated(draw: st.DrawFn, valid: dict) -> Any:
    """A valid payload with one to three fields replaced by any JSON value, or removed."""
    data = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        where = paths(data)
        if not where:
            break
        *parent_path, key = draw(st.sampled_from(where))
        parent = data
        for step in parent_path:
            parent = parent[step]
        if draw(st.booleans()):
            parent[key] = draw(json_value)
        elif isinstance(parent, dict):
            del parent[key]
    return data


def dumps(value: Any, ascii_only: bool = True) -> bytes:
    """JSON bytes; `ascii_only=False` writes lone surrogates raw, which makes the bytes invalid UTF-8."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def nested(depth: int, shape: str) -> str:
    """Deeply nested JSON text: `[[[...]]]` or `{"a": {"a": ...}}`."""
    if shape == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


@st.composite
def bodies(draw: st.DrawFn, valid: st.SearchStrategy[dict], limit: int) -> tuple[str, bytes]:
    """A request body that is anything but a well-formed payload (and sometimes is one); (kind, bytes).

    `valid` draws well-formed payloads; `limit` is the server's body size limit.
    """
    kind = draw(st.sampled_from(KINDS))
    if kind == "bytes":
        return kind, draw(st.binary(max_size=300))
    good = draw(valid)
    raw = dumps(good)
    if kind == "truncated":
        return kind, raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if kind == "flipped":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return kind, bytes(data)
    if kind == "mutated":
        return kind, dumps(draw(mutated(good)), ascii_only=draw(st.booleans()))
    if kind in ("nested", "nested-inside"):
        depth = draw(st.sampled_from([64, 1_000, 20_000, limit // 3]))
        text = nested(depth, draw(st.sampled_from(["list", "object"])))
        if kind == "nested":
            return kind, text.encode()
        good = {**good, "nested": "MARK"}
        return kind, dumps(good).replace(b'"MARK"', text.encode())
    if kind == "oversize":
        return kind, raw + b" " * draw(st.sampled_from([limit, 3 * limit]))
    return kind, raw


def gzip_bomb(limit: int) -> bytes:
    """A gzip body that is small on the wire and far over `limit` unpacked."""
    return gzip.compress(b"[" + b" " * (limit * 40) + b"]")
