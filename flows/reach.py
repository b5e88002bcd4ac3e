"""Where a step goes: the channel that reaches the lead now, or why none does.

A step names a channel, a list of them in order of preference, or none. None means "where the lead can
receive it now": a chat they are on (an open widget, a messenger they wrote from), else email (a usable
address and, when `email.require_consent` is on, consent), else the conversation they came from, where a
web visitor finds it when they return. A list means the first of its channels that reaches the lead now;
when none does the step is skipped with each one's reason. One chat channel alone keeps its old meaning:
the lead's conversation there, read when they come back. A messenger of Meta's (WhatsApp, Messenger,
Instagram) reaches the lead now only within 24 hours of their last message (a WhatsApp step with a template,
at any time): after that the default moves on to email, rather than to a message the channel would hold back.

Whether a visitor is on the widget comes to flows as data (`Sockets`), never from the webchat module: the
widget's sockets open in this process, and, for sockets held by another instance, recent widget activity.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

EMAIL = "email"
# Chats a lead wrote from: they get what is sent there, wherever they are (Messenger and Instagram while their
# window is open: their channel holds back what it may not send, saying why).
MESSENGERS = ("telegram", "webhook", "whatsapp", "messenger", "instagram")
# A widget visitor whose page view or message is this recent counts as on the site, whichever instance holds
# their socket: on several instances this process only knows its own sockets. Someone idle on one page longer
# than this, connected to another instance, counts as gone and gets email instead, which still reaches them.
LIVE_WINDOW = timedelta(minutes=5)
# Meta's messengers take free-form messages only within 24 hours of the person's last message.
WINDOWED = ("whatsapp", "messenger", "instagram")
WINDOW = timedelta(hours=24)  # their customer-service window
SERVICE_KINDS = ("reply", "system", "operator")  # answers to the lead's own question: no marketing consent needed


@dataclass
class Sockets:
    """Open live sockets per (channel, id) in this process ; the webchat channel counts them."""

    open: Counter = field(default_factory=Counter)

    def opened(self, channel: str, external_id: str) -> None:
        """A socket opened."""
        self.open[(channel, external_id)] += 1

    def closed(self, channel: str, external_id: str) -> None:
        """A socket closed."""
        key = (channel, external_id)
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]

    def online(self, channel: str, external_id: str) -> bool:
        """Whether at least one socket is open."""
        return (channel, external_id) in self.open


@dataclass(frozen=True)
class EmailPolicy:
    """Whether email can be sent at all, and whether nurture email needs the lead's consent."""

    enabled: bool = False
    require_consent: bool = True


def email_block(lead: Any, policy: EmailPolicy, service: bool = False) -> str | None:
    """Why email cannot go to this lead (None: it can); `service` messages need no marketing consent."""
    if not policy.enabled:
        return "email is not set up"
    if not lead.email:
        return "no email address"
    if lead.email_bounced_at is not None:
        return "email bounced"
    if service:
        return None
    if lead.email_opted_out_at is not None:
        return "unsubscribed from email"
    if policy.require_consent and lead.email_consent_at is None:
        return "no email consent"
    return None


@dataclass(frozen=True)
class Route:
    """Where a step goes: a conversation (None for email: made on first use) on a channel, and why."""

    channel: str
    conversation: Any | None
    why: str


def choose(
    wanted: Sequence[str],
    lead: Any,
    reach: Sequence[Any],
    live: Collection[int],
    policy: EmailPolicy,
    now: datetime | None = None,
    template: bool = False,
) -> Route | str:
    """The route for a step (`wanted`: its channels, empty for the default), or why nothing reaches the lead.

    `reach`: the lead's chat conversations (rows with id, channel, last_message_at, created_at);
    `live`: the ids of those the lead is on now. With `now`, a messenger whose window has closed does not
    reach the lead now (`window_closed`), so the default and a list of channels move on to email; `template`:
    the step has a WhatsApp template, which may go after WhatsApp's window.
    """
    if len(wanted) == 1 and wanted[0] != EMAIL:  # one chat channel: the conversation there, read or not
        found = _latest(c for c in reach if c.channel == wanted[0])
        return Route(wanted[0], found, "as the step says") if found else f"not on {wanted[0]}"
    reasons: list[str] = []
    for channel in wanted or ("chat", EMAIL):
        route = _now(channel, lead, reach, live, policy, now, template)
        if isinstance(route, Route):
            return Route(route.channel, route.conversation, ", ".join([*reasons, route.why]))
        reasons.append(route)
    came_from = _latest(reach) if not wanted else None
    if came_from is not None:  # the default falls back to where they came from: they see it when they return
        return Route(came_from.channel, came_from, ", ".join([*reasons, "stored until they return"]))
    return ", ".join(dict.fromkeys(reasons))


def _now(
    channel: str,
    lead: Any,
    reach: Sequence[Any],
    live: Collection[int],
    policy: EmailPolicy,
    now: datetime | None = None,
    template: bool = False,
) -> Route | str:
    """A route on `channel` (`chat`: any chat) when it reaches the lead now, else why not."""
    if channel == EMAIL:
        blocked = email_block(lead, policy)
        return blocked or Route(EMAIL, None, "has consent" if policy.require_consent else "has an address")
    on = [c for c in reach if channel in ("chat", c.channel) and (c.channel in MESSENGERS or c.id in live)]
    closed = [c for c in on if window_closed(c, now, template)]
    on = [c for c in on if c not in closed]
    if closed and not on:
        return ", ".join(dict.fromkeys(f"{c.channel}'s 24-hour window has closed" for c in closed))
    if not on:
        return "not on the widget now" if channel in ("chat", "webchat") else f"not on {channel}"
    found = _latest(on)
    why = "on the widget now" if found.channel == "webchat" else f"wrote from {found.channel}"
    return Route(found.channel, found, why)


def window_closed(conversation: Any, now: datetime | None, template: bool = False) -> bool:
    """Whether a messenger's window for free-form messages has closed (`now` None: not asked; a WhatsApp
    template may go after it). The channel itself holds back what it may not send; this only steers a step
    that may go elsewhere (the default, or a list of channels) to a channel that reaches the lead now."""
    if now is None or conversation.channel not in WINDOWED or (template and conversation.channel == "whatsapp"):
        return False
    last = conversation.last_message_at
    return last is None or now >= last + WINDOW


def _latest(conversations: Any) -> Any | None:
    return max(conversations, key=lambda c: (c.last_message_at or c.created_at, c.id), default=None)
