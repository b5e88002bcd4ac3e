"""The flows page: every flow file with its trigger, steps and lint status."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from bot.console.auth import requires
from bot.console.pages import render
from bot.services import SERVICES
from flows.library import FlowLibrary
from flows.spec import FlowSpec, Problem


@dataclass(frozen=True)
class FlowRow:
    """One flow as the page shows it: the running version (if any) and the problems of the file."""

    slug: str
    spec: FlowSpec | None
    problems: tuple[Problem, ...]


def routes(console: web.Application) -> None:
    """Mount /console/flows."""
    console.router.add_get("/flows", flows_page)


def flow_rows(library: FlowLibrary) -> list[FlowRow]:
    """Every flow the library knows, loaded or failing lint, by slug."""
    slugs = sorted(set(library.flows) | set(library.problems))
    return [FlowRow(slug, library.flows.get(slug), tuple(library.problems.get(slug, ()))) for slug in slugs]


@requires("flows.read")
async def flows_page(request: web.Request) -> web.Response:
    """The flows and whether each passes lint (a failing edit leaves the previous version running)."""
    library = request.app[SERVICES].library
    return render(request, "flows.html", {"flows": flow_rows(library), "folder": library.root / "flows"})
