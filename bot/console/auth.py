"""Console sessions, CSRF and roles for every route under /console, in one middleware.

A view declares what it needs with `@requires("permission")` (or `@public` for the login page);
a view that declares nothing is for admins only, so a new route cannot leak by accident.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta

from aiohttp import web
from yarl import URL

from bot.console.keys import LOGIN, Login
from bot.console.pages import refuse, wants_json
from bot.console.roles import allowed
from bot.services import SERVICES, Services
from bot.web.signing import same
from storage.db import transaction
from storage.models import Operator
from storage.operators import close_session, mark_seen, open_session, session_operator

SEEN_EVERY = timedelta(seconds=30)  # a console request marks its login as seen at most this often

SESSION_COOKIE = "kindling_session"
PRELOGIN_COOKIE = "kindling_csrf"  # the login form's CSRF token, before there is a session
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_REFUSED = (
    "The form is out of date or did not come from this console (CSRF token missing or wrong): "
    "reload the page and try again."
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def requires(permission: str) -> Callable[[Handler], Handler]:
    """Declare the permission a console view needs (see bot.console.roles)."""

    def mark(view: Handler) -> Handler:
        view.console_permission = permission  # type: ignore[attr-defined]
        return view

    return mark


def public(view: Handler) -> Handler:
    """Mark a console view that needs no login (the login page itself, the stylesheet)."""
    view.console_public = True  # type: ignore[attr-defined]
    return view


def current(request: web.Request) -> Login:
    """The logged-in operator of a console request (the middleware has checked it)."""
    return request[LOGIN]


def token_hash(token: str) -> str:
    """What is stored of a session token: its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Session, then CSRF on state changes, then the role's permission; refuse otherwise."""
    view = request.match_info.handler
    if getattr(view, "console_public", False):
        if request.method in UNSAFE and not await csrf_ok(request, request.cookies.get(PRELOGIN_COOKIE)):
            return refuse(request, 403, CSRF_REFUSED)
        return await handler(request)
    login = await _login(request)
    if login is None:
        return _to_login(request)
    request[LOGIN] = login
    if request.method in UNSAFE and not await csrf_ok(request, login.csrf_token):
        return refuse(request, 403, CSRF_REFUSED)
    if not same_origin(request):
        return refuse(request, 403, "This console does not accept connections from other sites.")
    permission = getattr(view, "console_permission", None)
    found = request.match_info.http_exception is None
    if found and not allowed(login.operator.role, permission, request.app[SERVICES].settings.console):
        return refuse(request, 403, f"Your role ({login.operator.role}) does not allow this.")
    return await handler(request)


async def csrf_ok(request: web.Request, expected: str | None) -> bool:
    """Whether the request carries the expected token in the X-CSRF-Token header or a form field."""
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        value = (await request.post()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    return bool(expected and given) and same(given, expected)  # type: ignore[arg-type]


def same_origin(request: web.Request) -> bool:
    """A browser's WebSocket to the console must come from the console's own pages (no token rides along)."""
    origin = request.headers.get("Origin")
    if request.headers.get("Upgrade", "").lower() != "websocket" or not origin:
        return True
    public = request.app[SERVICES].settings.public_url
    return URL(origin).raw_authority in {request.host, URL(public).raw_authority if public else request.host}


async def _login(request: web.Request) -> Login | None:
    """The session the cookie names, if it is live and its operator not removed."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    services = request.app[SERVICES]
    hashed = token_hash(token)
    now = services.clock.now()
    async with services.sessions() as session:
        found = await session_operator(session, hashed, now)
    if found is None:
        return None
    if found[0].seen_at is None or now - found[0].seen_at >= SEEN_EVERY:
        await see(services, hashed)
    return Login(operator=found[1], csrf_token=found[0].csrf_token, token_hash=hashed)


async def see(services: Services, hashed: str) -> None:
    """Mark the login as at the console now (`bot.intake.warm.operator_at_console` reads it)."""
    now = services.clock.now()

    async def work(session) -> None:  # type: ignore[no-untyped-def]
        await mark_seen(session, hashed, now)

    await transaction(services.sessions, work)


def _to_login(request: web.Request) -> web.StreamResponse:
    """401 for scripts; people go to the login page and come back afterwards."""
    if wants_json(request):
        return refuse(request, 401, "log in to the console first")
    target = URL("/console/login")
    if request.method == "GET":
        target = target.with_query(next=request.path_qs)
    raise web.HTTPSeeOther(target)


async def start_session(services: Services, operator: Operator) -> str:
    """Open a console session; returns the token for the cookie (only its hash is stored)."""
    token, now = secrets.token_urlsafe(32), services.clock.now()
    expires = now + timedelta(hours=services.settings.console.session_hours)

    async def work(session) -> None:  # type: ignore[no-untyped-def]
        await open_session(session, operator, token_hash(token), secrets.token_urlsafe(32), now, expires)

    await transaction(services.sessions, work)
    return token


async def end_session(services: Services, login: Login) -> None:
    """Delete the session, so its cookie stops working on every instance."""

    async def work(session) -> None:  # type: ignore[no-untyped-def]
        await close_session(session, login.token_hash)

    await transaction(services.sessions, work)


def set_session_cookie(services: Services, response: web.StreamResponse, token: str) -> None:
    """The session cookie: HttpOnly, SameSite=Lax, Secure when the console is served over https."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=services.settings.console.session_hours * 3600,
        path="/console",
        httponly=True,
        samesite="Lax",
        secure=services.settings.public_url.startswith("https://"),
    )
