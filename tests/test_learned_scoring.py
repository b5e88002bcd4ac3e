"""Learned scoring on made-up histories with known generating weights, written into the real tables.

Each lead arrives, does things in its first week (pages, messages, nurture steps it replies to or not), and then
reaches the goal within the horizon with the chance a logistic model of those things gives. The fit must find
the model's strongest factors and rank held-out leads almost as well as the model itself; with outcomes drawn
at random it must refuse to replace the rule score.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sklearn.metrics import roc_auc_score
from sqlalchemy import insert

from bot.config import ConfigError, settings_from
from flows.learned import LearnedScoring, explain_lead, explanation_text, path_prefix
from flows.learned_fit import fit_and_store
from storage.learned import accepted_model
from storage.models import Conversation, Delivery, Event, Handoff, Lead, PointsEntry, ScoringModel, StageEntry

from conftest import ROOT, rows

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SETTINGS = LearnedScoring(goal="customer", horizon=timedelta(days=30), window=timedelta(days=7), min_outcomes=20)
# The generating model: log-odds from log(1 + count) of what a lead did in its first week.
WEIGHTS = {"page:/pricing": 2.0, "from:google/cpc": 1.3, "event:message": 0.4, "no_reply": -1.2, "page:/blog": 0.0}
INTERCEPT = -1.2


@dataclass
class Made:
    """A made-up lead: what it did, and the generating model's chance of success."""

    id: int
    created: datetime
    counts: dict[str, int]
    chance: float
    success: bool = False
    rows: dict[str, list[dict]] = field(default_factory=dict)


def made_up(n: int, seed: int, informative: bool = True, now: datetime = NOW) -> list[Made]:
    """`n` leads arrived 40 to 200 days before `now`; outcomes from WEIGHTS (or at random, 30%)."""
    rng = random.Random(seed)
    leads = []
    for lead_id in range(1, n + 1):
        created = now - timedelta(days=rng.uniform(40, 200))
        source = rng.choice([("google", "cpc"), ("facebook", "social"), None])
        counts = {
            "page:/pricing": _poisson(rng, 0.9),
            "page:/blog": _poisson(rng, 1.5),
            "event:message": _poisson(rng, 0.8),
            "steps": _poisson(rng, 1.5),
        }
        counts["replied"] = sum(rng.random() < 0.3 for _ in range(counts["steps"]))
        counts["no_reply"] = counts["steps"] - counts["replied"]
        counts["from:google/cpc"] = int(source == ("google", "cpc"))
        z = INTERCEPT + sum(w * math.log1p(counts[name]) for name, w in WEIGHTS.items())
        chance = 1 / (1 + math.exp(-z)) if informative else 0.3
        lead = Made(lead_id, created, counts, chance, rng.random() < chance)
        lead.rows = _rows(lead, source, rng)
        leads.append(lead)
    return leads


def _poisson(rng: random.Random, mean: float) -> int:
    count, total = 0, rng.expovariate(1.0)
    while total < mean:
        count, total = count + 1, total + rng.expovariate(1.0)
    return count


def _rows(lead: Made, source: tuple[str, str] | None, rng: random.Random) -> dict[str, list[dict]]:
    """The lead's rows in the real tables: lead, events, points (the rule score), steps, the goal's stage entry."""
    at = lambda: lead.created + timedelta(days=rng.uniform(0, 6.9))  # noqa: E731  (inside the first week)
    touch = {"source": source[0], "medium": source[1], "channel": "webchat"} if source else {"channel": "webchat"}
    made = {"lead": [_lead(lead, touch)], "event": [], "pointsentry": [], "conversation": [], "delivery": []}
    for path, name in (("/pricing/team", "page:/pricing"), ("/blog/post", "page:/blog")):
        for _ in range(lead.counts[name]):
            when = at()
            made["event"].append(_event(lead.id, "page_view", when, payload={"path": path}))
            if name == "page:/pricing":
                made["pointsentry"].append({"lead_id": lead.id, "rule": "pricing page", "points": 10.0, "at": when})
    for _ in range(lead.counts["event:message"]):
        made["event"].append(_event(lead.id, "message", at(), payload={"text": "hi"}))
    if lead.counts["steps"]:
        made["conversation"].append(_conversation(lead))
        for number in range(lead.counts["steps"]):
            sent = at()
            replied = sent + timedelta(hours=2) if number < lead.counts["replied"] else None
            made["delivery"].append(_delivery(lead.id, number, sent, replied))
    made["stageentry"] = []
    cut = lead.created + SETTINGS.window
    if lead.success:  # the goal within the horizon, with the purchase that got it there: after the cut-off
        reached = cut + timedelta(days=rng.uniform(0.5, 29))
        made["stageentry"].append(_stage(lead, reached))
        made["event"].append(_event(lead.id, "custom", reached, name="purchase"))
    elif rng.random() < 0.1:  # too late: a failure all the same
        made["stageentry"].append(_stage(lead, cut + timedelta(days=45)))
    return made


