"""Telegram: python-telegram-bot in custom-webhook mode, behind our own aiohttp server.

Telegram POSTs updates to `/webhooks/telegram` with the header `X-Telegram-Bot-Api-Secret-Token`;
each update is stored once (keyed by its `update_id`, chat and message: `telegram_plain.dedup_key`)
before we answer 200, so a retry by Telegram changes nothing. Text messages, captions, shared contacts,
button presses (callback queries), `/start` and the person blocking or unblocking the bot (`my_chat_member`
in a private chat) are read. Telegram redelivers anything not answered with 2xx for hours, so everything
else is answered 200: a message we cannot read (a sticker, a group chat) and every other update type,
including types Telegram adds later, are ignored; an update python-telegram-bot cannot parse (Telegram's
objects grew a field it requires, say) is kept as it came in the inbox, with why (`Inbox.keep`). Only a body
that is no update at all (not JSON, no integer `update_id`) or has a field of the wrong type is refused (400).

Deep links `https://t.me/<bot>?start=<payload>` arrive as `/start <payload>`: the widget's signed visitor link
and the page's source/UTM, in the format `bot.channels.continuation` owns (shared with Messenger's `ref`); e.g.
`/start v-0123456789abcdef-0a1b2c3d4e5f_s-google_c-spring`. A malformed payload is ignored as a whole (it is
still a start). A correctly signed visitor id becomes the identity ("visitor", id), so a web visitor who
continues in Telegram stays one lead, and nobody can attach themselves to a visitor whose id they merely guessed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import httpx
from aiohttp import web
from telegram import (
    Bot,
    CallbackQuery,
    ChatMemberUpdated,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    Message,
    ReplyKeyboardMarkup,
    Update,
    User,
)
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.ext import AIORateLimiter, Application
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from bot.channels.continuation import parse_payload as parse_deep_link
from bot.channels.telegram_check import wrong_field
from bot.channels.telegram_operators import OperatorsGroup
from bot.channels.telegram_plain import dedup_key, plain_message
from bot.delivery.channel import SendResult, buttons_as_text
from bot.intake.contacts import normalize_phone
from bot.intake.inbound import Inbound, Profile
from bot.services import Services
from bot.web.jsonbody import parse_json
from bot.web.middlewares import json_error
from bot.web.signing import read_visitor_link, same
from storage.db import is_sqlite
from storage.models import Delivery
from storage.pace import SharedPace, chat_key

log = logging.getLogger(__name__)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message", "callback_query", "my_chat_member"]
MAX_CALLBACK_BYTES = 64
# OSError: datetime.fromtimestamp refuses a date far out of range with it on some platforms ("Value too large").
_BAD_UPDATE = (AttributeError, KeyError, TypeError, ValueError, OverflowError, OSError)


CHAT_INTERVAL = 1.0  # seconds between two messages to one private chat
GROUP_INTERVAL = 3.0  # to one group (20 a minute)
OVERALL_INTERVAL = 1 / 30  # between any two messages
LATE = 0.01  # seconds: a send this much later than its chat slot moves the chat's next slot
# The shared budgets hand out slots on the database's clock, but each instance sleeps to them on its own
# event loop, which a busy moment delays by some milliseconds: they leave 3% spare so that jitter does not
# put two slots closer than Telegram allows.
SHARED_SPARE = 1.03
# Nurture messages of this process waiting for the overall budget at once. The overall queue is first come,
# first served: with a drip backlog, the dispatcher's dozens of nurture sends would stand in it ahead of an
# operator card or a reply, two seconds deep. A few keep the budget busy (the next one is always ready).
NURTURE_QUEUED = 3


class TelegramPacing(AIORateLimiter):
    """Telegram's limits: 30 messages/s overall and 20/min per group (PTB's), and 1/s per chat.

    Neither budget allows a burst: Telegram tolerates short ones, but a strict 1/s is what it asks for,
    and a burst past it may be answered with 429. A chat's next message is timed from when its last one
    actually went out (after waiting for the overall budget too), not from when it got its chat slot.
    Nothing waits on a 429 here: the delivery is rescheduled after `retry_after`, so other leads are not
    held up. With `shared` (PostgreSQL), the budgets are kept in the database, so several instances
    together stay within them; otherwise (SQLite: one instance) they are kept in this process. Nurture
    calls hold at most NURTURE_QUEUED places in the overall queue, so everything else goes ahead of them.
    """

    def __init__(self, shared: SharedPace | None = None) -> None:
        # Overall: one send every 1/30 s, no burst on top (a leaky bucket of 30 lets 60 through in the first second).
        super().__init__(overall_max_rate=1, overall_time_period=OVERALL_INTERVAL, max_retries=0)
        self.chats: dict[int, _ChatPace] = {}
        self.shared = shared
        self.nurture = asyncio.Semaphore(NURTURE_QUEUED)

    async def process_request(self, callback, args, kwargs, endpoint, data, rate_limit_args):  # type: ignore[no-untyped-def]
        """Pace one Bot API call; `rate_limit_args={"nurture": True}` lets other calls go ahead of it."""
        async with _Turn(self.nurture if (rate_limit_args or {}).get("nurture") else None) as turn:
            return await self._paced(turn, callback, args, kwargs, endpoint, data, rate_limit_args)

    async def _paced(self, turn: _Turn, callback, args, kwargs, endpoint, data, rate_limit_args):  # type: ignore[no-untyped-def]
        chat_id = data.get("chat_id")
        request = (args, kwargs, endpoint, data, None)  # PTB's limiter reads its rate_limit_args as max retries
        if self.shared is not None and chat_id is not None:
            return await self._shared(turn, chat_id, callback, *request)
        loop = asyncio.get_running_loop()
        chat = self._chat(chat_id) if isinstance(chat_id, int) and chat_id > 0 else None

        async def granted(*args: Any, **kwargs: Any) -> Any:  # called once the overall budget let it go
            turn.leave()
            if chat is not None:
                chat.next_at = loop.time() + CHAT_INTERVAL
            return await callback(*args, **kwargs)

        if chat is None:  # a group (PTB's own 20/min) or no chat at all
            await turn.queue()
            return await super().process_request(granted, *request)
        async with chat.turn:  # one message to a chat at a time, in order
            if (delay := chat.next_at - loop.time()) > 0:
                await asyncio.sleep(delay)
            await turn.queue()
            return await super().process_request(granted, *request)

    async def _shared(self, turn: _Turn, chat_id: int | str, callback, *request):  # type: ignore[no-untyped-def]
        """The chat's shared slot (it may be a second away), the overall one (milliseconds), then this
        process' own overall pace, so that a late wake-up does not send two slots at once."""
        assert self.shared is not None
        group = isinstance(chat_id, str) or int(chat_id) < 0
        key, interval = chat_key(chat_id), (GROUP_INTERVAL if group else CHAT_INTERVAL) * SHARED_SPARE
        chat = await self.shared.reserve(key, interval)
        await asyncio.sleep(chat.wait)
        loop = asyncio.get_running_loop()
        slot_time = loop.time()  # the chat slot's start, on this loop's clock
        await turn.queue()
        await self.shared.wait("telegram", OVERALL_INTERVAL * SHARED_SPARE)

        async def stamped(*args: Any, **kwargs: Any) -> Any:
            turn.leave()
            late = loop.time() - slot_time
            try:
                return await callback(*args, **kwargs)
            finally:  # after the call: a round trip before it would bunch this send with the next one
                if late > LATE:  # it went out later than its chat slot: so does the chat's next one
                    await self._push(key, chat.start + timedelta(seconds=late + interval))

        return await super().process_request(stamped, *request)

    async def _push(self, key: str, tat: datetime) -> None:
        """Move a chat's next shared slot; a failure is logged, never raised (the message itself went out)."""
        assert self.shared is not None
        try:
            await self.shared.push(key, tat)
        except Exception as exc:  # the database went away: the chat's next slot may come a little early
            log.warning("telegram: could not move the next slot of %s: %s", key, exc)

    def _chat(self, chat_id: int) -> _ChatPace:
        if len(self.chats) > 10_000:  # forget idle chats so the table does not grow forever
            now = asyncio.get_running_loop().time()
            self.chats = {key: chat for key, chat in self.chats.items() if chat.next_at > now or chat.turn.locked()}
        return self.chats.setdefault(chat_id, _ChatPace())


