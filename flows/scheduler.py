"""The scheduler only ticks: each job asks the database what is due, so a restart loses nothing."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger(__name__)
Job = tuple[Callable[[], Awaitable[object]], float]


def start_ticks(jobs: Sequence[Job]) -> AsyncIOScheduler:
    """Run each coroutine function every so many seconds, never two runs of one job at once."""
    scheduler = AsyncIOScheduler()
    for job, seconds in jobs:
        scheduler.add_job(job, "interval", seconds=seconds, max_instances=1, coalesce=True)
    scheduler.start()
    return scheduler
