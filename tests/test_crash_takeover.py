"""Two real instances share 10,000 due steps; one is killed with SIGKILL mid-run and nothing is lost (issue 6).

Two `kindling serve` processes run on the PostgreSQL test database (KINDLING_TEST_DATABASE_URL: several
instances are a PostgreSQL deployment; tests/test_two_instances.py also runs two on SQLite). 10,000
leads of a webhook chat provider are enrolled in a one-step flow that is already due. Each instance
POSTs its replies to its own path on one local receiver, so the receiver knows who sent what. Once a
few thousand have arrived, instance A is killed with SIGKILL: its open transaction dies with it, and
the messages it had claimed for sending are taken over by B once their lease (`outbox.lease`, 3 s
here) runs out.

Every step must arrive, each with its own text. A message can arrive twice only if A sent it and died
before recording that it had (the receiver dedupes by `X-Kindling-Delivery`); B never sends twice.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter, defaultdict

import pytest
from aiohttp import web
from test_two_instances import Instance, burst_templates, enroll_due_leads, logs, progress, server_env, wait_until

from storage.db import is_sqlite
from storage.models import Delivery, Enrollment

from conftest import rows

LEADS = 10_000
KILL_AFTER = 2_000  # messages received before instance A is killed
SECRET = "crash-test-secret"
SEND_TIMEOUT = 240.0  # seconds for every message to arrive, the takeover included
LATE_DUPLICATES = 5.0  # seconds to keep listening once they have, for a second copy of any


class Receiver:
    """The chat provider's reply endpoint: records each delivery key and which instance sent it."""

    def __init__(self) -> None:
        self.received: dict[str, list[str]] = defaultdict(list)  # key -> instances, in arrival order
        self.texts: dict[str, str] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{instance}/replies", self.reply)
        return app

    async def reply(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received[request.headers["X-Kindling-Delivery"]].append(request.match_info["instance"])
        self.texts[body["conversation"]] = body["text"]
        return web.json_response({"ok": True})

    @property
    def count(self) -> int:
        return sum(len(senders) for senders in self.received.values())


async def test_killing_one_of_two_instances_mid_run_loses_nothing(tmp_path, db, database_url, aiohttp_server):
    if is_sqlite(database_url):
        pytest.skip("several instances run on PostgreSQL (set KINDLING_TEST_DATABASE_URL)")
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    templates = burst_templates(tmp_path)
    instances: list[Instance] = []
    try:
        for name in ("a", "b"):
            config = tmp_path / f"{name}.toml"
            config.write_text(
                f'[nurture]\ndaily_cap = 5\nquiet_hours = "off"\n[outbox]\nlease = "3s"\n'
                f'[channels.webhook.sources.acme]\nurl = "{server.make_url(f"/{name}/replies")}"\n',
                encoding="utf-8",
            )
            env = {**server_env(database_url, templates, config), "KINDLING_WEBHOOK_SECRET_ACME": SECRET}
            instances.append(await Instance.start(name, env))
        for instance in instances:
            await instance.listening(instances)
        a, b = instances

        external = await enroll_due_leads(db, LEADS, "webhook", lambda index: f"acme:thread-{index}")
        lead_of_thread = {key.removeprefix("acme:"): lead_id for key, lead_id in external.items()}
        if not await wait_until(lambda: receiver.count >= KILL_AFTER, SEND_TIMEOUT, instances):
            pytest.fail(f"{receiver.count} received before the kill; {await progress(db)}\n{logs(instances)}")
        a.process.send_signal(signal.SIGKILL)
        await a.process.wait()
        if not await wait_until(lambda: len(receiver.received) >= LEADS, SEND_TIMEOUT, [b]):
            got = len(receiver.received)
            pytest.fail(f"{got} of {LEADS} arrived after the kill; {await progress(db)}\n{logs(instances)}")
        await asyncio.sleep(LATE_DUPLICATES)
    finally:
        for instance in instances:
            await instance.stop()

    assert a.process.returncode == -signal.SIGKILL
    assert len(receiver.received) == LEADS
    assert receiver.texts == {thread: f"Hello {lead_id}" for thread, lead_id in lead_of_thread.items()}
    senders = Counter(senders[0] for senders in receiver.received.values())
    assert senders["a"] > 0 and senders["b"] > 0, senders
    doubles = {key: senders for key, senders in receiver.received.items() if len(senders) > 1}
    assert all(senders[0] == "a" and senders.count("a") == 1 for senders in doubles.values()), doubles
    assert len(doubles) <= 100, f"{len(doubles)} messages arrived twice"

    deliveries = await rows(db, Delivery)
    assert len(deliveries) == LEADS and {d.status for d in deliveries} == {"sent"}
    assert len({d.lead_id for d in deliveries}) == LEADS
    assert {e.status for e in await rows(db, Enrollment)} == {"done"}
