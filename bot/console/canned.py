"""Canned replies: `templates/_replies/*.j2`, rendered with the lead for the operator's reply box.

Each file is one reply; an opening Jinja comment `{# Title #}` names it in the picker (else its file
name does). They render in the sandbox the bot's own messages use (strict undefined) with `lead` (as
flows see it) and `operator` (`name`). The operator's page asks for them at
`GET /console/leads/{id}/replies`; a reply that does not render comes back with its error instead of a
text, so it is shown to the operator and can never be inserted, let alone sent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.console.auth import current, requires
from bot.console.leads import lead_id
from bot.intake.messages import MessageError, SystemMessages
from bot.services import SERVICES
from flows.reactions import lead_context
from storage.leads import get_lead

FOLDER = "_replies"
_TITLE = re.compile(r"^\{#-?\s*(.+?)\s*-?#\}")


def routes(console: web.Application) -> None:
    """Mount GET /console/leads/{id}/replies."""
    console.router.add_get("/leads/{id}/replies", replies)


@requires("conversations.reply")
async def replies(request: web.Request) -> web.Response:
    """The canned replies rendered for one lead: `[{name, title, text}]`, `error` (and no text) for a broken one."""
    services, found = request.app[SERVICES], lead_id(request.match_info["id"])
    async with services.sessions() as session:
        lead = await get_lead(session, found)
    context = {"lead": lead_context(lead), "operator": {"name": current(request).operator.name}}
    return web.json_response(rendered(services.intake.messages, services.settings.templates, context))


def rendered(messages: SystemMessages, templates: Path, context: dict[str, Any]) -> list[dict[str, Any]]:
    """Every reply in `templates/_replies`, by file name, rendered with `context`."""
    return [_render(messages, path, context) for path in sorted((templates / FOLDER).glob("*.j2"))]


def _render(messages: SystemMessages, path: Path, context: dict[str, Any]) -> dict[str, Any]:
    name, source = path.stem, path.read_text(encoding="utf-8")
    title = match.group(1) if (match := _TITLE.match(source)) else name
    where = f"{FOLDER}/{path.name}"
    try:
        text = messages.render_path(where, context)
    except MessageError as exc:
        return {"name": name, "title": title, "text": None, "error": str(exc)}
    if not text:
        return {"name": name, "title": title, "text": None, "error": f"{where}: renders empty"}
    return {"name": name, "title": title, "text": text}