class _Turn:
    """A nurture call's place among the few allowed to queue for the overall budget (other calls need none).

    Taken after its chat's wait (a chat a second away holds no place) and left once the overall budget
    lets the call go, or when the call ends, whichever comes first.
    """

    def __init__(self, places: asyncio.Semaphore | None) -> None:
        self.places, self.held = places, False

    async def queue(self) -> None:
        if self.places is not None:
            await self.places.acquire()
            self.held = True

    def leave(self) -> None:
        if self.held:
            self.held = False
            self.places.release()  # type: ignore[union-attr]

    async def __aenter__(self) -> _Turn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.leave()


class _ChatPace:
    """One private chat's pacing in this process: its turn, and the loop time its next message may go."""

    def __init__(self) -> None:
        self.turn = asyncio.Lock()
        self.next_at = 0.0


class Unreadable(Exception):
    """An update python-telegram-bot cannot parse (kept as it came, answered 200)."""


class Ignored(Exception):
    """An update we read but skip (answered 200, so Telegram does not redeliver it)."""


@cache
def _tls() -> ssl.SSLContext:
    """httpx's default TLS settings, made once: each HTTP client made its own (~35 ms, two per channel)."""
    return httpx.create_ssl_context()


class TelegramChannel:
    """A Telegram bot; a conversation's address is the chat id."""

    name = "telegram"

    def __init__(self, services: Services) -> None:
        self.services = services
        settings = services.settings
        self.token, self.secret = settings.telegram_token or "", settings.telegram_secret or ""
        self.api_url = settings.telegram_api_url.rstrip("/")
        self.application = (
            Application.builder()
            .token(self.token)
            .base_url(f"{self.api_url}/bot")
            .base_file_url(f"{self.api_url}/file/bot")
            .updater(None)
            .request(HTTPXRequest(connection_pool_size=256, httpx_kwargs={"verify": _tls()}))  # PTB's defaults
            .get_updates_request(HTTPXRequest(connection_pool_size=1, httpx_kwargs={"verify": _tls()}))
            .rate_limiter(TelegramPacing(None if is_sqlite(settings.database_url) else SharedPace(services.sessions)))
            .build()
        )
        self.connected = False
        self.connecting = asyncio.Lock()
        self.operators = OperatorsGroup(services, self, settings.operators_chat) if settings.operators_chat else None
        services.notifier.room = self.operators

    @staticmethod
    def retry_seconds(exc: RetryAfter) -> float:
        """How long Telegram asked us to wait."""
        with warnings.catch_warnings():  # PTB 22 warns that retry_after becomes a timedelta
            warnings.simplefilter("ignore", PTBDeprecationWarning)
            after = exc.retry_after
        return after.total_seconds() if isinstance(after, timedelta) else float(after)

    @staticmethod
    def enabled(services: Services) -> str | None:
        """None when enabled, else why not."""
        return None if services.settings.telegram_token else "KINDLING_TELEGRAM_TOKEN is not set"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/webhooks/telegram", self.webhook)

    async def start(self) -> None:
        """Reach the Bot API and register the webhook; if that fails the server still runs."""
        if not self.secret:
            log.error("telegram: KINDLING_TELEGRAM_SECRET is not set; every update will be refused")
        problem = await self.connect()
        if problem is not None:
            log.error("telegram: cannot use the Bot API at %s (%s); sends will retry", self.api_url, problem)

    async def stop(self) -> None:
        await self.application.shutdown()
        await self.application.bot.shutdown()  # also when initialize failed half-way

    @property
    def bot(self) -> Bot:
        """The PTB bot that calls the Bot API (the operators' group sends through it too)."""
        return self.application.bot

    async def connect(self) -> str | None:
        """Initialize once (and set the webhook when public_url is set); None, or what went wrong."""
        async with self.connecting:
            if self.connected:
                return None
            try:
                await self.application.initialize()
                await self._set_webhook()
            except TelegramError as exc:
                return self.describe(exc)
            self.connected = True
            return None

    async def _set_webhook(self) -> None:
        public_url = self.services.settings.public_url.rstrip("/")
        if public_url:
            await self.application.bot.set_webhook(
                url=f"{public_url}/webhooks/telegram",
                secret_token=self.secret,
                allowed_updates=ALLOWED_UPDATES,
            )

    def describe(self, exc: TelegramError) -> str:
        if isinstance(exc, InvalidToken):
            return "the bot token was rejected (KINDLING_TELEGRAM_TOKEN)"
        return f"{type(exc).__name__}: {exc.message}".replace(self.token, "<token>")

    async def webhook(self, request: web.Request) -> web.Response:
        """Check the secret, store the update in the inbox, answer; intake and the replies follow."""
        given = request.headers.get(SECRET_HEADER, "")
        if not self.secret or not same(given, self.secret):  # no secret: refuse all
            return json_error(403, f"wrong or missing {SECRET_HEADER}")
        data = parse_json(await request.read())  # BadJson: 400 or 422 from the middleware
        if not isinstance(data, dict) or type(data.get("update_id")) is not int:
            raise web.HTTPBadRequest(text="not a Telegram update: no update_id")
        now = self.services.clock.now()
        inbound = plain_message(data, now)  # the most common update, without building PTB's objects
        if inbound is not None and (self.operators is None or inbound.external_id != str(self.operators.chat_id)):
            await self.services.inbox.accept(inbound)
            return web.json_response({"ok": True})
        try:
            update = self._parse(data)
        except Unreadable as exc:
            return await self._keep(data, str(exc))
        if self.operators is not None and self.operators.concerns(update):
            return await self.operators.handle(update)
        try:
            inbound = inbound_from(update, now, self._visitor)
        except Ignored as exc:
            return web.json_response({"ok": True, "ignored": str(exc)})
        await self.services.inbox.accept(inbound)  # durable once this returns; taken in right after
        if update.callback_query is not None:
            self.services.spawn(self._answer_button(update.callback_query.id))
        return web.json_response({"ok": True})

    def _visitor(self, link: str) -> str | None:
        """The visitor id in a deep link, if its signature is ours."""
        return read_visitor_link(self.services.secret_key, link)

    def _parse(self, data: dict) -> Update:
        """The update as python-telegram-bot reads it; raises Unreadable, or 400 for a field of the wrong type."""
        try:
            update = Update.de_json(data, self.application.bot)
        except _BAD_UPDATE as exc:
            raise Unreadable(f"{type(exc).__name__}: {exc}"[:500]) from None
        if (field := wrong_field(update)) is not None:
            raise web.HTTPBadRequest(text=f"not a Telegram update: {field} has the wrong type or is out of range")
        return update

    async def _keep(self, data: dict, reason: str) -> web.Response:
        """Keep an update nothing can be made of, so it is not lost; 200, or Telegram sends it for hours."""
        chat = raw_chat(data)
        key = f"telegram:unreadable:{data['update_id']}:{chat}"
        if await self.services.inbox.keep(key, "telegram", chat, data, f"python-telegram-bot cannot read it: {reason}"):
            log.warning("telegram: update %s kept unread in the inbox: %s", data["update_id"], reason)
        return web.json_response({"ok": True, "kept": reason})

    async def _answer_button(self, query_id: str) -> None:
        """Stop the button's spinner; best effort, the press is stored already."""
        if await self.connect() is not None:
            return
        try:
            await self.application.bot.answer_callback_query(query_id)
        except TelegramError as exc:
            log.warning("telegram: button press not acknowledged: %s", self.describe(exc))

    async def send(self, delivery: Delivery) -> SendResult:
        """Send a text with its buttons; map Telegram's answers to delivered / retry / failed."""
        problem = await self.connect()
        if problem is not None:
            return SendResult.retry(f"Telegram Bot API unavailable: {problem}", after=30)
        text, markup = keyboard(delivery.text, delivery.buttons)
        try:
            sent = await self.application.bot.send_message(
                chat_id=int(delivery.address),
                text=text,
                reply_markup=markup,
                rate_limit_args={"nurture": delivery.kind == "nurture"},
            )
        except RetryAfter as exc:
            return SendResult.retry(f"Telegram flood control: {exc.message}", after=self.retry_seconds(exc))
        except Forbidden as exc:
            blocked = "blocked" in exc.message
            return SendResult.failed("blocked by the user" if blocked else exc.message, blocked=blocked)
        except BadRequest as exc:
            return SendResult.failed(exc.message)
        except (NetworkError, InvalidToken) as exc:  # TimedOut is a NetworkError
            return SendResult.retry(self.describe(exc))
        # The Bot API took it: Telegram has it. It gives bots no read receipts, so it never turns "seen".
        return SendResult.sent(provider_id=str(sent.message_id), delivered=True)


