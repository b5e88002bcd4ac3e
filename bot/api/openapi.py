"""The OpenAPI 3.1 document at /api/openapi.json, merged from the `OPENAPI` (paths) and `SCHEMAS`
(components) dicts of the API modules listed in `MODULES`: a new module is one more entry there.
"""

from __future__ import annotations

import copy
from types import ModuleType
from typing import Any

from aiohttp import web

from bot.api import conversations, events, flows, handoffs, leads, privacy, reports, webhooks
from bot.api.auth import SCOPES, public
from bot.api.spec import COMPONENTS, ok
from bot.config import Settings
from bot.services import SERVICES

MODULES: list[ModuleType] = [events, leads, conversations, flows, handoffs, privacy, reports, webhooks]

_DESCRIPTION = """Kindling's JSON API. Send an API key as `Authorization: Bearer <key>` (or `X-Api-Key`);
each operation needs the scope named in its `x-scope` (a key with `*` has them all). Make keys with
`kindling apikey add NAME --scope S`. Lists are paged: pass `next_cursor` back as `?cursor=` until it is null.

Scopes: """ + "; ".join(f"`{name}`: {meaning}" for name, meaning in SCOPES.items())

OPENAPI = {
    "/api/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {"200": ok("the OpenAPI document", {"type": "object"})},
        }
    }
}


def document(settings: Settings) -> dict[str, Any]:
    """The whole document for this configuration (the stage names come from config.toml)."""
    paths: dict[str, dict] = copy.deepcopy(OPENAPI)
    components = copy.deepcopy(COMPONENTS)
    for module in MODULES:
        for path, operations in module.OPENAPI.items():
            taken = set(paths.get(path, {})) & set(operations)
            if taken:
                raise ValueError(f"{module.__name__} documents {path} {sorted(taken)} a second time")
            paths.setdefault(path, {}).update(copy.deepcopy(operations))
        components["schemas"].update(copy.deepcopy(getattr(module, "SCHEMAS", {})))
    components["schemas"]["Stage"] = {"type": "string", "enum": list(settings.stages.order)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kindling API", "version": "1", "description": _DESCRIPTION},
        "servers": [{"url": settings.public_url or "/"}],
        "paths": dict(sorted(paths.items())),
        "components": components,
    }


@public
async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI document; needs no key, so clients and tools can read it first."""
    return web.json_response(document(request.app[SERVICES].settings))
