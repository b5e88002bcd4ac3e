"""The JSON API under /api (API keys with scopes, see bot.api.auth)."""

from __future__ import annotations

from aiohttp import web

from bot.api import events, reports


def routes(app: web.Application) -> None:
    """Mount /api/... ."""
    app.router.add_post("/api/events", events.post_event)
    app.router.add_get("/api/leads/{id}", events.get_lead)
    reports.routes(app)