def _lead(lead: Made, touch: dict) -> dict:
    empty = {"first_touch": touch, "last_touch": touch, "tags": [], "channel_marketing": {}}
    return {"id": lead.id, "created_at": lead.created, "updated_at": lead.created, "stage_at": lead.created, **empty}


def _event(lead_id: int, kind: str, at: datetime, name: str | None = None, payload: dict | None = None) -> dict:
    return {"lead_id": lead_id, "type": kind, "name": name, "payload": payload or {}, "at": at}


def _conversation(lead: Made) -> dict:
    visitor = f"v{lead.id}"
    return {"id": lead.id, "lead_id": lead.id, "channel": "webchat", "external_id": visitor, "created_at": lead.created}


def _delivery(lead_id: int, number: int, sent: datetime, replied: datetime | None) -> dict:
    return {
        "lead_id": lead_id, "conversation_id": lead_id, "channel": "webchat", "address": f"v{lead_id}",
        "kind": "nurture", "priority": 2, "text": "hello", "buttons": [], "idempotency_key": f"{lead_id}:{number}",
        "flow_slug": "pricing", "step": f"step-{number}", "status": "sent", "not_before": sent, "created_at": sent,
        "sent_at": sent, "replied_at": replied,
    }  # fmt: skip


def _stage(lead: Made, at: datetime) -> dict:
    return {"lead_id": lead.id, "stage": "customer", "entered_at": at, "cohort_at": lead.created}


TABLES = {"lead": Lead, "conversation": Conversation, "event": Event, "pointsentry": PointsEntry,
          "delivery": Delivery, "stageentry": StageEntry}  # fmt: skip


async def write(db, leads: list[Made]) -> None:  # type: ignore[no-untyped-def]
    """Bulk-insert the leads' rows, parents first (on PostgreSQL the ids' sequences move past them, so the app can
    add rows of its own afterwards)."""
    async with db() as session:
        connection = await session.connection()
        for table, model in TABLES.items():
            batch = [row for lead in leads for row in lead.rows[table]]
            if batch:
                await connection.execute(insert(model), batch)
            if connection.dialect.name == "postgresql" and any("id" in row for row in batch):
                await connection.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
                )
        await session.commit()


async def fit(db, database_url, settings=SETTINGS, now=NOW):  # type: ignore[no-untyped-def]
    previous = await accepted_model(db)
    return await fit_and_store(db, database_url, settings, now, previous.id if previous else None)


async def test_the_fit_finds_the_strongest_factors_and_ranks_almost_as_well_as_the_true_model(db, database_url):
    leads = made_up(900, seed=7)
    await write(db, leads)
    outcome = await fit(db, database_url)
    result = outcome.fit
    assert result.accepted, result.verdict
    assert result.successes == sum(lead.success for lead in leads)
    weights = result.weights
    assert weights["page:/pricing"] > weights["from:google/cpc"] > 0 > weights["no_reply"]
    strongest = sorted(weights, key=lambda name: -abs(weights[name]))[:3]
    assert set(strongest) == {"page:/pricing", "from:google/cpc", "no_reply"}
    by_id = {lead.id: lead for lead in leads}
    held = [by_id[i] for i in result.held_out]
    truth = roc_auc_score([lead.success for lead in held], [lead.chance for lead in held])
    assert abs(result.figures["learned"]["auc"] - truth) <= 0.03
    assert result.figures["learned"]["auc"] > result.figures["rule"]["auc"]
    stored = await rows(db, Lead)
    assert {lead.likelihood_model for lead in stored} == {outcome.version}
    customers = {lead.id for lead in leads if lead.success}
    assert all(lead.likelihood == 100 for lead in stored if lead.id in customers)
    model = await accepted_model(db)
    assert model.id == outcome.version and model.weights == pytest.approx(weights)
    assert set(model.figures["learned"]) == {"auc", "brier", "calibration"}
    assert len(model.figures["rule"]["calibration"]) == 10


