"""The scheduler only ticks: each job asks the database what is due, so a restart loses nothing."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence

from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger(__name__)
Job = tuple[Callable[[], Awaitable[object]], float]


class _SkippedTick(logging.Filter):
    """Drops APScheduler's "skipped: maximum number of running instances reached" warning.

    A tick still running when the next is due (a long send batch) is normal and nothing an operator
    can act on: the next tick picks up whatever is still due.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in str(record.msg)


SKIPPED_TICK = _SkippedTick()


def start_ticks(jobs: Sequence[Job]) -> AsyncIOScheduler:
    """Run each coroutine function every so many seconds, never two runs of one job at once."""
    logging.getLogger("apscheduler.scheduler").addFilter(SKIPPED_TICK)  # once: the same filter is not added twice
    scheduler = AsyncIOScheduler()
    for job, seconds in jobs:
        # However late a tick starts (the loop was busy), it runs, once: no "run time was missed" warning either.
        tick = _ends_quietly(job)
        scheduler.add_job(tick, "interval", seconds=seconds, max_instances=1, coalesce=True, misfire_grace_time=None)
    scheduler.start()
    return scheduler


def _ends_quietly(job: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
    """The job, ending without a traceback when shutting down cancels a tick mid-run (a port taken, Ctrl-C).

    APScheduler logs a cancelled job as an error; nothing was lost (the next start asks the database what is due).
    """

    @functools.wraps(job)
    async def tick() -> None:
        try:
            await job()
        except asyncio.CancelledError:
            log.debug("%s stopped by shutdown", getattr(job, "__qualname__", job))

    return tick
