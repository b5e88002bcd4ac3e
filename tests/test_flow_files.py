"""Flow files as a marketer writes them: parse, lint with file:line, render, A/B split, timing, hot reload."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from textwrap import dedent
from zoneinfo import ZoneInfo

import pytest

from flows.durations import parse_delay, parse_duration
from flows.flowfile import parse_flow
from flows.library import FlowLibrary
from flows.lint import flow_files, lint_file, lint_folder, lint_paths
from flows.preview import preview, preview_text
from flows.render import RenderError, render_step
from flows.samples import SAMPLE_LEAD, SAMPLE_NOW, SPARSE_LEAD, sample_event, sample_lead
from flows.spec import FlowError, Trigger, choose_variant, flow_version
from flows.stages import Stages

from conftest import ROOT, SHIPPED_FLOWS, shipped_templates

SHIPPED = ROOT / "templates"
FRONT = '+++\nname = "Test flow"\ntrigger = "message"\nexit = ["reply"]\n+++\n'


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """An empty templates folder with a greeting macro and a signature partial."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "_partials").mkdir()
    (tmp_path / "_partials" / "macros.j2").write_text(
        '{% macro greet(lead) %}Hey {{ lead.first_name or "there" }}{% endmacro %}'
    )
    (tmp_path / "_partials" / "sign.j2").write_text("Cheers, the Northwind team")
    return tmp_path


def write_flow(templates: Path, body: str, front: str = FRONT, slug: str = "test") -> Path:
    path = templates / "flows" / f"{slug}.j2"
    path.write_text(front + dedent(body))
    return path


def context(lead: dict | None = None) -> dict:
    return {"lead": lead or SAMPLE_LEAD, "event": sample_event(None), "now": SAMPLE_NOW}


def problems_at(path: Path, templates: Path) -> list[tuple[int, str]]:
    return [(problem.line, problem.message) for problem in lint_file(path, templates)]


# --- the shipped flows -------------------------------------------------------------------------


def test_the_shipped_flows_parse_and_lint_clean(tmp_path):
    shipped = shipped_templates(tmp_path / "shipped")  # a flow a marketer added is theirs to lint
    assert {path.stem for path in flow_files(shipped)} == set(SHIPPED_FLOWS)
    assert lint_folder(shipped) == []


def test_the_shipped_flows_do_what_their_names_promise():
    seven = parse_flow(SHIPPED / "flows" / "new-lead-7-in-7.j2", SHIPPED)
    assert len(seven.step_names) == 7 and seven.trigger.stage == "lead"
    assert all(seven.exits_on(kind) for kind in ("reply", "handoff", "opt_out"))
    lead = {**SAMPLE_LEAD, "timezone": "America/New_York"}
    days = [
        item.due.astimezone(ZoneInfo("America/New_York")).date() for item in preview(seven, context(lead), SAMPLE_NOW)
    ]
    assert len(set(days)) == 7 and (days[-1] - days[0]).days == 6  # one touch a day, seven days
    stuck = parse_flow(SHIPPED / "flows" / "stuck-reengage.j2", SHIPPED)
    assert (stuck.trigger.kind, stuck.trigger.stage, stuck.trigger.after.days) == ("stuck", "mql", 7)
    enrolled = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday, the day the lead is found stuck
    first = stuck.steps[0].delay.due(enrolled, "Europe/Berlin")
    second = stuck.steps[1].delay.due(first, "Europe/Berlin")
    assert first.astimezone(ZoneInfo("Europe/Berlin")).hour == 10
    assert (second - enrolled).days in (83, 84)  # day 90 of being stuck
    speed = parse_flow(SHIPPED / "flows" / "speed-to-lead.j2", SHIPPED)
    assert speed.steps[0].delay.due(enrolled) - enrolled <= parse_duration("5m")


