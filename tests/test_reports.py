"""Reports as a marketer reads them: the funnel, the flows with A/B variants, the handoffs; CLI, API, console.

The history is made through the app (widget visitors, backend events, the flow runner on the injected
clock, operators claiming and replying), so these tests check the write path as much as the numbers.
"""

from __future__ import annotations

import csv
import html
import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st
from sqlalchemy import text

from bot.reports.stats import Histogram, compare_variants, percentile_cont
from flows.history import stay
from flows.outgoing import Subscriptions
from flows.reactions import set_stage
from flows.spec import choose_variant
from storage.db import create_engine
from storage.leads import get_lead
from storage.migrate import alembic_config, upgrade
from storage.models import Handoff, Operator, StageEntry

from conftest import API_KEY, rows, services_of, templates_with
from test_console_auth import log_in
from test_console_queue import operator, post
from test_handoff import press
from test_webchat import hello, say

AUTH = {"Authorization": f"Bearer {API_KEY}"}
GOOGLE = "https://shop.example/pricing?utm_source=google&utm_campaign=spring"
NEWSLETTER = "https://shop.example/blog?utm_source=newsletter&utm_campaign=jan"
DAY = "since=2026-01-06&until=2026-01-06"

AB = """+++
name = "Pricing A/B"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
exit = ["opt_out"]
goal = "lead"
+++
{% step "hello", after="10m", buttons=["Yes please", "No thanks"] %}Hello!{% endstep %}
{% step "proof", after="1h", variant="story" %}A story.{% endstep %}
{% step "proof", after="1h", variant="numbers" %}Numbers.{% endstep %}
{% step "maybe", after="1h", when="lead.score > 1000" %}Never.{% endstep %}
"""


@pytest.fixture
def clock(clock):
    clock.advance(datetime(2026, 1, 6, 15, 0, tzinfo=UTC) - clock.now())  # Tuesday, 10:00 in New York
    return clock


@pytest.fixture
async def app(make_client, settings, tmp_path):
    return await make_client(settings.with_(templates=templates_with(tmp_path / "templates", {"ab": AB})))


async def visitor(app, url=GOOGLE):
    ws = await app.ws_connect("/chat/ws")
    welcome = await hello(ws, url=url)
    return ws, welcome["lead"]


async def backend(app, event: str, **lead) -> int:
    answer = await app.post("/api/events", json={"type": event, "lead": lead, "id": uuid.uuid4().hex}, headers=AUTH)
    assert answer.status == 201, await answer.text()
    return (await answer.json())["lead_id"]


async def report(app, name: str, query: str = DAY) -> dict:
    answer = await app.get(f"/api/reports/{name}?{query}", headers=AUTH)
    assert answer.status == 200, await answer.text()
    return await answer.json()


def stages_of(group: dict) -> dict[str, tuple]:
    """stage -> (reached, conversion from the previous stage, median seconds in it)."""
    return {s["stage"]: (s["reached"], s["conversion"], s["median_seconds_in_stage"]) for s in group["stages"]}


async def funnel_history(app, clock) -> None:
    """Four leads on Tuesday: Ann goes all the way, Bo leaves an email, Cy only looks, Di signs up at once."""
    ann, ann_id = await visitor(app)
    bo, _ = await visitor(app)
    await visitor(app, NEWSLETTER)  # Cy
    clock.advance(timedelta(hours=1))
    await say(app, ann, "I'm ann@example.com")  # lead after 1 h as a visitor
    await backend(app, "signup", email="di@example.com")  # visitor -> lead at once: no time as a visitor
    clock.advance(timedelta(hours=2))
    await say(app, bo, "bo@example.com")  # lead after 3 h
    # The backend names her lead (what she typed was only a claim): 15 + 10 + 2 + 20 points, mql after 2 h as a lead
    await backend(app, "signup", id=ann_id, email="ann@example.com")
    clock.advance(timedelta(hours=21))
    await backend(app, "purchase", email="ann@example.com")  # mql -> customer, passing through sql


