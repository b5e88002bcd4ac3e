"""Signed JSON webhooks for any other live-chat or messenger provider (one `source` each).

Inbound: `POST /webhooks/inbound/{source}` with headers `X-Kindling-Timestamp` (Unix seconds) and
`X-Kindling-Signature: sha256=<hex HMAC-SHA256(secret, "{timestamp}.{raw body}")>`; timestamps more
than 300 s away from ours are refused, and a repeated delivery `id` is stored once.
Outbound replies are POSTed to the source's `url`, signed the same way. The JSON format is in docs/channels.md.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import web

from bot.config import WebhookSource
from bot.delivery.channel import SendResult
from bot.intake.inbound import Inbound, Profile
from bot.services import Services
from bot.web.jsonbody import BadJson, parse_json
from bot.web.middlewares import json_error
from bot.web.signing import same, sign, signed_headers
from storage.models import Delivery

log = logging.getLogger(__name__)
REPLAY_WINDOW = 300
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # str.isdigit() takes "²", which int() refuses
_ID = re.compile(r"[\w.:@-]{1,128}")
_KINDS = {"message": "message", "button": "button"}


class WebhookChannel:
    """Every configured webhook source; conversations are named `<source>:<their conversation id>`."""

    name = "webhook"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.sources = services.settings.webhook_sources
        self.http: aiohttp.ClientSession | None = None

    @staticmethod
    def enabled(services: Services) -> str | None:
        """None when at least one source has its secret set."""
        return None if services.settings.webhook_sources else "no source in config.toml has its secret set"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/webhooks/inbound/{source}", self.inbound)

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def inbound(self, request: web.Request) -> web.Response:
        """Verify, store once, answer; the replies go out after the answer."""
        source = self.sources.get(request.match_info["source"])
        if source is None:
            return json_error(404, "unknown webhook source")
        body = await request.read()
        if (problem := self._verify(source, request.headers, body)) is not None:
            return json_error(403, problem)
        try:
            inbound = delivery_inbound(source.name, parse_json(body), self.services.clock.now())
        except ValueError as exc:  # BadJson (malformed) is a ValueError too
            return json_error(exc.status if isinstance(exc, BadJson) else 422, str(exc))
        received = await self.services.intake.receive(inbound)
        self.services.after_commit(received)
        return web.json_response({"ok": True, "lead_id": received.lead_id, "duplicate": received.duplicate})

    def _verify(self, source: WebhookSource, headers: Any, body: bytes) -> str | None:
        timestamp = headers.get("X-Kindling-Timestamp", "")
        signature = headers.get("X-Kindling-Signature", "")
        if not _TIMESTAMP.fullmatch(timestamp) or not signature:
            return "missing X-Kindling-Timestamp or X-Kindling-Signature"
        if abs(self.services.clock.now().timestamp() - int(timestamp)) > REPLAY_WINDOW:
            return "timestamp outside the 300 s window"
        if not same(signature, sign(source.secret, timestamp, body)):
            return "bad signature"
        return None

    async def send(self, delivery: Delivery) -> SendResult:
        """POST the reply to the source's URL, signed; 2xx delivered, 429/5xx retry, other 4xx failed."""
        source_name, _, conversation = delivery.address.partition(":")
        source = self.sources.get(source_name)
        if source is None or not source.url:
            return SendResult.failed(f"webhook source {source_name} has no reply url")
        body = json.dumps(
            {
                "id": delivery.idempotency_key,
                "conversation": conversation,
                "text": delivery.text,
                "buttons": [b["text"] for b in delivery.buttons if b.get("type", "reply") == "reply"],
            }
        ).encode()
        return await self._post(source, body, delivery.idempotency_key)

    async def _post(self, source: WebhookSource, body: bytes, key: str) -> SendResult:
        headers = {
            **signed_headers(source.secret, body, self.services.clock.now()),
            "Content-Type": "application/json",
            "X-Kindling-Delivery": key,
        }
        assert self.http is not None, "channel not started"
        try:
            async with self.http.post(source.url, data=body, headers=headers) as response:
                if response.status < 300:  # the provider has it: delivered, as far as we can tell
                    return SendResult.sent(delivered=True)
                error = f"{source.name} answered {response.status}"
                if response.status == 429 or response.status >= 500:
                    return SendResult.retry(error, after=_retry_after(response.headers.get("Retry-After")))
                return SendResult.failed(error)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return SendResult.retry(f"{source.name} unreachable: {type(exc).__name__}")


def delivery_inbound(source: str, data: Any, now: datetime) -> Inbound:
    """A provider's delivery (parsed JSON) from `source` as an Inbound; raises ValueError saying what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    delivery_id, conversation, text = data.get("id"), data.get("conversation"), data.get("text")
    user = data.get("user") if isinstance(data.get("user"), dict) else {}
    kind = data.get("type", "message")
    kind = _KINDS.get(kind) if isinstance(kind, str) else None
    for name, value in (("id", delivery_id), ("conversation", conversation), ("user.id", user.get("id"))):
        if not isinstance(value, str) or not _ID.fullmatch(value):  # match() would let a trailing newline in
            raise ValueError(f"'{name}' must be a string of 1 to 128 letters, digits, _ . : @ -")
    if kind is None:
        raise ValueError("'type' must be message or button")
    if not isinstance(text, str) or not text.strip() or len(text) > 4096:
        raise ValueError("'text' must be 1 to 4096 characters")
    first, _, last = (_text(user.get("name")) or "").partition(" ")
    return Inbound(
        channel=WebhookChannel.name,
        external_id=f"{source}:{conversation}",
        kind=kind,
        dedup_key=f"webhook:{source}:{delivery_id}",
        identities=((f"webhook:{source}", user["id"]),),
        at=now,
        text=text,
        properties={"value": text} if kind == "button" else {},
        profile=Profile(
            first_name=first or None,
            last_name=last or None,
            email=_text(user.get("email")),
            phone=_text(user.get("phone")),
            locale=_text(user.get("locale")),
        ),
    )


def _retry_after(header: str | None) -> float:
    return float(header) if header and _TIMESTAMP.fullmatch(header) else 30.0


def _text(value: Any) -> str | None:
    return value[:200] if isinstance(value, str) and value else None
