"""A fake Graph API: a real aiohttp server that records sends and answers like Meta's Graph API.

Point the app at it with `meta.graph_api_url=fake.url` (the URL carries the version, `/v21.0`). It knows
one access token per product (`WHATSAPP_TOKEN`, `PAGE_TOKEN`; any other is answered 401 with Meta's
OAuthException 190), and serves:

- `POST /{version}/{phone_id}/messages` (WhatsApp): `{"messaging_product", "contacts": [{"input", "wa_id"}],
  "messages": [{"id": "wamid..."}]}`;
- `POST /{version}/me/messages` (Messenger and Instagram): `{"recipient_id", "message_id"}`;
- `GET /{version}/{waba_id}/message_templates`: the templates in `templates`.

`fail_next` answers the next sends with any of Meta's errors (`ERRORS` has the documented ones).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.config import MetaSettings

VERSION = "v21.0"
WHATSAPP_TOKEN = "EAAGfakeWhatsAppTokenForKindlingTests"
PAGE_TOKEN = "EAAGfakePageTokenForKindlingTests"
PHONE_ID = "106540352242922"  # the phone number id in Meta's examples
WABA_ID = "102290129340398"  # the WhatsApp Business Account id in Meta's examples
APP_SECRET = "test-meta-app-secret"
VERIFY_TOKEN = "test-meta-verify-token"

# Meta's documented errors: (HTTP status, code, subcode, type, message).
ERRORS: dict[str, tuple[int, int, int | None, str, str]] = {
    "rate_limit": (400, 130429, None, "OAuthException", "(#130429) Rate limit hit"),
    "spam_rate_limit": (
        400,
        131056,
        None,
        "OAuthException",
        "(#131056) (Business Account, Consumer Account) pair rate limit hit",
    ),
    "reengagement": (400, 131047, None, "OAuthException", "(#131047) Re-engagement message"),
    "undeliverable": (400, 131026, None, "OAuthException", "(#131026) Message Undeliverable."),
    "marketing_stopped": (
        400,
        131050,
        None,
        "OAuthException",
        "(#131050) Unable to deliver the message. This recipient has chosen to stop receiving marketing messages"
        " on WhatsApp from your business",
    ),
    "invalid_parameter": (400, 100, 2494010, "OAuthException", "(#100) Invalid parameter"),
    "template_missing": (
        404,
        132001,
        None,
        "OAuthException",
        "(#132001) Template name does not exist in the translation",
    ),
    "template_params": (
        400,
        132000,
        None,
        "OAuthException",
        "(#132000) Number of parameters does not match the expected number of params",
    ),
    "server_error": (500, 131000, None, "OAuthException", "(#131000) Something went wrong"),
    "unavailable": (503, 131016, None, "OAuthException", "(#131016) Service unavailable"),
    "messenger_rate_limit": (400, 4, 2018022, "OAuthException", "(#4) Application request limit reached"),
    "messenger_waba_rate": (400, 80007, None, "OAuthException", "(#80007) Rate limit issues"),
    "messenger_call_limit": (
        400,
        613,
        None,
        "OAuthException",
        "(#613) Calls to this api have exceeded the rate limit.",
    ),
    "messenger_page_limit": (400, 32, None, "OAuthException", "(#32) Page request limit reached"),
    "messenger_outside_window": (
        400,
        10,
        2018278,
        "OAuthException",
        "(#10) This message is sent outside of allowed window.",
    ),
    "messenger_unavailable": (400, 551, 1545041, "OAuthException", "(#551) This person isn't available right now."),
}


@dataclass
class Send:
    """One send the fake received, the token it came with, and the HTTP status it answered."""

    path: str
    body: dict[str, Any]
    token: str
    status: int


@dataclass
class FakeGraph:
    """The fake Graph API; `sends` lists every send, in order, answered or refused."""

    sends: list[Send] = field(default_factory=list)
    failures: list[tuple[str | None, str]] = field(default_factory=list)  # (recipient or None, error name)
    templates: list[dict[str, Any]] = field(default_factory=list)
    server: TestServer | None = None
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        """The base URL, with the version, to configure as `graph_api_url`."""
        assert self.server is not None, "the fake is not started"
        return str(self.server.make_url(f"/{VERSION}")).rstrip("/")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"/{VERSION}/me/messages", self.messenger)
        app.router.add_post(f"/{VERSION}/{{phone_id}}/messages", self.whatsapp)
        app.router.add_get(f"/{VERSION}/{{account}}/message_templates", self.message_templates)
        return app

    def fail_next(self, error: str, recipient: str | None = None, times: int = 1) -> None:
        """Answer the next `times` sends (to `recipient`, if given) with one of `ERRORS`."""
        assert error in ERRORS, error
        self.failures.extend([(recipient, error)] * times)

    def delivered(self, path_part: str = "/messages") -> list[dict[str, Any]]:
        """The bodies of the sends answered 200."""
        return [send.body for send in self.sends if send.status == 200 and path_part in send.path]

    def whatsapp_texts(self, to: str | None = None) -> list[str]:
        """The texts (or template names, as `template:<name>`) of WhatsApp messages answered 200."""
        found = []
        for body in self.delivered(f"/{PHONE_ID}/messages"):
            if to is None or body.get("to") == to:
                found.append(_what(body))
        return found

    async def whatsapp(self, request: web.Request) -> web.Response:
        body = await request.json()
        refused = self._refuse(request, WHATSAPP_TOKEN, body.get("to"))
        if refused is not None:
            return refused
        if request.match_info["phone_id"] != PHONE_ID:
            return self._error(request, body, 400, 100, 33, "GraphMethodException", "Unsupported post request.")
        to = str(body.get("to", ""))
        answer = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
            "messages": [{"id": f"wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI{next(self.ids):06d}"}],
        }
        return self._ok(request, body, answer)

    async def messenger(self, request: web.Request) -> web.Response:
        body = await request.json()
        recipient = (body.get("recipient") or {}).get("id")
        refused = self._refuse(request, PAGE_TOKEN, recipient)
        if refused is not None:
            return refused
        answer = {"recipient_id": recipient, "message_id": f"m_AG5Hz2Uq7tuwNEhXfYYKj8mJEM_{next(self.ids):06d}"}
        return self._ok(request, body, answer)

    async def message_templates(self, request: web.Request) -> web.Response:
        if _token(request) != WHATSAPP_TOKEN:
            return web.json_response(
                _error_body(401, 190, None, "OAuthException", "Invalid OAuth access token."), status=401
            )
        return web.json_response(
            {"data": self.templates, "paging": {"cursors": {"before": "MAZDZD", "after": "MjQZD"}}}
        )

    def _refuse(self, request: web.Request, token: str, recipient: Any) -> web.Response | None:
        if _token(request) != token:
            return self._error(request, {}, 401, 190, None, "OAuthException", "Invalid OAuth access token.")
        for index, (who, name) in enumerate(self.failures):
            if who is None or who == str(recipient):
                del self.failures[index]
                return self._named_error(request, name)
        return None

    def _named_error(self, request: web.Request, name: str) -> web.Response:
        status, code, subcode, kind, message = ERRORS[name]
        return self._error(request, {}, status, code, subcode, kind, message)

    def _error(
        self, request: web.Request, body: dict, status: int, code: int, subcode: int | None, kind: str, message: str
    ) -> web.Response:
        self.sends.append(Send(request.path, body or {}, _token(request), status))
        return web.json_response(_error_body(status, code, subcode, kind, message), status=status)

    def _ok(self, request: web.Request, body: dict, answer: dict) -> web.Response:
        self.sends.append(Send(request.path, body, _token(request), 200))
        return web.json_response(answer)


def _error_body(status: int, code: int, subcode: int | None, kind: str, message: str) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": kind, "code": code, "fbtrace_id": "AbCdEfGhIjKlMnOp"}
    if subcode is not None:
        error["error_subcode"] = subcode
    return {"error": error}


def _token(request: web.Request) -> str:
    return request.headers.get("Authorization", "").removeprefix("Bearer ")


def _what(body: dict[str, Any]) -> str:
    kind = body.get("type", "text")
    if kind == "text":
        return body["text"]["body"]
    if kind == "template":
        return f"template:{body['template']['name']}"
    if kind == "interactive":
        return body["interactive"]["body"]["text"]
    return kind


@pytest.fixture
async def fake_graph(aiohttp_server) -> FakeGraph:  # type: ignore[no-untyped-def]
    """A running fake Graph API."""
    fake = FakeGraph()
    fake.server = await aiohttp_server(fake.app())
    return fake


def meta_settings(fake: FakeGraph, **changes: Any) -> MetaSettings:
    """Meta settings pointing at the fake, with WhatsApp and Messenger on (and `changes` on top)."""
    settings = MetaSettings(
        graph_api_url=fake.url,
        app_secret=APP_SECRET,
        verify_token=VERIFY_TOKEN,
        whatsapp_token=WHATSAPP_TOKEN,
        whatsapp_phone_id=PHONE_ID,
        whatsapp_business_id=WABA_ID,
        messenger_page_token=PAGE_TOKEN,
    )
    return replace(settings, **changes)
