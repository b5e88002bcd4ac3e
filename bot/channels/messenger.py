"""Messenger and Instagram: Meta's signed webhook in, the Graph API's `/me/messages` (the Send API) out.

Two channels, one webhook: `messenger` (a Facebook Page's conversations) and `instagram` (the conversations of
the Instagram professional account linked to that Page). Instagram messaging through the Messenger Platform
goes through the same Page, with the same Page access token (`KINDLING_MESSENGER_PAGE_TOKEN`), the same
`/webhooks/messenger` and the same Send API; still they are separate channel names because they are separate
places a lead is: reports break down by them, a flow step can name one, the ids differ (PSID vs IGSID, so one
person on both is two verified identities until something else joins them), and the two differ in detail
(text length, quick reply kinds, read reports). `MessengerChannel` owns the webhook; `InstagramChannel` only
sends.

Meta GETs `/webhooks/messenger` to verify it and POSTs notifications there, signed with the app secret
(bot/channels/meta.py), `object` `page` (Messenger) or `instagram`. One POST may carry several entries and
events: each message, button press and referral becomes its own inbound, stored in the inbox (keyed by its
`mid`) before the 200, so Meta's retries are stored once; delivery and read reports move the deliveries they
are about forward in the same request. What an event says is read in `messenger_inbound.py`; what a
delivery becomes (the 24-hour window, `HUMAN_AGENT`, quick replies) in `messenger_send.py`.

Pacing: Instagram documents 100 Send API calls a second per account for text; Messenger's limit is per 24
hours and grows with the Page's audience. Both are paced at `RATE` a second from this process and back off
on Meta's rate-limit errors (codes 4, 32, 613: bot/channels/meta.py's THROUGHPUT).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from bot.channels import messenger_send as rules
from bot.channels.messenger_inbound import read_notification
from bot.channels.meta import (
    GraphClient,
    Pace,
    apply_statuses,
    apply_watermarks,
    disabled,
    paced_post,
    signed_json,
    take_in,
    verification,
)
from bot.delivery.channel import SendResult
from bot.services import Services
from bot.web.signing import read_visitor_link
from storage.db import is_sqlite
from storage.models import Conversation, Delivery
from storage.pace import SharedPace

log = logging.getLogger(__name__)
PATH = "/webhooks/messenger"
OBJECTS = {"page": "messenger", "instagram": "instagram"}
RATE = 100.0  # Send API calls a second from this process
RECIPIENT_GAP = timedelta(0)  # Meta sets no per-person rate on Messenger; a lead's messages go in order anyway


class MessengerChannel:
    """A Facebook Page's Messenger conversations; the address is the person's Page-scoped id (PSID)."""

    name = "messenger"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.meta = services.settings.meta
        self.graph = GraphClient(self.meta.graph_api_url, self.meta.messenger_page_token or "")
        # On PostgreSQL the budget is shared by every instance (storage.pace), as WhatsApp's is.
        shared = None if is_sqlite(services.settings.database_url) else SharedPace(services.sessions)
        self.pace = Pace(RATE, RECIPIENT_GAP, self.name, shared)

    @staticmethod
    def enabled(services: Services) -> str | None:
        """None when enabled, else the settings that are missing."""
        return disabled(services.settings.meta.messenger_missing())

    def routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, verification(self.meta.verify_token))
        app.router.add_post(PATH, self.webhook)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self.graph.close()

    async def webhook(self, request: web.Request) -> web.Response:
        """Check the signature, store the inbounds and apply the reports, then answer 200."""
        data = await signed_json(request, self.meta.app_secret)
        if isinstance(data, web.Response):
            return data
        channel = OBJECTS.get(data.get("object"))  # type: ignore[arg-type]
        if channel is None:
            return web.json_response({"ok": True, "ignored": [f"object {data.get('object')!r}"]})
        read = read_notification(channel, data["entry"], self.services.clock.now(), self._visitor)
        await take_in(self.services, read.inbounds)  # durable once this returns; taken in right after
        await apply_statuses(self.services, channel, read.statuses)
        await apply_watermarks(self.services, channel, read.watermarks)
        answer: dict[str, Any] = {
            "ok": True,
            "messages": len(read.inbounds),
            "statuses": len(read.statuses) + len(read.watermarks),
        }
        if read.ignored:
            answer["ignored"] = read.ignored
        return web.json_response(answer)

    def _visitor(self, link: str) -> str | None:
        """The visitor id in a deep link's `v-`, if its signature is ours."""
        return read_visitor_link(self.services.secret_key, link)

    def can_send(self, conversation: Conversation, kind: str, now: datetime) -> str | None:
        """Why a message of `kind` may not go to the conversation now (its window), or None."""
        return rules.refusal(self.name, kind, conversation.last_message_at, now)

    def window(self, conversation: Conversation, now: datetime) -> str | None:
        """The conversation's window for people: open until when, and how long an operator may still reply."""
        return rules.window(self.name, conversation.last_message_at, now)

    async def send(self, delivery: Delivery) -> SendResult:
        """Send within the window (RESPONSE, or HUMAN_AGENT for an operator), else hold it back saying why."""
        async with self.services.sessions() as session:
            conversation = await session.get(Conversation, delivery.conversation_id)
        last = conversation.last_message_at if conversation is not None else None
        now = self.services.clock.now()
        refused = rules.refusal(self.name, delivery.kind, last, now)
        if refused is not None:
            return SendResult.held(refused)
        return await self.post(delivery.address, rules.message(self.name, delivery, last, now))

    async def post(self, to: str, payload: dict[str, Any]) -> SendResult:
        """POST one message to `/me/messages`, paced; its `message_id` on success."""
        answer = await paced_post(self.graph, self.pace, self.name, "me/messages", to, payload)
        if isinstance(answer, SendResult):
            return answer
        mid = answer.get("message_id")
        return SendResult.sent(provider_id=mid if isinstance(mid, str) else None)


class InstagramChannel(MessengerChannel):
    """The Instagram account linked to the Page; the address is the person's Instagram-scoped id (IGSID).

    Its notifications come to MessengerChannel's webhook (`object` `instagram`); it only sends.
    """

    name = "instagram"

    def routes(self, app: web.Application) -> None:
        pass
