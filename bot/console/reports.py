"""Report pages for marketers: the funnel, the flows and the handoffs, with charts drawn on the server; the factors."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bot.console.auth import requires
from bot.console.pages import render
from bot.reports import BY, REPORTS, ReportError, build_report, parse_query
from bot.reports.charts import BarChart, bar_chart
from bot.reports.output import duration, percent
from bot.services import SERVICES
from flows.learned import top_factors
from storage.learned import accepted_model, latest_fit

FACTORS = 10  # of each kind, as `kindling score factors` lists by default


def routes(console: web.Application) -> None:
    """Mount /console/reports, /console/reports/factors and /console/reports/{name}."""
    console.router.add_get("/reports", reports_home)
    console.router.add_get("/reports/factors", factors_page)  # before {name}: routes match in this order
    console.router.add_get("/reports/{name}", report_page)


@requires("reports.read")
async def reports_home(request: web.Request) -> web.Response:
    """The funnel is where a marketer starts."""
    raise web.HTTPFound("/console/reports/funnel")


@requires("reports.read")
async def report_page(request: web.Request) -> web.Response:
    """One report for the period in the query string (the last 30 days by default), with its charts."""
    name = request.match_info["name"]
    if name not in REPORTS:
        raise web.HTTPNotFound(text=f"no report {name!r}")
    services, params = request.app[SERVICES], request.query
    form = {key: params.get(key, "")[:40] for key in ("since", "until", "by")}
    context: dict[str, Any] = {"name": name, "reports": REPORTS, "form": form, "choices": BY, "report": None}
    try:
        query = parse_query(form["since"] or None, form["until"] or None, form["by"] or None, services.clock.now())
        report = await build_report(name, services.sessions, services.settings, services.library, query)
    except ReportError as exc:
        return render(request, "report.html", {**context, "error": str(exc)}, status=422)
    context.update(report=report, charts=CHARTS[name](report), error=None)
    return render(request, "report.html", context)


@requires("reports.read")
async def factors_page(request: web.Request) -> web.Response:
    """What most raises and lowers success across all leads, by the accepted model (`kindling score factors`)."""
    sessions = request.app[SERVICES].sessions
    model, last = await accepted_model(sessions), await latest_fit(sessions)
    raising, lowering = top_factors(model, FACTORS) if model else ([], [])
    context = {"reports": REPORTS, "model": model, "raising": raising, "lowering": lowering}
    context["refused"] = last if last is not None and not last.accepted else None  # newer than the accepted one
    return render(request, "factors.html", context)


def funnel_charts(report: dict) -> dict[str, BarChart]:
    """A bar per stage for each group: leads that reached it, with the conversion from the stage before."""
    charts = {}
    for group in report["groups"]:
        items = [
            (stage["stage"], stage["reached"], f"{stage['reached']} ({percent(stage['conversion'])})")
            for stage in group["stages"]
        ]
        charts[group["key"]] = bar_chart(items)
    return charts


def flow_charts(report: dict) -> dict[str, BarChart]:
    """Per flow, a bar per step (and variant): messages sent, with how many reached the lead, were seen, answered."""
    charts = {}
    for flow in report["flows"]:
        items = [
            (step["step"] + (f" ({step['variant']})" if step["variant"] else ""), step["sent"],
             f"{step['sent']} sent, {step['reached']} reached, {step['seen']} seen, "
             f"{step['replied_24h'] + step['buttons']} answered")
            for step in flow["steps"]
        ]  # fmt: skip
        charts[flow["flow"]] = bar_chart(items)
    return charts


def handoff_charts(report: dict) -> dict[str, BarChart]:
    """Speed to lead: p50, p90 and p99 from the warm signal to the notification, the claim, the first reply."""
    items = [
        (f"to {name.replace('_', ' ')} p{q}", speed[f"p{q}"], duration(speed[f"p{q}"]))
        for name, speed in report["speed_to_lead"].items()
        for q in (50, 90, 99)
    ]
    return {"speed": bar_chart(items)}


CHARTS = {"funnel": funnel_charts, "flows": flow_charts, "handoffs": handoff_charts}
