"""The short codes of the widget's WhatsApp links: issue one for a visitor, claim it from a first message."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import ContinueCode

REUSE_MARGIN = timedelta(days=1)  # a code with less life left than this is not handed out again
KEEP_EXPIRED = timedelta(days=1)  # expired codes are deleted this long after, when a new one is made


@dataclass(frozen=True)
class Claimed:
    """What a claimed code says: whose it is and where they came from."""

    visitor: str
    touch: dict[str, Any]


async def issue_code(
    session: AsyncSession,
    new_code: Callable[[], str],
    visitor: str,
    lead_id: int,
    touch: dict[str, Any],
    now: datetime,
    lifetime: timedelta,
) -> str:
    """The visitor's live unclaimed code for this touch, else a new one (`new_code` draws candidates)."""
    await session.exec(delete(ContinueCode).where(ContinueCode.expires_at < now - KEEP_EXPIRED))  # type: ignore[call-overload]
    live = select(ContinueCode).where(
        ContinueCode.visitor == visitor,
        ContinueCode.claimed_at.is_(None),  # type: ignore[union-attr]
        ContinueCode.expires_at > now + min(REUSE_MARGIN, lifetime / 2),
    )
    for row in (await session.exec(live)).all():
        if row.touch == touch:
            return row.code
    code = new_code()
    while await session.get(ContinueCode, code) is not None:  # about one in 10^11 per live code
        code = new_code()
    session.add(
        ContinueCode(
            code=code, visitor=visitor, lead_id=lead_id, touch=touch, created_at=now, expires_at=now + lifetime
        )
    )
    return code


async def claim_code(session: AsyncSession, code: str, by: str, now: datetime) -> Claimed | None:
    """Claim a live code for the sender `by`; the same sender again gets it again, anyone else None.

    One statement, so two senders racing for one code cannot both have it.
    """
    claim = (
        update(ContinueCode)
        .where(
            ContinueCode.code == code,  # type: ignore[arg-type]
            ContinueCode.expires_at > now,  # type: ignore[arg-type]
            or_(ContinueCode.claimed_by.is_(None), ContinueCode.claimed_by == by),  # type: ignore[union-attr]
        )
        .values(claimed_by=by, claimed_at=now)
        .returning(ContinueCode.visitor, ContinueCode.touch)
    )
    row = (await session.exec(claim)).first()  # type: ignore[call-overload]
    return None if row is None else Claimed(visitor=row[0], touch=row[1])