def keyboard(text: str, buttons: list[dict]) -> tuple[str, ReplyKeyboardMarkup | InlineKeyboardMarkup | None]:
    """The text and markup for a delivery's buttons; one message takes one kind of keyboard."""
    contact = [button for button in buttons if button.get("type") == "contact"]
    if contact:
        # A reply keyboard and inline buttons cannot share a message: other choices go in the text.
        share = KeyboardButton(contact[0]["text"], request_contact=True)
        markup = ReplyKeyboardMarkup([[share]], one_time_keyboard=True, resize_keyboard=True)
        return buttons_as_text(text, buttons), markup
    labels = [button["text"] for button in buttons if button.get("type", "reply") == "reply"]
    if not labels:
        return text, None
    rows = [[InlineKeyboardButton(label, callback_data=callback_data(label))] for label in labels]
    return text, InlineKeyboardMarkup(rows)


def callback_data(label: str) -> str:
    """A button's label as callback data: Telegram allows 64 bytes."""
    return label.encode()[:MAX_CALLBACK_BYTES].decode(errors="ignore")


def inbound_from(update: Update, now: datetime, visitor: Callable[[str], str | None]) -> Inbound:
    """Normalize an update; `visitor` checks a deep link's visitor link. Raises Ignored."""
    if update.callback_query is not None:
        return _from_button(update, update.callback_query, now)
    if update.message is not None:
        return _from_message(update, update.message, now, visitor)
    if update.my_chat_member is not None:
        return _from_member(update, update.my_chat_member, now)
    kinds = [kind for kind in Update.ALL_TYPES if getattr(update, kind, None) is not None]
    kinds += update.api_kwargs  # a type Telegram added after this python-telegram-bot
    raise Ignored(f"the bot does not act on {', '.join(kinds) or 'an empty update'}")


