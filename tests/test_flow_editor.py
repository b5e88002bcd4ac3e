"""Flows edited in the console: lint as you type, preview, simulate, drafts, publishing, conflicts, history, roles."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta

import pytest

from flows.publishing import Sync
from flows.spec import flow_version
from storage.db import create_engine, sessionmaker
from storage.models import AuditEntry, Delivery, FlowRevision

from conftest import rows, services_of, templates_with
from test_console_auth import log_in
from test_console_pages import page
from test_flow_engine import tick
from test_webchat import hello

DRIP = """+++
name = "Test drip"
trigger = "page_view"
when = "(event.path or '').startswith('/pricing')"
exit = ["reply", "handoff", "opt_out", "stage >= sql"]
+++
{% step "one", after="10m" %}One for {{ lead.first_name or "you" }}.{% endstep %}
{% step "two", after="1d" %}Two.{% endstep %}
{% step "three", after="1d" %}Three.{% endstep %}
"""
TYPO = DRIP.replace('{% step "two", after="1d" %}Two.', '{% step "two", after="1d" %}Two {{ lead.frist_name }}.')
NEW = DRIP.replace("One for", "Hello again,")


@pytest.fixture
def templates(tmp_path):
    return templates_with(tmp_path / "templates", {"drip": DRIP})


@pytest.fixture
def clock(clock):
    clock.advance(datetime(2026, 1, 6, 15, 0, tzinfo=UTC) - clock.now())  # 10:00 in New York
    return clock


@pytest.fixture
async def app(make_client, settings, templates):
    return await make_client(settings.with_(templates=templates))


async def marketer(app, add_operator, name: str = "mia"):  # type: ignore[no-untyped-def]
    await add_operator(name, "marketer")
    answer = await log_in(app, name)
    assert answer.status == 303
    return answer


async def csrf(app) -> str:  # type: ignore[no-untyped-def]
    """The logged-in person's CSRF token, from the editor page as the script reads it."""
    _, text = await page(app, "/console/flows/drip/edit")
    return text.split('data-csrf="', 1)[1].split('"', 1)[0]


async def call(app, action: str, body, slug: str = "drip"):  # type: ignore[no-untyped-def]
    token = await csrf(app)
    answer = await app.post(f"/console/flows/{slug}/{action}", json=body, headers={"X-CSRF-Token": token})
    return answer.status, await answer.json()


async def pricing_visitor(app):  # type: ignore[no-untyped-def]
    ws = await app.ws_connect("/chat/ws")
    await hello(ws)  # lands on /pricing: enrolled in the drip
    return ws


async def test_lint_marks_a_typo_on_its_line_and_names_the_fix(app, add_operator):
    await marketer(app, add_operator)
    status, answer = await call(app, "check", {"text": TYPO})
    assert status == 200 and answer["version"] == flow_version(TYPO)
    lines = {problem["line"] for problem in answer["problems"]}
    assert lines == {8}  # the line of step "two" in the text typed, not of the file on disk
    assert any("first_name" in problem["message"] for problem in answer["problems"])  # did you mean
    status, answer = await call(app, "check", {"text": DRIP})
    assert status == 200 and answer["problems"] == []


async def test_preview_and_simulation_follow_the_text_being_edited(app, add_operator):
    await marketer(app, add_operator)
    status, answer = await call(app, "preview", {"text": NEW})
    assert status == 200
    assert [(step["name"], step["text"]) for step in answer["steps"]] == [
        ("one", "Hello again, Ann."),
        ("two", "Two."),
        ("three", "Three."),
    ]  # the sample lead
    status, answer = await call(app, "preview", {"text": NEW, "sample": "sparse"})
    assert status == 200 and answer["steps"][0]["text"] == "Hello again, you."  # nothing known: the fallback
    events = [{"after": "36h", "type": "message"}]
    status, together = await call(app, "check", {"text": NEW, "try": True, "events": events})
    assert status == 200 and together["problems"] == []  # one request after a pause in typing: all three
    assert together["preview"] == (await call(app, "preview", {"text": NEW}))[1]
    assert together["simulation"] == (await call(app, "simulate", {"text": NEW, "events": events}))[1]
    status, together = await call(app, "check", {"text": NEW, "try": True, "lead_id": 999})
    assert status == 200 and together["preview"] == {"error": "no lead 999"} == together["simulation"]
    status, together = await call(app, "check", {"text": TYPO, "try": True})
    assert status == 200 and together["problems"] and "preview" not in together  # nothing to try until it passes
    status, answer = await call(app, "preview", {"text": TYPO})
    assert status == 422 and answer["problems"][0]["line"] == 8

    status, answer = await call(app, "simulate", {"text": DRIP, "events": []})
    assert status == 200
    assert [line.split("  ")[1].split(":")[0] for line in answer["lines"][:3]] == ["one", "two", "three"]
    status, answer = await call(app, "simulate", {"text": DRIP, "events": [{"after": "36h", "type": "message"}]})
    assert status == 200
    assert "two:" in "\n".join(answer["lines"]) and "three:" not in "\n".join(answer["lines"])
    assert "exits the flow" in answer["lines"][-1]  # the reply on day 1.5 ends it before step three


