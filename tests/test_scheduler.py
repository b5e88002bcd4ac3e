"""The ticker as an admin reads its log: a tick still busy when the next is due is not a warning."""

from __future__ import annotations

import asyncio
import logging

from apscheduler.events import EVENT_JOB_MAX_INSTANCES

from flows.scheduler import start_ticks


async def test_a_tick_skipped_while_the_last_one_still_runs_logs_nothing(caplog):
    caplog.set_level(logging.INFO)
    release, skipped, runs = asyncio.Event(), asyncio.Event(), []

    async def long_send_batch() -> None:
        runs.append(1)
        await release.wait()

    scheduler = start_ticks([(long_send_batch, 0.01)])
    scheduler.add_listener(lambda _event: skipped.set(), EVENT_JOB_MAX_INSTANCES)
    try:
        await asyncio.wait_for(skipped.wait(), timeout=10)  # the scheduler has passed over a due tick
    finally:
        release.set()
        scheduler.shutdown(wait=False)
    assert runs == [1]  # never two at once
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
