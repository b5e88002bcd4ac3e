"""A lead's conversations and a conversation's messages over the API, paged by cursor."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlmodel import select

from bot.api.auth import scope
from bot.api.paging import page_of
from bot.api.params import path_id
from bot.api.spec import BAD_REQUEST, NOT_FOUND, NULLABLE_TIME, PAGING, PATH_ID, TIME, ok, operation, page
from bot.services import SERVICES
from bot.web.middlewares import json_error
from storage.leads import get_lead
from storage.models import Conversation, Message


def conversation_item(conversation: Conversation) -> dict[str, Any]:
    """A conversation: its channel, who owns it now (bot, queued, human, closed), when it last spoke."""
    return {
        "id": conversation.id,
        "lead_id": conversation.lead_id,
        "channel": conversation.channel,
        "owner": conversation.owner,
        "created_at": conversation.created_at.isoformat(),
        "last_message_at": conversation.last_message_at.isoformat() if conversation.last_message_at else None,
    }


def message_item(message: Message) -> dict[str, Any]:
    """One line of a transcript."""
    return {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "lead_id": message.lead_id,
        "direction": message.direction,
        "author": message.author,
        "text": message.text,
        "buttons": list(message.buttons),
        "at": message.at.isoformat(),
    }


@scope("leads:read")
async def lead_conversations(request: web.Request) -> web.Response:
    """The lead's conversations, newest first (a merged-away id answers for the lead it became)."""
    lead_id = path_id(request)
    paging = page_of(request)
    async with request.app[SERVICES].sessions() as session:
        lead = await get_lead(session, lead_id)
        statement = paging.apply(select(Conversation).where(Conversation.lead_id == lead.id), Conversation.id)
        rows = (await session.exec(statement)).all()
    return web.json_response(paging.body(rows, conversation_item))


@scope("leads:read")
async def conversation_messages(request: web.Request) -> web.Response:
    """A conversation's messages oldest first, as a transcript reads; new ones come on later pages."""
    conversation_id = path_id(request)
    paging = page_of(request, order="asc")
    async with request.app[SERVICES].sessions() as session:
        if await session.get(Conversation, conversation_id) is None:
            return json_error(404, f"no conversation {conversation_id}")
        statement = paging.apply(select(Message).where(Message.conversation_id == conversation_id), Message.id)
        rows = (await session.exec(statement)).all()
    return web.json_response(paging.body(rows, message_item))


SCHEMAS = {
    "Conversation": {
        "type": "object",
        "required": ["id", "lead_id", "channel", "owner", "created_at", "last_message_at"],
        "properties": {
            "id": {"type": "integer"},
            "lead_id": {"type": "integer"},
            "channel": {"type": "string"},
            "owner": {"type": "string", "enum": ["bot", "queued", "human", "closed"]},
            "created_at": TIME,
            "last_message_at": NULLABLE_TIME,
        },
    },
    "Message": {
        "type": "object",
        "required": ["id", "conversation_id", "lead_id", "direction", "author", "text", "buttons", "at"],
        "properties": {
            "id": {"type": "integer"},
            "conversation_id": {"type": "integer"},
            "lead_id": {"type": "integer"},
            "direction": {"type": "string", "enum": ["in", "out"]},
            "author": {"type": "string", "enum": ["visitor", "bot", "operator"]},
            "text": {"type": "string"},
            "buttons": {"type": "array", "description": "the buttons sent with the message"},
            "at": TIME,
        },
    },
}
_ANSWERS = {"400": BAD_REQUEST, "404": NOT_FOUND}
OPENAPI = {
    "/api/leads/{id}/conversations": {
        "get": operation(
            "A lead's conversations, newest first",
            "leads:read",
            {"200": ok("a page of conversations", page("Conversation")), **_ANSWERS},
            [PATH_ID, *PAGING],
        ),
    },
    "/api/conversations/{id}/messages": {
        "get": operation(
            "A conversation's messages, oldest first",
            "leads:read",
            {"200": ok("a page of messages", page("Message")), **_ANSWERS},
            [PATH_ID, *PAGING],
        ),
    },
}