def raw_chat(data: dict[str, Any]) -> str | None:
    """The chat a raw update is about (its object's `chat`, or its message's), else its sender; None if none."""
    for value in data.values():
        if not isinstance(value, dict):
            continue
        for holder, field in ((value, "chat"), (value.get("message"), "chat"), (value, "from"), (value, "user")):
            found = holder.get(field) if isinstance(holder, dict) else None
            if isinstance(found, dict) and type(found.get("id")) is int:
                return str(found["id"])
    return None


def _from_message(update: Update, message: Message, now: datetime, visitor: Callable[[str], str | None]) -> Inbound:
    user = message.from_user
    if user is None or message.chat.type != "private":
        raise Ignored("only private chats with a person are read")
    forwarded = _forwarded(message)
    if message.contact is not None:
        return _from_contact(update, message, user, now, forwarded)
    text = message.text or message.caption  # a reply's quote is not in it: only the sender's own words are
    if not text:
        raise Ignored("a message without text")
    command, _, payload = text.partition(" ")
    if command.split("@")[0] != "/start" or forwarded:  # a forwarded deep link is someone else's
        return _inbound(update, message, user, "message", now, text=text, properties=forwarded)
    link, touch = parse_deep_link(payload.strip())
    visitor_id = visitor(link) if link else None
    extra = (("visitor", visitor_id),) if visitor_id else ()
    return _inbound(update, message, user, "start", now, text=text, touch=touch, extra=extra)


