"""Two real instances share 10,000 due steps; one is killed with SIGKILL mid-run and nothing is lost (issue 6).

Two `kindling serve` processes run on the PostgreSQL test database (KINDLING_TEST_DATABASE_URL: several
instances are a PostgreSQL deployment; tests/test_two_instances.py also runs two on SQLite). 10,000
leads of a webhook chat provider are enrolled in a one-step flow that is already due. Each instance
POSTs its replies to its own path on one local receiver, so the receiver knows who sent what. Once a
few thousand have arrived, instance A is killed with SIGKILL: its open transaction dies with it, and
the messages it had claimed for sending are taken over by B once their lease (`outbox.lease`, 3 s
here) runs out.

On SQLite (the default `make test`) one instance runs at a time: A is killed the same way mid-run on
1,000 leads, then B starts on the same database file and takes over what A had in flight.

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
SQLITE_LEADS, SQLITE_KILL_AFTER = 1_000, 300  # one instance at a time: a smaller run, killed as early
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


async def start_instance(name: str, tmp_path, database_url: str, templates, receiver_server) -> Instance:  # type: ignore[no-untyped-def]
    """A `kindling serve` process replying through the receiver at `/<name>/replies`, with a 3 s lease."""
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[nurture]\ndaily_cap = 5\nquiet_hours = "off"\n[outbox]\nlease = "3s"\n'
        f'[channels.webhook.sources.acme]\nurl = "{receiver_server.make_url(f"/{name}/replies")}"\n',
        encoding="utf-8",
    )
    env = {**server_env(database_url, templates, config), "KINDLING_WEBHOOK_SECRET_ACME": SECRET}
    env["KINDLING_TELEGRAM_TOKEN"] = ""  # webhook replies only: Telegram off, no reaching for its real API
    return await Instance.start(name, env)


async def kill_once_some_arrived(receiver: Receiver, a: Instance, kill_after: int, db, instances) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL instance A once `kill_after` messages have arrived: mid-run, with work claimed and unsent."""
    if not await wait_until(lambda: receiver.count >= kill_after, SEND_TIMEOUT, instances):
        pytest.fail(f"{receiver.count} received before the kill; {await progress(db)}\n{logs(instances)}")
    a.process.send_signal(signal.SIGKILL)
    await a.process.wait()


async def wait_for_all(receiver: Receiver, leads: int, db, survivors, instances) -> None:  # type: ignore[no-untyped-def]
    """Every lead's message has arrived, and no second copy of any comes for a while after."""
    if not await wait_until(lambda: len(receiver.received) >= leads, SEND_TIMEOUT, survivors):
        got = len(receiver.received)
        pytest.fail(f"{got} of {leads} arrived after the kill; {await progress(db)}\n{logs(instances)}")
    await asyncio.sleep(LATE_DUPLICATES)


async def assert_each_arrived_once(receiver: Receiver, a: Instance, lead_of_thread: dict[str, int], db) -> None:  # type: ignore[no-untyped-def]
    """Each lead got its own text; only what A sent and died before recording came again, from B, once."""
    leads = len(lead_of_thread)
    assert a.process.returncode == -signal.SIGKILL
    assert len(receiver.received) == leads
    assert receiver.texts == {thread: f"Hello {lead_id}" for thread, lead_id in lead_of_thread.items()}
    senders = Counter(senders[0] for senders in receiver.received.values())
    assert senders["a"] > 0 and senders["b"] > 0, senders
    doubles = {key: senders for key, senders in receiver.received.items() if len(senders) > 1}
    assert all(senders == ["a", "b"] for senders in doubles.values()), doubles
    assert len(doubles) <= 100, f"{len(doubles)} messages arrived twice"
    deliveries = await rows(db, Delivery)
    assert len(deliveries) == leads and {d.status for d in deliveries} == {"sent"}
    assert len({d.lead_id for d in deliveries}) == leads
    assert {e.status for e in await rows(db, Enrollment)} == {"done"}


async def test_killing_one_of_two_instances_mid_run_loses_nothing(tmp_path, db, database_url, aiohttp_server):
    if is_sqlite(database_url):
        pytest.skip("several instances run on PostgreSQL (set KINDLING_TEST_DATABASE_URL)")
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    templates = burst_templates(tmp_path)
    instances: list[Instance] = []
    try:
        for name in ("a", "b"):
            instances.append(await start_instance(name, tmp_path, database_url, templates, server))
        for instance in instances:
            await instance.listening(instances)
        a, b = instances

        external = await enroll_due_leads(db, LEADS, "webhook", lambda index: f"acme:thread-{index}")
        lead_of_thread = {key.removeprefix("acme:"): lead_id for key, lead_id in external.items()}
        await kill_once_some_arrived(receiver, a, KILL_AFTER, db, instances)
        await wait_for_all(receiver, LEADS, db, [b], instances)
    finally:
        for instance in instances:
            await instance.stop()
    await assert_each_arrived_once(receiver, a, lead_of_thread, db)


async def test_an_instance_killed_mid_run_on_sqlite_is_taken_over_by_the_next_one(
    tmp_path, db, database_url, aiohttp_server
):
    if not is_sqlite(database_url):
        pytest.skip("the two-instance test above covers PostgreSQL")
    receiver = Receiver()
    server = await aiohttp_server(receiver.app())
    templates = burst_templates(tmp_path)
    a = await start_instance("a", tmp_path, database_url, templates, server)
    instances = [a]
    try:
        await a.listening(instances)
        external = await enroll_due_leads(db, SQLITE_LEADS, "webhook", lambda index: f"acme:thread-{index}")
        lead_of_thread = {key.removeprefix("acme:"): lead_id for key, lead_id in external.items()}
        await kill_once_some_arrived(receiver, a, SQLITE_KILL_AFTER, db, instances)
        left = [d for d in await rows(db, Delivery) if d.status != "sent"]
        enrolled = [e for e in await rows(db, Enrollment) if e.status != "done"]
        assert left or enrolled, "A finished everything before it was killed: nothing was in flight"
        b = await start_instance("b", tmp_path, database_url, templates, server)  # same database file
        instances.append(b)
        await b.listening([b])  # A is dead: only B must stay up
        await wait_for_all(receiver, SQLITE_LEADS, db, [b], instances)
    finally:
        for instance in instances:
            await instance.stop()
    await assert_each_arrived_once(receiver, a, lead_of_thread, db)
