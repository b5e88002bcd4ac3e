"""The `kindling` command as an admin runs it: a real process, real database, real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from flows.clock import FrozenClock
from flows.durations import parse_delay

from conftest import API_KEY, ROOT, shipped_templates, templates_with
from test_flow_engine import SNEAKY

KINDLING = [sys.executable, "-m", "bot"]


def run(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*KINDLING, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=60
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def clock() -> FrozenClock:
    """Now: `kindling lead show` decays scores to the real time."""
    return FrozenClock(datetime.now(UTC))


async def test_lead_show_explains_a_lead(client, database_url):
    response = await client.post(
        "/api/events",
        json={"type": "cart", "lead": {"email": "fay@example.com", "first_name": "Fay"}},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    lead_id = (await response.json())["lead_id"]
    env = {"KINDLING_DATABASE_URL": database_url}
    shown = await asyncio.to_thread(run, "lead", "show", str(lead_id), env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"Lead {lead_id}: Fay" in shown.stdout
    assert "score 15 = cart (+15)" in shown.stdout
    assert "visitor -> lead  (lead: lead.email or lead.phone)" in shown.stdout

    as_json = json.loads(
        (await asyncio.to_thread(run, "lead", "show", str(lead_id), "--format", "json", env=env)).stdout
    )
    assert as_json["email"] == "fay@example.com" and as_json["stage"] == "lead"

    missing = await asyncio.to_thread(run, "lead", "show", "424242", env=env)
    assert missing.returncode == 1 and "no lead 424242" in missing.stderr


def test_a_bad_setting_stops_start_up_naming_the_key(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[server]\nport = "eighty"\n')
    result = run("serve", env={"KINDLING_CONFIG": str(config)})
    assert result.returncode == 2 and "server.port" in result.stderr

    config.write_text("[scoring]\nhalf_lif = '3d'\n")
    result = run("migrate", env={"KINDLING_CONFIG": str(config)})
    assert result.returncode == 2 and "scoring.half_lif: unknown setting" in result.stderr


async def test_serve_starts_on_a_fresh_sqlite_database_with_the_demo_page(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "KINDLING_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'fresh' / 'kindling.db'}",
        "KINDLING_PORT": str(port),
        "KINDLING_TELEGRAM_TOKEN": "",
    }
    process = await asyncio.create_subprocess_exec(
        *KINDLING, "serve", cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        log = await _read_until(process, f"Running on http://127.0.0.1:{port}")
        assert "channel telegram is disabled: KINDLING_TELEGRAM_TOKEN is not set" in log
        async with aiohttp.ClientSession() as http:
            page = await (await http.get(f"http://127.0.0.1:{port}/")).text()
            assert '<script src="/widget.js"' in page
            assert (await http.get(f"http://127.0.0.1:{port}/widget.js")).status == 200
            health = await http.get(f"http://127.0.0.1:{port}/healthz")
            assert health.status == 200 and (await health.json())["ok"] is True
    finally:
        process.terminate()
        await process.wait()
    assert (tmp_path / "fresh" / "kindling.db").exists()


async def _read_until(process, *markers: str) -> str:
    """Read the server's log until every marker has shown up (the server is then listening)."""
    seen = ""
    while not all(marker in seen for marker in markers):
        line = await asyncio.wait_for(process.stderr.readline(), timeout=30)
        assert line, f"server exited early:\n{seen}"
        seen += line.decode()
    return seen


def test_lint_passes_the_shipped_flows_and_names_file_and_line_of_a_broken_one(tmp_path):
    shipped = run("lint", env={"KINDLING_TEMPLATES": str(shipped_templates(tmp_path / "shipped"))})
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    assert "0 problem(s)" in shipped.stderr

    broken = tmp_path / "templates" / "flows" / "broken.j2"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        '+++\nname = "Broken"\ntrigger = "page_vew"\n+++\n'
        '{% step "one", after="10m" %}Hi {{ lead.nmae }}{% endstep %}\n'
        '{% step "two", after="soon" %}Bye{% endstep %}\n'
        '{% step "three", after="1d" %}Bye {{ lead.frist_name }}{% endstep %}\n'
    )
    result = run("lint", str(broken))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"{broken}:3:") and "page_vew" in line for line in lines), lines
    assert any(line.startswith(f"{broken}:5:") and "nmae" in line for line in lines), lines
    assert any(line.startswith(f"{broken}:6:") and "soon" in line for line in lines), lines
    typo = "step 'three': 'dict object' has no attribute 'frist_name': did you mean `lead.first_name`?"
    assert f"{broken}:7: {typo}" in lines, lines


