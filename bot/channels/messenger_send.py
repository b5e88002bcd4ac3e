"""What a delivery becomes on Messenger or Instagram: its window, its `messaging_type`, its quick replies.

Meta's Messenger Platform policy: within 24 hours of the person's last message anything may be sent
(`messaging_type=RESPONSE`). After that only a human agent's reply may go, tagged `MESSAGE_TAG` /
`HUMAN_AGENT`, up to 7 days after the person's last message; nothing may go after 7 days. Kindling sends
an operator's reply that way; nurture, replies and system messages outside the 24 hours are held back with
the reason (`kindling lead show`, the console and the flow report show it), and the flow goes on. Step
buttons go as quick replies (flows/messenger_rules.py); Telegram-style "share my phone" is Messenger's
`user_phone_number` quick reply (Instagram's quick replies through the Page are plain text only).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.channels.meta import HUMAN_AGENT_WINDOW, window_note, window_open
from bot.delivery.channel import buttons_as_text
from flows.messenger_rules import quick_reply_problem
from storage.models import Delivery

# Messenger: "text ... must be UTF-8 and has a 2000 character limit"; Instagram: 1000 bytes.
MAX_CHARS = {"messenger": 2000}
MAX_BYTES = {"instagram": 1000}
NAMES = {"messenger": "Messenger", "instagram": "Instagram"}


def refusal(channel: str, kind: str, last_message_at: datetime | None, now: datetime) -> str | None:
    """Why a message of `kind` may not go now (None: it may), by the 24-hour and 7-day windows."""
    if window_open(last_message_at, now):
        return None
    name = NAMES[channel]
    if kind == "operator":
        if last_message_at is not None and now < last_message_at + HUMAN_AGENT_WINDOW:
            return None
        return (
            f"more than 7 days since the person's last message on {name}: Meta allows no reply now, not even "
            "a human agent's; they must write first"
        )
    return f"outside {name}'s 24-hour window ({_ago(last_message_at, now)})"


def messaging_type(last_message_at: datetime | None, now: datetime) -> dict[str, str]:
    """`RESPONSE` inside the 24-hour window; a human agent's tag after it (callers checked `refusal`)."""
    if window_open(last_message_at, now):
        return {"messaging_type": "RESPONSE"}
    return {"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}


def message(channel: str, delivery: Delivery, last_message_at: datetime | None, now: datetime) -> dict[str, Any]:
    """The Send API body for a delivery (the caller checked `refusal`)."""
    labels = [button["text"] for button in delivery.buttons if button.get("type", "reply") == "reply"]
    fits = quick_reply_problem(labels) is None
    text = delivery.text if fits else buttons_as_text(delivery.text, delivery.buttons)
    content: dict[str, Any] = {"text": _cut(channel, text)}
    replies = [{"content_type": "text", "title": label, "payload": label} for label in labels] if fits else []
    if channel == "messenger" and any(button.get("type") == "contact" for button in delivery.buttons):
        replies.append({"content_type": "user_phone_number"})  # shown only when their profile has a number
    if replies:
        content["quick_replies"] = replies[:13]
    return {"recipient": {"id": delivery.address}, **messaging_type(last_message_at, now), "message": content}


def window(channel: str, last_message_at: datetime | None, now: datetime) -> str:
    """For people: the 24-hour window, and how long an operator may still reply (HUMAN_AGENT)."""
    note = window_note(channel, last_message_at, now)
    if last_message_at is None or window_open(last_message_at, now):
        return note
    until = last_message_at + HUMAN_AGENT_WINDOW
    if now < until:
        return f"{note}; an operator may reply (as a human agent) until {until:%Y-%m-%d %H:%M} UTC"
    return f"{note}; an operator may not reply either: more than 7 days since they last wrote"


def _cut(channel: str, text: str) -> str:
    if channel in MAX_BYTES:
        return text.encode()[: MAX_BYTES[channel]].decode(errors="ignore")
    return text[: MAX_CHARS.get(channel, 2000)]


def _ago(last_message_at: datetime | None, now: datetime) -> str:
    if last_message_at is None:
        return "the person has not written yet"
    hours = (now - last_message_at).total_seconds() / 3600
    since = f"{hours:.0f} hours" if hours < 48 else f"{hours / 24:.0f} days"
    return f"the person last wrote {since} ago"
