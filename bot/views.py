"""Pages that are not a channel or the API: the demo page, the health check and the metrics."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from bot.services import SERVICES
from storage.db import DatabaseUnavailable

STATIC = Path(__file__).resolve().parent / "static"


def routes(app: web.Application) -> None:
    """Mount the demo page, /healthz and /metrics."""
    app.router.add_get("/", demo_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)


async def demo_page(request: web.Request) -> web.FileResponse:
    """A sample site page with the chat widget on it."""
    return web.FileResponse(STATIC / "demo.html")


async def healthz(request: web.Request) -> web.Response:
    """200 when the database answers, 503 when it does not."""
    try:
        async with request.app[SERVICES].sessions() as session:
            await session.exec(text("SELECT 1"))
    except Exception as exc:  # any failure to reach the database means unhealthy
        raise DatabaseUnavailable(str(exc)) from exc
    return web.json_response({"ok": True, "database": "reachable"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text: inbound messages, deliveries by status, backlogs, waiting handoffs, SLA breaches, inbox."""
    services = request.app[SERVICES]
    body = await services.metrics.read(services.sessions, services.clock.now(), await services.inbox.held())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
