"""The learned likelihood where people look: the lead page, the API, the factors report and the context card.

A model is stored as an accepted `kindling score fit` stores one (storage.learned.save_model), with known
weights, and the lead's likelihood is written with the same function a fit uses (set_likelihoods). The lead
signs up twice and puts something in its cart once, through the events API:
log-odds -1 + 2 ln 3 - ln 2 = 0.50: 62%; 16% without the signups, 77% without the cart.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

from flows.handoff_card import card_text
from storage.learned import save_model, set_likelihoods
from storage.models import Event, Handoff, ScoringModel

from conftest import API_KEY, rows
from test_console_auth import csrf_of, log_in

AUTH = {"Authorization": f"Bearer {API_KEY}"}
WEIGHTS = {"custom:signup": 2.0, "custom:cart": -1.0, "page:/pricing": 0.8, "no_reply": -0.3, "channel:webchat": 0.0}
COUNTS = {"custom:signup": 412, "custom:cart": 95, "page:/pricing": 230, "no_reply": 1200, "channel:webchat": 3000}
EXPLAINED = "+47 signup twice, -14 cart once"


async def event(client, kind: str, email: str = "ann@example.com") -> int:  # type: ignore[no-untyped-def]
    answer = await client.post("/api/events", json={"type": kind, "lead": {"email": email}}, headers=AUTH)
    assert answer.status in (200, 201), await answer.text()
    return (await answer.json())["lead_id"]


async def scored_lead(client, db, clock) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """A lead with two signups and a cart, scored 62% by accepted model 1 (as a fit would leave it)."""
    lead_id = await event(client, "signup")
    await event(client, "signup")
    await event(client, "cart")
    clock.advance(timedelta(hours=1))  # the events lie before the cut-off (now, for so young a lead)
    model = ScoringModel(created_at=clock.now(), accepted=True, verdict="accepted: beats the rule score",
                         goal="customer", horizon_seconds=30 * 86400, window_seconds=7 * 86400, successes=60,
                         failures=400, intercept=-1.0, weights=WEIGHTS, counts=COUNTS)  # fmt: skip
    version = await save_model(db, model)
    assert await set_likelihoods(db, version, [(lead_id, 62)]) == 1
    return lead_id, version


async def text_of(client, path: str) -> str:  # type: ignore[no-untyped-def]
    answer = await client.get(path)
    assert answer.status == 200, await answer.text()
    return re.sub(r"\s+", " ", await answer.text())


async def take_over(client, db, lead_id: int) -> list[Handoff]:  # type: ignore[no-untyped-def]
    """Take over on the lead's page, as an operator does: a handoff opens with its context card."""
    path = f"/console/leads/{lead_id}"
    taken = await client.post(f"{path}/take", data={"csrf_token": await csrf_of(client, path)}, allow_redirects=False)
    assert taken.status in (302, 303), await taken.text()
    return await rows(db, Handoff)


async def test_the_lead_page_shows_the_likelihood_and_its_factors(client, db, clock, add_operator):
    unscored = await event(client, "signup", "bo@example.com")  # no model has scored it
    lead_id, version = await scored_lead(client, db, clock)
    await add_operator("ola", "operator")
    await log_in(client, "ola")
    page = await text_of(client, f"/console/leads/{lead_id}")
    assert f"Likelihood 62%, model #{version} of {clock.now():%Y-%m-%d}</p>" in page
    assert EXPLAINED in page
    async with db() as session:  # a signup not yet rescored (written here, not through intake, which rescores)
        session.add(Event(lead_id=lead_id, type="custom", name="signup", payload={}, at=clock.now()))
        await session.commit()
    clock.advance(timedelta(minutes=1))
    page = await text_of(client, f"/console/leads/{lead_id}")
    assert "Likelihood 62%, model #1 of" in page and "(75% on what the lead has done since)" in page
    assert "+59 signup 3 times, -11 cart once" in page
    assert "Likelihood" not in await text_of(client, f"/console/leads/{unscored}")


async def test_the_api_gives_the_likelihood_its_model_and_factors(client, db, clock):
    lead_id, version = await scored_lead(client, db, clock)
    one = await (await client.get(f"/api/leads/{lead_id}", headers=AUTH)).json()
    assert (one["likelihood"], one["likelihood_model"]) == (62, version)
    assert [(f["factor"], f["points"], f["text"]) for f in one["likelihood_factors"]] == [
        ("custom:signup", 47, "+47 signup twice"),
        ("custom:cart", -14, "-14 cart once"),
    ]
    assert one["likelihood_factors"][0]["weight"] == 2.0
    [listed] = (await (await client.get("/api/leads", headers=AUTH)).json())["items"]
    assert (listed["likelihood"], listed["likelihood_model"]) == (62, version)


