"""GET /api/reports/funnel|flows|handoffs: the reports as JSON (or CSV), the same numbers as the CLI and console."""

from __future__ import annotations

from aiohttp import web

from bot.api.auth import scope
from bot.api.spec import UNPROCESSABLE, operation
from bot.reports import BY, ReportError, build_report, parse_query
from bot.reports.flowreport import STEP_COUNTS
from bot.reports.output import render
from bot.services import SERVICES
from bot.web.middlewares import json_error


def routes(app: web.Application) -> None:
    """Mount /api/reports/... ."""
    app.router.add_get("/api/reports/funnel", funnel)
    app.router.add_get("/api/reports/flows", flows)
    app.router.add_get("/api/reports/handoffs", handoffs)


@scope("reports:read")
async def funnel(request: web.Request) -> web.Response:
    """Leads that arrived in the period and how far they got, stage by stage."""
    return await _answer(request, "funnel")


@scope("reports:read")
async def flows(request: web.Request) -> web.Response:
    """Per flow and step: enrolled, sent, skipped, answered, handed off, opted out, goal; A/B variants."""
    return await _answer(request, "flows")


@scope("reports:read")
async def handoffs(request: web.Request) -> web.Response:
    """Speed to lead, SLA breaches, outcomes per operator and per source."""
    return await _answer(request, "handoffs")


async def _answer(request: web.Request, name: str) -> web.Response:
    services, params = request.app[SERVICES], request.query
    fmt = params.get("format", "json")
    if fmt not in ("json", "csv"):
        return json_error(422, f"'format' must be json or csv, not {fmt!r}")
    try:
        query = parse_query(params.get("since"), params.get("until"), params.get("by"), services.clock.now())
        report = await build_report(name, services.sessions, services.settings, services.library, query)
    except ReportError as exc:
        return json_error(422, str(exc))
    if fmt == "csv":
        return web.Response(text=render(report, "csv"), content_type="text/csv", charset="utf-8")
    return web.json_response(report)


def _parameters(by: bool) -> list[dict]:
    moment = {"type": "string", "examples": ["2026-01-31", "2026-01-31T18:00:00Z"]}
    parameters = [
        {"name": "since", "in": "query", "required": False, "schema": moment,
         "description": "Start of the period, an ISO date or time (UTC without a zone); default 30 days before until."},
        {"name": "until", "in": "query", "required": False, "schema": moment,
         "description": "End of the period (exclusive); a date means the end of that day. Default: now."},
        {"name": "format", "in": "query", "required": False, "schema": {"type": "string", "enum": ["json", "csv"]},
         "description": "json (default) or csv."},
    ]  # fmt: skip
    if by:
        parameters.append(
            {"name": "by", "in": "query", "required": False, "schema": {"type": "string", "enum": list(BY)},
             "description": "Break the report down by the lead's first-touch source, campaign or channel."}
        )  # fmt: skip
    return parameters


def _object(**properties: dict) -> dict:
    return {"type": "object", "properties": properties}


def _ints(*names: str) -> dict[str, dict]:
    return {name: {"type": "integer"} for name in names}


def _list(items: dict) -> dict:
    return {"type": "array", "items": items}


_TEXT, _MAYBE_TEXT, _NUMBER = {"type": "string"}, {"type": ["string", "null"]}, {"type": ["number", "null"]}
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}
_ERROR = {"type": "object", "properties": {"error": _TEXT}, "required": ["error"]}
_PERIOD = {
    "report": _TEXT,
    "since": {"type": "string", "format": "date-time"},
    "until": {"type": "string", "format": "date-time"},
    "by": _MAYBE_TEXT,
    "rule": {"type": "string", "description": "How the report counts, in words."},
}


def _operation(summary: str, by: bool, body: dict) -> dict:
    schema = {"type": "object", "properties": {**_PERIOD, **body}, "required": [*_PERIOD, *body]}
    content = {"application/json": {"schema": schema}, "text/csv": {"schema": _TEXT}}
    responses = {"200": {"description": "The report.", "content": content}, "422": UNPROCESSABLE}
    return {"get": {**operation(summary, "reports:read", responses, _parameters(by)), "tags": ["reports"]}}


_STAGE = _object(stage=_TEXT, conversion=_NUMBER, median_seconds_in_stage=_NUMBER, **_ints("reached", "moved_on"))
_GROUP = _object(key=_TEXT, leads={"type": "integer"}, overall_conversion=_NUMBER, stages=_list(_STAGE))
_STEP = _object(step=_TEXT, variant=_MAYBE_TEXT, skip_reasons=_COUNTS, **_ints(*STEP_COUNTS))
_VARIANT = _object(
    variant=_TEXT, response_rate=_NUMBER, conversion=_NUMBER, **_ints("leads", "responded", "reached_goal")
)
_VARIANTS = _object(
    step=_TEXT,
    compared_on={"type": "string", "enum": ["reached_goal", "responded"]},
    note=_TEXT,
    variants=_list(_VARIANT),
)
_FLOW = _object(
    flow=_TEXT,
    name=_MAYBE_TEXT,
    goal=_MAYBE_TEXT,
    exited=_COUNTS,
    goal_conversion=_NUMBER,
    steps=_list(_STEP),
    variants=_list(_VARIANTS),
    **_ints("enrolled", "active", "done", "handed_off", "opted_out", "reached_goal"),
)
_SPEED = _object(count={"type": "integer"}, p50=_NUMBER, p90=_NUMBER, p99=_NUMBER)
_HANDOFF_COUNTS = {**_ints("handoffs", "claimed", "breached", "won", "nurture", "lost", "open"), "breach_rate": _NUMBER}
_OPERATOR = _object(
    operator=_TEXT, median_seconds_to_claimed=_NUMBER, median_seconds_to_first_reply=_NUMBER, **_HANDOFF_COUNTS
)
_HANDOFF_GROUP = _object(key=_TEXT, median_seconds_to_claimed=_NUMBER, **_HANDOFF_COUNTS)

OPENAPI = {
    "/api/reports/funnel": _operation(
        "Funnel: leads reaching each stage, conversion, median time in stage",
        True,
        {"stages": _list(_TEXT), "groups": _list(_GROUP)},
    ),
    "/api/reports/flows": _operation(
        "Flows: per flow and step, with A/B variants side by side", False, {"flows": _list(_FLOW)}
    ),
    "/api/reports/handoffs": _operation(
        "Handoffs: speed to lead percentiles, SLA breaches, outcomes per operator and per source",
        True,
        {
            **_HANDOFF_COUNTS,
            "speed_to_lead": _object(notified=_SPEED, claimed=_SPEED, first_reply=_SPEED),
            "operators": _list(_OPERATOR),
            "groups": _list(_HANDOFF_GROUP),
        },
    ),
}
