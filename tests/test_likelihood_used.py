"""The learned likelihood where the score is used: flow `when`, exits and triggers, lint, the queue's order.

Leads get their likelihood as an accepted fit gives it: a stored accepted model, then `set_likelihoods`
(what `kindling score fit` calls after an accepted fit).
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from bot.handoff.inbox import InboxView, inbox
from flows.lint import lint_file
from storage.learned import save_model, set_likelihoods
from storage.models import Enrollment, Handoff, Lead, ScoringModel

from conftest import API_KEY, rows, services_of, templates_with
from test_console_queue import operator, post, warm

AUTH = {"Authorization": f"Bearer {API_KEY}"}
LIKELY = """+++
name = "Likely buyers"
trigger = "custom:signup"
when = "lead.likelihood >= 60"
exit = ["likelihood >= 90"]
+++
{% step "hello", after="1h" %}Hi {{ lead.first_name or "there" }}, {{ lead.likelihood }}% sure?{% endstep %}
{% step "later", after="1d" %}Still there?{% endstep %}
"""
CROSSED = """+++
name = "Crossed 60"
trigger = "likelihood >= 60"
when = "lead.stage != 'customer'"
+++
{% step "call", after="1h" %}Shall we talk?{% endstep %}
"""


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """The shipped system messages and partials, with only the test's own flows."""
    return templates_with(tmp_path / "templates", {"likely": LIKELY, "crossed": CROSSED})


@pytest.fixture
async def app(make_client, settings, templates):
    return await make_client(settings.with_(templates=templates))


async def lead_of(app, email: str, event: str = "visit") -> int:
    """A lead made by the events API; returns its id."""
    answer = await app.post("/api/events", json={"type": event, "lead": {"email": email}}, headers=AUTH)
    assert answer.status == 201, await answer.text()
    return (await answer.json())["lead_id"]


async def fitted(db, clock, likelihoods: dict[int, int]) -> int:  # type: ignore[no-untyped-def]
    """An accepted model stored and these leads' likelihoods written by it, as an accepted fit does; its version."""
    model = ScoringModel(created_at=clock.now(), accepted=True, verdict="accepted", goal="customer",
                         horizon_seconds=30 * 86400, window_seconds=7 * 86400)  # fmt: skip
    version = await save_model(db, model)
    await set_likelihoods(db, version, likelihoods.items())
    return version


async def test_a_when_on_the_likelihood_enrolls_a_likely_lead_only(app, db, clock):
    likely, unlikely, unscored = [await lead_of(app, f"{who}@example.com") for who in ("ann", "bo", "cy")]
    await fitted(db, clock, {likely: 72, unlikely: 40})
    for email in ("ann", "bo", "cy"):
        await lead_of(app, f"{email}@example.com", "signup")
    [enrollment] = await rows(db, Enrollment)
    assert (enrollment.lead_id, enrollment.flow_slug, enrollment.status) == (likely, "likely", "active")
    assert [lead.likelihood for lead in await rows(db, Lead)] == [72, 40, None]
    assert unscored not in {enrollment.lead_id for enrollment in await rows(db, Enrollment)}


async def test_a_likelihood_exit_ends_the_flow_and_a_lead_below_it_or_without_one_goes_on(app, db, clock):
    ann, bo = await lead_of(app, "ann@example.com"), await lead_of(app, "bo@example.com")
    await fitted(db, clock, {ann: 72, bo: 61})
    for email in ("ann", "bo"):
        await lead_of(app, f"{email}@example.com", "signup")
    await fitted(db, clock, {ann: 93})  # the next fit: Ann is nearly sure now
    clock.advance(timedelta(hours=1))
    await services_of(app).runner.run_due()  # the exit is checked right before each step
    by_lead = {enrollment.lead_id: enrollment for enrollment in await rows(db, Enrollment)}
    assert (by_lead[ann].status, by_lead[ann].exit_reason) == ("exited", "likelihood >= 90")
    assert by_lead[bo].status == "active" and by_lead[bo].step_index == 1
    [exit_rule] = services_of(app).library.flows["likely"].exits
    assert not exit_rule.expression.holds(lead={"likelihood": None}, event={}, now=clock.now())
    assert exit_rule.expression.holds(lead={"likelihood": 90}, event={}, now=clock.now())


async def test_a_likelihood_trigger_enrolls_each_lead_once_after_the_fit_that_put_it_there(app, db, clock):
    ann, bo, cy = [await lead_of(app, f"{who}@example.com") for who in ("ann", "bo", "cy")]
    sweeps = services_of(app).sweeps
    assert await sweeps.run() == 0  # no model has scored anyone yet
    await fitted(db, clock, {ann: 72, bo: 40, cy: 59})
    assert await sweeps.run() == 1
    assert await sweeps.run() == 0  # Ann is in the flow already
    clock.advance(timedelta(days=1))
    await fitted(db, clock, {ann: 75, bo: 64, cy: 20})  # the next fit: Bo crossed 60
    assert await sweeps.run() == 1 and await sweeps.run() == 0
    enrolled = [(e.lead_id, e.flow_slug) for e in await rows(db, Enrollment, Enrollment.flow_slug == "crossed")]
    assert enrolled == [(ann, "crossed"), (bo, "crossed")]  # each once, Cy never