async def test_the_context_card_has_the_likelihood_line(client, db, clock, add_operator):
    lead_id, version = await scored_lead(client, db, clock)
    await add_operator("ola", "operator")
    await log_in(client, "ola")
    [handoff] = await take_over(client, db, lead_id)
    assert handoff.card["likelihood"]["likelihood"] == 62
    assert f"Likelihood: 62% (model #{version}): {EXPLAINED}" in card_text(handoff.card, "taken over").splitlines()


async def test_without_a_model_nothing_shows_and_nothing_fails(client, db, clock, add_operator):
    lead_id = await event(client, "signup")
    clock.advance(timedelta(hours=1))
    await add_operator("ola", "operator")
    await log_in(client, "ola")
    page = await text_of(client, f"/console/leads/{lead_id}")
    assert "Likelihood" not in page
    one = await (await client.get(f"/api/leads/{lead_id}", headers=AUTH)).json()
    assert (one["likelihood"], one["likelihood_model"], one["likelihood_factors"]) == (None, None, [])
    [handoff] = await take_over(client, db, lead_id)
    assert handoff.card["likelihood"] is None and "Likelihood" not in card_text(handoff.card, "taken over")


def factor_rows(page: str) -> list[tuple[str, ...]]:
    """The factors report's tables as read: (words, name, weight, leads), raising first, then lowering."""
    row = r"<tr><td>([^<]*)</td><td><code>([^<]*)</code></td><td>([^<]*)</td><td>(\d+)</td></tr>"
    return re.findall(row, page)


async def test_the_factors_report_lists_what_raises_and_lowers_success_with_lead_counts(
    client, db, clock, add_operator
):  # fmt: skip
    await scored_lead(client, db, clock)
    await add_operator("mia", "marketer")
    await log_in(client, "mia")
    page = await text_of(client, "/console/reports/factors")
    assert "Learned model #1 of" in page and "learned from 460 leads (60 reached it)" in page
    assert factor_rows(page) == [
        ("signup", "custom:signup", "+2.000", "412"),
        ("visited /pricing", "page:/pricing", "+0.800", "230"),
        ("cart", "custom:cart", "-1.000", "95"),
        ("no reply to steps", "no_reply", "-0.300", "1200"),
    ]  # a factor weighing nothing is in neither list
    assert page.index("Raise success") < page.index("signup") < page.index("Lower success") < page.index("cart")
    assert "was refused" not in page
    assert '<a href="/console/reports/factors">Factors</a>' in await text_of(client, "/console/reports/funnel")


async def test_the_factors_report_without_a_model_says_so_and_shows_the_refused_fit(client, db, clock, add_operator):
    await add_operator("mia", "marketer")
    await log_in(client, "mia")
    page = await text_of(client, "/console/reports/factors")
    assert "No learned model yet: run <code>kindling score fit</code>." in page and "refused" not in page
    verdict = "refused: too little data: 12 successes, scoring.min_outcomes asks for 50"
    await save_model(db, ScoringModel(created_at=clock.now(), verdict=verdict, goal="customer", horizon_seconds=1,
                                      window_seconds=1, successes=12, failures=300))  # fmt: skip
    page = await text_of(client, "/console/reports/factors")
    assert "No learned model yet" in page and "The last fit, #1 of" in page and f"was refused: {verdict}" in page
    assert factor_rows(page) == []


async def test_the_factors_report_is_for_those_who_read_reports(client, add_operator):
    await add_operator("ola", "operator")
    await log_in(client, "ola")
    assert (await client.get("/console/reports/factors")).status == 403


async def test_the_handoff_page_and_lead_show_have_the_likelihood_line(client, db, clock, add_operator, run_kindling):
    lead_id, version = await scored_lead(client, db, clock)
    await add_operator("ola", "operator")
    await log_in(client, "ola")
    [handoff] = await take_over(client, db, lead_id)
    page = await text_of(client, f"/console/handoffs/{handoff.id}")
    assert f'<dd class="likelihood">62% (model #{version}): {EXPLAINED}</dd>' in page
    status, out, _ = await run_kindling("lead", "show", str(lead_id))
    assert status == 0 and f"  likelihood 62% (model #{version}): {EXPLAINED}" in out.splitlines()
    status, out, _ = await run_kindling("lead", "show", str(lead_id), "--format", "json")
    shown = json.loads(out)
    assert (shown["likelihood"], shown["likelihood_model"], len(shown["likelihood_factors"])) == (62, version, 2)