async def test_the_funnel_counts_each_lead_once_per_stage_with_conversion_and_time_in_stage(app, clock):
    await funnel_history(app, clock)
    funnel = await report(app, "funnel")
    assert funnel["stages"] == ["visitor", "lead", "mql", "sql", "customer"]
    [everyone] = funnel["groups"]
    assert everyone["key"] == "all" and everyone["leads"] == 4 and everyone["overall_conversion"] == 0.25
    assert stages_of(everyone) == {
        "visitor": (4, None, 2 * 3600.0),  # Ann 1 h, Bo 3 h (Di passed straight through, Cy is still there)
        "lead": (3, 0.75, 2 * 3600.0),  # Ann 2 h
        "mql": (1, 0.3333, 21 * 3600.0),  # Ann 21 h
        "sql": (1, 1.0, None),  # Ann jumped over it: counted, but no time spent
        "customer": (1, 1.0, None),
    }
    assert "skipping stages counts as passing through them" in funnel["rule"]

    later = await report(app, "funnel", "since=2026-01-07&until=2026-01-08")  # nobody arrived then
    assert later["groups"][0]["leads"] == 0 and later["groups"][0]["overall_conversion"] is None


async def test_the_funnel_by_source_campaign_and_channel(app, clock):
    await funnel_history(app, clock)
    by_source = await report(app, "funnel", f"{DAY}&by=source")
    assert [(g["key"], g["leads"]) for g in by_source["groups"]] == [
        ("all", 4), ("google", 2), ("(none)", 1), ("newsletter", 1)
    ]  # fmt: skip
    google = by_source["groups"][1]
    assert stages_of(google)["visitor"] == (2, None, 2 * 3600.0)
    assert [s["reached"] for s in google["stages"]] == [2, 2, 1, 1, 1] and google["overall_conversion"] == 0.5
    by_campaign = await report(app, "funnel", f"{DAY}&by=campaign")
    assert {g["key"]: g["leads"] for g in by_campaign["groups"]} == {"all": 4, "spring": 2, "jan": 1, "(none)": 1}
    by_channel = await report(app, "funnel", f"{DAY}&by=channel")
    assert {g["key"]: g["leads"] for g in by_channel["groups"]} == {"all": 4, "webchat": 3, "api": 1}


def histogram_of(seconds: list[float]) -> Histogram:
    """What the funnel's query returns for these stays: per bucket, the count, shortest and longest."""
    histogram = Histogram()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for value in seconds:
        bucket = stay(start, start + timedelta(seconds=value))["stay_bucket"]
        histogram.add(bucket, 1, value, value)
    return histogram


@examples(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0.001, max_value=3e7, allow_nan=False), min_size=1, max_size=400))
def test_the_median_time_in_a_stage_is_within_2_percent_of_the_exact_median(seconds):
    exact = percentile_cont(sorted(seconds), 0.5)
    estimate = histogram_of(seconds).median()
    assert estimate == pytest.approx(exact, rel=0.022, abs=0.5)  # 32 buckets per doubling; under 1 s: one bucket


def test_the_median_is_exact_where_the_stays_around_it_are_far_apart():
    hours = [1, 3, 26, 30, 200, 1000]
    assert histogram_of([h * 3600.0 for h in hours]).median() == 28 * 3600.0
    assert histogram_of([5.0]).median() == 5.0 and histogram_of([]).median() is None


