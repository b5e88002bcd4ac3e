"""Group commit (the outbox's checks and records of sends at once): one work's failure is its caller's alone."""

from __future__ import annotations

import asyncio
from functools import partial

from sqlmodel.ext.asyncio.session import AsyncSession

from storage.groupcommit import GroupCommit
from storage.models import Setting

from conftest import rows


async def _keep(session: AsyncSession, key: str) -> str:
    session.add(Setting(key=key, value="kept"))
    await session.flush()
    return key


async def _broken(session: AsyncSession) -> None:
    raise ValueError("a bug in one work")


async def test_works_that_came_together_commit_together_and_a_failing_one_fails_only_its_caller(db):
    group = GroupCommit(db)
    first, broken, last = await asyncio.gather(
        group.run(partial(_keep, key="first")), group.run(_broken), group.run(partial(_keep, key="last")),
        return_exceptions=True,
    )  # fmt: skip
    assert (first, last) == ("first", "last")
    assert isinstance(broken, ValueError)
    assert sorted(setting.key for setting in await rows(db, Setting)) == ["first", "last"]
