"""Property-based tests of the flow engine (hypothesis): whatever happens, in whatever order.

Hypothesis draws a run: three widget visitors enrolled in a four-step drip, then a random sequence
of clock jumps (a minute to eight days), visitor messages, operators taking leads over and handing
them back to nurture, edits of the flow file, and ticks run concurrently. After every action, and at
the end (once every lead is handed back and a month has passed), three promises must hold:

- never sent after a human took over: a lead an operator holds gets no nurture message;
- never sent twice: each step of each enrollment has at most one delivery;
- never skipped: in the end every enrollment is done with each step of its own version sent once.

Each example runs the real app (HTTP, WebSocket, Jinja, the runner and dispatcher) on a fresh database.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlmodel import SQLModel, select

from bot.app import create_app
from bot.config import load_settings
from bot.services import SERVICES
from flows.clock import FrozenClock
from storage.db import create_engine, is_sqlite, transaction
from storage.models import Delivery, Enrollment, FlowVersion
from storage.operators import add_operator

from conftest import ROOT, templates_with
from test_webchat import hello, say

FLOW = """+++
name = "Property drip"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
exit = ["opt_out"]
+++
{% step "one", after="10m" %}One {{ lead.id }}.{% endstep %}
{% step "two", after="1h" %}Two.{% endstep %}
{% step "three", after="1d" %}Three.{% endstep %}
{% step "four", after="7d" %}Four.{% endstep %}
"""
EDITED = FLOW.replace("Two.", "Two, edited.").replace('{% step "four", after="7d" %}Four.{% endstep %}\n', "")
STEPS = {FLOW: 4, EDITED: 3}
VISITORS = 3

actions = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.sampled_from([1, 9, 11, 59, 61, 60 * 5, 60 * 24, 60 * 24 * 3, 60 * 24 * 8])),
        st.tuples(st.just("say"), st.integers(0, VISITORS - 1)),
        st.tuples(st.just("take"), st.integers(0, VISITORS - 1)),
        st.tuples(st.just("back"), st.integers(0, VISITORS - 1)),
        st.tuples(st.just("edit"), st.booleans()),
        st.tuples(st.just("ticks"), st.just(0)),
    ),
    max_size=14,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=actions)
def test_no_send_after_takeover_no_double_no_skip(steps, migrated_database, tmp_path_factory):
    asyncio.run(Run(migrated_database, tmp_path_factory.mktemp("run")).play(steps))


class Run:
    """One drawn run against a fresh database, checking the promises as it goes."""

    def __init__(self, migrated_database: str, folder: Path) -> None:
        self.folder, self.clock = folder, FrozenClock()
        self.url = migrated_database
        if is_sqlite(migrated_database):
            copy = folder / "kindling.db"
            shutil.copy(migrated_database.split(":///", 1)[1], copy)
            self.url = f"sqlite+aiosqlite:///{copy}"
        self.templates = templates_with(folder / "templates", {"drip": FLOW})
        self.held: dict[int, int] = {}  # lead id -> open handoff id, as the operator sees it

    async def play(self, steps: list[tuple[str, object]]) -> None:
        await self._empty_database()
        shipped = load_settings(ROOT / "config.toml", env={})
        policy = replace(shipped.policy, quiet_hours=None, daily_cap=50)  # neither holds steps back here
        config = shipped.with_(database_url=self.url, templates=self.templates, policy=policy)
        app = create_app(config, clock=self.clock, ticks=False)
        async with TestClient(TestServer(app)) as client:
            self.client, self.services = client, app[SERVICES]
            self.db = self.services.sessions
            self.operator = await transaction(self.db, self._add_operator)
            self.sockets, self.leads = [], []
            for _ in range(VISITORS):
                ws = await client.ws_connect("/chat/ws")
                await hello(ws)
                self.sockets.append(ws)
            self.leads = await self._lead_ids()
            for action, value in steps:
                await self._check_held_leads_get_nothing(getattr(self, f"_{action}"), value)
                await self._check_no_doubles()
            for lead_id in list(self.held):
                await self._back(self.leads.index(lead_id))
            for _ in range(5):
                await self._wait(60 * 24 * 8)
            await self._check_no_doubles()
            await self._check_nothing_skipped()
            for ws in self.sockets:
                await ws.close()

    # --- actions --------------------------------------------------------------------------------

    async def _wait(self, minutes: int) -> None:
        self.clock.advance(timedelta(minutes=minutes))
        await self._ticks(0)

    async def _ticks(self, _: object) -> None:
        """What two instances' schedulers would run at once."""
        services = self.services
        await asyncio.gather(services.runner.run_due(), services.runner.run_due(), services.dispatcher.dispatch_due())
        await services.dispatcher.dispatch_due()
        await services.drain()

    async def _say(self, visitor: int) -> None:
        await say(self.client, self.sockets[visitor], "thanks")  # small talk: a reply that asks no person

    async def _take(self, visitor: int) -> None:
        lead_id = self.leads[visitor]
        result = await self.services.handoffs.open_for_lead(lead_id, self.operator)
        assert result.ok, result
        self.held[lead_id] = result.handoff_id

    async def _back(self, visitor: int) -> None:
        lead_id = self.leads[visitor]
        if lead_id in self.held:
            await self.services.handoffs.hand_back(self.held.pop(lead_id), self.operator, "nurture")
            await self.services.drain()

    async def _edit(self, edited: bool) -> None:
        (self.templates / "flows" / "drip.j2").write_text(EDITED if edited else FLOW, encoding="utf-8")
        await asyncio.to_thread(self.services.library.reload)

    # --- the promises ---------------------------------------------------------------------------

    async def _check_held_leads_get_nothing(self, action, value) -> None:  # type: ignore[no-untyped-def]
        held = set(self.held)
        before = await self._nurture_sent()
        await action(value)
        after = await self._nurture_sent()
        grew = {lead: after[lead] - before[lead] for lead in held if lead in self.held and after[lead] > before[lead]}
        assert not grew, f"nurture sent to leads an operator held: {grew}"

    async def _check_no_doubles(self) -> None:
        async with self.db() as session:
            keys = (
                await session.exec(select(Delivery.enrollment_id, Delivery.step).where(Delivery.kind == "nurture"))
            ).all()
        doubles = [key for key, count in Counter(keys).items() if count > 1]
        assert not doubles, f"steps delivered twice: {doubles}"

    async def _check_nothing_skipped(self) -> None:
        async with self.db() as session:
            enrollments = (await session.exec(select(Enrollment))).all()
            sources = {v.version: v.source for v in (await session.exec(select(FlowVersion))).all()}
            sent = Counter((await session.exec(select(Delivery.enrollment_id).where(Delivery.status == "sent"))).all())
        assert enrollments, "no visitor was enrolled"
        for enrollment in enrollments:
            expected = STEPS[sources[enrollment.flow_version]]
            assert (enrollment.status, sent[enrollment.id]) == ("done", expected), (enrollment, sent[enrollment.id])

    # --- plumbing -------------------------------------------------------------------------------

    async def _nurture_sent(self) -> Counter:
        async with self.db() as session:
            query = select(Delivery.lead_id).where(Delivery.kind == "nurture", Delivery.status == "sent")
            return Counter((await session.exec(query)).all())

    async def _lead_ids(self) -> list[int]:
        async with self.db() as session:
            return sorted((await session.exec(select(Enrollment.lead_id))).all())

    async def _add_operator(self, session) -> int:  # type: ignore[no-untyped-def]
        operator = await add_operator(session, "ann", "operator", "-", None, self.clock.now())
        return operator.id

    async def _empty_database(self) -> None:
        if is_sqlite(self.url):
            return
        engine = create_engine(self.url)
        tables = ", ".join(f'"{table.name}"' for table in SQLModel.metadata.sorted_tables)
        async with engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        await engine.dispose()
