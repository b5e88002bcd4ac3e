"""Operator accounts: adding and removing them, Argon2id passwords, checking a login."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from bot.console.roles import ROLES
from storage.db import Sessions, transaction
from storage.models import Operator
from storage.operators import add_operator, current_operator, remove_operator

MIN_PASSWORD = 8
_NAME = re.compile(r"^[\w.@-]{1,64}$")


class AccountError(ValueError):
    """An account cannot be created or changed as asked; the message says why."""


@cache
def hasher() -> PasswordHasher:
    """Argon2id with argon2-cffi's current defaults (RFC 9106, low-memory profile)."""
    return PasswordHasher()


@cache
def _decoy_hash() -> str:
    # Checking a password against this for unknown names keeps a login's timing the same.
    return hasher().hash("not a password of anyone")


def check_new_account(name: str, role: str, password: str) -> None:
    """Raise AccountError if the name, role or password is not acceptable."""
    if not _NAME.match(name):
        raise AccountError("the name must be 1-64 letters, digits or . _ @ -")
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r} (choose from {', '.join(ROLES)})")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password must be at least {MIN_PASSWORD} characters")


async def create_account(
    sessions: Sessions, name: str, role: str, password: str, telegram_user_id: str | None, now: datetime
) -> Operator:
    """Add an operator; raises AccountError or storage.operators.OperatorExists."""
    check_new_account(name, role, password)
    if telegram_user_id is not None and not telegram_user_id.lstrip("-").isdigit():
        raise AccountError("the Telegram id must be a number")
    password_hash = await asyncio.to_thread(hasher().hash, password)

    async def work(session) -> Operator:  # type: ignore[no-untyped-def]
        return await add_operator(session, name, role, password_hash, telegram_user_id, now)

    return await transaction(sessions, work)  # a racing add of the same name retries and sees it taken


async def remove_account(sessions: Sessions, name: str, now: datetime) -> Operator:
    """Remove an operator and end their sessions; raises storage.operators.OperatorNotFound."""

    async def work(session) -> Operator:  # type: ignore[no-untyped-def]
        return await remove_operator(session, name, now)

    return await transaction(sessions, work)


async def authenticate(sessions: Sessions, name: str, password: str) -> Operator | None:
    """The current operator if the password is theirs, else None; refreshes an outdated hash."""
    async with sessions() as session:
        operator = await current_operator(session, name)
    stored = operator.password_hash if operator is not None else _decoy_hash()
    if not await asyncio.to_thread(_verify, stored, password) or operator is None:
        return None
    if hasher().check_needs_rehash(stored):
        await _rehash(sessions, operator, password)
    return operator


def _verify(stored: str, password: str) -> bool:
    try:
        return hasher().verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


async def _rehash(sessions: Sessions, operator: Operator, password: str) -> None:
    """Store the password again with the current Argon2 parameters."""
    fresh = await asyncio.to_thread(hasher().hash, password)
    async with sessions() as session, session.begin():
        row = await session.get(Operator, operator.id)
        if row is not None:
            row.password_hash = fresh
            session.add(row)