def test_preview_shows_each_step_as_a_sample_lead_would_see_it(tmp_path):
    sample = tmp_path / "lead.json"
    sample.write_text('{"first_name": "Zoe", "timezone": "Europe/Berlin"}')
    result = run("preview", "speed-to-lead", "--sample", str(sample))
    assert result.returncode == 0, result.stderr
    assert "== welcome:" in result.stdout and "Hi Zoe" in result.stdout and "CET" in result.stdout
    assert "-> action handoff" in result.stdout

    unknown = run("preview", "no-such-flow")
    assert unknown.returncode == 1 and "no usable flow 'no-such-flow'" in unknown.stderr


def test_preview_shows_the_sandbox_refusing_an_attribute_name_built_at_render_time(tmp_path):
    templates = templates_with(tmp_path / "templates", {"sneaky": SNEAKY})
    sample = tmp_path / "lead.json"
    sample.write_text('{"score": 10}')  # the one score at which step two builds `__class__`
    result = run("preview", "sneaky", "--sample", str(sample), env={"KINDLING_TEMPLATES": str(templates)})
    assert "== two:" in result.stdout and "render error" in result.stdout and "'__class__'" in result.stdout
    assert "<class" not in result.stdout and "datetime.datetime" not in result.stdout
    assert "Three." in result.stdout  # the other steps still preview


def test_simulate_prints_the_timeline_in_the_leads_zone_and_ends_it_on_a_reply(tmp_path):
    sample = tmp_path / "lead.json"
    sample.write_text('{"timezone": "Asia/Tokyo"}')
    events = tmp_path / "events.json"
    events.write_text('[{"after": "3d", "type": "message"}]')
    result = run("simulate", "new-lead-7-in-7", "--sample", str(sample), "--events", str(events))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "New lead: 7 touches in 7 days: a lead in Asia/Tokyo, enrolled now"
    assert any(" JST  quick-win: " in line and line.split()[2] == "10:00" for line in lines), lines
    assert "lead: replies" in result.stdout and lines[-1].strip() == "exits the flow (reply)"
    assert "last-note" not in result.stdout

    bad = tmp_path / "bad.json"
    bad.write_text('[{"after": "3d", "type": "dance"}]')
    refused = run("simulate", "new-lead-7-in-7", "--events", str(bad))
    assert refused.returncode == 2 and "custom:<name> (like custom:purchase), opt_out or stage" in refused.stderr


def test_simulate_events_can_be_any_event_type_with_its_properties(tmp_path):
    sample = tmp_path / "lead.json"
    sample.write_text('{"score": 0, "timezone": "UTC"}')
    events = tmp_path / "events.json"
    events.write_text(
        '[{"after": "1d", "type": "page_view", "path": "/pricing"},'
        ' {"after": "2d", "type": "custom:purchase", "properties": {"amount": 49}}]'
    )
    result = run("simulate", "new-lead-7-in-7", "--sample", str(sample), "--events", str(events))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.endswith("lead: views /pricing") for line in lines), lines
    purchase = next(line for line in lines if "lead: custom event purchase" in line)
    assert purchase.endswith('purchase {"amount": 49}; moves to stage customer'), lines  # the stage rule applies
    assert lines[-1].strip() == "exits the flow (stage >= mql)"

    typo = tmp_path / "typo.json"
    typo.write_text('[{"after": "1d", "type": "page_view", "pth": "/pricing"}]')
    refused = run("simulate", "new-lead-7-in-7", "--events", str(typo))
    assert refused.returncode == 2 and "unknown key(s) pth" in refused.stderr


NIGHT_OWL = """+++
name = "Night owl"
trigger = "page_view"
exit = ["reply"]
+++
{% step "early", after="1d", at="03:00" %}Good morning.{% endstep %}
"""


