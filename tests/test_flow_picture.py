"""A flow's page in the console: its timeline as SVG (steps on a day axis, quiet nights, skippable steps, exits,
reach figures from the flow report), and the same picture for one made-up lead's simulated timeline."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.config import Settings
from flows.library import FlowLibrary
from flows.picture import flow_svg, simulation_svg
from flows.safety import Policy
from flows.samples import sample_event, sample_lead
from flows.simulate import happenings, simulate, simulate_entries
from flows.stages import Stages

from conftest import templates_with
from test_console_auth import log_in
from test_flow_engine import tick
from test_webchat import hello, next_from, say

SVG = "{http://www.w3.org/2000/svg}"
NUDGES = """+++
name = "Trial nudges <script>alert(1)</script>"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
exit = ["opt_out", "stage >= customer"]
goal = "customer"
+++
{% step "hello", after="10m" %}Hello!{% endstep %}
{% step "maybe", after="1h", when="lead.score > 1000 and lead.stage != '<b>'" %}Never.{% endstep %}
{% step "night", after="12h" %}Late, but not at night.{% endstep %}
{% step "ask", after="3d", at="10:00", action="handoff" %}{% endstep %}
"""
QUARTER = """+++
name = "A quarter"
trigger = "stage:mql"
exit = ["reply"]
+++
{% step "now", after="10m" %}Hi.{% endstep %}
{% step "next-day", after="1d" %}Still here.{% endstep %}
{% step "week", after="6d" %}A week.{% endstep %}
{% step "quarter", after="82d", at="10:00" %}Three months.{% endstep %}
"""


@pytest.fixture
def clock(clock):  # type: ignore[no-untyped-def]
    clock.advance(datetime(2026, 1, 6, 15, 0, tzinfo=UTC) - clock.now())  # Tuesday, 10:00 in New York: no quiet hours
    return clock


@pytest.fixture
async def app(make_client, settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    return await make_client(settings.with_(templates=templates_with(tmp_path / "templates", {"nudges": NUDGES})))


async def flow_page(app, slug: str = "nudges") -> tuple[int, str]:  # type: ignore[no-untyped-def]
    answer = await app.get(f"/console/flows/{slug}")
    return answer.status, await answer.text()


def picture(page: str) -> ET.Element:
    """The page's timeline, parsed as XML (so it must be well-formed, every text escaped)."""
    [svg] = re.findall(r'<svg class="flow-timeline".*?</svg>', page, re.DOTALL)
    return ET.fromstring(svg)


def marks(svg: ET.Element, kind: str = "step") -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if kind in g.get("class", "").split()]


def texts(element: ET.Element) -> str:
    return " ".join("".join(text.itertext()) for text in element.iter(f"{SVG}text"))


async def test_a_flow_page_draws_the_steps_in_order_on_a_day_axis_with_quiet_nights_shaded(app, add_operator):
    await add_operator("mia", "marketer")
    await log_in(app, "mia")
    status, page = await flow_page(app)
    assert status == 200
    assert "page_view" in page and "Goal" in page and "customer" in page  # the header facts
    assert re.search(r"<dt>Version</dt><dd><code>[0-9a-f]{12}</code>", page)
    svg = picture(page)
    steps = marks(svg)
    assert [g.get("data-step") for g in steps] == ["hello", "maybe", "night", "ask"]
    xs = [float(g.get("data-x")) for g in steps]
    assert xs == sorted(xs) and len(set(xs)) == 4
    assert [float(g.get("data-day")) for g in steps] == pytest.approx(
        [10 / 1440, 70 / 1440, 790 / 1440, 3.917], abs=1e-3
    )
    assert (
        "+3d at 10:00" in texts(steps[3])
        and "→ handoff" in texts(steps[3])
        and steps[3].get("data-action") == "handoff"
    )

    quiet = [rect for rect in svg.iter(f"{SVG}rect") if rect.get("class") == "quiet"]
    assert len(quiet) >= 4  # one per night the flow spans (21:00-09:00 in config.toml)
    night = float(steps[2].get("data-x"))  # due Tuesday 01:10: inside a shaded night, and it says it waits
    assert any(float(r.get("x")) < night < float(r.get("x")) + float(r.get("width")) for r in quiet)
    assert "waits for quiet hours to end (09:00)" in texts(steps[2])
    assert all(
        not float(r.get("x")) < float(steps[0].get("data-x")) < float(r.get("x")) + float(r.get("width")) for r in quiet
    )
    assert [g.get("data-exit") for g in marks(svg, "exit")] == ["opt_out", "stage >= customer"]


async def test_a_step_with_a_when_is_drawn_as_one_a_lead_may_skip(app, add_operator):
    await add_operator("mia", "marketer")
    await log_in(app, "mia")
    svg = picture((await flow_page(app))[1])
    skippable = {g.get("data-step") for g in marks(svg, "skippable")}
    assert skippable == {"maybe"}
    [way_around] = [path for path in svg.iter(f"{SVG}path") if path.get("class") == "bypass"]
    assert way_around.get("data-skips") == "maybe"
    assert "only if lead.score > 1000 and lead.stage != '<b>'" in texts(marks(svg)[1])


