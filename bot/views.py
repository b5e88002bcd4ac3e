"""Pages that are not a channel or the API: the demo site, the health check and the metrics."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from bot.services import SERVICES
from storage.db import DatabaseUnavailable

STATIC = Path(__file__).resolve().parent / "static"


# The demo site: a made-up product's home and pricing pages with the widget on them, their style, the guided
# tour's script and a favicon (an SVG: browsers take one by its content type, whatever the name).
DEMO = {
    "/": ("demo.html", "text/html"),
    "/pricing": ("pricing.html", "text/html"),
    "/demo.css": ("demo.css", "text/css"),
    "/demo.js": ("demo.js", "text/javascript"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),
}


def routes(app: web.Application) -> None:
    """Mount the demo site, /healthz and /metrics."""
    for path in DEMO:
        app.router.add_get(path, demo_file)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)


async def demo_file(request: web.Request) -> web.FileResponse:
    """One file of the demo site, by its path."""
    name, content_type = DEMO[request.path]
    return web.FileResponse(STATIC / name, headers={"Content-Type": content_type})


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
