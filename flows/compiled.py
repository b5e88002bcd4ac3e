"""Compiled templates kept for the process, shared by every environment of one kind (a Jinja bytecode cache).

Each start of the app (each test, too) builds its Jinja environments anew over its templates folder, and each
compiled every system message, partial and layout again: a third of a start's time. Here a template is found
by its environment's kind (the environments of one kind are made by one function, with the same options), its
name and its source's checksum: a copy of the same file compiles once, and an edited file is a new entry.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Any

from jinja2.bccache import Bucket, BytecodeCache

LIMIT = 4096  # entries of one kind; past it the store starts over (flows edited all day stay bounded)


class SharedBytecode(BytecodeCache):
    """In memory, keyed by kind, template name and source (Jinja checks the checksum again when it loads)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.codes: dict[str, bytes] = {}

    def get_bucket(self, environment: Any, name: str, filename: str | None, source: str) -> Bucket:
        checksum = self.get_source_checksum(source)
        key = hashlib.sha1(f"{self.kind}\0{name}\0{checksum}".encode()).hexdigest()
        bucket = Bucket(environment, key, checksum)
        self.load_bytecode(bucket)
        return bucket

    def load_bytecode(self, bucket: Bucket) -> None:
        code = self.codes.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: Bucket) -> None:
        if len(self.codes) >= LIMIT:
            self.codes.clear()
        self.codes[bucket.key] = bucket.bytecode_to_string()


@cache
def compiled(kind: str) -> SharedBytecode:
    """The store for environments of one kind ("system", "flows", "answers", "email")."""
    return SharedBytecode(kind)
