"""The types of the update fields Kindling reads: python-telegram-bot's `de_json` does not check them.

Telegram itself sends well-typed updates; anything else reaching the webhook (a client with the secret
gone wrong, a replayed body edited by hand) is refused with 400 instead of failing deep in intake.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from telegram import Chat, ChatMember, Contact, Message, Update, User

INT64 = 2**63  # Telegram's ids fit in 52 bits; the database's integer columns take 64


def wrong_field(update: Update) -> str | None:
    """The first field Kindling reads whose value has the wrong type (or an id out of range); None if all fit.

    Objects are checked before their fields, and the walk stops at the first misfit, so a field is only
    read from an object of the right type.
    """
    for name, value, kind in _fields(update):
        if not _fits(value, kind):
            return name
    return None


def _fits(value: Any, kind: Any) -> bool:
    if isinstance(value, bool):  # a bool is an int to isinstance, never to Telegram
        return False
    if isinstance(value, int):
        return isinstance(value, kind) and -INT64 <= value < INT64
    return isinstance(value, kind)


def _fields(update: Update) -> Iterator[tuple[str, Any, Any]]:
    if update.message is not None:
        yield from _message_fields("message", update.message)
    query = update.callback_query
    if query is not None:
        yield "callback_query.id", query.id, str
        yield "callback_query.data", query.data, str | None
        yield from _user_fields("callback_query.from", query.from_user)
        if query.message is not None:
            yield "callback_query.message.chat", query.message.chat, Chat
            yield "callback_query.message.chat.id", query.message.chat.id, int
    change = update.my_chat_member
    if change is not None:
        yield "my_chat_member.chat", change.chat, Chat
        yield "my_chat_member.chat.id", change.chat.id, int
        yield "my_chat_member.chat.type", change.chat.type, str
        yield "my_chat_member.date", change.date, datetime
        yield from _user_fields("my_chat_member.from", change.from_user)
        for side in ("old_chat_member", "new_chat_member"):
            yield f"my_chat_member.{side}", getattr(change, side), ChatMember
            yield f"my_chat_member.{side}.status", getattr(change, side).status, str


def _message_fields(name: str, message: Message) -> Iterator[tuple[str, Any, Any]]:
    yield f"{name}.message_id", message.message_id, int
    yield f"{name}.chat", message.chat, Chat
    yield f"{name}.chat.id", message.chat.id, int
    yield f"{name}.chat.type", message.chat.type, str
    yield f"{name}.text", message.text, str | None
    yield f"{name}.caption", message.caption, str | None
    if message.from_user is not None:
        yield from _user_fields(f"{name}.from", message.from_user)
    if message.reply_to_message is not None:
        yield f"{name}.reply_to_message", message.reply_to_message, Message
        yield f"{name}.reply_to_message.message_id", message.reply_to_message.message_id, int
    contact = message.contact
    if contact is not None:
        yield f"{name}.contact", contact, Contact
        yield f"{name}.contact.phone_number", contact.phone_number, str
        yield f"{name}.contact.first_name", contact.first_name, str
        yield f"{name}.contact.last_name", contact.last_name, str | None
        yield f"{name}.contact.user_id", contact.user_id, int | None


def _user_fields(name: str, user: User | None) -> Iterator[tuple[str, Any, Any]]:
    yield name, user, User
    assert user is not None  # not read past here unless it is a User
    yield f"{name}.id", user.id, int
    yield f"{name}.first_name", user.first_name, str
    yield f"{name}.last_name", user.last_name, str | None
    yield f"{name}.language_code", user.language_code, str | None
