"""Privacy for the site's backend: export everything stored about a lead, or erase it everywhere."""

from __future__ import annotations

from aiohttp import web

from bot.api.auth import API_KEY, scope
from bot.services import SERVICES
from storage.db import transaction
from storage.privacy import erase_everywhere, export_person


@scope("leads:export")
async def export_lead(request: web.Request) -> web.Response:
    """Every row of every table about the lead (and the leads merged into it), as a JSON download."""
    lead_id, services = _lead_id(request), request.app[SERVICES]
    now = services.clock.now()
    document = await transaction(services.sessions, lambda session: export_person(session, lead_id, now))
    disposition = f'attachment; filename="lead-{document["lead_id"]}.json"'
    return web.json_response(document, headers={"Content-Disposition": disposition})


@scope("leads:erase")
async def erase_lead(request: web.Request) -> web.Response:
    """Erase the lead everywhere; answers the rows removed per table (no personal data)."""
    lead_id, services = _lead_id(request), request.app[SERVICES]
    by, now = f"api:{request[API_KEY].name}", services.clock.now()
    erased = await erase_everywhere(services.sessions, lead_id, services.secret_key, by, now)
    return web.json_response({"lead_id": erased.lead_id, "removed": erased.removed})


def _lead_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise web.HTTPBadRequest(text="a lead id is a number") from None  # JSON, by the errors middleware


_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "the lead's id; the id of a lead merged into another names the person it was merged into",
    "schema": {"type": "integer"},
}
_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def _errors(*statuses: tuple[str, str]) -> dict:
    return {
        status: {"description": text, "content": {"application/json": {"schema": _ERROR}}} for status, text in statuses
    }


_COMMON_ERRORS = _errors(
    ("400", "the id is not a number"),
    ("401", "missing or wrong API key"),
    ("403", "the API key lacks the scope"),
    ("404", "no lead has that id (or it was erased)"),
    ("503", "the database is unavailable; retry later"),
)
_ROW = {"type": "object", "description": "one row: column name to value (times in ISO 8601)"}

OPENAPI = {
    "/api/leads/{id}/export": {
        "get": {
            "summary": "Export everything stored about a lead",
            "description": "Every row of every table that refers to the lead or to the leads merged into it, "
            "grouped by table; sent as an attachment.",
            "operationId": "exportLead",
            "tags": ["privacy"],
            "x-scope": "leads:export",
            "parameters": [_ID],
            "responses": {
                "200": {
                    "description": "the export",
                    "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "lead_id": {"type": "integer"},
                                    "lead_ids": {"type": "array", "items": {"type": "integer"}},
                                    "exported_at": {"type": "string", "format": "date-time"},
                                    "tables": {
                                        "type": "object",
                                        "additionalProperties": {"type": "array", "items": _ROW},
                                    },
                                },
                                "required": ["lead_id", "lead_ids", "exported_at", "tables"],
                            }
                        }
                    },
                },
                **_COMMON_ERRORS,
            },
        }
    },
    "/api/leads/{id}": {
        "delete": {
            "summary": "Erase a lead everywhere",
            "description": "Deletes every row about the lead and the leads merged into it, cancels its pending "
            "deliveries and keeps only keyed hashes of its email, phone and identities, so it is not contacted "
            "again if it comes back. A second call answers 404.",
            "operationId": "eraseLead",
            "tags": ["privacy"],
            "x-scope": "leads:erase",
            "parameters": [_ID],
            "responses": {
                "200": {
                    "description": "erased: the rows removed per table",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "lead_id": {"type": "integer"},
                                    "removed": {"type": "object", "additionalProperties": {"type": "integer"}},
                                },
                                "required": ["lead_id", "removed"],
                            }
                        }
                    },
                },
                **_COMMON_ERRORS,
            },
        }
    },
}