def test_a_shipped_step_renders_its_partial_and_buttons_for_a_lead():
    spec = parse_flow(SHIPPED / "flows" / "pricing-not-ready.j2", SHIPPED)
    hello = render_step(spec, "hello", None, context())
    assert hello.text.startswith("Hi Ann!") and hello.buttons == ("Send me a summary", "Talk to a human")
    assert render_step(spec, "hello", None, context(SPARSE_LEAD)).text.startswith("Hi there!")
    assert "Northwind" in render_step(spec, "case-study", None, context()).text
    assert spec.when.holds(lead=SAMPLE_LEAD, event={**sample_event(spec.trigger), "path": "/pricing/pro"})
    assert not spec.when.holds(lead=SAMPLE_LEAD, event={**sample_event(spec.trigger), "path": "/blog"})


def test_triggers_and_exits_parse_into_typed_values(templates):
    front = dedent("""\
        +++
        name = "Weekly digest"
        trigger = "schedule:0 10 * * 1"
        audience = "lead.stage == 'mql' and 'newsletter' not in lead.tags"
        exit = ["opt_out", "stage > mql", "lead.score >= 80"]
        reenter = "after 6d"
        goal = "sql"
        +++
        """)
    spec = parse_flow(write_flow(templates, '{% step "a", after="0m" %}News!{% endstep %}\n', front=front), templates)
    assert (spec.trigger.kind, spec.trigger.cron, spec.reenter.days, spec.goal) == ("schedule", "0 10 * * 1", 6, "sql")
    assert spec.audience.holds(lead={**SAMPLE_LEAD, "stage": "mql"}) and not spec.audience.holds(lead=SAMPLE_LEAD)
    opt_out, stage, score = spec.exits
    assert spec.exits_on("opt_out") and not spec.exits_on("reply")
    stages = Stages()
    assert stage.stage_reached(stages, "sql") and not stage.stage_reached(stages, "mql")
    assert score.expression.holds(lead={**SAMPLE_LEAD, "score": 90}, event={}, now=SAMPLE_NOW)
    for source, kind, field, value in [
        ("custom:signup", "event", "name", "signup"),
        ("score >= 50", "score", "threshold", 50.0),
        ("stage:mql", "stage", "stage", "mql"),
        ("stuck:lead:2 business days", "stuck", "stage", "lead"),
    ]:
        path = write_flow(
            templates, '{% step "a", after="1d" %}Hi{% endstep %}\n', front=FRONT.replace("message", source)
        )
        trigger = parse_flow(path, templates).trigger
        assert (trigger.kind, getattr(trigger, field)) == (kind, value)
    assert parse_flow(path, templates).trigger.after.business_days == 2
    assert Trigger("event", "custom:signup", event="custom", name="signup").matches_event("custom", "signup")


def test_exits_take_the_trigger_vocabulary_as_well_as_expressions(templates):
    front = FRONT.replace('["reply"]', '["custom:purchase", "page_view", "stage:customer", "score >= 80", "button"]')
    spec = parse_flow(write_flow(templates, '{% step "a", after="1d" %}Hi{% endstep %}\n', front=front), templates)
    purchase, page_view, customer, score, button = spec.exits
    assert purchase.matches_event("custom", "purchase") and not purchase.matches_event("custom", "cart")
    assert page_view.matches_event("page_view", None) and button.matches_event("button", None)
    assert customer.matches_event("stage_changed", None, "customer")
    assert not customer.matches_event("stage_changed", None, "sql")
    assert score.expression.holds(lead={**SAMPLE_LEAD, "score": 80}, event={}, now=SAMPLE_NOW)
    assert not score.expression.holds(lead=SAMPLE_LEAD, event={}, now=SAMPLE_NOW)


# --- writing flows -----------------------------------------------------------------------------


def test_includes_and_macros_from_partials_work_inside_steps(templates):
    path = write_flow(
        templates,
        """\
        {% from "_partials/macros.j2" import greet %}
        {% step "hello", after="10m", buttons=["Yes", "Later"] %}
        {{ greet(lead) }}, want the summary?

        {% include "_partials/sign.j2" %}
        {% endstep %}
        {% step "nudge", after="2d", action="tag:nudged" %}{% endstep %}
        """,
    )
    assert lint_file(path, templates) == []
    spec = parse_flow(path, templates)
    rendered = render_step(spec, "hello", None, context())
    assert rendered.text == "Hey Ann, want the summary?\n\nCheers, the Northwind team"
    assert rendered.buttons == ("Yes", "Later")
    assert render_step(spec, "nudge", None, context()).text == ""


