"""A fake Telegram Bot API: a real aiohttp server that records every call and answers like Telegram.

Point the app at it with `telegram_api_url=fake.url`. It knows one bot token (`TOKEN`; any other is
answered 401 like Telegram does), answers getMe, setWebhook, deleteWebhook, sendMessage, editMessageText
and answerCallbackQuery (negative chat ids are groups), and can be told to fail the next call for a chat
(403 blocked, 429 flood, 5xx).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

TOKEN = "123456789:AAFakeTokenForKindlingTests"
BOT_ID = 123456789
BOT_USER = {
    "id": BOT_ID,
    "is_bot": True,
    "first_name": "Kindling",
    "username": "kindling_test_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}
DATE = 1767614400  # 2026-01-05 12:00 UTC, the FrozenClock's start


@dataclass
class Call:
    """One request the fake received, and the HTTP status it answered."""

    method: str
    params: dict[str, Any]
    status: int


@dataclass
class _Failure:
    method: str
    chat_id: str | None
    status: int
    body: dict[str, Any]


class FakeTelegram:
    """The fake Bot API; `calls` lists everything it was asked, in order."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.failures: list[_Failure] = []
        self.server: TestServer | None = None
        self.next_message_id = 1000

    @property
    def url(self) -> str:
        """The base URL to configure as `telegram_api_url`."""
        assert self.server is not None, "the fake is not started"
        return str(self.server.make_url("")).rstrip("/")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self.handle)
        return app

    def fail_next(
        self,
        method: str = "sendMessage",
        chat_id: int | None = None,
        status: int = 403,
        description: str = "Forbidden: bot was blocked by the user",
        retry_after: int | None = None,
    ) -> None:
        """Answer the next `method` call (for `chat_id`, if given) with an error."""
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        self.failures.append(_Failure(method, None if chat_id is None else str(chat_id), status, body))

    def blocked_by(self, chat_id: int) -> None:
        """The next sendMessage to this chat finds the bot blocked."""
        self.fail_next("sendMessage", chat_id, 403, "Forbidden: bot was blocked by the user")

    def flood(self, chat_id: int, retry_after: int) -> None:
        """The next sendMessage to this chat hits flood control."""
        description = f"Too Many Requests: retry after {retry_after}"
        self.fail_next("sendMessage", chat_id, 429, description, retry_after)

    def called(self, method: str) -> list[dict[str, Any]]:
        """The params of every successful call of `method`."""
        return [call.params for call in self.calls if call.method == method and call.status == 200]

    def sent_messages(self, chat_id: int | None = None) -> list[dict[str, Any]]:
        """The params of every message delivered (to one chat, if given)."""
        return [p for p in self.called("sendMessage") if chat_id is None or str(p["chat_id"]) == str(chat_id)]

    def texts(self, chat_id: int | None = None) -> list[str]:
        """The texts of the messages delivered (to one chat, if given)."""
        return [params["text"] for params in self.sent_messages(chat_id)]

    async def handle(self, request: web.Request) -> web.Response:
        method, params = request.match_info["method"], await _params(request)
        if request.match_info["token"] != self.token:
            body = {"ok": False, "error_code": 401, "description": "Unauthorized"}
            return self._answer(method, params, 401, body)
        failure = self._take_failure(method, params)
        if failure is not None:
            return self._answer(method, params, failure.status, failure.body)
        result = self._result(method, params)
        if result is None:
            body = {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
            return self._answer(method, params, 404, body)
        return self._answer(method, params, 200, {"ok": True, "result": result})

    def _take_failure(self, method: str, params: dict[str, Any]) -> _Failure | None:
        for failure in self.failures:
            if failure.method == method and failure.chat_id in (None, str(params.get("chat_id"))):
                self.failures.remove(failure)
                return failure
        return None

    def _result(self, method: str, params: dict[str, Any]) -> Any:
        if method == "getMe":
            return BOT_USER
        if method in ("setWebhook", "deleteWebhook", "answerCallbackQuery"):
            return True
        if method == "sendMessage":
            return self._message(params)
        if method == "editMessageText":
            return {**self._message(params), "message_id": int(params["message_id"])}
        return None

    def _message(self, params: dict[str, Any]) -> dict[str, Any]:
        self.next_message_id += 1
        message = {
            "message_id": self.next_message_id,
            "from": {key: BOT_USER[key] for key in ("id", "is_bot", "first_name", "username")},
            "chat": {"id": int(params["chat_id"]), "type": "private" if int(params["chat_id"]) > 0 else "supergroup"},
            "date": DATE,
            "text": params["text"],
        }
        markup = params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:  # Telegram echoes only inline keyboards
            message["reply_markup"] = markup
        return message

    def _answer(self, method: str, params: dict[str, Any], status: int, body: dict[str, Any]) -> web.Response:
        self.calls.append(Call(method, params, status))
        return web.json_response(body, status=status)


async def _params(request: web.Request) -> dict[str, Any]:
    """Bot API parameters from a JSON or form body; form values holding objects are JSON."""
    if request.content_type == "application/json":
        return dict(await request.json())
    form = await request.post()
    return {key: _decode(value) for key, value in form.items()}


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("{", "["):
        return json.loads(value)
    return value


@pytest.fixture
async def fake_telegram(aiohttp_server) -> FakeTelegram:  # type: ignore[no-untyped-def]
    """A running fake Bot API."""
    fake = FakeTelegram()
    fake.server = await aiohttp_server(fake.app())
    return fake
