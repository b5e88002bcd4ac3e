"""`kindling apikey add|list|revoke`: keys for the JSON API, each with the scopes it may use."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from bot.api.auth import EVERY_SCOPE, SCOPES, VISIBLE, key_hash, new_key
from bot.config import Settings
from flows.clock import SystemClock
from storage.apikeys import ApiKeyExists, ApiKeyNotFound, add_key, list_keys, revoke_key
from storage.db import database, transaction

NAME = re.compile(r"^[\w.@-]{1,64}$")


class KeyRequestError(ValueError):
    """A bad name or an unknown scope; the message says which (and lists the scopes)."""


def checked_scopes(given: Sequence[str]) -> list[str]:
    """The scopes as stored (sorted, each once); raises KeyRequestError for an unknown one."""
    unknown = [name for name in given if name != EVERY_SCOPE and name not in SCOPES]
    if unknown:
        listing = "\n".join(f"  {name:<15} {meaning}" for name, meaning in {**SCOPES, "'*'": "all of them"}.items())
        raise KeyRequestError(f"unknown scope {', '.join(map(repr, unknown))}; the scopes are:\n{listing}")
    return [EVERY_SCOPE] if EVERY_SCOPE in given else sorted(set(given))


async def add(settings: Settings, name: str, scopes: Sequence[str]) -> int:
    """Make a key and print it once (only its hash is kept)."""
    token = new_key()
    try:
        if not NAME.match(name):
            raise KeyRequestError("the name must be 1-64 letters, digits or . _ @ -")
        wanted = checked_scopes(scopes)
        async with database(settings.database_url) as sessions:
            await transaction(
                sessions,
                lambda session: add_key(session, name, key_hash(token), token[:VISIBLE], wanted, SystemClock().now()),
            )
    except (KeyRequestError, ApiKeyExists) as exc:
        print(f"apikey add: {exc}", file=sys.stderr)
        return 1
    print(f"added API key {name!r} with scopes {' '.join(wanted)}; it is shown only this once:")
    print(token)
    return 0


async def show_all(settings: Settings) -> int:
    """Print the keys, one a line: name, visible prefix, scopes, created, revoked (never the key)."""
    async with database(settings.database_url) as sessions, sessions() as session:
        records = await list_keys(session)
    if not records:
        print("no API keys yet: add one with `kindling apikey add NAME --scope leads:read`")
    for record in records:
        used = f"  used {record.last_used_at:%Y-%m-%d %H:%M}" if record.last_used_at else ""
        revoked = f"  revoked {record.revoked_at:%Y-%m-%d %H:%M}" if record.revoked_at else ""
        scopes = " ".join(record.scopes)
        print(f"{record.name:<24} {record.prefix}...  {scopes}  added {record.created_at:%Y-%m-%d}{used}{revoked}")
    return 0


async def revoke(settings: Settings, name: str) -> int:
    """Revoke a key: every request with it is refused from now on."""
    try:
        async with database(settings.database_url) as sessions:
            await transaction(sessions, lambda session: revoke_key(session, name, SystemClock().now()))
    except ApiKeyNotFound as exc:
        print(f"apikey revoke: {exc}", file=sys.stderr)
        return 1
    print(f"revoked API key {name!r}; requests with it now get 401")
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:
    """`kindling apikey add|list|revoke`."""
    apikey = commands.add_parser("apikey", help="keys for the JSON API under /api")
    actions = apikey.add_subparsers(dest="apikey_command", required=True)
    add = actions.add_parser("add", help="make a key with the given scopes; it is printed once")
    add.add_argument("name")
    add.add_argument(
        "--scope", action="append", required=True, dest="scopes", help="a scope such as leads:read ('*' for all)"
    )
    actions.add_parser("list", help="the keys: name, prefix, scopes, created, revoked (never the key itself)")
    revoke = actions.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("name")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run `kindling apikey add|list|revoke`."""
    if args.apikey_command == "add":
        return await add(settings, args.name, args.scopes)
    if args.apikey_command == "list":
        return await show_all(settings)
    return await revoke(settings, args.name)