def test_a_changed_file_gets_a_new_version(templates):
    path = write_flow(templates, '{% step "hello", after="10m" %}Hi!{% endstep %}\n')
    before = parse_flow(path, templates).version
    assert parse_flow(path, templates).version == before == flow_version(path.read_text())
    write_flow(templates, '{% step "hello", after="10m" %}Hi there!{% endstep %}\n')
    assert parse_flow(path, templates).version != before


# --- lint: every problem at its file and line --------------------------------------------------


def test_a_problem_reads_file_colon_line_colon_message(templates):
    path = write_flow(templates, '{% step "hello", after="10 minutes" %}Hi{% endstep %}\n')
    (problem,) = lint_file(path, templates)
    assert str(problem).startswith(f"{path}:6: ")
    assert "bad duration '10 minutes'" in str(problem)


def test_a_broken_expression_is_reported_at_its_key(templates):
    front = FRONT.replace('exit = ["reply"]', 'when = "lead.score >= "\nexit = ["reply"]')
    path = write_flow(templates, '{% step "hello", after="10m" %}Hi{% endstep %}\n', front=front)
    ((line, message),) = problems_at(path, templates)
    assert line == 4 and "`when`: bad expression" in message


def test_an_unknown_trigger_is_reported_at_its_line(templates):
    path = write_flow(
        templates, '{% step "hello", after="10m" %}Hi{% endstep %}\n', front=FRONT.replace("message", "pageview")
    )
    assert problems_at(path, templates) == [(3, problems_at(path, templates)[0][1])]
    assert "unknown trigger 'pageview'" in problems_at(path, templates)[0][1]


@pytest.mark.parametrize(
    ("front", "line", "words"),
    [
        ('name = "x"\ntrigger = "message"\nexits = ["reply"]\n', 4, "unknown key `exits`: did you mean `exit`?"),
        ('name = "x"\ntrigger = "stage:gold"\n', 3, "unknown stage 'gold'"),
        ('name = "x"\ntrigger = "stuck:mql:7 days"\n', 3, "bad duration '7 days'"),
        ('name = "x"\ntrigger = "schedule:0 25 * * *"\naudience = "true"\n', 3, "the maximum value (23)"),
        ('name = "x"\ntrigger = "schedule:0 10 * * 1"\n', 3, "needs an `audience`"),
        ('name = "x"\ntrigger = "message"\naudience = "true"\n', 4, "only for schedule: triggers"),
        ('name = "x"\ntrigger = "message"\nexit = ["replied"]\n', 4, "unknown exit"),
        ('name = "x"\ntrigger = "message"\nexit = ["stage:gold"]\n', 4, "unknown stage 'gold'"),
        ('name = "x"\ntrigger = "message"\nexit = ["custom:Big Sale"]\n', 4, "like custom:purchase"),
        ('name = "x"\ntrigger = "message"\nexit = ["stuck:mql:7d"]\n', 4, "stuck: is a trigger only"),
        ('name = "x"\ntrigger = "message"\nexit = ["lead.score >="]\n', 4, "an exit is reply, handoff"),
        ('name = "x"\ntrigger = "message"\nreenter = "sometimes"\n', 4, '"after <duration>"'),
        ('name = "x"\ntrigger = "message"\nwhen = "lead.scroe > 5"\n', 4, "has no attribute 'scroe'"),
        ('name = "x"\ntrigger = message\n', 3, "not valid TOML: Invalid value"),
        ('name = "x"\ntrigger = "message"\nexit = ["reply",\n', 4, "not valid TOML"),
        ('trigger = "message"\n', 2, "`name` is required"),
    ],
)
def test_front_matter_mistakes_are_reported_at_their_line(templates, front, line, words):
    path = write_flow(templates, '{% step "hello", after="10m" %}Hi{% endstep %}\n', front=f"+++\n{front}+++\n")
    found = problems_at(path, templates)
    assert any(at == line and words in message for at, message in found), found


