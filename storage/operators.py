"""Operator queries: accounts, console sessions (by token hash) and failed logins."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import LoginFailure, Operator, OperatorSession

# An operator seen at the console this recently is "online": console pages mark their login as seen, and an
# open console socket does every `bot.console.live.SESSION_CHECK` seconds (on whichever instance holds it).
ONLINE_WINDOW = timedelta(minutes=2)


class OperatorExists(Exception):
    """The name (or Telegram user id) already belongs to an operator."""


class OperatorNotFound(Exception):
    """No current operator has that name."""


async def add_operator(
    session: AsyncSession, name: str, role: str, password_hash: str, telegram_user_id: str | None, now: datetime
) -> Operator:
    """A new operator; raises OperatorExists for a taken name or Telegram id (removed ones included)."""
    taken = await session.exec(select(Operator).where(func.lower(Operator.name) == name.lower()))
    if taken.first() is not None:
        raise OperatorExists(f"an operator named {name!r} already exists")
    if telegram_user_id is not None:
        linked = await session.exec(select(Operator).where(Operator.telegram_user_id == telegram_user_id))
        if (other := linked.first()) is not None:
            raise OperatorExists(f"Telegram user {telegram_user_id} is already linked to {other.name!r}")
    operator = Operator(
        name=name, role=role, password_hash=password_hash, telegram_user_id=telegram_user_id, created_at=now
    )
    session.add(operator)
    await session.flush()
    return operator


async def list_operators(session: AsyncSession, include_removed: bool = False) -> list[Operator]:
    """Operators by name; removed ones only when asked."""
    statement = select(Operator).order_by(Operator.name)
    if not include_removed:
        statement = statement.where(col(Operator.removed_at).is_(None))
    return list((await session.exec(statement)).all())


async def current_operator(session: AsyncSession, name: str) -> Operator | None:
    """The operator with that name (any case) who has not been removed."""
    statement = select(Operator).where(func.lower(Operator.name) == name.lower(), col(Operator.removed_at).is_(None))
    return (await session.exec(statement)).first()


async def remove_operator(session: AsyncSession, name: str, now: datetime) -> Operator:
    """Mark an operator removed and end every console session of theirs."""
    operator = await current_operator(session, name)
    if operator is None:
        raise OperatorNotFound(f"no operator named {name!r}")
    operator.removed_at = now
    session.add(operator)
    await session.exec(delete(OperatorSession).where(col(OperatorSession.operator_id) == operator.id))
    await session.flush()
    return operator


async def open_session(
    session: AsyncSession, operator: Operator, token_hash: str, csrf_token: str, now: datetime, expires_at: datetime
) -> OperatorSession:
    """Store a console login by the hash of its token; logins that expired by now are dropped."""
    assert operator.id is not None
    await session.exec(delete(OperatorSession).where(col(OperatorSession.expires_at) <= now))
    row = OperatorSession(
        token_hash=token_hash,
        operator_id=operator.id,
        csrf_token=csrf_token,
        created_at=now,
        expires_at=expires_at,
        seen_at=now,
    )
    session.add(row)
    await session.flush()
    return row


async def session_operator(
    session: AsyncSession, token_hash: str, now: datetime
) -> tuple[OperatorSession, Operator] | None:
    """The live login with that token hash and its (not removed) operator, or None."""
    statement = (
        select(OperatorSession, Operator)
        .join(Operator, col(Operator.id) == OperatorSession.operator_id)
        .where(OperatorSession.token_hash == token_hash, OperatorSession.expires_at > now)
        .where(col(Operator.removed_at).is_(None))
    )
    found = (await session.exec(statement)).first()
    return None if found is None else (found[0], found[1])


async def mark_seen(session: AsyncSession, token_hash: str, now: datetime) -> None:
    """The login's operator is at the console now."""
    await session.exec(update(OperatorSession).where(col(OperatorSession.token_hash) == token_hash).values(seen_at=now))


async def operator_online(session: AsyncSession, since: datetime, now: datetime) -> bool:
    """Whether someone who may answer (operator or admin) was at the console at or after `since`."""
    statement = (
        select(OperatorSession.token_hash)
        .join(Operator, col(Operator.id) == OperatorSession.operator_id)
        .where(col(OperatorSession.seen_at) >= since, OperatorSession.expires_at > now)
        .where(col(Operator.removed_at).is_(None), col(Operator.role).in_(("operator", "admin")))
        .limit(1)
    )
    return (await session.exec(statement)).first() is not None


async def operator_at_console(session: AsyncSession, now: datetime) -> bool:
    """Whether an operator is online in the console (seen within `ONLINE_WINDOW`), on any instance."""
    return await operator_online(session, now - ONLINE_WINDOW, now)


async def close_session(session: AsyncSession, token_hash: str) -> None:
    """Delete a login, so its cookie no longer works anywhere."""
    await session.exec(delete(OperatorSession).where(col(OperatorSession.token_hash) == token_hash))


async def failures_since(session: AsyncSession, keys: list[str], since: datetime) -> dict[str, list[datetime]]:
    """Failed logins after `since` per key, oldest first."""
    statement = (
        select(LoginFailure)
        .where(col(LoginFailure.key).in_(keys), LoginFailure.at > since)
        .order_by(col(LoginFailure.at))
    )
    found: dict[str, list[datetime]] = {key: [] for key in keys}
    for row in (await session.exec(statement)).all():
        found[row.key].append(row.at)
    return found


async def record_failure(session: AsyncSession, keys: list[str], now: datetime, forget_before: datetime) -> None:
    """Count a failed login against each key; failures older than `forget_before` are dropped."""
    await session.exec(delete(LoginFailure).where(col(LoginFailure.at) < forget_before))
    for key in keys:
        session.add(LoginFailure(key=key, at=now))
    await session.flush()
