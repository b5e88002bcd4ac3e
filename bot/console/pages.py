"""Rendering console pages: Jinja with autoescape on, the base layout, error pages."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context
from markupsafe import Markup, escape

from bot.console.keys import LOGIN, PRELOGIN_CSRF
from bot.console.roles import allowed
from bot.handoff.handoffs import HandoffNotFound
from bot.reports.output import duration, percent
from bot.services import SERVICES
from bot.web.middlewares import json_error
from flows.reactions import lead_label
from storage.db import UNAVAILABLE
from storage.leads import LeadNotFound

TEMPLATES = Path(__file__).resolve().parent / "templates"
JINJA = web.AppKey("console_jinja", Environment)
HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"}


def environment() -> Environment:
    """The console's templates; every value is HTML-escaped unless marked safe."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined)
    env.globals["csrf_field"] = csrf_field
    env.filters["when"] = when
    env.filters["countdown"] = countdown
    env.filters["label"] = lead_label  # a lead's name, else email, phone, "Visitor from <source>"
    env.filters["duration"] = duration
    env.filters["percent"] = percent
    env.filters["edited"] = edited
    return env


def edited(value: Any) -> str:
    """A field's value before or after an edit: tags joined, nothing as a dash."""
    if isinstance(value, list):
        value = ", ".join(value)
    return str(value) if value else "-"


@pass_context
def csrf_field(context: Any) -> Markup:
    """`{{ csrf_field() }}` in a form: the hidden field the CSRF check looks for."""
    return Markup('<input type="hidden" name="csrf_token" value="{}">').format(escape(context["csrf_token"]))


def when(value: str | datetime | None) -> Markup | str:
    """A time as `<time datetime="ISO">2026-01-05 12:00 UTC</time>` (console.js shows it in the operator's
    language and time zone); empty for none."""
    if not value:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # what the database stores
    text = moment.strftime("%Y-%m-%d %H:%M %Z").strip()
    return Markup('<time datetime="{}">{}</time>').format(moment.isoformat(), text)


def countdown(seconds: float) -> str:
    """Seconds left on an SLA as `2 h 38 min left`, `4 min 5 s left`, or `late by 1 min` once past it.

    console.js's `clockText` says the same and keeps it ticking."""
    whole = abs(int(seconds))
    hours, minutes, rest = whole // 3600, whole // 60 % 60, whole % 60
    if hours:
        parts = [f"{hours} h", f"{minutes} min" if minutes else ""]
    else:
        parts = [f"{minutes} min" if minutes else "", f"{rest} s" if rest or not minutes else ""]
    text = " ".join(part for part in parts if part)
    return f"{text} left" if seconds >= 0 else f"late by {text}"


def render(
    request: web.Request, template: str, context: dict[str, Any] | None = None, status: int = 200
) -> web.Response:
    """A page in the base layout, with the operator, their CSRF token and `can(permission)` available."""
    login = request.get(LOGIN)
    settings = request.app[SERVICES].settings.console
    role = login.operator.role if login else ""
    page = (
        request.app[JINJA]
        .get_template(template)
        .render(
            operator=login.operator if login else None,
            csrf_token=login.csrf_token if login else request.get(PRELOGIN_CSRF, ""),
            can=lambda permission: bool(login) and allowed(role, permission, settings),
            **(context or {}),
        )
    )
    return web.Response(text=page, status=status, content_type="text/html", headers=HEADERS)


def wants_json(request: web.Request) -> bool:
    """Whether the caller is a script (JSON API, WebSocket) rather than a browser page."""
    accept = request.headers.get("Accept", "")
    return (
        request.path.startswith("/console/api/")
        or request.headers.get("Upgrade", "").lower() == "websocket"
        or request.content_type == "application/json"
        or ("application/json" in accept and "text/html" not in accept)
    )


def refuse(request: web.Request, status: int, message: str) -> web.Response:
    """An error as JSON for scripts, or as a page in the layout for people."""
    if wants_json(request):
        return json_error(status, message)
    return render(request, "error.html", {"status": status, "message": message}, status=status)


@web.middleware
async def page_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """An unknown lead, handoff or page is a 404 page in the layout, a database outage a 503 page."""
    try:
        return await handler(request)
    except LeadNotFound as exc:
        return refuse(request, 404, f"There is no lead {exc.args[0]}.")
    except HandoffNotFound as exc:
        return refuse(request, 404, f"There is {exc.args[0]}.")
    except web.HTTPNotFound:
        return refuse(request, 404, "There is no such page.")
    except UNAVAILABLE:  # unreachable, or every pooled connection busy
        return refuse(request, 503, "The database is unavailable; try again in a moment.")
