"""Flows over the API: every flow file with its lint status and how many leads it holds and messaged."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.api.auth import scope
from bot.api.spec import ok, operation, ref
from bot.services import SERVICES
from bot.web.middlewares import json_error
from flows.status import FlowRow, flow_rows
from storage.models import Delivery, Enrollment

STATUSES = ("active", "paused", "done", "exited")


def flow_item(row: FlowRow, stats: dict[str, int]) -> dict[str, Any]:
    """A flow: what runs (if anything), whether its file passes lint, and its counts."""
    spec = row.spec
    state = "not loaded" if spec is None else "failing lint, previous version running" if row.problems else "running"
    return {
        "slug": row.slug,
        "name": spec.name if spec else None,
        "trigger": spec.trigger.source if spec else None,
        "version": spec.version if spec else None,
        "steps": list(spec.step_names) if spec else [],
        "state": state,
        "lint": {
            "ok": not row.problems,
            "problems": [{"file": p.file, "line": p.line, "message": p.message} for p in row.problems],
        },
        "stats": {"enrolled": sum(stats.get(status, 0) for status in STATUSES), **stats},
    }


async def flow_stats(session: AsyncSession, slugs: list[str]) -> dict[str, dict[str, int]]:
    """Per flow: enrollments by status, and deliveries sent."""
    found = {slug: {**dict.fromkeys(STATUSES, 0), "sent": 0} for slug in slugs}
    by_status = (
        select(Enrollment.flow_slug, Enrollment.status, func.count())
        .where(col(Enrollment.flow_slug).in_(slugs))
        .group_by(Enrollment.flow_slug, Enrollment.status)
    )
    for slug, status, count in (await session.exec(by_status)).all():
        if status in STATUSES:
            found[slug][status] = count
    sent = (
        select(Delivery.flow_slug, func.count())
        .where(col(Delivery.flow_slug).in_(slugs), Delivery.status == "sent")
        .group_by(Delivery.flow_slug)
    )
    for slug, count in (await session.exec(sent)).all():
        found[slug]["sent"] = count
    return found


async def _items(request: web.Request, slug: str | None = None) -> list[dict[str, Any]]:
    services = request.app[SERVICES]
    rows = [row for row in flow_rows(services.library) if slug is None or row.slug == slug]
    async with services.sessions() as session:
        stats = await flow_stats(session, [row.slug for row in rows])
    return [flow_item(row, stats[row.slug]) for row in rows]


@scope("flows:read")
async def list_flows(request: web.Request) -> web.Response:
    """Every flow file by slug, loaded or failing lint (a flow count is small: no paging)."""
    return web.json_response({"items": await _items(request)})


@scope("flows:read")
async def get_flow(request: web.Request) -> web.Response:
    """One flow by slug."""
    slug = request.match_info["slug"]
    found = await _items(request, slug)
    if not found:
        return json_error(404, f"no flow {slug!r} (flows are templates/flows/<slug>.j2)")
    return web.json_response(found[0])


_COUNT = {"type": "integer", "minimum": 0}
SCHEMAS = {
    "Flow": {
        "type": "object",
        "required": ["slug", "name", "trigger", "version", "steps", "state", "lint", "stats"],
        "properties": {
            "slug": {"type": "string"},
            "name": {"type": ["string", "null"]},
            "trigger": {"type": ["string", "null"]},
            "version": {"type": ["string", "null"], "description": "hash of the running file's text"},
            "steps": {"type": "array", "items": {"type": "string"}},
            "state": {"type": "string", "enum": ["running", "failing lint, previous version running", "not loaded"]},
            "lint": {
                "type": "object",
                "required": ["ok", "problems"],
                "properties": {
                    "ok": {"type": "boolean"},
                    "problems": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["file", "line", "message"],
                            "properties": {
                                "file": {"type": "string"},
                                "line": {"type": "integer"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                },
            },
            "stats": {
                "type": "object",
                "required": ["enrolled", *STATUSES, "sent"],
                "properties": {name: _COUNT for name in ("enrolled", *STATUSES, "sent")},
                "description": "enrollments (all, then by status) and nurture messages sent",
            },
        },
    },
}
_FLOW_LIST = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": ref("Flow")}}}
_SLUG = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
OPENAPI = {
    "/api/flows": {
        "get": operation(
            "Every flow with its lint status and stats",
            "flows:read",
            {"200": ok("the flows by slug", _FLOW_LIST)},
        ),
    },
    "/api/flows/{slug}": {
        "get": operation(
            "One flow with its lint status and stats",
            "flows:read",
            {"200": ok("the flow", ref("Flow")), "404": ref("NotFound", "responses")},
            [_SLUG],
        ),
    },
}
