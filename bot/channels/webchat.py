"""The website widget: `/widget.js` and its WebSocket `/chat/ws`.

Protocol (JSON frames). The client starts with
`{"type": "hello", "visitor": id|null, "token": t|null, "since": last message id, "view": {...}}`
(plus `"link"`, a signed visitor link from a missed-message email, to continue that visitor's conversation;
a forged one is ignored) and gets `{"type": "welcome", "visitor", "token", "conversation", "lead", "link",
"continue"}`, then every message after `since`. `continue` is a list of `{"channel", "label", "url"}`: links that
continue the chat on WhatsApp, Messenger or Telegram as the same lead, with the page's source
(`bot.channels.continuation`); a later page view with a source of its own sends `{"type": "continue", "links"}`.
Then: `{"type": "message", "id": uuid, "text"}` (answered by `ack`, stored once per uuid),
`{"type": "button", "id": uuid, "value"}`, `{"type": "page_view", "view": {...}}`,
`{"type": "consent", "id": uuid, "email": address|null, "consent": true|false, "whatsapp": true|false}` (email
consent and/or WhatsApp marketing consent, each optional but one needed; answered by `ack`),
`{"type": "prechat", "id": uuid, "name": text|null, "email": address|null, "consent": true|false|null}` (the
pre-chat form: the name becomes the lead's if it has none, the email a typed contact, consent as in the consent
frame; answered by `ack`, or by an error naming the `field` that is wrong),
and receipts (see `_receipt`): `{"type": "received", "ids": [message id, ...]}` once the widget has bot or
operator messages (delivered), `{"type": "seen", "ids": [...]}` once it showed them on screen, in the open panel
of a visible page (seen).
The server pushes `{"type": "message", "id", "conversation", "from", "text", "buttons", "client_id", "at"}`
(`bot.delivery.hub.message_frame`). A frame refused is answered `{"type": "error", "error", "id"}` with the id of the
frame it answers when it has one (even one refused for a NUL or deep nesting), binary frames included;
`"retry": true` means the server could not store it now and the widget sends it again. When the visitor's
lead is erased, the server closes the socket with code 4410 (`bot.delivery.hub.ERASED`), reason "erased": the widget
forgets the visitor and does not reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import uuid
from collections.abc import Iterator
from math import ceil
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

from aiohttp import WSMsgType, web

from bot.channels import continuation
from bot.channels.widget_config import WidgetConfig
from bot.delivery.channel import SendResult
from bot.delivery.hub import ERASED, message_frame
from bot.intake.contacts import normalize_email
from bot.intake.inbound import Inbound, Profile, Touch
from bot.intake.intake import Received
from bot.services import Services
from bot.web.jsonbody import parse_json
from bot.web.ratelimit import PerMinute
from bot.web.signing import read_visitor_link, same, token_for, visitor_link
from flows.channel_consent import WHATSAPP_CONSENT
from flows.clock import time_zones
from flows.consent import CONSENT
from storage.db import DatabaseUnavailable, transaction
from storage.leadsearch import conversation_messages
from storage.models import Delivery
from storage.receipts import mark_reached

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent.parent / "static"
MAX_TEXT = 4000
MAX_FRAME = 16 * 1024
HELLO_TIMEOUT = 10.0
HISTORY = 200
MAX_MESSAGE_ID = 2**31 - 1
MAX_NAME = 100  # a pre-chat form's name
MAX_CLIENT_ID = 64  # an id echoed back in an error frame (the widget's are UUIDs, 36 characters)
_FRAME_ID = re.compile(r'"id"\s*:\s*"([0-9A-Fa-f-]{32,36})"')
_VISITOR = re.compile(r"^[0-9a-f]{16}$")
RECEIPTS = ("received", "seen")


class WebchatChannel:
    """Visitors on the website; a delivery is sent once it is in the conversation's transcript.

    Sent is all `send` can say: the message waits for the visitor. It is delivered when a widget acknowledges
    the frame and seen when the widget showed it on screen (`_Session._receipt`), now or when they come back.
    """

    name = "webchat"

    def __init__(self, services: Services) -> None:
        self.services = services
        # Per visitor, whichever of their sockets it comes through: no one floods intake, scoring or the queue.
        self.limit = PerMinute(services.settings.webchat_messages_per_minute, services.clock)
        settings = services.settings
        self.config = WidgetConfig(settings.widget, settings.templates, settings.default_locale)

    @staticmethod
    def enabled(services: Services) -> str | None:
        """None when enabled, else why not."""
        return None if services.settings.webchat_enabled else "disabled in config.toml"

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/widget.js", self.widget_js)
        self.config.routes(app)  # what the widget looks like, and its texts
        app.router.add_get("/chat/ws", self.websocket)
        continuation.routes(app)  # the widget's "continue on WhatsApp" link

    async def start(self) -> None:
        self.config.check()  # a broken widget texts file stops start-up, as a broken system message does

    async def stop(self) -> None:
        pass

    async def send(self, delivery: Delivery) -> SendResult:
        # The dispatcher stores the message and publishes it to the visitor's open sockets;
        # an offline visitor gets it from the history when they come back. Not delivered until a widget says so.
        return SendResult.sent()

    async def widget_js(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "widget.js", headers={"Cache-Control": "public, max-age=300"})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        origins = self.services.settings.allowed_origins
        if origins and request.headers.get("Origin") not in origins:
            raise web.HTTPForbidden(text="this site may not open the chat")
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_FRAME)
        await ws.prepare(request)
        session = _Session(self.services, ws, self.limit)
        try:
            await session.run()
        finally:
            await session.close()
        return ws

    def token(self, visitor: str) -> str:
        """Proof that the server handed out this visitor id (so no one writes as another visitor)."""
        return token_for(self.services.secret_key, visitor)


class _Session:
    """One open widget connection."""

    def __init__(self, services: Services, ws: web.WebSocketResponse, limit: PerMinute) -> None:
        self.services, self.ws, self.limit = services, ws, limit
        self.visitor = ""
        self.conversation_id: int | None = None
        self.locale: str | None = None
        self.timezone: str | None = None
        self.send_lock = asyncio.Lock()
        self.forwarder: asyncio.Task | None = None
        self.erased = False

    async def run(self) -> None:
        hello = await self._first_frame()
        if hello is None:
            return
        if not await self._hello(hello):
            return
        with self._present():
            await self._serve(hello)

    async def _serve(self, hello: dict) -> None:
        async with self.services.hub.watch(self.conversation_id) as queue:
            # Watched first, so nothing published while the history is read is missed; forwarded after it, in
            # order and without what the history has sent already.
            shown = await self._history(_since(hello.get("since")))
            self.forwarder = asyncio.create_task(self._forward(queue, shown))
            async for frame in self.ws:
                if frame.type == WSMsgType.TEXT:
                    await self._handle(frame.data)
                elif frame.type == WSMsgType.BINARY:  # answered, so a client that sent one is not left waiting
                    await self._refuse(frame.data, "frames must be text (JSON), not binary")
                else:
                    break

    async def close(self) -> None:
        if self.forwarder is not None:
            if self.erased:  # it is closing the socket: let it finish the closing handshake
                await self.forwarder
            else:
                self.forwarder.cancel()
        await self.ws.close()

    async def _first_frame(self) -> dict | None:
        try:
            frame = await self.ws.receive(timeout=HELLO_TIMEOUT)
        except TimeoutError:
            await self._send({"type": "error", "error": "say hello first"})
            return None
        data, _ = _parse(frame.data) if frame.type == WSMsgType.TEXT else (None, None)
        if not data or data.get("type") != "hello":
            await self._send({"type": "error", "error": "the first frame must be a hello"})
            return None
        return data

    async def _hello(self, hello: dict) -> bool:
        secret = self.services.secret_key
        visitor = _linked(secret, hello.get("link")) or _known(secret, hello.get("visitor"), hello.get("token"))
        self.visitor = visitor
        self.locale = _short(hello.get("locale"), 35)
        tz = hello.get("timezone")
        self.timezone = tz if isinstance(tz, str) and tz in time_zones() else None
        view = self._page_view(hello.get("view"))
        received = await self._receive(view)
        if received is None:
            return False
        self.conversation_id = received.conversation_id
        await self._send(
            {
                "type": "welcome",
                "visitor": visitor,
                "token": token_for(secret, visitor),
                "conversation": self.conversation_id,
                "lead": received.lead_id,
                "link": visitor_link(secret, visitor),  # for Telegram deep links: ?start=v-<link>
                "continue": self._continue_links(view.touch),
            }
        )
        self.services.after_commit(received)
        return True

    async def _handle(self, raw: str) -> None:
        data, problem = _parse(raw)
        kind = data.get("type") if data else None
        if problem is not None:
            await self._refuse(raw, problem)
        elif kind == "page_view":
            view = self._page_view(data.get("view"))
            received = await self._receive(view)
            if received is not None:
                self.services.after_commit(received)  # a page view may make the lead warm
                links = self._continue_links(view.touch) if view.touch is not None and view.touch.source else []
                if links:  # they carry the newest source the visitor has
                    await self._send({"type": "continue", "links": links})
        elif kind in ("message", "button"):
            await self._message(data, kind)
        elif kind == "consent":
            await self._consent(data)
        elif kind == "prechat":
            await self._prechat(data)
        elif kind in RECEIPTS:
            await self._receipt(data, kind)
        else:
            expected = "message, button, page_view, consent, prechat, received or seen"
            await self._refuse(data, f"unknown frame: expected {expected}")

    async def _message(self, data: dict, kind: str) -> None:
        client_id, text = data.get("id"), data.get("text" if kind == "message" else "value")
        if not _is_uuid(client_id):
            await self._refuse(data, "a message needs an id (a UUID)")
            return
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            await self._send({"type": "error", "id": client_id, "error": f"text must be 1 to {MAX_TEXT} characters"})
            return
        if await self._limited(client_id):
            return
        inbound = self._inbound(
            kind,
            dedup_key=f"webchat:{self.visitor}:{client_id}",
            text=text,
            client_id=client_id,
            properties={"value": text} if kind == "button" else {},
        )
        received = await self._receive(inbound, client_id)
        if received is None:
            return
        await self._send({"type": "ack", "id": client_id, "duplicate": received.duplicate})
        self.services.after_commit(received)  # also shows the message live (the visitor's echo, operators)

    def _continue_links(self, touch: Touch | None) -> list[dict[str, str]]:
        services = self.services
        return continuation.continue_links(services.settings, services.secret_key, self.visitor, touch)

    @contextlib.contextmanager
    def _present(self) -> Iterator[None]:
        """While the socket is open, flows see the visitor as on the widget (in this process)."""
        presence = self.services.engine.presence
        presence.opened(WebchatChannel.name, self.visitor)
        try:
            yield
        finally:
            presence.closed(WebchatChannel.name, self.visitor)

    async def _consent(self, data: dict) -> None:
        """Email consent from the widget's checkbox or button, with the address typed next to it (a claim), and/or
        WhatsApp marketing consent (`"whatsapp": true|false`), which WhatsApp needs before marketing templates."""
        client_id, email, consent = data.get("id"), data.get("email"), data.get("consent")
        whatsapp = data.get("whatsapp")
        if not _is_uuid(client_id):
            await self._refuse(data, "a consent frame needs an id (a UUID)")
            return
        valid_email = email is None or (isinstance(email, str) and normalize_email(email) is not None)
        given = [value for value in (consent, whatsapp) if value is not None]
        if not given or not all(isinstance(value, bool) for value in given) or not valid_email:
            error = (
                "a consent frame needs consent (true or false) for email and/or whatsapp (true or false) and, "
                "if any, a valid email address"
            )
            await self._send({"type": "error", "id": client_id, "error": error})
            return
        if await self._limited(client_id):
            return
        properties = {
            key: value for key, value in ((CONSENT, consent), (WHATSAPP_CONSENT, whatsapp)) if value is not None
        }
        inbound = self._inbound(
            "consent",
            dedup_key=f"webchat:consent:{self.visitor}:{client_id}",
            text=email,
            properties=properties,
        )
        received = await self._receive(inbound, client_id)
        if received is not None:
            await self._send({"type": "ack", "id": client_id, "duplicate": received.duplicate})
            self.services.after_commit(received)

    async def _prechat(self, data: dict) -> None:
        """The pre-chat form: a name, an email (a claim, like one typed in the chat) and email consent."""
        client_id = data.get("id")
        if not _is_uuid(client_id):
            await self._refuse(data, "a prechat frame needs an id (a UUID)")
            return
        wrong = _prechat_problem(data)
        if wrong is not None:
            await self._send({"type": "error", "id": client_id, "field": wrong[0], "error": wrong[1]})
            return
        if await self._limited(client_id):
            return
        name, email, consent = (data.get("name") or "").split(), data.get("email"), data.get("consent")
        inbound = self._inbound(
            "prechat",
            dedup_key=f"webchat:prechat:{self.visitor}:{client_id}",
            text=email,
            properties={"name": " ".join(name) or None, **({CONSENT: consent} if consent is not None else {})},
            profile=Profile(
                first_name=name[0] if name else None,
                last_name=" ".join(name[1:]) or None,
                locale=self.locale,
                timezone=self.timezone,
            ),
        )
        received = await self._receive(inbound, client_id)
        if received is not None:
            await self._send({"type": "ack", "id": client_id, "duplicate": received.duplicate})
            self.services.after_commit(received)

    async def _receipt(self, data: dict, kind: str) -> None:
        """The widget has these messages (`received`) or showed them (`seen`): date their deliveries.

        By message id, within this socket's own conversation: ids of anyone else's messages change nothing.
        Any instance can take it, whichever one sent the message: the row is in the shared database.
        """
        ids = data.get("ids")
        if not isinstance(ids, list) or not 0 < len(ids) <= HISTORY or not all(map(_is_message_id, ids)):
            await self._refuse(data, f"{kind} needs ids: 1 to {HISTORY} message ids")
            return
        now, conversation_id = self.services.clock.now(), self.conversation_id or 0
        try:
            await transaction(
                self.services.sessions,
                lambda session: mark_reached(session, conversation_id, ids, kind == "seen", now),
            )
        except DatabaseUnavailable as exc:  # a receipt is not the visitor's words: say so in the log, go on
            log.warning("webchat %s receipt not stored: %s", kind, exc)

    async def _limited(self, client_id: str) -> bool:
        """Whether the visitor is over their messages per minute; if so, the message is refused before it is stored.

        The error says retry: the widget sends it again shortly, with the same id, so it is stored once.
        """
        wait = self.limit.wait(self.visitor)
        if wait:
            error = f"too many messages: at most {self.limit.limit} a minute, sent again in a moment"
            await self._send(
                {"type": "error", "id": client_id, "error": error, "retry": True, "retry_after": ceil(wait)}
            )
        return bool(wait)

    async def _refuse(self, frame: Any, why: str) -> None:
        """An error frame carrying the id of the frame it answers, if it has one: the widget stops resending it."""
        client_id = _frame_id(frame)
        await self._send({"type": "error", "error": why, **({"id": client_id} if client_id else {})})

    async def _receive(self, inbound: Inbound, client_id: str | None = None) -> Received | None:
        try:
            return await self.services.intake.receive(inbound)
        except DatabaseUnavailable as exc:
            log.error("webchat inbound not stored: %s", exc)
            error = {"type": "error", "error": "temporarily unavailable, retrying", "retry": True}
            await self._send({**error, "id": client_id} if client_id else error)
            return None

    def _page_view(self, view: Any) -> Inbound:
        view = view if isinstance(view, dict) else {}
        url, referrer = _short(view.get("url"), 2000) or "", _short(view.get("referrer"), 2000) or ""
        view_id = view.get("id") if _is_uuid(view.get("id")) else str(uuid.uuid4())
        parts = _split(url)
        properties = {
            "path": parts.path or "/",
            "url": url,
            "referrer": referrer,
            "title": _short(view.get("title"), 300),
        }
        return self._inbound(
            "page_view",
            dedup_key=f"webchat:view:{self.visitor}:{view_id}",
            properties=properties,
            touch=touch_from(url, referrer),
        )

    def _inbound(self, kind: str, **fields: Any) -> Inbound:
        return Inbound(
            channel="webchat",
            external_id=self.visitor,
            kind=kind,
            identities=(("visitor", self.visitor),),
            at=self.services.clock.now(),
            **{"profile": Profile(locale=self.locale, timezone=self.timezone), **fields},
        )

    async def _history(self, since: int) -> set[int]:
        """Send the messages after `since`; their ids."""
        async with self.services.sessions() as session:
            # The newest ones when a visitor missed more than HISTORY: the latest context matters most.
            messages = await conversation_messages(session, self.conversation_id or 0, since, HISTORY)
        for message in messages:
            await self._send(message_frame(message))
        return {message.id for message in messages}

    async def _forward(self, queue: asyncio.Queue, shown: set[int]) -> None:
        """Push what is published on the conversation, but the messages the history sent (`shown`).

        Closes the socket once its person is erased.
        """
        while (frame := await queue.get()).get("type") != "erased":
            if frame.get("type") != "message" or frame.get("id") not in shown:
                await self._send(frame)
        self.erased = True
        async with self.send_lock:  # not in the middle of a frame
            await self.ws.close(code=ERASED, message=b"erased")

    async def _send(self, frame: dict) -> None:
        if self.ws.closed:
            return
        # A visitor who left misses nothing: it waits in the history for their return.
        async with self.send_lock:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_json(frame)


def _linked(secret: bytes, link: Any) -> str | None:
    """The visitor a signed link names (a missed-message email's `?kindling=`), None for none or a forged one."""
    return read_visitor_link(secret, link) if isinstance(link, str) and _VISITOR.match(link[:16]) else None


def _known(secret: bytes, visitor: Any, token: Any) -> str:
    """The visitor the hello names, if its token is ours; else a new visitor (unknown or forged)."""
    visitor, token = str(visitor or ""), str(token or "")
    if _VISITOR.match(visitor) and same(token, token_for(secret, visitor)):
        return visitor
    return secrets.token_hex(8)


def touch_from(url: str, referrer: str) -> Touch:
    """Source/UTM of a page view: the utm_* parameters, else the referring site."""
    page, came_from = _split(url), _split(referrer)
    query = parse_qs(page.query)
    utm = {
        key: _short(query.get(f"utm_{key}", [None])[0], 200)
        for key in ("source", "medium", "campaign", "term", "content")
    }
    referrer_host = came_from.hostname if referrer else None
    if not utm["source"] and referrer_host and referrer_host != page.hostname:
        utm["source"], utm["medium"] = referrer_host, utm["medium"] or "referral"
    return Touch(**utm, referrer=referrer or None, landing=page.path or None)


def _split(url: str) -> SplitResult:
    """The parts of a URL a browser reported; nothing for one Python cannot split (`http://[::1`)."""
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018  (raises for some malformed hosts too)
    except ValueError:
        return urlsplit("")
    return parts


def _parse(raw: Any) -> tuple[dict | None, str | None]:
    """The frame's object, and why it is refused (None when it is not): malformed or unstorable JSON."""
    try:
        data = parse_json(raw)
    except (TypeError, ValueError) as exc:  # BadJson is a ValueError
        return None, str(exc) or "the frame is not valid JSON"
    return (data, None) if isinstance(data, dict) else (None, "a frame must be a JSON object")


def _frame_id(frame: Any) -> str | None:
    """The client's id of a frame, even one refused for what it holds (NUL, lone surrogate, deep nesting).

    Such a frame is still read by plain `json` when it can be (it refuses only nesting past Python's
    recursion limit); else the id is its first `"id": "<uuid>"`, which is the frame's own in what the
    widget sends (`type` comes first, then `id`).
    """
    if isinstance(frame, bytes):
        frame = frame.decode("utf-8", "replace")
    if isinstance(frame, str):
        try:
            frame = json.loads(frame)
        except (ValueError, RecursionError):
            found = _FRAME_ID.search(frame)
            return found.group(1) if found else None
    client_id = frame.get("id") if isinstance(frame, dict) else None
    return client_id if isinstance(client_id, str) and len(client_id) <= MAX_CLIENT_ID else None


def _prechat_problem(data: dict) -> tuple[str, str] | None:
    """(the field, what is wrong with it) for a pre-chat form the server cannot take; None when it is fine."""
    name, email, consent = data.get("name"), data.get("email"), data.get("consent")
    if name is not None and (not isinstance(name, str) or not 0 < len(name.strip()) <= MAX_NAME):
        return "name", f"name: 1 to {MAX_NAME} characters"
    if email is not None and (not isinstance(email, str) or normalize_email(email) is None):
        return "email", "email: not a valid email address"
    if consent is not None and not isinstance(consent, bool) or consent and email is None:
        return "consent", "consent: true or false, and true only with an email address"
    if name is None and email is None:
        return "name", "a prechat frame needs a name and/or an email"
    return None


def _since(value: Any) -> int:
    """The hello's last seen message id, within the id column's range (32 bits on PostgreSQL)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return 0
    return min(max(value, 0), MAX_MESSAGE_ID)


def _is_message_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_MESSAGE_ID


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


def _short(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None
