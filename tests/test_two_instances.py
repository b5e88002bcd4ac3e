"""Two real `kindling serve` processes on one database send every due step exactly once (issue 3).

1,000 leads are enrolled in a one-step flow whose step is already due. Two servers are started on the
test database (SQLite by default, PostgreSQL with KINDLING_TEST_DATABASE_URL), both talking to one fake
Telegram Bot API. Each claims due enrollments and outbox rows on its own scheduler ticks; between them
they must make exactly 1,000 sendMessage calls, one per lead, and leave the database saying so.

The servers run on the real clock: waits here are bounded waits for other processes, never a way of
moving the app's time. Telegram allows about 30 sends a second: on SQLite each process paces itself
(some 17 seconds for the 1,000 sends); on PostgreSQL the two share one budget in the database (some
33 seconds).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import pytest
from aiohttp import web

from flows.spec import flow_version
from storage.models import Conversation, Delivery, Enrollment, FlowVersion, Lead

from conftest import ROOT, rows
from fake_telegram import TOKEN, FakeTelegram

SERVE = [sys.executable, "-m", "bot", "serve"]
LEADS = 1_000
FIRST_CHAT = 100_000
INSTANCES = ("a", "b")
BURST = (
    '+++\nname = "Burst"\ntrigger = "custom:never"\n+++\n'
    '{% step "only", after="1m" %}Hello {{ lead.id }}{% endstep %}\n'
)
CONFIG = '[nurture]\ndaily_cap = 5\nquiet_hours = "off"\n'
START_TIMEOUT = 60.0  # seconds for a server to migrate and listen
SEND_TIMEOUT = 90.0  # seconds for all 1,000 messages to arrive
LATE_DUPLICATES = 3.0  # seconds to keep listening once they have, for a second copy of any


# --- the fake Bot API, telling the two instances apart -----------------------------------------


class TaggedTelegram(FakeTelegram):
    """The fake Bot API, served under `/<instance>/bot<token>/...`, counting each instance's sends."""

    def __init__(self) -> None:
        super().__init__(TOKEN)
        self.sends_by: Counter[str] = Counter()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._note_sender])
        app.router.add_post("/{instance}/bot{token}/{method}", self.handle)
        return app

    def url_for(self, instance: str) -> str:
        """The `telegram_api_url` for one instance."""
        return f"{self.url}/{instance}"

    @web.middleware
    async def _note_sender(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        if request.match_info.get("method") == "sendMessage" and response.status == 200:
            self.sends_by[request.match_info["instance"]] += 1
        return response


@pytest.fixture
async def telegram(aiohttp_server) -> TaggedTelegram:  # type: ignore[no-untyped-def]
    fake = TaggedTelegram()
    fake.server = await aiohttp_server(fake.app())
    return fake


# --- a real server process -----------------------------------------------------------------------


@dataclass
class Server:
    """A child process whose output is read all along (so its pipe never fills) and kept for failures."""

    name: str
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task | None = None

    @classmethod
    async def launch(cls, name: str, *command: str, env: dict[str, str], cwd: Path) -> Self:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=cwd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        server = cls(name, process)
        server.reader = asyncio.create_task(server._read())
        return server

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode(errors="replace"))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout=15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.reader is not None:
            await self.reader