async def test_an_upgraded_database_shows_the_time_in_stage_of_leads_that_moved_before(make_client, settings, db):
    """The stays of stage rows written before the stay histogram existed are filled in by the migration."""
    engine = create_engine(settings.database_url)
    config = alembic_config(settings.database_url)

    def back_to_0008(connection) -> None:  # type: ignore[no-untyped-def]
        config.attributes["connection"] = connection
        command.downgrade(config, "0008")

    try:
        async with engine.begin() as connection:
            await connection.run_sync(back_to_0008)
        arrived = datetime(2026, 1, 6, 9, 0, tzinfo=UTC)
        async with engine.begin() as connection:  # the lead table as it was at 0008, not as the model is now
            naive = arrived.replace(tzinfo=None)
            lead_id = (
                await connection.execute(
                    text(
                        "INSERT INTO lead (created_at, updated_at, stage, stage_at, score, first_touch, last_touch,"
                        " tags) VALUES (:at, :at, 'lead', :at, 0, '{}', '{}', '[]') RETURNING id"
                    ),
                    {"at": naive},
                )
            ).scalar_one()
            for stage, entered, left in (("visitor", 0, 5400), ("lead", 5400, None)):
                await connection.execute(
                    text(
                        "INSERT INTO stageentry (lead_id, stage, entered_at, left_at, cohort_at, source, campaign,"
                        " channel) VALUES (:lead, :stage, :entered, :left, :cohort, 'google', 'spring', 'webchat')"
                    ),
                    {
                        "lead": lead_id,
                        "stage": stage,
                        "entered": naive + timedelta(seconds=entered),
                        "left": None if left is None else naive + timedelta(seconds=left),
                        "cohort": naive,
                    },
                )
    finally:
        await upgrade(engine)
        await engine.dispose()
    app = await make_client(settings)
    everyone = (await report(app, "funnel"))["groups"][0]
    assert stages_of(everyone)["visitor"] == (1, None, 5400.0) and stages_of(everyone)["lead"] == (1, 1.0, None)


async def test_a_lead_first_known_by_the_backend_moves_to_its_web_source_when_it_visits(app, clock, db):
    await backend(app, "cart", email="eve@example.com")
    ws, visitor_lead = await visitor(app, NEWSLETTER)
    await say(app, ws, "eve@example.com")  # only a claim
    await backend(app, "login", id=visitor_lead, email="eve@example.com")  # the backend vouches: one lead
    by_source = await report(app, "funnel", f"{DAY}&by=source")
    assert [(g["key"], g["leads"]) for g in by_source["groups"]] == [("all", 1), ("newsletter", 1)]
    assert [s["reached"] for s in by_source["groups"][1]["stages"]][:2] == [1, 1]
    [entry] = await rows(db, StageEntry, StageEntry.stage == "visitor")  # the merged lead's rows are gone
    assert (entry.source, entry.campaign, entry.channel) == ("newsletter", "jan", "webchat")


async def test_moving_back_does_not_uncount_and_coming_forward_again_counts_once(app, clock, db):
    """Operators and flow actions may set any stage; the funnel keeps first reaches only."""
    lead_id = await backend(app, "cart", email="fay@example.com")  # visitor -> lead
    stages = services_of(app).settings.stages
    for stage, hours in (("sql", 1), ("lead", 1), ("sql", 1), ("customer", 2)):
        clock.advance(timedelta(hours=hours))
        async with db() as session, session.begin():
            await set_stage(
                session, stages, Subscriptions(), await get_lead(session, lead_id), stage, "by hand", clock.now()
            )
    [everyone] = (await report(app, "funnel", "since=2026-01-06&until=2026-01-07"))["groups"]
    assert stages_of(everyone) == {
        "visitor": (1, None, None),
        "lead": (1, 1.0, 3600.0),
        "mql": (1, 1.0, None),
        "sql": (1, 1.0, 4 * 3600.0),  # from first reaching sql to first reaching customer, the step back included
        "customer": (1, 1.0, None),
    }


async def tick(app, clock, delta):
    clock.advance(delta)
    services = services_of(app)
    await services.runner.run_due()
    await services.dispatcher.dispatch_due()
    await services.drain()


