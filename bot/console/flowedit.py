"""The flow editor: a flow's text with lint as you type, its preview and simulation, drafts, publishing and history.

The page (flow_edit.html, flowedit.js) sends the text it holds to the JSON endpoints below; nothing is written
until "Publish", which runs the same lint as `kindling lint` and refuses a flow that fails it, or one that changed
since the draft began (flows.publishing explains how files and the published versions stay in step).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

from aiohttp import web
from markupsafe import Markup
from sqlmodel import col, select

from bot.console.auth import current, public, requires
from bot.console.login import STATIC
from bot.console.pages import refuse, render
from bot.services import SERVICES, Services
from flows import publishing
from flows.engine import context as lead_context
from flows.lint import flow_files
from flows.locales import Locales, available
from flows.picture import simulation_svg
from flows.preview import preview
from flows.publishing import Checks, Conflict
from flows.reach import EmailPolicy
from flows.samples import SPARSE_LEAD, sample_event, sample_lead
from flows.simulate import happenings, simulate_entries
from flows.spec import FlowError, FlowSpec, Problem, flow_version
from flows.whatsapp_rules import by_name
from storage.leads import LeadNotFound, get_lead
from storage.models import AuditEntry

SIMULATED_DAYS = 90
_STATUS = {400: web.HTTPBadRequest, 404: web.HTTPNotFound}
AUDIT_SHOWN = 500  # newest lines of the audit log on its page
STARTER = """+++
name = "{name}"
trigger = {{ event = "signup" }}
exits = ["reply", "opt_out"]
+++
{{% step "welcome", delay="10m" %}}
Hi {{{{ lead.first_name or "there" }}}}, thanks for signing up!
{{% endstep %}}
"""


def routes(console: web.Application) -> None:
    """Mount the editor's pages and endpoints under /console/flows, and the audit log."""
    console.router.add_get("/flows/new", new_page)
    console.router.add_post("/flows/new", create)
    console.router.add_get("/flows/{slug}/edit", edit_page)
    console.router.add_post("/flows/{slug}/check", check)
    console.router.add_post("/flows/{slug}/preview", preview_steps)
    console.router.add_post("/flows/{slug}/simulate", simulate_flow)
    console.router.add_post("/flows/{slug}/draft", save_draft)
    console.router.add_post("/flows/{slug}/diff", diff)
    console.router.add_post("/flows/{slug}/publish", publish)
    console.router.add_get("/flows/{slug}/history", history_page)
    console.router.add_post("/flows/{slug}/rollback", rollback)
    console.router.add_get("/audit", audit_page)
    console.router.add_get("/flowedit.js", script)


@public
async def script(request: web.Request) -> web.StreamResponse:
    """The editor's script."""
    return web.FileResponse(STATIC / "flowedit.js", headers={"Cache-Control": "max-age=300"})


def checks(services: Services) -> Checks:
    """What `kindling lint` checks besides the text, from this server's settings."""
    settings = services.settings
    meta = settings.meta
    whatsapp = by_name(meta.whatsapp_templates) if meta.whatsapp_templates or not meta.whatsapp_missing() else None
    return Checks(settings.stages.order, whatsapp, not meta.messenger_missing())


def _refused(status: int, message: str) -> web.HTTPException:
    """A 4xx for the editor's script: JSON with the reason (`{"error": ...}`), as the console's other scripts get."""
    return _STATUS[status](text=json.dumps({"error": message}), content_type="application/json")


def _slug(request: web.Request) -> str:
    slug = request.match_info["slug"]
    if not publishing.SLUG.match(slug):
        raise _refused(404, f"no flow {slug!r}")
    return slug


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object a script sent, with `text` a string; 400 otherwise."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _refused(400, "send a JSON object") from None
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise _refused(400, 'send a JSON object with the flow\'s text as "text"')
    return body


def _problems(problems: list[Problem]) -> list[dict[str, Any]]:
    """Problems as the page marks them: on a line of this flow, or (in a partial it includes) with the file named."""
    return [{"line": problem.line, "message": problem.message, "file": problem.file} for problem in problems]


def _spec(services: Services, slug: str, text: str) -> tuple[FlowSpec | None, list[Problem]]:
    """The flow this text makes if it passes lint, and the problems."""
    return publishing.lint(services.library, slug, text, checks(services))


