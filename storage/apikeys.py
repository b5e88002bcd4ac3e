"""API key queries: add, list, revoke, and find a live key by the hash of what a client presented."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import ApiKeyRecord

USE_RESOLUTION = timedelta(minutes=1)  # last_used_at is written at most this often per key


class ApiKeyExists(Exception):
    """The name already belongs to a key (revoked ones included, so old logs stay unambiguous)."""


class ApiKeyNotFound(Exception):
    """No key that is not revoked has that name."""


async def add_key(
    session: AsyncSession, name: str, key_hash: str, prefix: str, scopes: list[str], now: datetime
) -> ApiKeyRecord:
    """Store a new key by its hash; raises ApiKeyExists for a taken name."""
    taken = await session.exec(select(ApiKeyRecord).where(func.lower(ApiKeyRecord.name) == name.lower()))
    if (other := taken.first()) is not None:
        revoked = " (revoked)" if other.revoked_at else ""
        raise ApiKeyExists(f"an API key named {other.name!r}{revoked} already exists; pick another name")
    record = ApiKeyRecord(name=name, key_hash=key_hash, prefix=prefix, scopes=scopes, created_at=now)
    session.add(record)
    await session.flush()
    return record


async def list_keys(session: AsyncSession) -> list[ApiKeyRecord]:
    """Every key by name, revoked ones too."""
    return list((await session.exec(select(ApiKeyRecord).order_by(ApiKeyRecord.name))).all())


async def revoke_key(session: AsyncSession, name: str, now: datetime) -> ApiKeyRecord:
    """Mark a key revoked: from now on it is refused everywhere."""
    statement = select(ApiKeyRecord).where(
        func.lower(ApiKeyRecord.name) == name.lower(), col(ApiKeyRecord.revoked_at).is_(None)
    )
    record = (await session.exec(statement)).first()
    if record is None:
        raise ApiKeyNotFound(f"no API key named {name!r} that is not revoked already")
    record.revoked_at = now
    session.add(record)
    await session.flush()
    return record


async def live_key(session: AsyncSession, key_hash: str, now: datetime) -> ApiKeyRecord | None:
    """The key with that hash unless it is revoked; notes when it was used (at most once a minute)."""
    statement = select(ApiKeyRecord).where(ApiKeyRecord.key_hash == key_hash, col(ApiKeyRecord.revoked_at).is_(None))
    record = (await session.exec(statement)).first()
    if record is None:
        return None
    stale = or_(col(ApiKeyRecord.last_used_at).is_(None), col(ApiKeyRecord.last_used_at) < now - USE_RESOLUTION)
    await session.exec(update(ApiKeyRecord).where(col(ApiKeyRecord.id) == record.id, stale).values(last_used_at=now))
    return record
