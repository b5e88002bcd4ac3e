"""Outgoing webhook deliveries over the API: what was sent to each endpoint, and what failed."""

from __future__ import annotations

import re
from collections.abc import Mapping

from aiohttp import web

from bot.api.auth import scope
from bot.middlewares import json_error
from bot.services import SERVICES
from storage.webhooks import STATUSES, list_deliveries, summary

MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database
_ENDPOINT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@scope("webhooks:read")
async def get_deliveries(request: web.Request) -> web.Response:
    """Deliveries newest first, filtered by status, endpoint, lead or failure; `before` pages back."""
    try:
        filters = _filters(request.query)
    except ValueError as exc:
        return json_error(400, str(exc))
    async with request.app[SERVICES].sessions() as session:
        rows = await list_deliveries(session, **filters)
    next_before = rows[-1].id if len(rows) == filters["limit"] else None
    return web.json_response({"deliveries": [summary(row) for row in rows], "next_before": next_before})


def _filters(query: Mapping[str, str]) -> dict:
    status, endpoint = query.get("status"), query.get("endpoint")
    if status is not None and status not in STATUSES:
        raise ValueError(f"'status' must be one of {', '.join(STATUSES)}")
    if endpoint is not None and not _ENDPOINT.match(endpoint):
        raise ValueError("'endpoint' is an endpoint's name from config.toml (a-z, 0-9, - and _)")
    failed = query.get("failed", "false")
    if failed not in ("true", "false"):
        raise ValueError("'failed' must be true or false")
    return {
        "status": status,
        "endpoint": endpoint,
        "failed": failed == "true",
        "lead_id": _number(query, "lead", 1, MAX_ID),
        "before": _number(query, "before", 1, MAX_ID),
        "limit": _number(query, "limit", 1, 500) or 100,
    }


def _number(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"'{name}' must be a whole number from {low} to {high}")
    return int(text)


_STATUS = {"type": "string", "enum": list(STATUSES)}
_DELIVERY = {
    "type": "object",
    "required": ["id", "event_id", "endpoint", "event_type", "lead_id", "status", "attempts", "created_at"],
    "properties": {
        "id": {"type": "integer", "description": "the row's id (for `kindling webhooks retry ID`)"},
        "event_id": {"type": "string", "format": "uuid", "description": "sent as X-Kindling-Delivery"},
        "endpoint": {"type": "string"},
        "event_type": {"type": "string", "enum": ["lead.warm", "lead.stage_changed", "handoff.closed"]},
        "lead_id": {"type": "integer"},
        "status": _STATUS,
        "attempts": {"type": "integer", "minimum": 0},
        "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
        "last_attempt_at": {"type": ["string", "null"], "format": "date-time"},
        "last_status": {"type": ["integer", "null"], "description": "the receiver's HTTP status last time"},
        "last_error": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "delivered_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _id_parameter(name: str, description: str) -> dict:
    schema = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


OPENAPI = {
    "/api/webhooks/deliveries": {
        "get": {
            "summary": "Outgoing webhook deliveries, newest first",
            "description": "What was sent to each endpoint of [webhooks.outgoing], with failures and retries.",
            "parameters": [
                {"name": "status", "in": "query", "required": False, "schema": _STATUS},
                {
                    "name": "endpoint",
                    "in": "query",
                    "required": False,
                    "description": "an endpoint's name in config.toml",
                    "schema": {"type": "string", "pattern": _ENDPOINT.pattern},
                },
                {
                    "name": "failed",
                    "in": "query",
                    "required": False,
                    "description": "only dead deliveries and those waiting to retry after a failure",
                    "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
                },
                _id_parameter("lead", "only this lead's deliveries"),
                _id_parameter("before", "only deliveries with a smaller id (the previous answer's next_before)"),
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100},
                },
            ],
            "responses": {
                "200": {
                    "description": "the deliveries, and the `before` of the next page (null on the last one)",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["deliveries", "next_before"],
                                "properties": {
                                    "deliveries": {"type": "array", "items": _DELIVERY},
                                    "next_before": {"type": ["integer", "null"]},
                                },
                            }
                        }
                    },
                },
                "400": _error("a query parameter is out of range or not one of its values"),
                "401": _error("no API key, or a wrong one"),
                "403": _error("the key lacks the webhooks:read scope"),
            },
        }
    }
}
