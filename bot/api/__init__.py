"""The JSON API under /api (API keys with scopes, see bot.api.auth; the document at /api/openapi.json).

May import bot.services, bot.config, bot.web, bot.intake, bot.delivery, bot.handoff, bot.reports, flows and
storage; only bot.app (mounting it) and bot.cli (API keys) import it.
"""

from __future__ import annotations

from aiohttp import web

from bot.api import conversations, events, flows, handoffs, leads, openapi, privacy, reports, webhooks


def routes(app: web.Application) -> None:
    """Mount /api/... (each module's OPENAPI dict documents its routes)."""
    app.router.add_get("/api/openapi.json", openapi.openapi_json)
    app.router.add_post("/api/events", events.post_event)
    app.router.add_get("/api/events", events.list_events)
    app.router.add_get("/api/leads", leads.list_leads)
    app.router.add_get("/api/leads/{id}", events.get_lead)
    app.router.add_patch("/api/leads/{id}", leads.patch_lead)
    app.router.add_get("/api/leads/{id}/conversations", conversations.lead_conversations)
    app.router.add_get("/api/conversations/{id}/messages", conversations.conversation_messages)
    app.router.add_get("/api/flows", flows.list_flows)
    app.router.add_get("/api/flows/{slug}", flows.get_flow)
    app.router.add_get("/api/handoffs", handoffs.list_handoffs)
    app.router.add_delete("/api/leads/{id}", privacy.erase_lead)
    app.router.add_get("/api/leads/{id}/export", privacy.export_lead)
    app.router.add_get("/api/webhooks/deliveries", webhooks.get_deliveries)
    reports.routes(app)