@requires("flows.edit")
async def new_page(request: web.Request) -> web.Response:
    """Name a new flow and pick what it starts from: a blank skeleton or a copy of a flow."""
    starters = [path.stem for path in flow_files(request.app[SERVICES].library.root)]
    return render(request, "flow_new.html", {"starters": starters, "error": None, "slug": ""})


@requires("flows.edit")
async def create(request: web.Request) -> web.StreamResponse:
    """Start a draft of a new flow (nothing is written until it is published)."""
    services = request.app[SERVICES]
    form = await request.post()
    slug, starter = str(form.get("slug", "")).strip(), str(form.get("starter", ""))
    starters = [path.stem for path in flow_files(services.library.root)]
    error = None
    if not publishing.SLUG.match(slug):
        error = "A flow's name is its file name: lowercase letters, digits, dashes and underscores."
    elif publishing.file_text(services.library, slug) is not None:
        error = f"There is a flow {slug!r} already."
    elif starter and starter not in starters:
        error = f"There is no flow {starter!r} to start from."
    if error is not None:
        return render(request, "flow_new.html", {"starters": starters, "error": error, "slug": slug}, status=400)
    text = publishing.file_text(services.library, starter) if starter else None
    text = text or STARTER.format(name=slug.replace("-", " ").replace("_", " ").capitalize())
    login = current(request)
    await publishing.save_draft(
        services.sessions, slug, login.operator.id, login.operator.name, text, None, services.clock.now()
    )
    raise web.HTTPSeeOther(f"/console/flows/{slug}/edit")


@requires("flows.edit")
async def edit_page(request: web.Request) -> web.Response:
    """The editor, with this person's draft if they have one, else the file."""
    services = request.app[SERVICES]
    slug = _slug(request)
    on_disk = publishing.file_text(services.library, slug)
    draft = await publishing.get_draft(services.sessions, slug, current(request).operator.id)
    if draft is None and on_disk is None:
        return refuse(request, 404, f"There is no flow {slug!r}. Start one from “New flow”.")
    text, base = (draft.source, draft.base) if draft is not None else (on_disk, publishing.version_of(on_disk))
    running = services.library.get(slug)
    return render(
        request,
        "flow_edit.html",
        {
            "slug": slug,
            "text": text,
            "base": base or "",
            "draft": draft,
            "running": running.version if running else None,
            "file_version": publishing.version_of(on_disk),
            "moved_on": draft is not None and draft.base != publishing.version_of(on_disk),
        },
    )


@requires("flows.edit")
async def check(request: web.Request) -> web.Response:
    """Lint the text as `kindling lint` would: its version and every problem with its line. With `"try": true`, a
    text that passes also comes back previewed and simulated (as the two endpoints below answer, or `{"error"}`),
    so the editor lints a text once after each pause in typing, not once for each."""
    services, slug, body = request.app[SERVICES], _slug(request), await _body(request)
    spec, problems = await asyncio.to_thread(_spec, services, slug, body["text"])
    answer: dict[str, Any] = {"version": flow_version(body["text"]), "problems": _problems(problems)}
    if spec is not None and body.get("try"):
        answer["preview"] = await _tried(_preview(services, body, spec))
        answer["simulation"] = await _tried(_simulation(services, body, spec))
    return web.json_response(answer)


