"""A flow's page: its header facts, its timeline drawn as SVG (flows.picture) and each step's reach."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from markupsafe import Markup

from bot.console.auth import requires
from bot.console.keys import LOGIN
from bot.console.pages import refuse, render
from bot.console.roles import allowed
from bot.reports import build_report, parse_query
from bot.services import SERVICES
from flows.picture import flow_svg, step_reach


def routes(console: web.Application) -> None:
    """Mount /console/flows/{slug} (after the flow editor's /flows/new)."""
    console.router.add_get("/flows/{slug}", flow_page)


@requires("flows.read")
async def flow_page(request: web.Request) -> web.Response:
    """One running flow: trigger, version, goal and exits; its steps on a day axis with the last 30 days' reach."""
    services, slug = request.app[SERVICES], request.match_info["slug"]
    spec = services.library.flows.get(slug)
    if spec is None:
        return refuse(request, 404, f"There is no running flow {slug!r}. A file that fails lint is not loaded.")
    report = await _report(request, slug)
    policy = services.settings.policy
    reach = step_reach(report) if report is not None else None
    picture = flow_svg(spec, reach, policy.quiet_hours, policy.default_timezone)
    context = {"spec": spec, "picture": Markup(picture), "report": report, "policy": policy}  # noqa: S704 (escaped in flows.picture)
    return render(request, "flow.html", context)


async def _report(request: web.Request, slug: str) -> dict[str, Any] | None:
    """The flow report's row for this flow over its default period, for those who may read reports."""
    services, login = request.app[SERVICES], request[LOGIN]
    if not allowed(login.operator.role, "reports.read", services.settings.console):
        return None
    query = parse_query(None, None, None, services.clock.now())
    report = await build_report("flows", services.sessions, services.settings, services.library, query)
    row = next((flow for flow in report["flows"] if flow["flow"] == slug), None)
    return {**row, "since": report["since"], "until": report["until"]} if row is not None else None
