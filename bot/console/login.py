"""Logging in and out of the console, and the console's front door."""

from __future__ import annotations

import secrets
from pathlib import Path

from aiohttp import web

from bot.console.accounts import authenticate
from bot.console.auth import (
    PRELOGIN_COOKIE,
    SESSION_COOKIE,
    current,
    end_session,
    public,
    requires,
    set_session_cookie,
    start_session,
)
from bot.console.keys import PRELOGIN_CSRF
from bot.console.pages import render
from bot.console.roles import allowed
from bot.console.throttle import LoginThrottle
from bot.services import SERVICES
from bot.web.forwarded import client_address

STATIC = Path(__file__).resolve().parent.parent / "static"
HOME = "/console"  # the front door sends each role to its working page


def routes(console: web.Application) -> None:
    """Mount the login page, logout, the front door and the stylesheet."""
    console.router.add_get("", home)
    console.router.add_get("/login", login_page)
    console.router.add_post("/login", log_in)
    console.router.add_post("/logout", log_out)
    console.router.add_get("/console.css", stylesheet)
    console.router.add_get("/console.js", script)


@requires("leads.read")
async def home(request: web.Request) -> web.StreamResponse:
    """`/console`: straight to the working page, the inbox for those who answer leads."""
    settings = request.app[SERVICES].settings.console
    raise web.HTTPFound(
        "/console/inbox" if allowed(current(request).operator.role, "queue", settings) else "/console/leads"
    )


@public
async def stylesheet(request: web.Request) -> web.StreamResponse:
    """The console's one stylesheet."""
    return web.FileResponse(STATIC / "console.css", headers={"Cache-Control": "max-age=3600"})


@public
async def script(request: web.Request) -> web.StreamResponse:
    """The console's one script: live updates, SLA timers, replies without a reload."""
    return web.FileResponse(STATIC / "console.js", headers={"Cache-Control": "max-age=300"})


@public
async def login_page(request: web.Request) -> web.StreamResponse:
    """The login form."""
    return _form(request, next_url=_safe_next(request.query.get("next")))


@public
async def log_in(request: web.Request) -> web.StreamResponse:
    """Check name and password (throttled); on success open a session and go where the operator was headed."""
    services = request.app[SERVICES]
    form = await request.post()
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    next_url = _safe_next(str(form.get("next", "")))
    throttle = LoginThrottle(services.sessions, services.clock, services.settings.console.login_attempts_per_minute)
    keys = throttle.keys(client_address(request, services.settings.trusted_proxies), name)
    if wait := await throttle.retry_after(keys):
        message = f"Too many login attempts, try again in {wait} s."
        return _form(request, next_url, name, message, status=429, headers={"Retry-After": str(wait)})
    operator = await authenticate(services.sessions, name, password) if name and password else None
    if operator is None:
        await throttle.failed(keys)
        return _form(request, next_url, name, "Wrong name or password.", status=401)
    response = web.HTTPSeeOther(next_url)
    set_session_cookie(services, response, await start_session(services, operator))
    raise response


@requires("console")
async def log_out(request: web.Request) -> web.StreamResponse:
    """End the session everywhere and forget the cookie."""
    await end_session(request.app[SERVICES], current(request))
    response = web.HTTPSeeOther("/console/login")
    response.del_cookie(SESSION_COOKIE, path="/console")
    raise response


def _form(
    request: web.Request,
    next_url: str,
    name: str = "",
    error: str = "",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The login form, with a CSRF token tied to a cookie since there is no session yet."""
    token = request.cookies.get(PRELOGIN_COOKIE) or secrets.token_urlsafe(32)
    request[PRELOGIN_CSRF] = token
    response = render(request, "login.html", {"next": next_url, "name": name, "error": error}, status=status)
    response.headers.update(headers or {})
    secure = request.app[SERVICES].settings.public_url.startswith("https://")
    response.set_cookie(PRELOGIN_COOKIE, token, path="/console", httponly=True, samesite="Strict", secure=secure)
    return response


def _safe_next(target: str | None) -> str:
    """Only a console address on this site; anything else goes home."""
    if not target or not target.startswith("/console") or target.startswith("//") or "\\" in target:
        return HOME
    return target