async def test_publishing_runs_the_new_text_for_new_leads_and_keeps_the_old_for_leads_already_in(
    app, add_operator, clock, db, templates
):
    before = await pricing_visitor(app)  # enrolled on the file's version
    await marketer(app, add_operator)
    status, answer = await call(app, "publish", {"text": NEW, "base": flow_version(DRIP)})
    assert status == 200 and answer["version"] == flow_version(NEW) and answer["published_by"] == "mia"
    assert (templates / "flows" / "drip.j2").read_text() == NEW  # the file is the running truth
    assert services_of(app).library.get("drip").version == flow_version(NEW)
    after = await pricing_visitor(app)
    await tick(app, clock, timedelta(minutes=10))
    sent = sorted(d.text for d in await rows(db, Delivery, Delivery.kind == "nurture", Delivery.step == "one"))
    assert sent == ["Hello again, you.", "One for you."]
    await before.close()
    await after.close()

    history = await rows(db, FlowRevision, FlowRevision.flow_slug == "drip")
    assert [(r.action, r.author, r.base, r.version) for r in history][-1] == (
        "publish", "mia", flow_version(DRIP), flow_version(NEW)
    )  # fmt: skip
    assert [(a.actor, a.action, a.subject) for a in await rows(db, AuditEntry)] == [("mia", "flow.publish", "drip")]


async def test_every_draft_begun_and_every_publish_is_in_the_audit_log(app, add_operator, db):
    await marketer(app, add_operator)
    for text in (TYPO, NEW):  # saved as she types: one draft begun
        assert (await call(app, "draft", {"text": text, "base": flow_version(DRIP)}))[0] == 200
    assert (await call(app, "publish", {"text": NEW, "base": flow_version(DRIP)}))[0] == 200
    assert (await call(app, "draft", {"text": DRIP, "base": flow_version(NEW)}))[0] == 200  # a new one
    log = [(a.actor, a.action, a.subject, a.detail) for a in await rows(db, AuditEntry)]
    assert log == [
        ("mia", "flow.draft", "drip", {"base": flow_version(DRIP)}),
        ("mia", "flow.publish", "drip", {"version": flow_version(NEW), "base": flow_version(DRIP)}),
        ("mia", "flow.draft", "drip", {"base": flow_version(NEW)}),
    ]


async def test_a_flow_that_fails_lint_is_not_published(app, add_operator, templates):
    await marketer(app, add_operator)
    status, answer = await call(app, "publish", {"text": TYPO, "base": flow_version(DRIP)})
    assert status == 422 and answer["problems"][0]["line"] == 8
    assert (templates / "flows" / "drip.j2").read_text() == DRIP
    assert services_of(app).library.get("drip").version == flow_version(DRIP)


