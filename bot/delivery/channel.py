"""The channel contract for sending: one small interface every adapter implements, and how a send went."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web

from storage.models import Conversation, Delivery


@dataclass(frozen=True)
class SendResult:
    """How a send went: sent, retry (after `retry_after` seconds), failed for good, or skipped (must not go)."""

    status: str
    retry_after: float | None = None
    error: str | None = None
    provider_id: str | None = None
    blocked: bool = False  # the person blocked us on this channel: an opt-out
    delivered: bool = False  # sent, and the channel says it has it (a relay accepted the email, say)
    bounced: bool = False  # failed because the address does not exist: never try it again
    marketing_off: bool = False  # the channel cannot reach the person (or they stopped its marketing): no nurture there

    @classmethod
    def sent(cls, provider_id: str | None = None, delivered: bool = False) -> SendResult:
        return cls("sent", provider_id=provider_id, delivered=delivered)

    @classmethod
    def retry(cls, error: str, after: float = 5.0) -> SendResult:
        return cls("retry", retry_after=after, error=error)

    @classmethod
    def failed(
        cls, error: str, blocked: bool = False, bounced: bool = False, marketing_off: bool = False
    ) -> SendResult:
        return cls("failed", error=error, blocked=blocked, bounced=bounced, marketing_off=marketing_off)

    @classmethod
    def held(cls, reason: str) -> SendResult:
        """Not sent, and it must not go as it is (a closed messaging window, say): skipped, with the reason."""
        return cls("skipped", error=reason)


class Channel(Protocol):
    """A channel adapter: mounts its routes, sends deliveries, starts and stops with the app.

    A channel with a messaging window (WhatsApp, Messenger, Instagram) is also `Gated`, and WhatsApp's has
    `offers`: the templates an operator may send instead when its window has closed. A channel that reads
    the conversation or the lead to send may also have `send_known(delivery, conversation, lead)`: the
    dispatcher calls it with those its nurture check has just read, sparing the channel a session per send.
    """

    name: str

    def routes(self, app: web.Application) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, delivery: Delivery) -> SendResult: ...


class Gated(Protocol):
    """A channel that refuses some messages before they are queued (a closed messaging window, say).

    The console and the operators' group ask before queueing an operator's reply (`refusal`), and the
    channel's `send` holds back, with the same reason, whatever was queued before the window closed.
    """

    def can_send(self, conversation: Conversation, kind: str, now: datetime) -> str | None:
        """Why a message of `kind` (reply, system, nurture, operator) may not go now, or None."""
        ...

    def window(self, conversation: Conversation, now: datetime) -> str | None:
        """For people: the conversation's messaging window, open until when (None: the channel has none)."""
        ...


def refusal(channel: Any, conversation: Conversation, kind: str, now: datetime) -> str | None:
    """Why `channel` would refuse a message of `kind` now (None: it would take it, or it is not Gated)."""
    check = getattr(channel, "can_send", None)
    return check(conversation, kind, now) if check is not None else None


def window_of(channel: Any, conversation: Conversation, now: datetime) -> str | None:
    """The channel's note on the conversation's messaging window, if it has one."""
    note = getattr(channel, "window", None)
    return note(conversation, now) if note is not None else None


def buttons_as_text(text: str, buttons: list[dict]) -> str:
    """For channels without buttons: list the choices under the text."""
    labels = [button["text"] for button in buttons if button.get("type", "reply") == "reply"]
    if not labels:
        return text
    return text + "\n\n" + "\n".join(f"- {label}" for label in labels)