async def test_the_flow_report_follows_each_step_and_puts_variants_side_by_side(app, clock, db):
    sockets = [await visitor(app) for _ in range(6)]
    await tick(app, clock, timedelta(minutes=10))  # "hello" to all six
    (v1, _), (v2, lead2), (v3, _), (v4, _) = sockets[:4]
    await press(app, v1, "Yes please")
    await say(app, v2, "thanks!")
    await say(app, v2, "it's ann@example.com")  # reaches the goal stage, lead, while in the flow
    await say(app, v3, "stop")
    await say(app, v4, "call me")  # a handoff: the flow pauses
    await tick(app, clock, timedelta(hours=1))  # "proof" to the four still active
    await tick(app, clock, timedelta(hours=1))  # "maybe" is skipped: its `when` is false

    [flow] = (await report(app, "flows"))["flows"]
    assert (flow["flow"], flow["name"], flow["goal"]) == ("ab", "Pricing A/B", "lead")
    assert (flow["enrolled"], flow["active"], flow["done"], flow["exited"]) == (6, 1, 4, {"opt_out": 1})
    assert (flow["handed_off"], flow["opted_out"], flow["reached_goal"], flow["goal_conversion"]) == (1, 1, 1, 0.1667)
    steps = {(s["step"], s["variant"]): s for s in flow["steps"]}
    hello_step = steps[("hello", None)]
    assert [hello_step[k] for k in ("sent", "skipped", "replied_24h", "buttons", "handed_off", "opted_out")] == [
        6, 0, 2, 1, 1, 1
    ]  # fmt: skip
    lead_ids = [lead for _, lead in sockets]
    story = [lead for lead in lead_ids if choose_variant(lead, "ab", "proof", ["story", "numbers"]) == "story"]
    active = [lead_ids[i] for i in (0, 1, 4, 5)]
    expected = {"story": len(set(story) & set(active)), "numbers": len(set(active) - set(story))}
    assert {v: steps[("proof", v)]["sent"] for v in expected if expected[v]} == {v: n for v, n in expected.items() if n}
    assert steps[("maybe", None)]["skipped"] == 4 and steps[("maybe", None)]["skip_reasons"] == {"when is false": 4}

    [ab] = flow["variants"]
    assert ab["step"] == "proof" and ab["compared_on"] == "reached_goal"
    side_by_side = {v["variant"]: (v["leads"], v["reached_goal"]) for v in ab["variants"]}
    winner = "story" if lead2 in story else "numbers"
    assert side_by_side[winner] == (expected[winner], 1)
    assert ab["note"].startswith("too few leads to tell")