async def _tried(work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """What a preview or simulation gives, or `{"error": why}` when the lead or the events asked for are wrong."""
    try:
        return await work
    except web.HTTPClientError as exc:
        return json.loads(exc.text or "{}") if exc.content_type == "application/json" else {"error": exc.reason}


async def _lead(services: Services, body: dict[str, Any], spec: FlowSpec) -> dict[str, Any]:
    """The lead to preview for: a real one by id, else a sample (`"sample": "sparse"`: the lead nothing is known
    about, as lint renders with; else the filled-in one), in the flow's stage if it has one."""
    lead_id = body.get("lead_id")
    if lead_id in (None, ""):
        stage = {"stage": spec.trigger.stage} if spec.trigger.stage else {}
        return {**SPARSE_LEAD, **stage} if body.get("sample") == "sparse" else sample_lead(stage)
    if not isinstance(lead_id, int) and not (isinstance(lead_id, str) and lead_id.isdigit()):
        raise _refused(400, "lead_id: a lead's number")
    async with services.sessions() as session:
        try:
            lead = await get_lead(session, int(lead_id))
        except LeadNotFound:
            raise _refused(404, f"no lead {lead_id}") from None
    return lead_context(lead, None, services.clock.now())["lead"]


def _context(spec: FlowSpec, lead: dict[str, Any], now: Any) -> dict[str, Any]:
    return {"lead": lead, "event": sample_event(spec.trigger), "now": now,
            "flow": {"slug": spec.slug, "name": spec.name}, "step": {"name": ""}}  # fmt: skip


@requires("flows.edit")
async def preview_steps(request: web.Request) -> web.Response:
    """Every step of the text as the lead (a real one, or the sample) would get it, with when."""
    services, slug, body = request.app[SERVICES], _slug(request), await _body(request)
    spec, problems = await asyncio.to_thread(_spec, services, slug, body["text"])
    if spec is None:
        return web.json_response({"problems": _problems(problems)}, status=422)
    return web.json_response(await _preview(services, body, spec))


@requires("flows.edit")
async def simulate_flow(request: web.Request) -> web.Response:
    """The timeline the sample lead would get from the text, with the events the page added (a reply on day 3)."""
    services, slug, body = request.app[SERVICES], _slug(request), await _body(request)
    spec, problems = await asyncio.to_thread(_spec, services, slug, body["text"])
    if spec is None:
        return web.json_response({"problems": _problems(problems)}, status=422)
    return web.json_response(await _simulation(services, body, spec))


async def _preview(services: Services, body: dict[str, Any], spec: FlowSpec) -> dict[str, Any]:
    """Each step of a flow that passed lint, for the lead the body names."""
    lead = await _lead(services, body, spec)
    now = services.clock.now()
    language = Locales(available(services.library.root), services.settings.default_locale).of(lead.get("locale"))
    items = preview(spec, _context(spec, lead, now), now, locale=language)
    zone = services.settings.policy.zone(lead.get("timezone"))
    steps = [
        {
            "name": item.step.name,
            "variant": item.step.variant,
            "due": f"{item.due.astimezone(zone):%a %Y-%m-%d %H:%M %Z}",
            "skipped": item.skipped,
            "subject": item.rendered.subject if item.rendered else None,
            "text": item.rendered.text if item.rendered else None,
            "buttons": [button.label for button in item.rendered.buttons] if item.rendered else [],
            "error": str(item.error) if item.error else None,
        }
        for item in items
    ]
    return {"lead": lead.get("first_name") or f"lead {lead.get('id')}", "steps": steps}


async def _simulation(services: Services, body: dict[str, Any], spec: FlowSpec) -> dict[str, Any]:
    """The simulated timeline of a flow that passed lint, as lines and as a picture, with the body's events."""
    settings, now = services.settings, services.clock.now()
    lead = await _lead(services, body, spec)
    days = body.get("days", SIMULATED_DAYS)
    if not isinstance(days, int) or not 1 <= days <= 400:
        raise _refused(400, "days: a whole number from 1 to 400")
    try:
        timeline = happenings(body.get("events") or [], now)
    except (ValueError, TypeError) as exc:
        raise _refused(400, f"events: {exc}") from None
    email = EmailPolicy(settings.email.disabled() is None, settings.email.require_consent)
    language = Locales(available(services.library.root), settings.default_locale).of(lead.get("locale"))
    entries = simulate_entries(
        spec, _context(spec, lead, now), now, days, timeline, settings.policy, settings.stages, email, True, language
    )
    picture = simulation_svg(entries, now, settings.policy.quiet_hours)
    return {"lines": [entry.line for entry in entries], "svg": picture}


@requires("flows.edit")
async def save_draft(request: web.Request) -> web.Response:
    """Keep this person's edit (the page saves as they type); the version it started from comes with it."""
    services, slug, body = request.app[SERVICES], _slug(request), await _body(request)
    base = body.get("base") or None
    if base is not None and not isinstance(base, str):
        raise _refused(400, "base: the version the draft started from")
    if len(body["text"]) > publishing.MAX_SOURCE:
        raise web.HTTPRequestEntityTooLarge(max_size=publishing.MAX_SOURCE, actual_size=len(body["text"]))
    login = current(request)
    draft = await publishing.save_draft(
        services.sessions, slug, login.operator.id, login.operator.name, body["text"], base, services.clock.now()
    )
    return web.json_response({"saved_at": draft.updated_at.isoformat(), "base": draft.base})


@requires("flows.edit")
async def diff(request: web.Request) -> web.Response:
    """What publishing would change: the running file against the text."""
    services, slug, body = request.app[SERVICES], _slug(request), await _body(request)
    on_disk = publishing.file_text(services.library, slug)
    return web.json_response(
        {"diff": publishing.diff(on_disk, body["text"]), "file_version": publishing.version_of(on_disk)}
    )


@requires("flows.edit")
async def publish(request: web.Request) -> web.Response:
    """Make the text the running version: 422 with the problems if it fails lint, 409 if the flow changed since
    the draft began (with what it is now), else the new version."""
    services, slug, body = request.app[SERVICES], _slug(request), await _body(request)
    base = body.get("base") or None
    login = current(request)
    try:
        row = await publishing.publish(
            services.sessions, services.library, slug, body["text"], base, login.operator.name,
            services.clock.now(), checks(services), login.operator.id,
        )  # fmt: skip
    except FlowError as exc:
        return web.json_response({"error": "the flow fails lint", "problems": _problems(exc.problems)}, status=422)
    except Conflict as exc:
        return web.json_response(
            {
                "error": f"The flow changed since this draft began ({exc.by}). Nothing published; draft kept.",
                "by": exc.by,
                "version": exc.version,
                "text": exc.text,
                "diff": publishing.diff(exc.text, body["text"], "changed meanwhile", "your draft"),
            },
            status=409,
        )
    return web.json_response({"version": row.version, "published_by": row.author, "revision": row.id})


@requires("flows.read")
async def history_page(request: web.Request) -> web.Response:
    """The flow's running versions, newest first, each with its diff from the one before."""
    services, slug = request.app[SERVICES], _slug(request)
    await services.flow_sync.record_loaded()  # a file edited since the last tick shows at once
    rows = await publishing.history(services.sessions, slug)
    if not rows and publishing.file_text(services.library, slug) is None:
        return refuse(request, 404, f"There is no flow {slug!r}.")
    versions = []
    for index, row in enumerate(rows):
        before = rows[index + 1].source if index + 1 < len(rows) else None
        versions.append({"row": row, "diff": Markup.escape(publishing.diff(before, row.source, "before", row.version))})
    running = services.library.get(slug)
    context = {"slug": slug, "versions": versions, "running": running.version if running else None}
    return render(request, "flow_history.html", context)


@requires("flows.edit")
async def rollback(request: web.Request) -> web.StreamResponse:
    """Publish an earlier version's text again, as a new version (the history keeps everything)."""
    services, slug = request.app[SERVICES], _slug(request)
    form = await request.post()
    number = str(form.get("revision", ""))
    chosen = await publishing.revision(services.sessions, slug, int(number)) if number.isdigit() else None
    if chosen is None:
        return refuse(request, 404, f"Flow {slug!r} has no version {number!r}.")
    login = current(request)
    on_disk = publishing.file_text(services.library, slug)
    try:
        await publishing.publish(
            services.sessions, services.library, slug, chosen.source, publishing.version_of(on_disk),
            login.operator.name, services.clock.now(), checks(services), action="rollback",
        )  # fmt: skip
    except FlowError as exc:
        problems = "; ".join(str(problem) for problem in exc.problems)
        return refuse(request, 422, f"Version {chosen.version} no longer passes lint: {problems}")
    except Conflict as exc:
        return refuse(request, 409, f"The flow changed meanwhile ({exc.by}); look at the history again.")
    raise web.HTTPSeeOther(f"/console/flows/{slug}/history")


@requires("audit.read")
async def audit_page(request: web.Request) -> web.Response:
    """Who edited and published what, newest first (admins)."""
    services = request.app[SERVICES]
    async with services.sessions() as session:
        query = select(AuditEntry).order_by(col(AuditEntry.id).desc()).limit(AUDIT_SHOWN)
        entries = list((await session.exec(query)).all())
    return render(request, "audit.html", {"entries": entries})
