"""The flows page: every flow file with its trigger, steps and lint status."""

from __future__ import annotations

from aiohttp import web

from bot.console.auth import requires
from bot.console.pages import render
from bot.services import SERVICES
from flows.status import flow_rows


def routes(console: web.Application) -> None:
    """Mount /console/flows."""
    console.router.add_get("/flows", flows_page)


@requires("flows.read")
async def flows_page(request: web.Request) -> web.Response:
    """The flows and whether each passes lint (a failing edit leaves the previous version running)."""
    library = request.app[SERVICES].library
    return render(request, "flows.html", {"flows": flow_rows(library), "folder": library.root / "flows"})