def test_the_ab_note_speaks_plainly():
    assert compare_variants([("a", 12, 3), ("b", 10, 1)]).startswith("too few leads to tell")
    significant = compare_variants([("story", 400, 80), ("numbers", 400, 40)])
    assert significant.startswith("story does better than numbers (20.0% vs 10.0%, p = 0.000)")
    assert compare_variants([("a", 200, 22), ("b", 200, 20)]).startswith("no clear difference between a and b yet")
    assert percentile_cont([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5 and percentile_cont([10.0], 0.99) == 10.0


async def operators(db) -> dict[str, int]:
    return {operator.name: operator.id for operator in await rows(db, Operator)}


async def test_the_handoff_report_gives_speed_to_lead_breaches_and_outcomes(app, clock, db, add_operator):
    await add_operator("ana", "operator")
    await add_operator("ben", "operator")
    staff, handoffs = await operators(db), services_of(app).handoffs
    first, _ = await visitor(app)
    second, _ = await visitor(app)
    third, _ = await visitor(app, NEWSLETTER)
    for ws in (first, second, third):
        await say(app, ws, "call me")  # warm now; operators are told at once
    ids = [h.id for h in await rows(db, Handoff)]
    clock.advance(timedelta(minutes=1))
    await handoffs.claim(ids[0], staff["ana"])
    clock.advance(timedelta(minutes=1))
    await handoffs.reply(ids[0], staff["ana"], "Hi, Ana here")  # 2 min after the warm signal
    await handoffs.claim(ids[1], staff["ana"])  # 2 min
    clock.advance(timedelta(minutes=4))
    await services_of(app).notifier.sweep()  # 6 min: the third is past its 5 min SLA
    await handoffs.claim(ids[2], staff["ben"])
    clock.advance(timedelta(minutes=4))
    await handoffs.reply(ids[2], staff["ben"], "Sorry for the wait")  # 10 min
    await handoffs.hand_back(ids[0], staff["ana"], "won")
    await handoffs.hand_back(ids[2], staff["ben"], "lost", reason="chose a competitor")

    got = await report(app, "handoffs")
    assert (got["handoffs"], got["claimed"], got["breached"], got["breach_rate"]) == (3, 3, 1, 0.3333)
    assert (got["won"], got["nurture"], got["lost"], got["open"]) == (1, 0, 1, 1)
    speed = got["speed_to_lead"]
    assert speed["notified"] == {"count": 3, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    assert speed["claimed"] == {"count": 3, "p50": 120.0, "p90": 312.0, "p99": 355.2}  # 60 s, 120 s, 360 s
    assert speed["first_reply"] == {"count": 2, "p50": 360.0, "p90": 552.0, "p99": 595.2}  # 120 s, 600 s
    people = {o["operator"]: o for o in got["operators"]}
    assert [people["ana"][k] for k in ("claimed", "won", "lost", "open", "breached")] == [2, 1, 0, 1, 0]
    assert (people["ana"]["median_seconds_to_claimed"], people["ana"]["median_seconds_to_first_reply"]) == (90.0, 120.0)
    assert [people["ben"][k] for k in ("claimed", "lost", "breached", "median_seconds_to_claimed")] == [1, 1, 1, 360.0]
    sources = {g["key"]: g for g in got["groups"]}
    assert got["by"] == "source" and list(sources) == ["google", "newsletter"]
    assert [sources["google"][k] for k in ("handoffs", "won", "open", "breached")] == [2, 1, 1, 0]
    assert [sources["newsletter"][k] for k in ("handoffs", "lost", "breached")] == [1, 1, 1]
    by_campaign = await report(app, "handoffs", f"{DAY}&by=campaign")
    assert {g["key"]: g["handoffs"] for g in by_campaign["groups"]} == {"spring": 2, "jan": 1}


async def test_a_handoff_moves_to_the_web_source_of_the_lead_it_belongs_to(app, clock, add_operator):
    """A person known first by the backend, taken over by an operator, then visits from the newsletter."""
    lead_id = await backend(app, "cart", email="eve@example.com")
    csrf = await operator(app, add_operator, "ana")
    assert (await post(app, f"/console/leads/{lead_id}/take", csrf)).status == 303
    before = await report(app, "handoffs", f"{DAY}&by=channel")
    assert [(g["key"], g["handoffs"]) for g in before["groups"]] == [("api", 1)]

    ws, visitor_lead = await visitor(app, NEWSLETTER)
    await backend(app, "login", id=visitor_lead, email="eve@example.com")  # the same person, as the backend knows
    after = await report(app, "handoffs")
    assert [(g["key"], g["handoffs"]) for g in after["groups"]] == [("newsletter", 1)]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("since=yesterday", "'since' must be an ISO date or time"),
        ("until=2026-13-01", "'until' must be an ISO date or time"),
        ("since=2026-02-01&until=2026-01-01", "must be before 'until'"),
        ("by=country", "'by' must be one of source, campaign, channel"),
        ("format=xml", "'format' must be json or csv"),
        ("until=9999-12-31", "'until' must be between 1900-01-01 and 3000-01-01 (UTC)"),
        ("until=0001-01-02", "'until' must be between 1900-01-01 and 3000-01-01 (UTC)"),
        ("until=1900-01-02", "'until' is too early for the default period"),
        ("since=0001-01-01T00:00:00%2B14:00", "'since' must be between 1900-01-01 and 3000-01-01 (UTC)"),
        ("until=9999-12-31T23:59:59-12:00", "'until' must be between 1900-01-01 and 3000-01-01 (UTC)"),
        ("since=0001-01-01&until=2026-01-02", "'since' must be between"),
    ],
)
async def test_bad_parameters_get_422_with_a_clear_message(app, query, message):
    answer = await app.get(f"/api/reports/funnel?{query}", headers=AUTH)
    assert answer.status == 422 and message in (await answer.json())["error"]


async def test_the_flow_report_is_not_split_and_reports_need_the_reports_scope(app):
    answer = await app.get("/api/reports/flows?by=source", headers=AUTH)
    assert answer.status == 422 and "'by' splits only the funnel and handoff reports" in (await answer.json())["error"]
    assert (await app.get("/api/reports/handoffs")).status == 401


async def test_the_api_gives_csv_too(app, clock):
    await funnel_history(app, clock)
    answer = await app.get(f"/api/reports/funnel?{DAY}&by=channel&format=csv", headers=AUTH)
    assert answer.status == 200 and answer.content_type == "text/csv"
    table = list(csv.DictReader(io.StringIO(await answer.text())))
    assert [(r["channel"], r["stage"], r["reached"]) for r in table if r["stage"] == "lead"] == [
        ("all", "lead", "3"), ("webchat", "lead", "2"), ("api", "lead", "1")
    ]  # fmt: skip


async def test_the_command_line_prints_tables_csv_and_json(app, clock, run_kindling):
    await funnel_history(app, clock)
    status, out, _ = await run_kindling("report", "funnel", "--since", "2026-01-06", "--until", "2026-01-06")
    assert status == 0
    assert "All leads: 4 leads, 25.0% reached the last stage" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("visitor ", "mql "))}
    assert lines == {"visitor": ["4", "-", "2h"], "mql": ["1", "33.3%", "21h"]}

    args = ("report", "funnel", "--since", "2026-01-06", "--until", "2026-01-06", "--by", "source")
    status, out, _ = await run_kindling(*args, "--format", "csv")
    table = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and {(r["source"], r["reached"]) for r in table if r["stage"] == "customer"} == {
        ("all", "1"), ("google", "1"), ("(none)", "0"), ("newsletter", "0")
    }  # fmt: skip

    status, out, _ = await run_kindling("report", "flows", "--since", "2026-01-06", "--format", "json")
    flows = {flow["flow"]: flow for flow in json.loads(out)["flows"]}  # the shipped flows, and "ab" that ran
    assert status == 0 and flows["ab"]["enrolled"] == 2 and flows["speed-to-lead"]["enrolled"] == 0
    status, out, _ = await run_kindling("report", "handoffs", "--since", "2026-01-06")
    assert status == 0 and "0 handoffs" in out and "Speed to lead" in out

    status, _, err = await run_kindling("report", "funnel", "--since", "last tuesday")
    assert status == 2 and "'since' must be an ISO date or time like 2026-01-31" in err
    for period in (("--since", "0001-01-01T00:00:00+14:00"), ("--until", "9999-12-31T23:59:59-12:00")):
        status, _, err = await run_kindling("report", "handoffs", *period)  # was a traceback, exit 1
        assert status == 2 and f"'{period[0][2:]}' must be between 1900-01-01 and 3000-01-01 (UTC)" in err