@dataclass
class Instance(Server):
    """One `python -m bot serve` process on a port of its own."""

    port: int = 0

    @classmethod
    async def start(cls, name: str, env: dict[str, str]) -> Instance:
        port = free_port()
        instance = await cls.launch(name, *SERVE, env={**env, "KINDLING_PORT": str(port)}, cwd=ROOT)
        instance.port = port
        return instance

    async def listening(self, everyone: list[Instance]) -> None:
        """Wait until the server says it is listening; fail with the logs if it exits or takes too long."""
        marker = f"Running on http://127.0.0.1:{self.port}"
        if not await wait_until(lambda: marker in self.log, START_TIMEOUT, everyone):
            pytest.fail(f"instance {self.name} not listening after {START_TIMEOUT:.0f} s\n{logs(everyone)}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(database_url: str, templates: Path, config: Path) -> dict[str, str]:
    """This environment without any KINDLING_ settings of its own, plus the test's."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KINDLING_")}
    return {
        **env,
        "KINDLING_DATABASE_URL": database_url,
        "KINDLING_TELEGRAM_TOKEN": TOKEN,
        "KINDLING_TEMPLATES": str(templates),
        "KINDLING_CONFIG": str(config),
    }


def logs(instances: list[Instance]) -> str:
    """Each instance's log without the per-request lines, for a failure message."""
    parts = []
    for instance in instances:
        kept = "".join(line for line in instance.lines if "HTTP Request:" not in line)
        parts.append(f"--- instance {instance.name} (exit {instance.process.returncode}) ---\n{kept[-6000:]}")
    return "\n".join(parts)


async def wait_until(done: Callable[[], bool], timeout: float, instances: list[Instance]) -> bool:
    """Poll `done` every 0.2 s for up to `timeout` seconds; whether it came true. Fail if a server exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        if any(instance.process.returncode is not None for instance in instances):
            pytest.fail(f"a server exited\n{logs(instances)}")
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.2)
    return True


# --- the data ------------------------------------------------------------------------------------


def burst_templates(tmp_path: Path) -> Path:
    """The shipped templates with their flows replaced by the one-step `burst` flow."""
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    for shipped in (templates / "flows").glob("*.j2"):
        shipped.unlink()
    (templates / "flows" / "burst.j2").write_text(BURST, encoding="utf-8")
    return templates


async def enroll_due_leads(db, count: int, channel: str = "telegram", address=None) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """`count` leads in `burst` on `channel`, its step due a minute ago; returns lead id by address.

    Addresses are Telegram chat ids by default; `address(index)` names them for another channel.
    """
    address = address or (lambda index: str(FIRST_CHAT + index))
    now = datetime.now(UTC)
    version = flow_version(BURST)
    async with db() as session, session.begin():
        session.add(FlowVersion(slug="burst", version=version, source=BURST, created_at=now))
        leads = [Lead(created_at=now, updated_at=now, stage_at=now) for _ in range(count)]
        session.add_all(leads)
        await session.flush()
        addresses = {address(index): lead.id for index, lead in enumerate(leads)}
        session.add_all(
            Conversation(lead_id=lead_id, channel=channel, external_id=external, owner="bot", created_at=now)
            for external, lead_id in addresses.items()
        )
        session.add_all(
            Enrollment(
                lead_id=lead_id,
                flow_slug="burst",
                flow_version=version,
                step_index=0,
                due_at=now - timedelta(minutes=1),
                status="active",
                enrolled_at=now,
                updated_at=now,
            )
            for lead_id in addresses.values()
        )
    return addresses


async def progress(db) -> str:  # type: ignore[no-untyped-def]
    """Where the enrollments and deliveries stand, for a failure message."""
    enrollments = Counter(enrollment.status for enrollment in await rows(db, Enrollment))
    deliveries = Counter(delivery.status for delivery in await rows(db, Delivery))
    return f"enrollments {dict(enrollments)}, deliveries {dict(deliveries)}"


# --- the test ------------------------------------------------------------------------------------


async def test_two_processes_on_one_database_send_each_due_step_exactly_once(tmp_path, db, database_url, telegram):
    """1,000 due steps, two servers: 1,000 sends, one to each lead with its text, and both servers took part."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG, encoding="utf-8")
    env = server_env(database_url, burst_templates(tmp_path), config)
    instances: list[Instance] = []
    try:
        for name in INSTANCES:
            instances.append(await Instance.start(name, {**env, "KINDLING_TELEGRAM_API_URL": telegram.url_for(name)}))
        for instance in instances:
            await instance.listening(instances)

        lead_of_chat = await enroll_due_leads(db, LEADS)
        if not await wait_until(lambda: len(telegram.sent_messages()) >= LEADS, SEND_TIMEOUT, instances):
            sent = len(telegram.sent_messages())
            pytest.fail(f"{sent} of {LEADS} sent after {SEND_TIMEOUT:.0f} s; {await progress(db)}\n{logs(instances)}")
        await asyncio.sleep(LATE_DUPLICATES)
    finally:
        for instance in instances:
            await instance.stop()

    sent = telegram.sent_messages()
    assert len(sent) == LEADS, f"{len(sent)} sendMessage calls for {LEADS} due steps\n{logs(instances)}"
    assert {str(message["chat_id"]) for message in sent} == set(lead_of_chat)
    wrong = [m for m in sent if m["text"] != f"Hello {lead_of_chat[str(m['chat_id'])]}"]
    assert not wrong, wrong[:5]
    refused = [call for call in telegram.calls if call.method == "sendMessage" and call.status != 200]
    assert not refused, refused[:5]
    assert all(telegram.sends_by[name] > 0 for name in INSTANCES), f"one instance did all the work: {telegram.sends_by}"

    deliveries = await rows(db, Delivery, Delivery.kind == "nurture")
    assert len(deliveries) == LEADS
    assert Counter(delivery.status for delivery in deliveries) == {"sent": LEADS}
    assert len({delivery.enrollment_id for delivery in deliveries}) == LEADS
    enrollments = await rows(db, Enrollment)
    assert Counter(enrollment.status for enrollment in enrollments) == {"done": LEADS}