async def test_outcomes_unrelated_to_what_leads_did_do_not_replace_the_rule_score(db, database_url):
    await write(db, made_up(900, seed=11, informative=False))
    outcome = await fit(db, database_url)
    assert not outcome.fit.accepted
    assert "does not beat the rule score" in outcome.fit.verdict
    assert await accepted_model(db) is None
    assert {lead.likelihood for lead in await rows(db, Lead)} == {None}
    stored = await rows(db, ScoringModel)
    assert [(model.accepted, model.successes) for model in stored] == [(False, outcome.fit.successes)]


async def test_a_refused_fit_keeps_the_accepted_model_and_its_likelihoods(db, database_url):
    await write(db, made_up(900, seed=7))
    first = await fit(db, database_url)
    assert first.fit.accepted, first.fit.verdict
    before = {lead.id: lead.likelihood for lead in await rows(db, Lead)}
    second = await fit(db, database_url, LearnedScoring(min_outcomes=10_000))
    assert not second.fit.accepted and second.previous == first.version
    assert (await accepted_model(db)).id == first.version
    assert {lead.id: lead.likelihood for lead in await rows(db, Lead)} == before


async def test_what_happens_after_the_cut_off_is_never_a_factor(db, database_url):
    leads = made_up(900, seed=7)
    await write(db, leads)
    outcome = await fit(db, database_url)
    assert "custom:purchase" not in outcome.fit.counts and "custom:purchase" not in outcome.fit.weights
    buyer = next(lead for lead in leads if lead.success)  # bought after its cut-off, and has been a customer since
    explained = await explain_lead(database_url, await accepted_model(db), buyer.id, NOW)
    assert "custom:purchase" not in explained.counts and explained.likelihood == 100
    assert explained.counts.get("page:/pricing") == (buyer.counts["page:/pricing"] or None)


async def test_too_few_successes_are_refused_plainly(db, database_url):
    await write(db, made_up(120, seed=2))
    outcome = await fit(db, database_url, LearnedScoring(min_outcomes=500))
    assert not outcome.fit.accepted
    assert outcome.fit.verdict.startswith("refused: too little data")
    assert "scoring.min_outcomes asks for 500" in outcome.fit.verdict
    assert await accepted_model(db) is None


async def test_one_lead_is_explained_in_words(db, database_url):
    leads = made_up(900, seed=7)
    await write(db, leads)
    await fit(db, database_url)
    keen = max(leads, key=lambda lead: lead.counts["page:/pricing"] * (1 - lead.success))
    explained = await explain_lead(database_url, await accepted_model(db), keen.id, NOW)
    text = explanation_text(explained.factors)
    times = {2: "twice", 1: "once"}.get(keen.counts["page:/pricing"], f"{keen.counts['page:/pricing']} times")
    assert f"visited /pricing {times}" in text and text.startswith("+")
    assert explained.likelihood == (await rows(db, Lead, Lead.id == keen.id))[0].likelihood


