"""`kindling lead list`: leads in several stages, sources and channels, filtered as an operator asks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from flows.clock import FrozenClock

from conftest import API_KEY
from test_console_queue import handoff_ids, operator, post
from test_webchat import hello, say

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def clock() -> FrozenClock:
    """Ten days ago: the command filters by the real time (`--since 7d`), the test moves the client's."""
    return FrozenClock(datetime.now(UTC) - timedelta(days=10))


async def visitor(client, source: str, text: str):  # type: ignore[no-untyped-def]
    """A widget visitor who came from `source` and wrote `text`."""
    ws = await client.ws_connect("/chat/ws")
    await hello(ws, url=f"https://shop.example/?utm_source={source}")
    await say(client, ws, text)
    return ws


async def listed(run_kindling, *options: str) -> list[dict]:
    status, out, err = await run_kindling("lead", "list", "--json", *options)
    assert status == 0, err
    return json.loads(out)


def labels(found: list[dict]) -> list[str]:
    return [lead["label"] for lead in found]


async def test_lead_list_filters_by_stage_source_channel_activity_and_needs_reply(
    client, db, clock, add_operator, run_kindling
):
    old = await client.post("/api/events", json={"type": "signup", "lead": {"email": "old@example.com"}}, headers=AUTH)
    old_id = (await old.json())["lead_id"]
    patched = await client.patch(f"/api/leads/{old_id}", json={"stage": "sql"}, headers=AUTH)
    assert patched.status == 200
    clock.advance(timedelta(days=10))
    await visitor(client, "google", "hello")
    clock.advance(timedelta(minutes=1))
    await visitor(client, "bing", "Can I talk to a human?")  # waits in the queue
    clock.advance(timedelta(minutes=1))
    held = await visitor(client, "bing", "Call me please")
    csrf = await operator(client, add_operator, "ann")
    held_handoff = max(await handoff_ids(db))
    assert (await post(client, f"/console/handoffs/{held_handoff}/take", csrf)).status == 303

    everyone = await listed(run_kindling)
    assert labels(everyone) == ["Visitor from bing", "Visitor from bing", "Visitor from google", "old@example.com"]
    assert everyone[-1] == {**everyone[-1], "stage": "sql", "source": None, "channel": None}
    assert everyone[0]["channel"] == "webchat" and everyone[0]["last_activity"]
    assert labels(await listed(run_kindling, "--stage", "sql")) == ["old@example.com"]
    assert labels(await listed(run_kindling, "--source", "google")) == ["Visitor from google"]
    assert len(await listed(run_kindling, "--channel", "webchat")) == 3
    assert await listed(run_kindling, "--channel", "telegram") == []
    assert "old@example.com" not in labels(await listed(run_kindling, "--since", "7d"))
    eleven_days_ago = f"{clock.now() - timedelta(days=11):%Y-%m-%d}"
    assert "old@example.com" in labels(await listed(run_kindling, "--since", eleven_days_ago))
    assert len(await listed(run_kindling, "--limit", "2")) == 2

    # The waiting lead and the held one whose question nobody has answered yet need a reply.
    needing = await listed(run_kindling, "--needs-reply")
    assert [lead["source"] for lead in needing] == ["bing", "bing"]
    clock.advance(timedelta(minutes=1))
    assert (await post(client, f"/console/handoffs/{held_handoff}/reply", csrf, text="Sure, when?")).status == 303
    assert len(await listed(run_kindling, "--needs-reply")) == 1  # answered: the lead's turn now
    clock.advance(timedelta(minutes=1))
    await say(client, held, "Tomorrow at 10")
    assert len(await listed(run_kindling, "--needs-reply", "--source", "bing")) == 2  # it wrote last again


async def test_lead_list_prints_a_table_and_refuses_bad_filters(client, db, clock, run_kindling):
    fay = {"first_name": "Fay", "email": "fay@example.com"}
    assert (await client.post("/api/events", json={"type": "signup", "lead": fay}, headers=AUTH)).status == 201

    status, out, _ = await run_kindling("lead", "list")
    header, row = out.splitlines()
    assert status == 0 and header.split() == ["id", "label", "stage", "score", "source", "channel", "last", "activity"]
    assert row.split()[1:4] == ["Fay", "lead", "20"] and " - " in row

    status, out, _ = await run_kindling("lead", "list", "--stage", "customer")
    assert status == 0 and out.strip() == "no lead matches"
    status, _, err = await run_kindling("lead", "list", "--stage", "gold")
    assert status == 2 and "unknown stage 'gold': the stages are visitor, lead, mql, sql, customer" in err
    status, _, err = await run_kindling("lead", "list", "--since", "last week")
    assert status == 2 and "--since must be a date (2026-01-31), a time or a duration (7d, 12h)" in err