def test_a_misspelt_lead_or_event_field_gets_the_closest_one_suggested(templates):
    front = FRONT.replace('["reply"]', '["lead.scroe > 80"]').replace('"message"', '"page_view"\nwhen = "event.pth"')
    body = """\
        {% step "one", after="1d" %}Hi {{ lead.frist_name }}{% endstep %}
        {% step "two", after="1d" %}{{ lead["emial"] }}{% endstep %}
        {% step "three", after="1d" %}{{ lead.company }}{% endstep %}
        """
    found = problems_at(write_flow(templates, body, front=front), templates)
    assert [message.rsplit(": ", 1)[-1] for _, message in found] == [
        "did you mean `event.path`?",
        "did you mean `lead.score`?",
        "did you mean `lead.first_name`?",
        "did you mean `lead.email`?",
        "lead has id, first_name, last_name, email, phone, locale, timezone, stage, score, likelihood, tags, "
        "first_touch, last_touch",
    ]
    assert [line for line, _ in found] == [4, 5, 7, 8, 9]


def test_a_file_without_front_matter_says_how_to_start(templates):
    path = templates / "flows" / "bare.j2"
    path.write_text('{% step "hello", after="10m" %}Hi{% endstep %}\n')
    ((line, message),) = problems_at(path, templates)
    assert line == 1 and "no front matter" in message
    with pytest.raises(FlowError, match="no front matter"):
        parse_flow(path, templates)


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        (
            '{% step "a", after="10m" %}Hi{% endstep %}\n{% step "a", after="1d" %}Again{% endstep %}\n',
            7,
            "duplicate step 'a'",
        ),
        ('{% step "a", after="10m", action="call" %}Hi{% endstep %}\n', 6, "unknown action 'call'"),
        ('{% step "a", after="10m", action="stage:vip" %}Hi{% endstep %}\n', 6, "unknown stage 'vip'"),
        ('{% step "a", after=lead.delay %}Hi{% endstep %}\n', 6, "`after` must be a constant"),
        ('{% step "a", after="1d", when=lead.score > 5 %}Hi{% endstep %}\n', 6, "write expressions in quotes"),
        ('{% step "a", after="1d", when="lead.score >" %}Hi{% endstep %}\n', 6, "`when` is not a valid expression"),
        ('{% step "a", after="1d", channel="sms" %}Hi{% endstep %}\n', 6, "unknown channel 'sms'"),
        ('{% step "a", after="1d", at="25:00" %}Hi{% endstep %}\n', 6, "bad time of day '25:00'"),
        ('{% step "a", afterr="1d" %}Hi{% endstep %}\n', 6, "unknown step option `afterr`"),
        ('{% step "a", after="1d" %}{% endstep %}\n', 6, "renders no text"),
        ('Hello!\n{% step "a", after="1d" %}Hi{% endstep %}\n', 6, "outside a {% step %} are never sent"),
        ("{# nothing here yet #}\n", 1, "no steps"),
        ('{% step "a", after="1d" %}Hi {{ lead.first_name }}{% endstep %}\n', 6, 'shows "None"'),
        ('{% step "a", after="1d" %}From {{ lead.first_touch.source }}{% endstep %}\n', 6, "for a lead with no name"),
        (
            '{% step "a", after="1d" %}{% include "_partials/nope.j2" %}{% endstep %}\n',
            6,
            "no template '_partials/nope",
        ),
        ('{% if true %}\n{% step "a", after="1d" %}Hi{% endstep %}\n{% endif %}\n', 7, "must be at the top level"),
        ('{% extends "_partials/sign.j2" %}\n{% step "a", after="1d" %}Hi{% endstep %}\n', 6, "cannot {% extends %}"),
        ('{% step "a", after="1d" %}Hi {{ lead.first_name }{% endstep %}\n', 6, "template error"),
    ],
)
def test_step_mistakes_are_reported_at_their_line(templates, body, line, words):
    path = write_flow(templates, body)
    found = problems_at(path, templates)
    assert any(at == line and words in message for at, message in found), found


