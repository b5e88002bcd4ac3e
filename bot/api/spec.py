"""Building blocks for the OpenAPI dicts each API module declares (merged by bot.api.openapi).

Shared parts are components referenced with `$ref`: the Error schema, the 400/401/403/404/410/413/422
answers, the `limit` and `cursor` parameters, and the `Stage` enum (filled from config.toml).
"""

from __future__ import annotations

from typing import Any

from bot.api.paging import DEFAULT_LIMIT, MAX_LIMIT
from bot.api.params import MAX_ID

SECURITY = [{"bearer": []}, {"apiKey": []}]
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
TIME = {"type": "string", "format": "date-time"}


def ref(name: str, kind: str = "schemas") -> dict:
    """A reference to a component."""
    return {"$ref": f"#/components/{kind}/{name}"}


def ok(description: str, schema: dict) -> dict:
    """A JSON answer with that schema."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def page(item: str) -> dict:
    """The schema of one page of a list of `item`s."""
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": ref(item)},
            "next_cursor": {"type": ["string", "null"], "description": "pass back as ?cursor= for the next page"},
        },
    }


def operation(
    summary: str,
    scope: str,
    responses: dict[str, Any],
    parameters: list[dict] | None = None,
    body: dict | None = None,
    example: dict | None = None,
) -> dict:
    """An operation that needs an API key with `scope`; 401 and 403 are added."""
    found: dict[str, Any] = {
        "summary": summary,
        "security": SECURITY,
        "x-scope": scope,
        "parameters": parameters or [],
        "responses": {**responses, "401": ref("Unauthorized", "responses"), "403": ref("Forbidden", "responses")},
    }
    if body is not None:
        media: dict[str, Any] = {"schema": body} if example is None else {"schema": body, "example": example}
        found["requestBody"] = {"required": True, "content": {"application/json": media}}
    return found


def query(name: str, schema: dict, description: str) -> dict:
    """An optional query parameter."""
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
PATH_ID = {"name": "id", "in": "path", "required": True, "schema": ID, "example": 1}
PAGING = [ref("limit", "parameters"), ref("cursor", "parameters")]
BAD_REQUEST = ref("BadRequest", "responses")
NOT_FOUND = ref("NotFound", "responses")
UNPROCESSABLE = ref("Unprocessable", "responses")
TOO_LARGE = ref("TooLarge", "responses")
GONE = ref("Gone", "responses")

_ERROR = ref("Error")
COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
    },
    "schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    },
    "responses": {
        "BadRequest": {**ok("", _ERROR), "description": "a parameter or the body is malformed"},
        "Unauthorized": {**ok("", _ERROR), "description": "no API key, or a wrong or revoked one"},
        "Forbidden": {**ok("", _ERROR), "description": "the key lacks this operation's scope (x-scope)"},
        "NotFound": {**ok("", _ERROR), "description": "no such row"},
        "Gone": {**ok("", _ERROR), "description": "the lead was erased; its id is never given to anyone else"},
        "TooLarge": {**ok("", _ERROR), "description": "the body is larger than [server] max_body_kb (config.toml)"},
        "Unprocessable": {**ok("", _ERROR), "description": "the body is JSON but says something invalid"},
    },
    "parameters": {
        "limit": query(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
            "rows per page",
        ),
        "cursor": query("cursor", {"type": "string"}, "next_cursor of the previous page"),
    },
}
