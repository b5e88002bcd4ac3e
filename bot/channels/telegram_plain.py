"""The most common update read without python-telegram-bot: a person's plain text in a private chat.

`Update.de_json` builds a Message of some two hundred attributes for every update; for the update a bot
gets most, that was most of the CPU of answering the webhook. This reads that one shape straight from the
JSON and declines (None) anything else, so the rest still goes through python-telegram-bot. Whenever it
accepts an update, the Inbound is the one the python-telegram-bot path makes (a property test,
tests/test_parser_properties.py, holds the two to that): to decline is always safe, to accept is only
for what it checks in full.

Accepted: `{"update_id", "message"}` only; the message with no keys beyond `message_id`, `from`, `chat`,
`date` and `text` (no entities, no reply, no caption, no contact, no forward: a forwarded text is
someone else's words, which the python-telegram-bot path marks); a text that is not a command; a private
chat; the sender and chat with their usual fields, each of its type (ids in 64 bits, no bools for ints).

Both paths key an update by `dedup_key`: Telegram numbers updates afresh (at random) after a week without
any, so an `update_id` alone may come back on another chat with other content; with its chat and message a
key names one update, and Telegram's resend of it maps to the same key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.intake.inbound import Inbound, Profile

INT64 = 2**63
MAX_DATE = 2**32  # seconds since 1970: what python-telegram-bot turns into a datetime without overflowing
MESSAGE_KEYS = frozenset({"message_id", "from", "chat", "date", "text"})
USER_KEYS = frozenset({"id", "is_bot", "first_name", "last_name", "username", "language_code", "is_premium"})
CHAT_KEYS = frozenset({"id", "type", "first_name", "last_name", "username"})


def plain_message(data: dict[str, Any], now: datetime) -> Inbound | None:
    """The Inbound of a plain private text message, or None to leave the update to python-telegram-bot."""
    update_id, message = data.get("update_id"), data.get("message")
    if len(data) != 2 or not _id(update_id) or type(message) is not dict or not message.keys() <= MESSAGE_KEYS:
        return None
    user, chat, text, date = message.get("from"), message.get("chat"), message.get("text"), message.get("date")
    if not (_id(message.get("message_id")) and type(date) is int and 0 <= date < MAX_DATE):
        return None
    if type(text) is not str or not text or text.startswith("/"):  # a command: /start reads a deep link
        return None
    if not (_user(user) and _chat(chat)):
        return None
    return Inbound(
        channel="telegram",
        external_id=str(chat["id"]),
        kind="message",
        dedup_key=dedup_key(update_id, chat["id"], message["message_id"]),
        identities=(("telegram", str(user["id"])),),
        at=now,
        text=text,
        profile=Profile(
            first_name=user["first_name"], last_name=user.get("last_name"), locale=user.get("language_code")
        ),
    )


def dedup_key(update_id: int, chat_id: int, item: int | str) -> str:
    """An update's key: its id, its chat and what in the chat it is (a message id, a button press's id)."""
    return f"telegram:update:{update_id}:{chat_id}:{item}"


def _id(value: Any) -> bool:
    return type(value) is int and -INT64 <= value < INT64


def _user(user: Any) -> bool:
    return (
        type(user) is dict
        and user.keys() <= USER_KEYS
        and _id(user.get("id"))
        and type(user.get("is_bot")) is bool
        and type(user.get("first_name")) is str
        and all(type(user.get(key, "")) is str for key in ("last_name", "username", "language_code"))
        and type(user.get("is_premium", False)) is bool
    )


def _chat(chat: Any) -> bool:
    return (
        type(chat) is dict
        and chat.keys() <= CHAT_KEYS
        and _id(chat.get("id"))
        and chat.get("type") == "private"
        and all(type(chat.get(key, "")) is str for key in ("first_name", "last_name", "username"))
    )
