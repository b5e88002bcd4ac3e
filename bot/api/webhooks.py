"""Outgoing webhook deliveries over the API: what was sent to each endpoint, and what failed."""

from __future__ import annotations

import re

from aiohttp import web

from bot.api.auth import scope
from bot.api.paging import page_of
from bot.api.params import bad, query_choice, query_id, query_text
from bot.api.spec import BAD_REQUEST, ID, NULLABLE_TIME, PAGING, TIME, ok, operation, page, query
from bot.services import SERVICES
from storage.models import WebhookDelivery
from storage.webhooks import STATUSES, deliveries_query, summary

ENDPOINT = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_ENDPOINT = re.compile(ENDPOINT)


@scope("webhooks:read")
async def get_deliveries(request: web.Request) -> web.Response:
    """Deliveries newest first, filtered by status, endpoint, lead or failure, paged by cursor."""
    failed = query_choice(request, "failed", ("true", "false"))
    endpoint = query_text(request, "endpoint")
    if endpoint is not None and not _ENDPOINT.fullmatch(endpoint):
        raise bad("'endpoint' is an endpoint's name from config.toml (a-z, 0-9, - and _)")
    statement = deliveries_query(
        status=query_choice(request, "status", STATUSES),
        endpoint=endpoint,
        failed=failed == "true",
        lead_id=query_id(request, "lead"),
    )
    paging = page_of(request)
    async with request.app[SERVICES].sessions() as session:
        rows = (await session.exec(paging.apply(statement, WebhookDelivery.id))).all()
    return web.json_response(paging.body(rows, summary))


SCHEMAS = {
    "WebhookDelivery": {
        "type": "object",
        "required": ["id", "event_id", "endpoint", "event_type", "lead_id", "status", "attempts", "created_at"],
        "properties": {
            "id": {"type": "integer", "description": "the row's id (for `kindling webhooks retry ID`)"},
            "event_id": {"type": "string", "format": "uuid", "description": "sent as X-Kindling-Delivery"},
            "endpoint": {"type": "string"},
            "event_type": {"type": "string", "enum": ["lead.warm", "lead.stage_changed", "handoff.closed"]},
            "lead_id": {"type": "integer"},
            "status": {"type": "string", "enum": list(STATUSES)},
            "attempts": {"type": "integer", "minimum": 0},
            "next_attempt_at": NULLABLE_TIME,
            "last_attempt_at": NULLABLE_TIME,
            "last_status": {"type": ["integer", "null"], "description": "the receiver's HTTP status last time"},
            "last_error": {"type": ["string", "null"]},
            "created_at": TIME,
            "delivered_at": NULLABLE_TIME,
        },
    }
}

OPENAPI = {
    "/api/webhooks/deliveries": {
        "get": operation(
            "Outgoing webhook deliveries, newest first, with failures and retries",
            "webhooks:read",
            {"200": ok("a page of deliveries", page("WebhookDelivery")), "400": BAD_REQUEST},
            [
                query("status", {"type": "string", "enum": list(STATUSES)}, "only deliveries in this state"),
                query("endpoint", {"type": "string", "pattern": ENDPOINT}, "an endpoint's name in config.toml"),
                query(
                    "failed",
                    {"type": "string", "enum": ["true", "false"]},
                    "true: only dead deliveries and those waiting to retry after a failure",
                ),
                query("lead", ID, "only this lead's deliveries"),
                *PAGING,
            ],
        )
    }
}