def lately() -> datetime:
    """The latest time a whole number of weeks after NOW and not after the real now: the same hours and weekdays."""
    return NOW + timedelta(weeks=(datetime.now(UTC) - NOW) // timedelta(weeks=1))


async def test_the_command_line_prints_the_figures_and_the_factors(db, run_kindling):
    now = lately()
    await write(db, made_up(900, seed=7, now=now))
    status, out, err = await run_kindling("score", "fit")
    assert status == 0, err
    assert "ROC AUC" in out and "Brier score" in out and "rule score" in out
    assert "calibration on the held-out leads" in out and "accepted:" in out
    assert "model 1 is the first accepted model: likelihood recomputed for 900 leads" in out
    status, out, err = await run_kindling("score", "factors", "--limit", "3")
    assert status == 0, err
    assert "raise success:" in out and "visited /pricing" in out and "no reply to" in out
    status, out, err = await run_kindling("score", "explain", "1")
    assert status == 0 and out.startswith("lead 1: likelihood ")


async def test_the_command_line_says_when_nothing_is_accepted(db, run_kindling):
    now = lately()
    await write(db, made_up(100, seed=1, now=now))
    status, out, err = await run_kindling("score", "fit")
    assert status == 1
    assert "refused: too little data" in out and "nothing replaced: no model is accepted" in out
    status, out, err = await run_kindling("score", "factors")
    assert status == 1 and "run `kindling score fit`" in err


def test_a_page_counts_by_its_first_path_segment():
    assert path_prefix("/Pricing/team?x=1") == "/pricing"
    assert path_prefix("/") == "/"


WITHOUT_SCIKIT_LEARN = "import sys; sys.modules.update(sklearn=None, numpy=None, scipy=None); "


def test_the_server_and_the_explanations_need_no_scikit_learn():
    code = WITHOUT_SCIKIT_LEARN + "import bot.app, bot.cli, flows.learned; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_fit_without_scikit_learn_says_how_to_install_it(database_url):
    code = WITHOUT_SCIKIT_LEARN + "from bot.cli import main; sys.exit(main(['score', 'fit']))"
    env = {**os.environ, "KINDLING_DATABASE_URL": database_url, "KINDLING_CONFIG": str(ROOT / "config.toml")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert 'pip install "kindling[scoring]"' in done.stderr


def test_the_goal_must_be_a_stage():
    with pytest.raises(ConfigError, match="scoring.goal: 'paid' is not a stage"):
        settings_from({"scoring": {"goal": "paid"}}, env={})
    assert settings_from({"stages": {"order": ["new", "won"]}}, env={}).learned.goal == "won"


async def test_a_leads_factors_are_what_it_did_before_its_cut_off(db, database_url):
    arrived = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # a Monday
    day = timedelta(days=1)
    touch = {"source": "Google", "medium": "CPC", "campaign": "Spring", "channel": "telegram"}
    lead = {**_lead(Made(1, arrived, {}, 0.5), touch), "locale": "de-AT"}
    events = [
        _event(1, "message", arrived + timedelta(minutes=30)),  # morning, first message within an hour
        _event(1, "page_view", arrived + timedelta(hours=1), payload={"path": "/pricing"}),
        _event(1, "page_view", arrived + 2 * day, payload={"path": "/pricing/team"}),
        _event(1, "custom", arrived + 5 * day + timedelta(hours=10), name="signup"),  # Saturday 20:00
        _event(1, "custom", arrived + 8 * day, name="purchase"),  # after the cut-off, as all below
        _event(1, "page_view", arrived + 9 * day, payload={"path": "/blog"}),
    ]
    steps = [
        _delivery(1, 0, arrived + day, arrived + day + timedelta(hours=1)) | {"step": "hello", "flow_slug": "welcome"},
        _delivery(1, 1, arrived + 3 * day, arrived + 8 * day) | {"step": "nudge", "flow_slug": "welcome"},
        _delivery(1, 2, arrived + 8 * day, None) | {"step": "late", "flow_slug": "welcome"},
    ]
    handoffs = [_handoff(arrived + 4 * day, "lost"), _handoff(arrived + 6 * day, "won")]  # won after the cut-off
    async with db() as session:
        connection = await session.connection()
        await connection.execute(insert(Lead), [lead])
        await connection.execute(insert(Conversation), [_conversation(Made(1, arrived, {}, 0.5))])
        for model, batch in ((Event, events), (Delivery, steps), (Handoff, handoffs)):
            await connection.execute(insert(model), batch)
        await session.commit()
    model = ScoringModel(goal="customer", window_seconds=7 * 86400, horizon_seconds=0, verdict="", intercept=-1.0,
                         weights={"page:/pricing": 1.0, "no_reply": -0.5})  # fmt: skip
    explained = await explain_lead(database_url, model, 1, arrived + 30 * day)
    assert explained.counts == {
        "from:google/cpc": 1, "campaign:spring": 1, "channel:telegram": 1, "locale:de": 1,
        "event:message": 1, "first_message:within an hour": 1, "page:/pricing": 2, "custom:signup": 1,
        "hour:morning": 3, "hour:evening": 1, "weekend": 1,
        "flow:welcome": 2, "step:welcome/hello": 1, "step:welcome/nudge": 1, "replied": 1, "no_reply": 1,
        "handoff": 2, "handoff:lost": 1,
    }  # fmt: skip
    # log-odds -1 + ln 3 - 0.5 ln 2 = -0.25: 44%; 21% without the pricing visits, 52% without the unanswered step
    assert explanation_text(explained.factors) == "+23 visited /pricing twice, -9 no reply to 1 step"
    assert explained.likelihood == 44


def _handoff(at: datetime, outcome: str) -> dict:
    return {
        "lead_id": 1, "conversation_id": 1, "trigger": "intent", "reason": "call me", "card": {}, "status": "closed",
        "warm_at": at, "created_at": at, "sla_due_at": at, "closed_at": at + timedelta(days=1, hours=1),
        "outcome": outcome,
    }  # fmt: skip