async def test_console_report_pages_draw_charts_for_marketers_only(app, clock, add_operator):
    await funnel_history(app, clock)
    await add_operator("mia", "marketer")
    await log_in(app, "mia")
    answer = await app.get(f"/console/reports/funnel?{DAY}&by=source")
    text = await answer.text()
    assert answer.status == 200 and "<svg" in text and 'href="/console/reports/funnel"' in text
    assert "google" in text and "25.0%" in text
    await tick(app, clock, timedelta(minutes=10))  # the flow's first step goes out (a day later)
    flows = await (await app.get("/console/reports/flows?since=2026-01-06&until=2026-01-07")).text()
    assert "<svg" in flows and "Pricing A/B" in flows and "2 sent, 0 reached, 0 seen, 0 answered" in flows
    handoffs = await (await app.get(f"/console/reports/handoffs?{DAY}")).text()
    assert "<svg" in handoffs and "0 handoffs" in handoffs
    bad = await app.get("/console/reports/funnel?since=someday")
    assert bad.status == 422 and "'since' must be an ISO date or time" in html.unescape(await bad.text())
    await app.post("/console/logout", data={})


async def test_a_source_named_like_markup_is_shown_as_text(app, clock, add_operator):
    ws = await app.ws_connect("/chat/ws")
    await hello(ws, url="https://shop.example/?utm_source=%3Cscript%3Ealert(1)%3C/script%3E")
    await add_operator("mia", "marketer")
    await log_in(app, "mia")
    text = await (await app.get(f"/console/reports/funnel?{DAY}&by=source")).text()
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


async def test_operators_cannot_read_reports(app, add_operator):
    await add_operator("ola", "operator")
    await log_in(app, "ola")
    assert (await app.get("/console/reports/funnel")).status == 403