async def test_a_file_changed_on_disk_since_the_draft_began_is_shown_not_overwritten(app, add_operator, templates):
    await marketer(app, add_operator)
    status, _ = await call(app, "draft", {"text": NEW, "base": flow_version(DRIP)})
    assert status == 200
    on_disk = DRIP.replace("Three.", "Three, edited on the server.")
    (templates / "flows" / "drip.j2").write_text(on_disk)

    status, text = await page(app, "/console/flows/drip/edit")
    assert status == 200 and "Hello again," in text and "data-moved-on" in text  # the draft, and the warning
    status, answer = await call(app, "publish", {"text": NEW, "base": flow_version(DRIP)})
    assert status == 409 and answer["version"] == flow_version(on_disk) and answer["text"] == on_disk
    theirs = [line for line in answer["diff"].splitlines() if line.startswith("-") and not line.startswith("---")]
    mine = [line for line in answer["diff"].splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert any("edited on the server" in line for line in theirs) and any("Hello again" in line for line in mine)
    assert (templates / "flows" / "drip.j2").read_text() == on_disk  # nothing overwritten
    status, text = await page(app, "/console/flows/drip/edit")
    assert "Hello again," in text  # the draft is kept

    # Having seen the change, publishing over it is a choice made knowingly.
    status, answer = await call(app, "publish", {"text": NEW, "base": flow_version(on_disk)})
    assert status == 200 and (templates / "flows" / "drip.j2").read_text() == NEW


async def test_drafts_are_kept_per_person_until_published(app, add_operator):
    await marketer(app, add_operator)
    status, _ = await call(app, "draft", {"text": NEW, "base": flow_version(DRIP)})
    assert status == 200
    status, text = await page(app, "/console/flows/drip/edit")
    assert "Hello again," in text and "data-draft-note" in text
    await app.post("/console/logout", data={"csrf_token": await csrf(app)})
    await marketer(app, add_operator, "max")  # another marketer sees the file, not mia's draft
    status, text = await page(app, "/console/flows/drip/edit")
    assert "Hello again," not in text and "One for" in text


async def test_history_shows_each_version_and_rolls_back_as_a_new_one(app, add_operator, db, templates):
    await marketer(app, add_operator)
    await call(app, "publish", {"text": NEW, "base": flow_version(DRIP)})
    status, text = await page(app, "/console/flows/drip/history")
    assert status == 200 and text.index(flow_version(NEW)) < text.index(flow_version(DRIP))  # newest first
    assert "publish by mia" in text and "file by file on disk" in text
    assert "\n-{% step &#34;one&#34;, after=&#34;10m&#34; %}One for" in text  # the change, line by line
    assert "\n+{% step &#34;one&#34;, after=&#34;10m&#34; %}Hello again," in text
    first = [r for r in await rows(db, FlowRevision) if r.version == flow_version(DRIP)][0]
    answer = await app.post(
        "/console/flows/drip/rollback",
        data={"csrf_token": await csrf(app), "revision": str(first.id)},
        allow_redirects=False,
    )
    assert answer.status == 303
    assert (templates / "flows" / "drip.j2").read_text() == DRIP
    assert services_of(app).library.get("drip").version == flow_version(DRIP)
    actions = [(r.action, r.version) for r in await rows(db, FlowRevision)]
    assert actions == [("file", flow_version(DRIP)), ("publish", flow_version(NEW)), ("rollback", flow_version(DRIP))]


async def test_a_new_flow_starts_as_a_draft_and_runs_once_published(app, add_operator, templates):
    await marketer(app, add_operator)
    token = await csrf(app)
    answer = await app.post("/console/flows/new", data={"csrf_token": token, "slug": "Bad Name"})
    assert answer.status == 400 and "lowercase" in await answer.text()
    answer = await app.post("/console/flows/new", data={"csrf_token": token, "slug": "drip"})
    assert answer.status == 400 and "already" in await answer.text()
    answer = await app.post(
        "/console/flows/new", data={"csrf_token": token, "slug": "spring", "starter": "drip"}, allow_redirects=False
    )
    assert answer.status == 303 and answer.headers["Location"] == "/console/flows/spring/edit"
    assert not (templates / "flows" / "spring.j2").exists()  # a draft only
    status, text = await page(app, "/console/flows/spring/edit")
    assert status == 200 and "One for" in text
    status, answer = await call(app, "publish", {"text": DRIP.replace("Test drip", "Spring"), "base": None}, "spring")
    assert status == 200 and services_of(app).library.get("spring").name == "Spring"


async def test_operators_cannot_edit_flows_and_only_admins_read_the_audit_log(app, add_operator):
    await add_operator("ola", "operator")
    await log_in(app, "ola")
    assert (await page(app, "/console/flows/drip/edit"))[0] == 403
    answer = await app.post("/console/flows/drip/check", json={"text": DRIP})
    assert answer.status == 403  # no CSRF token, and no right either
    await app.post("/console/logout", data={})
    await marketer(app, add_operator)
    assert (await page(app, "/console/audit"))[0] == 403
    await call(app, "publish", {"text": NEW, "base": flow_version(DRIP)})
    await add_operator("ada", "admin")
    await log_in(app, "ada")
    status, text = await page(app, "/console/audit")
    assert status == 200 and "flow.publish" in text and "mia" in text


async def test_bad_input_gets_a_clear_4xx(app, add_operator):
    await marketer(app, add_operator)
    token = await csrf(app)
    headers = {"X-CSRF-Token": token, "Content-Type": "application/json"}
    answer = await app.post("/console/flows/drip/check", data="{not json", headers=headers)
    assert answer.status == 400 and "JSON" in (await answer.json())["error"]
    answer = await app.post("/console/flows/drip/check", json={"text": 5}, headers=headers)
    assert answer.status == 400
    answer = await app.post("/console/flows/../check", json={"text": DRIP}, headers=headers)
    assert answer.status == 404
    status, answer = await call(app, "check", {"text": DRIP + "x" * 200_001})
    assert status == 200 and "at most" in answer["problems"][0]["message"]
    status, answer = await call(app, "preview", {"text": DRIP, "lead_id": 999})
    assert status == 404
    status, answer = await call(app, "simulate", {"text": DRIP, "events": [{"after": "2d", "type": "dance"}]})
    assert status == 400 and "event type" in answer["error"]
    assert (await page(app, "/console/flows/nothing-here/edit"))[0] == 404


async def test_a_version_published_on_one_instance_is_written_and_run_by_another(
    make_client, settings, templates, tmp_path, add_operator
):
    """Two instances on one database, each with its own templates folder (as on two machines)."""
    first = await make_client(settings.with_(templates=templates))
    other_folder = templates_with(tmp_path / "other", {"drip": DRIP})
    second = await make_client(settings.with_(templates=other_folder))
    await services_of(second).flow_sync.tick()  # started before the publish: has looked once
    await marketer(first, add_operator)
    status, _ = await call(first, "publish", {"text": NEW, "base": flow_version(DRIP)})
    assert status == 200

    await services_of(second).flow_sync.tick()  # its reload tick, every FLOW_RELOAD_SECONDS
    assert (other_folder / "flows" / "drip.j2").read_text() == NEW
    assert services_of(second).library.get("drip").version == flow_version(NEW)

    # A file changed on the second machine's disk meanwhile is not overwritten by the next publish.
    (other_folder / "flows" / "drip.j2").write_text(DRIP.replace("Two.", "Two, local."))
    await services_of(second).flow_sync.tick()
    newer = NEW.replace("Three.", "Three!")
    status, _ = await call(first, "publish", {"text": newer, "base": flow_version(NEW)})
    assert status == 200
    await services_of(second).flow_sync.tick()
    assert "Two, local." in (other_folder / "flows" / "drip.j2").read_text()


async def test_two_people_publishing_over_one_version_at_once_one_wins_and_the_other_sees_it(
    make_client, settings, templates, add_operator, db
):
    first = await make_client(settings.with_(templates=templates))
    second = await make_client(settings.with_(templates=templates))  # another instance, the same files
    await marketer(first, add_operator, "mia")
    await marketer(second, add_operator, "max")
    theirs = DRIP.replace("Three.", "Three, by max.")
    answers = await asyncio.gather(
        call(first, "publish", {"text": NEW, "base": flow_version(DRIP)}),
        call(second, "publish", {"text": theirs, "base": flow_version(DRIP)}),
    )
    assert sorted(status for status, _ in answers) == [200, 409]
    won = NEW if answers[0][0] == 200 else theirs
    lost = answers[1][1] if answers[0][0] == 200 else answers[0][1]
    assert (templates / "flows" / "drip.j2").read_text() == won and lost["text"] == won
    published = [r.source for r in await rows(db, FlowRevision) if r.action == "publish"]
    assert published == [won]


async def test_the_flows_page_leads_marketers_to_the_editor_and_admins_to_the_audit_log(app, add_operator):
    await marketer(app, add_operator)
    status, text = await page(app, "/console/flows")
    assert status == 200 and 'href="/console/flows/drip/edit">Edit</a>' in text
    assert 'href="/console/flows/new">New flow</a>' in text and "Audit log" not in text
    await app.post("/console/logout", data={"csrf_token": await csrf(app)})
    await add_operator("ada", "admin")
    await log_in(app, "ada")
    text = (await page(app, "/console/flows"))[1]
    assert 'href="/console/audit">Audit log</a>' in text and 'href="/console/flows/drip/history">History</a>' in text


def closed_port() -> int:
    """A port on this machine nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_a_flow_edited_on_disk_runs_even_while_the_database_is_unreachable(app, templates):
    library = services_of(app).library
    gone = create_engine(f"postgresql+asyncpg://kindling@127.0.0.1:{closed_port()}/kindling")  # connection refused
    sync = Sync(sessionmaker(gone), library, services_of(app).clock.now)
    (templates / "flows" / "drip.j2").write_text(NEW)
    try:
        await sync.tick()  # looks for published versions, reloads, records: the database part fails, quietly
    finally:
        await gone.dispose()
    assert library.get("drip").version == flow_version(NEW)