def test_an_undefined_name_in_step_three_is_reported_at_that_line(templates):
    path = write_flow(
        templates,
        """\
        {% step "one", after="10m" %}Hi {{ lead.first_name or "there" }}{% endstep %}
        {% step "two", after="1d" %}Still there?{% endstep %}
        {% step "three", after="2d" %}
        Your plan: {{ lead.plan }}
        {% endstep %}
        """,
    )
    ((line, message),) = problems_at(path, templates)
    assert line == 9 and path.read_text().splitlines()[line - 1].strip() == "Your plan: {{ lead.plan }}"
    assert message.startswith("step 'three': 'dict object' has no attribute 'plan': lead has id, first_name, ")


@pytest.mark.parametrize(
    "trick",
    [
        "{{ lead.__class__ }}",
        "{{ lead._sa_instance_state }}",
        "{{ lead['__class__'] }}",
        "{{ ''.format }}",
        "{{ '{0.__class__}'.format(lead) }}",
        "{{ 'Hi {name}'.format_map(lead) }}",
        "{{ lead|attr('__class__') }}",
        "{{ lead|attr(lead.first_name) }}",
    ],
)
def test_sandbox_escapes_are_rejected_at_their_line(templates, trick):
    path = write_flow(templates, f'{{% step "a", after="1d" %}}\nHi\n{trick}\n{{% endstep %}}\n')
    found = problems_at(path, templates)
    assert found and all(line == 8 for line, _ in found), found


def test_a_sandbox_escape_inside_a_partial_is_reported_in_the_partial(templates):
    (templates / "_partials" / "evil.j2").write_text("Hello\n{{ lead.__init__ }}\n")
    path = write_flow(templates, '{% step "a", after="1d" %}{% include "_partials/evil.j2" %}{% endstep %}\n')
    found = lint_file(path, templates)
    assert found and found[0].file.endswith("_partials/evil.j2") and found[0].line == 2


def test_a_step_over_telegrams_limit_is_rejected(templates):
    path = write_flow(templates, '{% step "long", after="1d" %}\n' + "word " * 1000 + "\n{% endstep %}\n")
    ((line, message),) = problems_at(path, templates)
    assert line == 6 and "is 4999 characters; Telegram allows 4096" in message


def test_rendering_is_size_limited_at_run_time(templates):
    path = write_flow(
        templates, '{% step "a", after="1d" %}{% for i in range(n) %}xxxxxxxxxx{% endfor %}{% endstep %}\n'
    )
    spec = parse_flow(path, templates)
    with pytest.raises(RenderError, match="renders more than"):
        render_step(spec, "a", None, {**context(), "n": 100_000})
    with pytest.raises(RenderError, match="Telegram allows 4096"):
        render_step(spec, "a", None, {**context(), "n": 500})
    blowup = write_flow(templates, '{% step "a", after="1d" %}{{ "x" * 10**9 }}{% endstep %}\n', slug="blowup")
    assert any("too large" in message for _, message in problems_at(blowup, templates))


@pytest.mark.parametrize(
    "work",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{{ range(100000)|sum }}{% endfor %}",
        "{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
        "{% macro twice(n) %}{% if n %}{{ twice(n - 1) }}{{ twice(n - 1) }}{% endif %}{% endmacro %}{{ twice(60) }}",
    ],
)
def test_a_step_that_would_render_for_minutes_is_refused_by_lint_at_its_line(templates, work):
    path = write_flow(templates, f'{{% step "slow", after="1d" %}}\nHi\n{work}\n{{% endstep %}}\n')
    ((line, message),) = problems_at(path, templates)
    assert line == 8 and message.startswith("step 'slow': too ")
    assert "more than 100,000 loop turns and calls in one render" in message or "took more than" in message