async def test_each_step_shows_its_reach_from_the_flow_report(app, clock, add_operator):
    ws = await app.ws_connect("/chat/ws")
    await hello(ws)  # a visitor on /pricing enrolls
    await tick(app, clock, timedelta(minutes=10))  # "hello" goes out on the widget
    frame = await next_from(ws, "bot")
    await ws.send_json(
        {"type": "seen", "ids": [frame["id"]]}
    )  # the visitor opens the chat (handled before the ack below)
    await say(app, ws, "thanks!")  # small talk: the bot answers, the flow goes on
    await tick(app, clock, timedelta(hours=1))  # "maybe" is skipped: its `when` is false
    clock.advance(timedelta(minutes=1))  # the report's period ends now, before this minute
    await add_operator("mia", "marketer")
    await log_in(app, "mia")
    status, page = await flow_page(app)
    steps = {g.get("data-step"): texts(g) for g in marks(picture(page))}
    assert "1 sent · 1 delivered · 1 seen · 1 replied" in steps["hello"]
    assert "0 sent" in steps["maybe"] and "held back or skipped: when is false (1)" in steps["maybe"]
    assert "0 sent · 0 delivered · 0 seen · 0 replied" in steps["ask"]  # not due yet
    rows = {
        cells[0]: cells[1:]
        for cells in (
            re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr data-step=.*?</tr>", page, re.DOTALL)
        )
    }
    assert rows["hello"][:5] == ["", "1", "1", "1", "1"]  # variant, sent, delivered, seen, replied
    assert rows["maybe"][-1] == "1: when is false (1)"


async def test_a_marketers_text_is_shown_as_text(app, add_operator):
    await add_operator("mia", "marketer")
    await log_in(app, "mia")
    _, page = await flow_page(app)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert picture(page).get("aria-label") == "Trial nudges <script>alert(1)</script>"  # parsed, so escaped
    flows = await (await app.get("/console/flows")).text()
    assert '<a href="/console/flows/nudges">Trial nudges &lt;script&gt;' in flows  # the flows list links here


async def test_an_unknown_flow_is_a_404_page_and_operators_may_not_look(app, add_operator):
    await add_operator("mia", "marketer")
    await log_in(app, "mia")
    status, page = await flow_page(app, "no-such-flow")
    assert status == 404 and "There is no running flow &#39;no-such-flow&#39;" in page
    await app.post("/console/logout", data={})
    await add_operator("ola", "operator")
    await log_in(app, "ola")
    status, _ = await flow_page(app)
    assert status == 403


def load(tmp_path: Path, flows: dict[str, str]) -> FlowLibrary:
    library = FlowLibrary(templates_with(tmp_path / "templates", flows))
    assert library.load() == []
    return library


def test_a_day_and_a_quarter_both_read_on_one_axis(tmp_path):
    spec = load(tmp_path, {"quarter": QUARTER}).flows["quarter"]
    svg = ET.fromstring(flow_svg(spec, quiet_hours=Policy().quiet_hours))
    xs = [float(g.get("data-x")) for g in marks(svg)]
    assert min(b - a for a, b in zip(xs, xs[1:], strict=False)) > 40  # ten minutes, a day, a week, three months apart
    ticks = [text.text for text in svg.iter(f"{SVG}text") if text.text and re.fullmatch(r"\d+[hd]", text.text)]
    assert ticks[0] == "0d" and "1d" in ticks and ticks[-1] == "90d"


def test_a_simulated_timeline_ends_where_the_lead_leaves(tmp_path):
    spec = load(tmp_path, {"quarter": QUARTER}).flows["quarter"]
    start, policy = datetime(2026, 1, 5, 12, tzinfo=UTC), Policy()
    lead = sample_lead({"stage": "mql", "timezone": "UTC"})
    ctx = {"lead": lead, "event": sample_event(spec.trigger), "now": start, "flow": {"slug": "quarter"}, "step": {}}
    events = happenings([{"after": "3d", "type": "message", "text": "Tell me <more>"}], start)
    args = (spec, ctx, start, 120, events, policy, Stages())
    entries = simulate_entries(*args)
    assert [entry.line for entry in entries] == simulate(*args)  # what `kindling simulate` prints
    svg = ET.fromstring(simulation_svg(entries, start, policy.quiet_hours))
    assert [g.get("data-step") for g in marks(svg)] == ["now", "next-day"]
    [reply] = marks(svg, "lead-event")
    [leaves] = marks(svg, "exit")
    assert float(leaves.get("data-day")) == 3.0 and "exits the flow (reply)" in texts(leaves)
    assert "replies 'Tell me <more>'" in texts(reply)
    assert float(leaves.get("data-x")) == max(float(g.get("data-x")) for g in svg.iter(f"{SVG}g") if g.get("data-x"))
    assert [rect for rect in svg.iter(f"{SVG}rect") if rect.get("class") == "quiet"]
