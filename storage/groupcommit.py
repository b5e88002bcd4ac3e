"""Group commit: small pieces of work from concurrent callers, run together in one transaction."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from sqlmodel.ext.asyncio.session import AsyncSession

from storage.db import DatabaseUnavailable, Sessions, transaction

T = TypeVar("T")
Work = Callable[[AsyncSession], Awaitable[Any]]
GROUP = 100  # works in one transaction at most
WRITERS = {"sqlite": 1}  # transactions at once; SQLite writes one at a time anyway
OTHER_WRITERS = 4


class GroupCommit:
    """Runs each caller's work in a transaction shared with the works of callers that came meanwhile.

    A caller with nobody ahead gets a transaction of its own at once; callers that arrive while one is
    being written are written together in the next. On SQLite each transaction costs several thread round
    trips on top of its statements and holds the one write lock throughout, so one transaction for many
    small works costs far less than one each. `transaction`'s retries run a whole group again, so works must be
    safe to run again; when a group fails all the same, each of its works is run in a transaction of its own,
    so one work's failure (a record whose lead was erased meanwhile, say) is its caller's alone.
    """

    def __init__(self, sessions: Sessions, limit: int = GROUP) -> None:
        self.sessions, self.limit = sessions, limit
        self.writers = WRITERS.get(sessions.kw["bind"].dialect.name, OTHER_WRITERS)
        self._waiting: deque[tuple[Work, asyncio.Future[Any]]] = deque()
        self._writing = 0
        self._tasks: set[asyncio.Task] = set()

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """`work` run in a transaction (perhaps shared); what it returned, or what its transaction raised."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append((work, future))
        if self._writing < self.writers:
            self._writing += 1
            task = asyncio.create_task(self._write())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _write(self) -> None:
        """Write waiting works, a group per transaction, until none is left."""
        try:
            while self._waiting:
                group = [self._waiting.popleft() for _ in range(min(self.limit, len(self._waiting)))]
                try:
                    results = await transaction(self.sessions, partial(_each, [work for work, _ in group]))
                except asyncio.CancelledError:  # shutting down: nobody may wait for ever
                    for _, future in [*group, *self._waiting]:
                        future.cancel()
                    raise
                except DatabaseUnavailable as exc:  # the database is away for every one of them alike
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                except Exception:  # one work's failure must not fail the others: each runs on its own
                    for work, future in group:
                        await self._alone(work, future)
                else:
                    for (_, future), result in zip(group, results, strict=True):
                        if not future.done():  # its caller may have given up (cancelled)
                            future.set_result(result)
        finally:
            self._writing -= 1

    async def _alone(self, work: Work, future: asyncio.Future[Any]) -> None:
        """Run one work in a transaction of its own; its caller gets what it returned or raised."""
        try:
            result = await transaction(self.sessions, work)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)


async def _each(works: list[Work], session: AsyncSession) -> list[Any]:
    """Each work of a group in turn, in one session."""
    return [await work(session) for work in works]