def test_the_power_of_a_large_number_is_refused(templates):
    path = write_flow(templates, '{% step "a", after="1d" %}{{ (9**60)**60 }}{% endstep %}\n')
    assert [message for _, message in problems_at(path, templates)] == ["step 'a': the power is too large"]


def test_a_render_error_names_file_and_line(templates):
    path = write_flow(templates, '{% step "a", after="1d" %}\nPlan: {{ lead.plan }}\n{% endstep %}\n')
    assert [line for line, _ in problems_at(path, templates)] == [7]
    spec = parse_flow(path, templates)  # the structure is fine, so it parses; rendering is what fails
    with pytest.raises(RenderError) as caught:
        render_step(spec, "a", None, context())
    assert str(caught.value).startswith(f"{path}:7: step 'a'")


def test_lint_paths_takes_files_and_folders(templates):
    good = write_flow(templates, '{% step "a", after="1d" %}Hi{% endstep %}\n', slug="good")
    bad = write_flow(templates, '{% step "a", after="soon" %}Hi{% endstep %}\n', slug="bad")
    assert [p.file for p in lint_paths([good, bad])] == [str(bad)]
    assert [p.file for p in lint_paths([templates])] == [str(bad)]


# --- A/B variants ------------------------------------------------------------------------------


def test_variants_split_leads_deterministically_and_evenly(templates):
    path = write_flow(
        templates,
        """\
        {% step "offer", after="1d", variant="A" %}Want a demo?{% endstep %}
        {% step "offer", after="1d", variant="B" %}Want a free trial?{% endstep %}
        """,
    )
    spec = parse_flow(path, templates)
    assert spec.step_names == ("offer",)
    picks = Counter(spec.step_for("offer", lead_id).variant for lead_id in range(1, 1001))
    assert set(picks) == {"A", "B"} and all(400 <= count <= 600 for count in picks.values())
    assert [spec.step_for("offer", lead_id).variant for lead_id in range(1, 1001)] == [
        choose_variant(lead_id, "test", "offer", ["A", "B"]) for lead_id in range(1, 1001)
    ]
    # A stable hash, not Python's salted hash(): the same in every process and after restarts.
    assert [choose_variant(7, "test", "offer", ["A", "B", "C"]) for _ in range(3)] == [
        choose_variant(7, "test", "offer", ("A", "B", "C"))
    ] * 3
    assert (
        "".join(choose_variant(lead_id, "pricing", "hello", ["A", "B"]) for lead_id in range(1, 13)) == "ABBAAABABABB"
    )


def test_each_step_and_each_variant_renders_only_its_own_block(templates):
    """The step blocks are selected by a plain comparison, not a sandboxed call: a lead still gets exactly one."""
    path = write_flow(
        templates,
        """\
        {% step "hello", after="1m" %}Hello.{% endstep %}
        {% step "offer", after="1d", variant="A" %}Want a demo?{% endstep %}
        {% step "offer", after="1d", variant="B" %}Want a free trial?{% endstep %}
        {% step "it's me", after="2d" %}Still there?{% endstep %}
        """,
    )
    spec = parse_flow(path, templates)
    assert spec.step_names == ("hello", "offer", "it's me")
    assert render_step(spec, "hello", None, context()).text == "Hello."
    assert render_step(spec, "offer", "A", context()).text == "Want a demo?"
    assert render_step(spec, "offer", "B", context()).text == "Want a free trial?"
    assert render_step(spec, "it's me", None, context()).text == "Still there?"
    with pytest.raises(RenderError, match="has no step 'offer' variant 'C'"):
        render_step(spec, "offer", "C", context())


def test_variants_must_have_distinct_labels_and_the_same_timing(templates):
    path = write_flow(
        templates,
        """\
        {% step "offer", after="1d", variant="A" %}Demo?{% endstep %}
        {% step "offer", after="2d", variant="B" %}Trial?{% endstep %}
        {% step "offer", after="1d", variant="A" %}Call?{% endstep %}
        """,
    )
    messages = [message for _, message in problems_at(path, templates)]
    assert any("must share after/at" in m for m in messages) and any("variant 'A' twice" in m for m in messages)


