"""Mounting the operator console, a sub-application at /console.

Console views are plain aiohttp handlers on this sub-application, declared with
`bot.console.auth.requires(...)` and rendered with `bot.console.pages.render(...)`;
the `guard` middleware checks session, CSRF and role for every one of them.
"""

from __future__ import annotations

from aiohttp import web

from bot.console import (
    canned,
    conversation,
    flowedit,
    flowpages,
    flowpicture,
    inbox,
    leadedit,
    leads,
    live,
    login,
    pipeline,
    queue,
    reports,
)
from bot.console.auth import guard
from bot.console.pages import JINJA, environment, page_errors
from bot.services import SERVICES


def mount_console(app: web.Application) -> None:
    """Mount the console at /console."""
    console = web.Application(middlewares=[page_errors, guard])
    console[SERVICES] = app[SERVICES]
    console[JINJA] = environment()
    login.routes(console)
    leads.routes(console)
    leadedit.routes(console)
    canned.routes(console)
    flowedit.routes(console)  # before flowpages: /flows/new is not a flow's page
    flowpages.routes(console)
    flowpicture.routes(console)
    queue.routes(console)
    inbox.routes(console)
    conversation.routes(console)
    live.routes(console)
    reports.routes(console)
    pipeline.routes(console)
    app.add_subapp("/console", console)
