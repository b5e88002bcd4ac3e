"""The Telegram operators' group (KINDLING_OPERATORS_CHAT): cards with a Take button, claims, relayed replies.

A warm lead's card is posted with an inline "Take" button (callback data `take:<handoff id>`); pressing
it claims the handoff for the operator whose `telegram_user_id` is the presser's, and the card is edited
to say who took it. An operator replies to the lead by answering the card (Telegram's reply-to); the
text is relayed to the lead's own channel. Answering the card with `/won`, `/nurture [flow]` or
`/lost REASON` hands the lead back. `/inbox` in the group lists the conversations that need a reply
(`bot.handoff.inbox`), each with its link in the console. Used only by the Telegram channel.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from telegram import Bot, CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message, ReplyParameters, Update
from telegram.error import RetryAfter, TelegramError

from bot.channels.telegram_plain import dedup_key
from bot.handoff.handoffs import OUTCOMES, HandoffError, HandoffNotFound
from bot.handoff.inbox import InboxView, inbox
from bot.handoff.notify import RoomError
from bot.services import Services

log = logging.getLogger(__name__)
TAKE = "take:"
INBOX_LINES = 20  # conversations `/inbox` lists at most (the console has them all)


class BotLine(Protocol):
    """What the group needs of the Telegram channel (a protocol: that channel imports this module)."""

    @property
    def bot(self) -> Bot: ...

    async def connect(self) -> str | None: ...

    def describe(self, exc: TelegramError) -> str: ...

    def retry_seconds(self, exc: RetryAfter) -> float: ...


def take_button(handoff_id: int) -> InlineKeyboardMarkup:
    """The card's one button."""
    return InlineKeyboardMarkup([[InlineKeyboardButton("Take", callback_data=f"{TAKE}{handoff_id}")]])


