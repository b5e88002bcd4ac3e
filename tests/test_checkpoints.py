"""SQLite: the write-ahead log is moved into the database file beside the writers, not by their commits."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_two_instances import burst_templates, enroll_due_leads

from storage.db import is_sqlite

from conftest import services_of

LEADS = 2_000  # 10 batches of due steps: 60-300 pages of log each, far under the commits' own threshold


async def test_the_database_file_keeps_up_with_the_drip_engine_and_the_log_stays_small(
    make_client, settings, database_url, db, clock, tmp_path
):
    if not is_sqlite(database_url):
        pytest.skip("PostgreSQL has no write-ahead log file of ours to checkpoint")
    client = await make_client(settings.with_(templates=burst_templates(tmp_path)))
    await enroll_due_leads(db, LEADS, "webchat", lambda index: f"visitor-{index}")
    clock.advance(datetime.now(UTC) - clock.now())
    services = services_of(client)
    database = Path(database_url.split(":///", 1)[1])
    log = database.with_name(database.name + "-wal")

    batches = 0
    while await services.runner.run_due():
        await services.checkpoints.run()  # as `kindling serve` ticks it, every quarter of a second
        batches += 1
    assert batches == LEADS // 200

    # A copy of the database file alone (no log) holds every step's message: the file is up to date.
    copy = tmp_path / "copy.db"
    shutil.copy(database, copy)
    with closing(sqlite3.connect(copy)) as connection:
        [(recorded,)] = connection.execute("SELECT count(*) FROM delivery WHERE kind = 'nurture'").fetchall()
    assert recorded == LEADS
    # The log is written again from its start after each checkpoint: one batch's pages, not the run's (800).
    assert log.stat().st_size < 400 * 4096