def _from_contact(update: Update, message: Message, user: User, now: datetime, forwarded: dict) -> Inbound:
    contact = message.contact
    assert contact is not None
    phone = contact.phone_number if contact.phone_number.startswith("+") else f"+{contact.phone_number}"
    if contact.user_id != user.id or forwarded:  # someone else's card: kept with the event, not their phone
        card = {"contact_card": {"first_name": contact.first_name, "phone": phone}, **forwarded}
        text = f"(a contact card: {contact.first_name})"
        return _inbound(update, message, user, "message", now, text=text, properties=card)
    # Telegram vouches that the sender's own card (the contact button) holds their number: an identity.
    # It is the text too, so the transcript shows it and intake records it as shared (points, thanks).
    profile = Profile(
        first_name=contact.first_name or user.first_name,
        last_name=contact.last_name or user.last_name,
        locale=user.language_code,
    )
    own = normalize_phone(phone)
    extra = (("phone", own),) if own else ()
    return _inbound(update, message, user, "message", now, text=phone, profile=profile, extra=extra)


def _forwarded(message: Message) -> dict[str, Any]:
    """`{"forwarded": {"origin": ...}}` for a forwarded message (Bot API 7 or the legacy fields), else {}."""
    legacy = {"forward_from", "forward_from_chat", "forward_sender_name", "forward_date"} & message.api_kwargs.keys()
    if message.forward_origin is None and not legacy:
        return {}
    return {"forwarded": {"origin": str(message.forward_origin.type) if message.forward_origin else "legacy"}}