# --- timing --------------------------------------------------------------------------------------


def test_durations_keep_their_short_forms():
    assert parse_duration("30s").total_seconds() == 30 and parse_duration("1w").days == 7
    assert parse_delay("2h").due(SAMPLE_NOW) == datetime(2026, 3, 10, 16, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="business days"):
        parse_delay("soon")


def test_business_days_skip_the_weekend_in_the_leads_time_zone():
    friday = datetime(2026, 3, 6, 14, 0, tzinfo=UTC)  # Friday 15:00 in Berlin
    due = parse_delay("2 business days").due(friday, "Europe/Berlin")
    assert due.astimezone(ZoneInfo("Europe/Berlin")) == datetime(2026, 3, 10, 15, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert parse_delay("1 business day").due(friday, "Europe/Berlin").weekday() == 0
    # Friday 23:30 UTC is already Saturday morning in Tokyo: one business day is Monday there.
    late = datetime(2026, 3, 6, 23, 30, tzinfo=UTC)
    tokyo = parse_delay("1 business day").due(late, "Asia/Tokyo").astimezone(ZoneInfo("Asia/Tokyo"))
    assert (tokyo.weekday(), tokyo.hour, tokyo.minute) == (0, 8, 30)
    assert parse_delay("1 business day").due(late, "UTC") == datetime(2026, 3, 9, 23, 30, tzinfo=UTC)


def test_at_ten_lands_at_ten_local_time():
    new_york = ZoneInfo("America/New_York")
    evening = datetime(2026, 3, 10, 22, 0, tzinfo=new_york)
    due = parse_delay("10m", at="10:00").due(evening, "America/New_York")
    assert due.astimezone(new_york) == datetime(2026, 3, 11, 10, 0, tzinfo=new_york)
    morning = datetime(2026, 3, 10, 7, 0, tzinfo=new_york)
    assert parse_delay("10m", at="10:00").due(morning, "America/New_York").astimezone(new_york).day == 10
    # Friday afternoon + 1 business day at 10:00: Monday is the next business day, 10:00 after it is Tuesday.
    friday = datetime(2026, 3, 6, 16, 0, tzinfo=new_york)
    assert parse_delay("1 business day", at="10:00").due(friday, "America/New_York").astimezone(new_york) == (
        datetime(2026, 3, 10, 10, 0, tzinfo=new_york)
    )


def test_days_keep_the_local_hour_across_a_clock_change():
    berlin = ZoneInfo("Europe/Berlin")
    before = datetime(2026, 3, 27, 10, 0, tzinfo=berlin)  # clocks go forward on 29 March
    assert parse_delay("3d").due(before, "Europe/Berlin").astimezone(berlin).hour == 10
    assert parse_delay("72h").due(before, "Europe/Berlin").astimezone(berlin).hour == 11


def test_an_unknown_time_zone_falls_back_to_utc():
    assert parse_delay("1d", at="09:00").due(SAMPLE_NOW, "Mars/Olympus") == datetime(2026, 3, 12, 9, 0, tzinfo=UTC)


# --- the library: hot reload, and a broken edit never replaces a good version -----------------


def test_the_library_keeps_the_old_version_when_an_edit_breaks_the_flow(templates):
    path = write_flow(templates, '{% step "hello", after="10m" %}Hi!{% endstep %}\n')
    library = FlowLibrary(templates)
    assert library.load() == []
    good = library.get("test")
    assert good is not None

    write_flow(templates, '{% step "hello", after="10m" %}Hi {{ lead.nope }}!{% endstep %}\n')
    problems = library.reload()
    [problem] = problems
    assert str(problem).startswith(f"{path}:6: step 'hello': 'dict object' has no attribute 'nope': lead has id, ")
    assert library.get("test") is good and library.problems["test"] == problems

    write_flow(templates, '{% step "hello", after="10m" %}Hi, welcome!{% endstep %}\n')
    assert library.reload() == []
    fixed = library.get("test")
    assert fixed.version != good.version and "test" not in library.problems
    assert render_step(fixed, "hello", None, context()).text == "Hi, welcome!"
    assert library.get("test", good.version) is good  # leads pinned to the old version still render


def test_the_library_picks_up_new_and_removed_flows_and_partial_edits(templates):
    library = FlowLibrary(templates)
    assert library.load() == [] and library.flows == {}
    write_flow(templates, '{% step "a", after="1d" %}{% include "_partials/sign.j2" %}{% endstep %}\n', slug="news")
    assert library.reload() == [] and set(library.flows) == {"news"}
    assert library.reload() == []  # nothing changed, nothing re-read

    partial = templates / "_partials" / "sign.j2"
    partial.write_text("{{ lead.nope }}")
    assert [p.file for p in library.reload()] == [str(partial)]
    assert "news" in library.flows

    (templates / "flows" / "news.j2").unlink()
    library.reload()
    assert library.flows == {} and library.get("news") is None


def test_an_edited_partial_shows_in_the_next_render_once_the_library_reloads(templates):
    library = FlowLibrary(templates)
    write_flow(templates, '{% step "a", after="1d" %}Hi. {% include "_partials/sign.j2" %}{% endstep %}\n', slug="news")
    assert library.load() == []
    assert render_step(library.get("news"), "a", None, context()).text == "Hi. Cheers, the Northwind team"

    (templates / "_partials" / "sign.j2").write_text("Best, the Southwind team")
    assert library.reload() == []
    assert render_step(library.get("news"), "a", None, context()).text == "Hi. Best, the Southwind team"


def test_the_library_loads_the_shipped_templates(tmp_path):
    library = FlowLibrary(shipped_templates(tmp_path / "shipped"))
    assert library.load() == []
    assert set(library.flows) == set(SHIPPED_FLOWS)


# --- preview -------------------------------------------------------------------------------------


def test_preview_shows_each_step_with_its_local_send_time():
    spec = parse_flow(SHIPPED / "flows" / "pricing-not-ready.j2", SHIPPED)
    lead = sample_lead({"timezone": "Europe/Berlin", "score": 20.0})
    start = datetime(2026, 3, 6, 15, 0, tzinfo=UTC)  # Friday 16:00 in Berlin
    items = preview(spec, {"lead": lead, "event": sample_event(spec.trigger), "now": start}, start)
    assert [item.step.name for item in items] == ["hello", "case-study", "worth-it", "ask"]
    berlin = [item.due.astimezone(ZoneInfo("Europe/Berlin")) for item in items]
    assert (berlin[0].hour, berlin[0].minute) == (16, 10)
    assert (berlin[1].day, berlin[1].hour) == (9, 10)  # two days later is Sunday 16:10, so Monday 10:00
    assert (berlin[2].weekday(), berlin[2].day, berlin[2].hour) == (3, 12, 11)  # 3 business days: Thursday 11:00
    assert items[3].skipped and not items[1].skipped  # score 20: no handoff yet
    text = preview_text(items, lead["timezone"])
    assert "== hello: Fri 2026-03-06 16:10 CET, after 10m" in text and "[Send me a summary]" in text
    assert "-> action handoff" in text and "skipped for this lead" in text


def test_preview_of_a_sample_shows_every_variant():
    spec = parse_flow(SHIPPED / "flows" / "new-lead-7-in-7.j2", SHIPPED)
    ctx = context()
    everything = preview(spec, ctx, SAMPLE_NOW, step_name="proof", all_variants=True)
    assert [item.step.variant for item in everything] == ["story", "numbers"]
    (mine,) = preview(spec, ctx, SAMPLE_NOW, step_name="proof")
    assert mine.step.variant == spec.step_for("proof", SAMPLE_LEAD["id"]).variant
    with pytest.raises(ValueError, match="unknown lead field"):
        sample_lead({"plan": "pro"})
