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

from jinja2 import Environment, Template
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


def template_from_string(env: Environment, source: str) -> Template:
    """`env.from_string(source)` through `env`'s bytecode cache, as Jinja's loaders use it for files.

    Texts kept in other files (quick answers in TOML, a step's subject) are the same from one start to the
    next, so they compile once for the process too.
    """
    cache = env.bytecode_cache
    if cache is None:
        return env.from_string(source)
    bucket = cache.get_bucket(env, "<template>", None, source)
    if bucket.code is None:
        bucket.code = env.compile(source)
        cache.set_bucket(bucket)
    return env.template_class.from_code(env, bucket.code, env.make_globals(None))
