"""Two instances on one PostgreSQL database show each other's changes live (LISTEN/NOTIFY).

Two apps run on the same database, as two `kindling serve` processes behind a load balancer would. An
operator's console socket is open on instance B while the visitor chats, and the operator works, on
instance A; the visitor's widget is on A while the operator's reply is sent from B. On SQLite Kindling
runs as one instance, so these tests need PostgreSQL (CI runs them there).
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import make_url

from storage.db import create_engine, is_sqlite
from storage.migrate import alembic_config, upgrade
from storage.models import Handoff

from conftest import rows, services_of, templates_with
from test_console_queue import DRIP, operator, post, warm
from test_webchat import next_from, say


@pytest.fixture
async def instances(make_client, settings, tmp_path):
    """Instance A and instance B of the real app on one database."""
    if is_sqlite(settings.database_url):
        pytest.skip("several instances need PostgreSQL (set KINDLING_TEST_DATABASE_URL)")
    shared = settings.with_(templates=templates_with(tmp_path / "templates", {"drip": DRIP}))
    return await make_client(shared), await make_client(shared)


async def test_a_handoff_opened_and_taken_on_a_shows_live_on_b(instances, db, add_operator):
    a, b = instances
    ann = await operator(a, add_operator, "ann")
    await operator(b, add_operator, "bob")
    queue_on_b = await b.ws_connect("/console/ws?queue=1")
    assert await queue_on_b.receive_json(timeout=5) == {"type": "queue", "handoffs": []}

    await warm(a, name="Fay")
    opened = await queue_on_b.receive_json(timeout=5)
    assert (opened["change"], opened["handoff"]["name"]) == ("opened", "Fay")

    assert (await post(a, f"/console/handoffs/{opened['handoff']['id']}/take", ann)).status == 303
    claimed = await queue_on_b.receive_json(timeout=5)
    assert (claimed["change"], claimed["handoff"]["id"]) == ("claimed", opened["handoff"]["id"])
    assert claimed["handoff"]["claimed_by"] == "ann"


async def test_a_visitor_on_a_sees_the_reply_sent_from_b_and_b_sees_the_visitor(instances, db, add_operator):
    a, b = instances
    bob = await operator(b, add_operator, "bob")
    widget_on_a = await warm(a)
    [handoff] = await rows(db, Handoff)
    page = f"/console/handoffs/{handoff.id}"
    assert (await post(b, f"{page}/take", bob)).status == 303
    transcript_on_b = await b.ws_connect(f"/console/ws?handoff={handoff.id}")
    history = [await transcript_on_b.receive_json(timeout=5) for _ in range(2)]

    assert (await post(b, f"{page}/reply", bob, text="Hi, Bob here.")).status == 303
    assert (await next_from(widget_on_a, "operator"))["text"] == "Hi, Bob here."

    await say(a, widget_on_a, "Great, thanks!")
    frames = [await transcript_on_b.receive_json(timeout=5) for _ in range(2)]
    assert [(f["from"], f["text"]) for f in frames] == [("operator", "Hi, Bob here."), ("visitor", "Great, thanks!")]
    assert history[-1]["id"] < frames[0]["id"]
    assert services_of(a).hub is not services_of(b).hub


async def test_a_message_too_big_for_one_notification_still_reaches_the_other_instance(instances, db, add_operator):
    a, b = instances
    bob = await operator(b, add_operator, "bob")
    widget_on_a = await warm(a)
    [handoff] = await rows(db, Handoff)
    assert (await post(b, f"/console/handoffs/{handoff.id}/take", bob)).status == 303
    transcript_on_b = await b.ws_connect(f"/console/ws?handoff={handoff.id}")
    [await transcript_on_b.receive_json(timeout=5) for _ in range(2)]

    long_text = "你好" * 1990  # 3,980 characters, 11,940 bytes of UTF-8: over NOTIFY's 8,000-byte limit
    await say(a, widget_on_a, long_text.strip())
    frame = await transcript_on_b.receive_json(timeout=5)
    assert (frame["from"], frame["text"]) == ("visitor", long_text.strip())


async def test_instances_started_together_migrate_one_at_a_time(settings):
    """Two instances starting on an empty PostgreSQL database both come up on the newest schema."""
    if is_sqlite(settings.database_url):
        pytest.skip("several instances need PostgreSQL (set KINDLING_TEST_DATABASE_URL)")
    url = make_url(settings.database_url)
    fresh = f"{url.database}_migrate"
    admin = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{fresh}"')
        await admin.execute(f'CREATE DATABASE "{fresh}"')
        engines = [create_engine(url.set(database=fresh).render_as_string(hide_password=False)) for _ in range(2)]
        await asyncio.gather(*(upgrade(engine) for engine in engines))
        async with engines[0].connect() as connection:
            version = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        for engine in engines:
            await engine.dispose()
        assert version == ScriptDirectory.from_config(alembic_config(str(url))).get_current_head()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')
        await admin.close()