async def test_a_likelihood_trigger_with_reenter_takes_a_lead_again_only_after_that_long(app, db, clock, templates):
    (templates / "flows" / "crossed.j2").write_text(CROSSED.replace("+++\n{%", 'reenter = "after 30d"\n+++\n{%'))
    services_of(app).library.reload()
    ann = await lead_of(app, "ann@example.com")
    await fitted(db, clock, {ann: 80})
    sweeps = services_of(app).sweeps
    assert await sweeps.run() == 1
    async with db() as session:
        [enrollment] = (await session.exec(select(Enrollment))).all()
        enrollment.status = "done"
        session.add(enrollment)
        await session.commit()
    clock.advance(timedelta(days=29))
    assert await sweeps.run() == 0  # done, but too soon to start again
    clock.advance(timedelta(days=1, minutes=1))
    assert await sweeps.run() == 1 and await sweeps.run() == 0


async def test_the_queue_and_the_inbox_put_the_likeliest_first_then_the_sla_and_next_lead_takes_the_likeliest(
    app, db, clock, add_operator
):
    csrf = await operator(app, add_operator, "ann")
    for _ in range(4):  # four visitors ask for a person, a minute apart: SLA deadlines a minute apart
        await warm(app)
        clock.advance(timedelta(minutes=1))
    unscored, early_30, likely, late_30 = await rows(db, Handoff)
    assert unscored.sla_due_at < early_30.sla_due_at < likely.sla_due_at < late_30.sla_due_at
    await fitted(db, clock, {early_30.lead_id: 30, likely.lead_id: 90, late_30.lead_id: 30})
    order = [likely.id, early_30.id, late_30.id, unscored.id]

    assert [h["id"] for h in await services_of(app).handoffs.queue()] == order
    assert [h["likelihood"] for h in await services_of(app).handoffs.queue()] == [90, 30, 30, None]
    page = await (await app.get("/console/queue")).text()
    rows_shown = re.findall(r'<tr class="handoff[^"]*" data-id="(\d+)"', page)
    assert [int(found) for found in rows_shown if found != "0"] == order  # 0: the template console.js draws from
    async with db() as session:
        found = await inbox(session, InboxView(show="all"), clock.now())
    assert [row["id"] for row in found.rows] == order

    answer = await post(app, "/console/queue/next", csrf)
    assert answer.headers["Location"] == f"/console/handoffs/{likely.id}"
    assert [h.status for h in await rows(db, Handoff)] == ["waiting", "waiting", "claimed", "waiting"]


def test_lint_accepts_the_likelihood_and_suggests_it_for_a_typo(tmp_path):
    (tmp_path / "flows").mkdir()
    good = tmp_path / "flows" / "likely.j2"
    good.write_text(LIKELY)
    assert lint_file(good, tmp_path) == []
    typo = tmp_path / "flows" / "typo.j2"
    typo.write_text(LIKELY.replace('"lead.likelihood >= 60"', '"lead.likelyhood >= 60"'))
    [problem] = lint_file(typo, tmp_path)
    assert problem.line == 4 and problem.message.endswith("did you mean `lead.likelihood`?")


async def test_the_funnel_and_handoff_reports_break_down_by_likelihood_band(app, db, clock):
    ann, bo, _ = [await lead_of(app, f"{name}@example.com") for name in ("ann", "bo", "cy")]
    await warm(app)  # a visitor asks for a person: a handoff
    [handoff] = await rows(db, Handoff)
    await fitted(db, clock, {ann: 72, bo: 15, handoff.lead_id: 85})
    clock.advance(timedelta(minutes=1))

    answer = await app.get("/api/reports/funnel?by=likelihood", headers=AUTH)
    assert answer.status == 200, await answer.text()
    report = await answer.json()
    reached = {group["key"]: group["stages"][0]["reached"] for group in report["groups"]}
    assert reached == {"all": 4, "60-79": 1, "0-19": 1, "80-100": 1, "none": 1}  # cy: no model scored it
    answer = await app.get("/api/reports/handoffs?by=likelihood", headers=AUTH)
    assert answer.status == 200, await answer.text()
    assert [(group["key"], group["handoffs"]) for group in (await answer.json())["groups"]] == [("80-100", 1)]
    answer = await app.get("/api/reports/flows?by=likelihood", headers=AUTH)
    assert answer.status == 422  # the flow report is per flow and step, as for any other breakdown
