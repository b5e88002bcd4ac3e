"""The operators' home: the conversation inbox, `/console/inbox?show=needs_reply|mine|all&channel=...&page=N`.

Rows come from `bot.handoff.inbox`; console.js keeps the page live over `/console/ws?inbox=1&...`, which
sends the same page again (`{"type": "inbox", ...}`) whenever a handoff changes or a message arrives in one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from bot.console.auth import current, requires
from bot.console.pages import refuse, render
from bot.handoff.inbox import InboxError, InboxPage, InboxView, inbox
from bot.services import SERVICES, Services

SHOW_NAMES = {"needs_reply": "Needs reply", "mine": "Mine", "all": "All"}

# What the row template is drawn from when console.js redraws the rows the socket sends.
BLANK_ROW: dict[str, Any] = {
    "id": 0, "lead_id": 0, "status": "waiting", "label": "", "channel": None, "last_text": "", "last_from": None,
    "waiting": "", "waiting_seconds": None, "sla_seconds_left": 0, "claimed_by": None, "needs_reply": True,
}  # fmt: skip


def routes(console: web.Application) -> None:
    """Mount /console/inbox."""
    console.router.add_get("/inbox", inbox_page)


def view_of(query: Any, operator_id: int) -> InboxView:
    """The view a page's (or socket's) query asks for; raises InboxError for a bad value."""
    raw = query.get("page", "1")
    if not raw.isdigit() or len(raw) > 6:
        raise InboxError(f"page: a number from 1, not {raw!r}")
    channel = query.get("channel") or None
    if channel is not None and not (channel.isascii() and channel.isalnum() and len(channel) <= 40):
        raise InboxError(f"channel: a channel's name, not {channel!r}")
    return InboxView(query.get("show", "needs_reply"), channel, operator_id, int(raw))


async def inbox_rows(services: Services, view: InboxView) -> InboxPage:
    """One page of the inbox, now."""
    async with services.sessions() as session:
        return await inbox(session, view, services.clock.now())


def frame(found: InboxPage) -> dict:
    """The socket's frame for a page of rows."""
    return {"type": "inbox", "rows": found.rows, "total": found.total, "page": found.page, "pages": found.pages}


@requires("queue")
async def inbox_page(request: web.Request) -> web.Response:
    """The inbox, filtered and paged, kept live by console.js."""
    services = request.app[SERVICES]
    try:
        view = view_of(request.query, current(request).operator.id)
    except InboxError as exc:
        return refuse(request, 400, str(exc))
    found = await inbox_rows(services, view)
    context = {
        "found": found, "view": view, "shows": SHOW_NAMES, "blank": BLANK_ROW,
        "channels": sorted(services.dispatcher.channels), "link": _linker(view),
    }  # fmt: skip
    return render(request, "inbox.html", context)


def _linker(view: InboxView) -> Any:
    """`link(show=..., channel=..., page=...)`: this page's address with some filters changed."""

    def link(**changes: Any) -> str:
        values = {"show": view.show, "channel": view.channel, "page": view.page, **changes}
        return "/console/inbox?" + urlencode({key: value for key, value in values.items() if value not in (None, 1)})

    return link
