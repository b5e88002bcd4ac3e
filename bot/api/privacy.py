"""Privacy for the site's backend: export everything stored about a lead, or erase it everywhere."""

from __future__ import annotations

from aiohttp import web

from bot.api.auth import API_KEY, scope
from bot.api.params import path_id
from bot.api.spec import BAD_REQUEST, GONE, NOT_FOUND, PATH_ID, ok, operation
from bot.delivery.hub import publish_erasure
from bot.services import SERVICES
from storage.db import transaction
from storage.privacy import erase_everywhere, export_person


@scope("leads:export")
async def export_lead(request: web.Request) -> web.Response:
    """Every row of every table about the lead (and the leads merged into it), as a JSON download."""
    lead_id, services = path_id(request), request.app[SERVICES]
    now = services.clock.now()
    document = await transaction(services.sessions, lambda session: export_person(session, lead_id, now))
    disposition = f'attachment; filename="lead-{document["lead_id"]}.json"'
    return web.json_response(document, headers={"Content-Disposition": disposition})


@scope("leads:erase")
async def erase_lead(request: web.Request) -> web.Response:
    """Erase the lead everywhere (their open widget and console sockets too); answers the rows removed per table."""
    lead_id, services = path_id(request), request.app[SERVICES]
    by, now = f"api:{request[API_KEY].name}", services.clock.now()
    erased = await erase_everywhere(services.sessions, lead_id, services.secret_key, by, now)
    publish_erasure(services.hub, erased)
    return web.json_response({"lead_id": erased.lead_id, "removed": erased.removed})


_ROW = {"type": "object", "description": "one row: column name to value (times in ISO 8601)"}
_EXPORT = {
    "type": "object",
    "properties": {
        "lead_id": {"type": "integer"},
        "lead_ids": {"type": "array", "items": {"type": "integer"}},
        "exported_at": {"type": "string", "format": "date-time"},
        "tables": {"type": "object", "additionalProperties": {"type": "array", "items": _ROW}},
    },
    "required": ["lead_id", "lead_ids", "exported_at", "tables"],
}
_ERASED = {
    "type": "object",
    "properties": {
        "lead_id": {"type": "integer"},
        "removed": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
    "required": ["lead_id", "removed"],
}
_ERRORS = {"400": BAD_REQUEST, "404": NOT_FOUND}

OPENAPI = {
    "/api/leads/{id}/export": {
        "get": operation(
            "Everything stored about a lead and the leads merged into it, by table (an attachment)",
            "leads:export",
            {"200": ok("the export", _EXPORT), **_ERRORS},
            [PATH_ID],
        )
    },
    "/api/leads/{id}": {
        "delete": operation(
            "Erase a lead everywhere, keeping only hashes so it is not contacted again (then 410)",
            "leads:erase",
            {"200": ok("erased: the rows removed per table", _ERASED), **_ERRORS, "410": GONE},
            [PATH_ID],
        )
    },
}