def _from_button(update: Update, query: CallbackQuery, now: datetime) -> Inbound:
    if not query.data:
        raise Ignored("a button press without data")
    chat_id = query.message.chat.id if query.message is not None else query.from_user.id
    properties = {"value": query.data}
    where = (chat_id, query.id)
    return _inbound(update, where, query.from_user, "button", now, text=query.data, properties=properties)


def _from_member(update: Update, change: ChatMemberUpdated, now: datetime) -> Inbound:
    """The person blocked the bot (`kicked`) or unblocked it, in their private chat with it."""
    if change.chat.type != "private":
        raise Ignored("the bot's membership of a group or channel")
    if change.new_chat_member.status == "kicked":
        kind = "blocked"
    elif change.old_chat_member.status == "kicked":
        kind = "unblocked"
    else:
        raise Ignored(f"the bot became {change.new_chat_member.status} in a private chat")
    where = (change.chat.id, int(change.date.timestamp()))
    return _inbound(update, where, change.from_user, kind, now)


def _inbound(
    update: Update,
    where: Message | tuple[int, int | str],
    user: User,
    kind: str,
    now: datetime,
    extra: tuple = (),
    **fields: Any,
) -> Inbound:
    """`where`: the message, or the chat id and what in the chat the update is (for its dedup key)."""
    chat_id, item = (where.chat.id, where.message_id) if isinstance(where, Message) else where
    fields.setdefault(
        "profile", Profile(first_name=user.first_name, last_name=user.last_name, locale=user.language_code)
    )
    return Inbound(
        channel="telegram",
        external_id=str(chat_id),
        kind=kind,
        dedup_key=dedup_key(update.update_id, chat_id, item),
        identities=(("telegram", str(user.id)), *extra),
        at=now,
        **fields,
    )