def test_simulate_lists_a_reply_before_a_step_quiet_hours_held_back_and_ends_the_flow_there(tmp_path):
    templates = templates_with(tmp_path / "templates", {"night-owl": NIGHT_OWL})
    sample = tmp_path / "lead.json"
    sample.write_text('{"timezone": "UTC"}')
    now = datetime.now(UTC)
    due = parse_delay("1d", at="03:00").due(now, "UTC")  # 03:00 UTC, held by quiet hours (21:00-09:00) until 09:00
    events = tmp_path / "events.json"
    events.write_text(json.dumps([{"after": f"{(due - now) // timedelta(minutes=1) + 84}m", "type": "message"}]))
    env = {"KINDLING_TEMPLATES": str(templates)}
    result = run("simulate", "night-owl", "--sample", str(sample), "--events", str(events), env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[2].startswith("04:") and "lead: replies" in lines[1], lines  # 04:24, give or take
    assert lines[2].strip() == "exits the flow (reply)" and "early" not in result.stdout, lines


def test_preview_and_simulate_take_a_flows_path_or_name_and_say_each_problem_once(tmp_path):
    broken = '+++\nname = "Broken"\ntrigger = "page_view"\n+++\n'
    broken += '{% step "one", after="1h" %}{{ lead.frist_name }}{% endstep %}\n'
    templates = templates_with(tmp_path / "templates", {"night-owl": NIGHT_OWL, "broken": broken})
    env = {"KINDLING_TEMPLATES": str(templates)}
    by_path = run("preview", str(templates / "flows" / "night-owl.j2"))  # the configured templates are the shipped
    assert by_path.returncode == 0, by_path.stderr
    assert "== early:" in by_path.stdout and "Good morning." in by_path.stdout and by_path.stderr == ""
    assert run("simulate", str(templates / "flows" / "night-owl.j2")).stdout.startswith("Night owl: a lead in")
    by_name = run("preview", "night-owl", env=env)
    assert by_name.returncode == 0 and by_name.stderr == ""  # nothing about the broken flow next to it

    for command in ("preview", "simulate"):
        refused = run(command, "broken", env=env)
        problem = f"{templates / 'flows' / 'broken.j2'}:5: step 'one': 'dict object' has no attribute 'frist_name'"
        assert refused.returncode == 1 and refused.stderr.count("frist_name") == 1, refused.stderr
        assert refused.stderr.splitlines()[0].startswith(problem), refused.stderr


async def test_operator_add_without_a_terminal_says_to_pipe_the_password_in(database_url):
    env = {**os.environ, "KINDLING_DATABASE_URL": database_url}
    command = [*KINDLING, "operator", "add", "max", "--role", "admin"]
    # A new session has no controlling terminal to prompt on, as under cron, CI or `docker exec` without -t.
    result = await asyncio.to_thread(
        subprocess.run,
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        start_new_session=True,
    )
    assert result.returncode == 2, result.stderr
    assert "--password-stdin" in result.stderr and "Traceback" not in result.stderr
    listed = await asyncio.to_thread(run, "operator", "list", env={"KINDLING_DATABASE_URL": database_url})
    assert "no operators yet" in listed.stdout


def test_operator_add_on_a_fresh_install_makes_the_database_first(tmp_path):
    env = {"KINDLING_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'new.db'}"}
    command = [*KINDLING, "operator", "add", "ann", "--role", "admin", "--password-stdin"]
    added = subprocess.run(
        command, input="correct horse battery\n", capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT
    )
    assert added.returncode == 0 and "Traceback" not in added.stderr, added.stderr
    assert "added admin ann" in added.stdout
    assert "ann" in run("operator", "list", env=env).stdout


async def test_serve_on_a_port_in_use_names_the_port_and_how_to_change_it(database_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"KINDLING_DATABASE_URL": database_url, "KINDLING_PORT": str(port), "KINDLING_TELEGRAM_TOKEN": ""}
        result = await asyncio.to_thread(run, "serve", env=env)
    assert result.returncode != 0
    assert f"port {port} on 127.0.0.1 is taken" in result.stderr and "KINDLING_PORT" in result.stderr
    assert "database error" not in result.stderr and "Traceback" not in result.stderr
