"""WhatsApp Cloud API: Meta's signed webhook in, the Graph API's `/{phone_id}/messages` out.

Meta GETs `/webhooks/whatsapp` to verify it and POSTs notifications there, signed with the app secret
(bot/channels/meta.py). One POST may carry several entries, changes, messages and statuses: each message
becomes its own inbound, stored in the inbox (keyed by its `wamid`) before the 200, so Meta's retries are
stored once; statuses move the deliveries they are about forward (delivered, read, failed) in the same
request. Changes for another phone number, and every field but `messages`, are answered 200 and ignored.
What a message says is read in `whatsapp_inbound.py`; what a delivery becomes in `whatsapp_send.py`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from typing import Any

from aiohttp import web

from bot.channels.continuation import claim_code, find_code
from bot.channels.meta import (
    GraphClient,
    Pace,
    apply_statuses,
    disabled,
    paced_post,
    signed_json,
    take_in,
    verification,
    window_note,
    window_open,
)
from bot.channels.whatsapp_inbound import Buttons, read_change
from bot.channels.whatsapp_send import OPERATOR_OUTSIDE, message
from bot.delivery.channel import SendResult
from bot.intake.inbound import Inbound
from bot.services import Services
from bot.web.middlewares import json_error
from flows.whatsapp_rules import WhatsAppTemplate, by_name
from storage.db import is_sqlite, transaction
from storage.leads import get_lead
from storage.models import Conversation, Delivery, Lead
from storage.pace import SharedPace

log = logging.getLogger(__name__)
PATH = "/webhooks/whatsapp"


class WhatsAppChannel:
    """A WhatsApp Business phone number; a conversation's address is the person's `wa_id` (their number)."""

    name = "whatsapp"

    def __init__(self, services: Services) -> None:
        self.services = services
        meta = services.settings.meta
        self.meta = meta
        self.phone_id = meta.whatsapp_phone_id or ""
        self.graph = GraphClient(meta.graph_api_url, meta.whatsapp_token or "")
        shared = None if is_sqlite(services.settings.database_url) else SharedPace(services.sessions)
        self.pace = Pace(meta.whatsapp_rate, meta.whatsapp_recipient_gap, f"whatsapp:{self.phone_id}", shared)
        self.templates = by_name(meta.whatsapp_templates)
        self.buttons = Buttons(meta.whatsapp_consent_buttons, meta.whatsapp_stop_buttons)

    @staticmethod
    def enabled(services: Services) -> str | None:
        """None when enabled, else the settings that are missing."""
        return disabled(services.settings.meta.whatsapp_missing())

    def routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, verification(self.meta.verify_token))
        app.router.add_post(PATH, self.webhook)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self.graph.close()

    async def webhook(self, request: web.Request) -> web.Response:
        """Check the signature, store the messages and apply the statuses, then answer 200."""
        data = await signed_json(request, self.meta.app_secret)
        if isinstance(data, web.Response):
            return data
        now = self.services.clock.now()
        inbounds, statuses, ignored = [], [], []
        for change in _changes(data):
            value = change.get("value")
            if change.get("field") != "messages" or not isinstance(value, dict):
                ignored.append(f"field {change.get('field')!r}")
                continue
            metadata = value.get("metadata") if isinstance(value.get("metadata"), dict) else {}
            if metadata.get("phone_number_id") not in (self.phone_id, None):
                ignored.append("another phone number")
                continue
            read = read_change(value, now, self.buttons)
            inbounds += read.inbounds
            statuses += read.statuses
            ignored += read.ignored
        inbounds = [await self._continued(inbound) for inbound in inbounds]
        await take_in(self.services, inbounds)  # durable once this returns; taken in right after
        if await apply_statuses(self.services, self.name, statuses):  # its messages are stored: they come once
            return json_error(503, "a status came before its message was recorded as sent; send it again")
        answer: dict[str, Any] = {"ok": True, "messages": len(inbounds), "statuses": len(statuses)}
        if ignored:
            answer["ignored"] = ignored
        return web.json_response(answer)

    async def _continued(self, inbound: Inbound) -> Inbound:
        """A message carrying the code of the widget's "continue on WhatsApp" link joins that web visitor.

        The code came from our widget to the visitor's own browser, which opened WhatsApp with it prefilled:
        the visitor becomes a verified identity of the sender, and the page's source their touch. A code is
        claimed by the first number that sends it (`continuation.claim_code`); Meta's redelivery of the same
        message finds the same claim. Only texts that hold something shaped like a code cost a transaction.
        """
        if inbound.kind != "message" or not inbound.text or find_code(inbound.text) is None:
            return inbound
        text, sender, now = inbound.text, inbound.external_id, self.services.clock.now()
        claim = lambda session: claim_code(session, text, sender, now)  # noqa: E731
        visitor, touch = await transaction(self.services.sessions, claim)
        if visitor is None:
            return inbound
        identities = (*inbound.identities, ("visitor", visitor))
        return replace(inbound, identities=identities, touch=inbound.touch or touch)

    def can_send(self, conversation: Conversation, kind: str, now: datetime) -> str | None:
        """Why a message of `kind` may not be queued now: an operator's free-form reply after the 24-hour window.

        Nurture is never refused here: `send` sends it as its template outside the window, or holds it back.
        """
        if kind == "operator" and not window_open(conversation.last_message_at, now):
            return OPERATOR_OUTSIDE
        return None

    def window(self, conversation: Conversation, now: datetime) -> str:
        """For people (the console): whether the 24-hour window is open, and until when."""
        return window_note(self.name, conversation.last_message_at, now)

    @property
    def offers(self) -> list[WhatsAppTemplate]:
        """The templates an operator may send instead when the window is closed."""
        return list(self.meta.whatsapp_templates)

    async def send(self, delivery: Delivery) -> SendResult:
        """Free-form inside the 24-hour window, a template outside it, else held back with the reason."""
        async with self.services.sessions() as session:
            conversation = await session.get(Conversation, delivery.conversation_id)
            lead = await get_lead(session, delivery.lead_id)
        return await self.send_known(delivery, conversation, lead)

    async def send_known(self, delivery: Delivery, conversation: Conversation | None, lead: Lead) -> SendResult:
        """`send`, with the conversation and lead the dispatcher's nurture check has just read."""
        last = conversation.last_message_at if conversation is not None else None
        inside = window_open(last, self.services.clock.now())
        payload = message(delivery, inside, lead, self.templates)
        if isinstance(payload, str):
            return SendResult.held(payload)
        return await self.post(delivery.address, payload)

    async def post(self, to: str, payload: dict[str, Any]) -> SendResult:
        """POST one message to `/{phone_id}/messages`, paced; its `wamid` on success."""
        answer = await paced_post(self.graph, self.pace, self.name, f"{self.phone_id}/messages", to, payload)
        if isinstance(answer, SendResult):
            return answer
        messages = answer.get("messages")
        wamid = (
            messages[0].get("id") if isinstance(messages, list) and messages and isinstance(messages[0], dict) else None
        )
        return SendResult.sent(provider_id=wamid if isinstance(wamid, str) else None)


def _changes(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every change of every entry (ill-formed ones left out)."""
    return [
        change
        for entry in data["entry"]
        if isinstance(entry, dict) and isinstance(entry.get("changes"), list)
        for change in entry["changes"]
        if isinstance(change, dict)
    ]