class OperatorsGroup:
    """Both directions of the operators' group; outbound it is the notifier's `OperatorsRoom`."""

    def __init__(self, services: Services, channel: BotLine, chat_id: int) -> None:
        self.services, self.channel, self.chat_id = services, channel, chat_id

    def concerns(self, update: Update) -> bool:
        """Whether an update belongs here rather than to a lead's conversation."""
        if update.callback_query is not None:
            return (update.callback_query.data or "").startswith(TAKE)
        return update.message is not None and update.message.chat.id == self.chat_id

    async def handle(self, update: Update) -> web.Response:
        """A Take press or a message in the group; always answered 200 (Telegram must not redeliver)."""
        if update.callback_query is not None:
            await self._take(update.callback_query)
        elif update.message is not None:
            await self._reply(update, update.message)
        return web.json_response({"ok": True})

    async def post_card(self, text: str, handoff_id: int) -> str:
        """Post a card with its Take button; returns its message id. Raises RoomError."""
        bot, markup = self.channel.bot, take_button(handoff_id)
        sent = await self._call(lambda: bot.send_message(chat_id=self.chat_id, text=text, reply_markup=markup))
        return str(sent.message_id)

    async def card_taken(self, message_id: str, text: str) -> None:
        """Rewrite the card to say who took it, without the button. Raises RoomError."""
        bot = self.channel.bot
        await self._call(lambda: bot.edit_message_text(chat_id=self.chat_id, message_id=int(message_id), text=text))

    async def remind(self, text: str, handoff_id: int) -> None:
        """A reminder about a waiting lead, with a Take button. Raises RoomError."""
        bot, markup = self.channel.bot, take_button(handoff_id)
        await self._call(lambda: bot.send_message(chat_id=self.chat_id, text=text, reply_markup=markup))

    async def _take(self, query: CallbackQuery) -> None:
        handoffs = self.services.handoffs
        try:
            handoff_id = int((query.data or "")[len(TAKE) :])
            result = await handoffs.claim(handoff_id, await handoffs.telegram_operator(query.from_user.id))
            text, alert = result.message, not result.ok
        except ValueError:
            text, alert = "not a lead's card", True
        except HandoffError as exc:
            text, alert = str(exc), True
        bot = self.channel.bot
        await self._quietly(lambda: bot.answer_callback_query(query.id, text=text, show_alert=alert))

    async def _reply(self, update: Update, message: Message) -> None:
        """A reply to a card: relayed to the lead, or `/won`, `/nurture [flow]`, `/lost REASON` hands it back."""
        original, text = message.reply_to_message, message.text
        if text and text.split()[0].split("@")[0] == "/inbox":
            await self._say(await self._inbox(), message.message_id)
            return
        if original is None or not text or message.from_user is None:
            return  # operators talking among themselves
        handoffs = self.services.handoffs
        try:
            handoff_id = await handoffs.handoff_of_card(original.message_id)
        except HandoffNotFound:
            return  # a reply to something other than a card
        try:
            operator_id = await handoffs.telegram_operator(message.from_user.id)
            key = dedup_key(update.update_id, message.chat.id, message.message_id)
            answer = await self._act(handoff_id, operator_id, text, key)
        except HandoffError as exc:
            answer = f"{'Not done' if text.startswith('/') else 'Not sent'}: {exc}."
        if answer:
            await self._say(answer, message.message_id)

    async def _act(self, handoff_id: int, operator_id: int, text: str, key: str) -> str | None:
        """Relay the text, or hand the lead back; what to tell the operator, if anything."""
        command, _, rest = text.strip().partition(" ")
        outcome = command.split("@")[0].removeprefix("/")
        if not command.startswith("/") or outcome not in OUTCOMES:
            await self.services.handoffs.reply(handoff_id, operator_id, text, key)
            return None
        rest = rest.strip() or None
        reason, flow = (rest, None) if outcome != "nurture" else (None, rest)
        await self.services.handoffs.hand_back(handoff_id, operator_id, outcome, reason=reason, flow=flow)
        return f"Handed back: {outcome}{f' ({rest})' if rest else ''}."

    async def _inbox(self) -> str:
        """The conversations needing a reply, most urgent first, with links to them in the console."""
        services = self.services
        async with services.sessions() as session:
            found = await inbox(session, InboxView(size=INBOX_LINES), services.clock.now())
        if not found.total:
            return "Nobody is waiting for a reply."
        base = services.settings.public_url
        lines = [f"{found.total} conversation needs a reply:" if found.total == 1 else f"{found.total} need a reply:"]
        for row in found.rows:
            said = f': "{row["last_text"]}"' if row["last_text"] else ""
            lines.append(f"\n{row['label']} ({row['channel'] or '-'}), waiting {row['waiting']}{said}")
            lines.append(f"{base}/console/handoffs/{row['id']}")
        if found.total > len(found.rows):
            lines.append(f"\n…and {found.total - len(found.rows)} more: {base}/console/inbox")
        return "\n".join(lines)

    async def _say(self, text: str, reply_to: int) -> None:
        bot, quoted = self.channel.bot, ReplyParameters(message_id=reply_to)
        await self._quietly(lambda: bot.send_message(chat_id=self.chat_id, text=text, reply_parameters=quoted))

    async def _call(self, call: Callable[[], Awaitable[Any]]) -> Any:
        problem = await self.channel.connect()
        if problem is not None:
            raise RoomError(f"Telegram Bot API unavailable: {problem}")
        try:
            return await call()
        except RetryAfter as exc:
            raise RoomError(self.channel.describe(exc), retry_after=self.channel.retry_seconds(exc)) from exc
        except TelegramError as exc:
            raise RoomError(self.channel.describe(exc)) from exc

    async def _quietly(self, call: Callable[[], Awaitable[Any]]) -> None:
        """Answers to operators are best effort: the claim or refusal is stored already."""
        try:
            await self._call(call)
        except RoomError as exc:
            log.warning("telegram operators' group: answer not delivered: %s", exc)
