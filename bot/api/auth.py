"""API keys and scopes for every route under /api, in one middleware.

A view declares the scope it needs with `@scope("leads:read")` (or `@public` for the OpenAPI
document); a view that declares nothing needs the `*` scope, so a new route cannot leak by accident.
The key comes as `Authorization: Bearer <key>` (or `X-Api-Key`). `KINDLING_API_KEY` is a key with
every scope; keys made with `kindling apikey add` carry the scopes they were given.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from bot.services import SERVICES
from bot.web.middlewares import json_error
from bot.web.signing import same
from storage.apikeys import live_key
from storage.db import transaction

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SCOPES = {
    "events:write": "record backend events (POST /api/events)",
    "leads:read": "list and read leads, their conversations, messages and events",
    "leads:write": "change a lead's stage and tags",
    "leads:export": "export everything stored about a lead",
    "leads:erase": "erase a lead everywhere",
    "flows:read": "list flows with lint status and stats",
    "handoffs:read": "list handoffs",
    "reports:read": "funnel, flow and handoff reports",
    "webhooks:read": "outgoing webhook deliveries and their failures",
}
EVERY_SCOPE = "*"
KEY_PREFIX = "kdl_"
VISIBLE = len(KEY_PREFIX) + 6  # how much of a key `kindling apikey list` shows


@dataclass(frozen=True)
class ApiKey:
    """Who is calling: the key's name and what it may do."""

    name: str
    scopes: frozenset[str]

    def allows(self, needed: str) -> bool:
        return EVERY_SCOPE in self.scopes or needed in self.scopes


API_KEY = web.RequestKey("api_key", ApiKey)


def scope(needed: str) -> Callable[[Handler], Handler]:
    """Declare the scope an API view needs (one of SCOPES)."""
    if needed not in SCOPES:
        raise ValueError(f"unknown API scope {needed!r}")

    def mark(view: Handler) -> Handler:
        view.api_scope = needed  # type: ignore[attr-defined]
        return view

    return mark


def public(view: Handler) -> Handler:
    """Mark an API view that needs no key (the OpenAPI document)."""
    view.api_public = True  # type: ignore[attr-defined]
    return view


def key_hash(token: str) -> str:
    """What is stored of an API key: its SHA-256 (keys are long and random, so a fast hash is enough)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()  # a header may hold any bytes


def new_key() -> str:
    """A fresh API key: `kdl_` and 43 URL-safe random characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def presented(request: web.Request) -> str:
    """The key a request carries, or ''."""
    bearer = request.headers.get("Authorization", "")
    if bearer.startswith("Bearer "):
        return bearer.removeprefix("Bearer ").strip()
    return request.headers.get("X-Api-Key", "").strip()


async def lookup(request: web.Request, token: str) -> ApiKey | None:
    """The key `token` names: KINDLING_API_KEY, or a stored key that is not revoked; None otherwise."""
    services = request.app[SERVICES]
    settings = services.settings
    if settings.api_key and same(token, settings.api_key):
        return ApiKey("KINDLING_API_KEY", frozenset({EVERY_SCOPE}))
    if not token.startswith(KEY_PREFIX):
        return None
    now = services.clock.now()
    record = await transaction(services.sessions, lambda session: live_key(session, key_hash(token), now))
    return None if record is None else ApiKey(record.name, frozenset(record.scopes))


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Under /api: the key, then the view's scope; refuse otherwise."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    view = request.match_info.handler
    if getattr(view, "api_public", False):
        return await handler(request)
    token = presented(request)
    if not token:
        return json_error(401, "missing API key (send it as 'Authorization: Bearer <key>')")
    key = await lookup(request, token)
    if key is None:
        return json_error(401, "wrong or revoked API key (make one with `kindling apikey add` or set KINDLING_API_KEY)")
    needed = getattr(view, "api_scope", EVERY_SCOPE)
    if not key.allows(needed):
        return json_error(403, f"this API key lacks the scope {needed!r}")
    request[API_KEY] = key
    return await handler(request)
