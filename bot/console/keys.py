"""What a console request carries: the logged-in operator, or the login form's CSRF token."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from storage.models import Operator


@dataclass(frozen=True)
class Login:
    """The operator behind a request, with their session's CSRF token."""

    operator: Operator
    csrf_token: str
    token_hash: str


LOGIN = web.RequestKey("console_login", Login)
PRELOGIN_CSRF = web.RequestKey("console_prelogin_csrf", str)  # before there is a session
