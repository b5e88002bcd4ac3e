"""One-click unsubscribe (RFC 8058): the link in every nurture email's footer and List-Unsubscribe header.

`GET /email/unsubscribe/{token}` shows a page with a button; `POST` to the same URL (what the button does,
and what mail providers send, with the body `List-Unsubscribe=One-Click`) stops nurture email to the lead:
no login, the signed token is the proof. Chat and replies to the lead's own questions go on. Posting twice
changes nothing the second time; a forged token is a 404. Mounted whether or not email is on, so links in
email already sent keep working.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from aiohttp import web
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.mail.tokens import read_unsubscribe_token
from bot.services import SERVICES
from flows.optout import email_opt_out
from storage.db import transaction
from storage.leads import LeadNotFound, get_lead

PATH = "/email/unsubscribe/{token}"
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 480px; margin: 48px auto; padding: 0 16px; line-height: 1.5;">
<h1 style="font-size: 22px;">{title}</h1>{body}</body></html>
"""


def routes(app: web.Application) -> None:
    """Mount the unsubscribe page and its one-click POST."""
    app.router.add_get(PATH, confirm)
    app.router.add_post(PATH, unsubscribe)


def unsubscribe_url(public_url: str, token: str) -> str:
    """The link a nurture email carries."""
    return f"{public_url.rstrip('/')}{PATH.format(token=token)}"


async def confirm(request: web.Request) -> web.Response:
    """The confirmation page: a button that POSTs to this URL (a GET never unsubscribes: link scanners follow it)."""
    if _lead_id(request) is None:
        return _not_found()
    body = (
        "<p>Stop getting our emails? Replies to your own questions and our chat are not affected.</p>"
        '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit" style="font-size: 16px; padding: 8px 20px;">Unsubscribe</button></form>'
    )
    return _page("Unsubscribe", body)


async def unsubscribe(request: web.Request) -> web.Response:
    """Opt the lead out of nurture email (once), whatever the body says: the token is what counts."""
    lead_id = _lead_id(request)
    if lead_id is None:
        return _not_found()
    services = request.app[SERVICES]
    now = services.clock.now()
    try:
        await transaction(services.sessions, lambda session: _opt_out(session, lead_id, now))
    except LeadNotFound:
        return _not_found()
    return _page("You are unsubscribed", "<p>You will get no more of these emails.</p>")


async def _opt_out(session: AsyncSession, lead_id: int, now: datetime) -> None:
    await email_opt_out(session, await get_lead(session, lead_id), "link", now)


def _lead_id(request: web.Request) -> int | None:
    services = request.app[SERVICES]
    return read_unsubscribe_token(services.secret_key, request.match_info["token"])


def _page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(text=_PAGE.format(title=escape(title), body=body), status=status, content_type="text/html")


def _not_found() -> web.Response:
    return _page("Link not valid", "<p>This unsubscribe link is not valid: use the one in the email.</p>", 404)
