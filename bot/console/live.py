"""Live console pages: one WebSocket per page, `/console/ws?queue=1&inbox=1&handoff=ID&since=N`.

The server sends JSON frames and the page sends nothing (the server pings every 30 s). A socket whose
login ended (logout, expiry, `kindling operator remove`) is closed with code 4401 within `SESSION_CHECK`;
one watching a conversation whose lead is erased is closed at once with code 4410 (`bot.delivery.hub.ERASED`).

- `{"type": "queue", "handoffs": [summary, ...]}`: with `queue=1`, the whole queue once on connecting
  (and reconnecting), most urgent first; then every change as
  `{"type": "handoff", "change": "opened"|"notified"|"claimed"|"breached"|"closed", "handoff": summary}`
  (a summary as `bot.handoff.notify.summary` makes it), or `"change": "erased"` with only the handoff's
  `id`, `lead_id` and `status` when its lead was erased (the page drops the row);
- `{"type": "message", "id", "conversation", "from", "text", "buttons", "client_id", "at"}`: with
  `handoff=ID`, the messages of that handoff's conversation after message id `since`, then each new one;
- `{"type": "inbox", "rows": [...], "total", "page", "pages"}`: with `inbox=1` (and the inbox page's `show`,
  `channel` and `page`), that page of the inbox (`bot.console.inbox.frame`) on connecting, then again
  after every handoff change and every message in a conversation handed to people.

Subscriptions start before the snapshot and history are read, so nothing falls in between; a message
may come twice (history and live) and pages drop repeats by id.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AsyncExitStack

from aiohttp import WSMsgType, web

from bot.console.auth import current, requires, see
from bot.console.conversation import TRANSCRIPT_LIMIT
from bot.console.inbox import frame as inbox_frame
from bot.console.inbox import inbox_rows, view_of
from bot.console.pages import refuse
from bot.console.queue import page_of, urgent_first
from bot.console.roles import allowed
from bot.delivery.hub import ERASED, INBOX, QUEUE, message_frame
from bot.handoff.inbox import InboxError, InboxView
from bot.services import SERVICES, Services
from storage.leadsearch import conversation_messages
from storage.models import Handoff
from storage.operators import session_operator

HEARTBEAT = 30.0
SESSION_CHECK = 30.0  # seconds between checks that the socket's login is still live
LOGGED_OUT = 4401


def routes(console: web.Application) -> None:
    """Mount /console/ws."""
    console.router.add_get("/ws", live)


@requires("console")
async def live(request: web.Request) -> web.StreamResponse:
    """Stream the queue and/or one handoff's conversation to a console page."""
    services, role = request.app[SERVICES], current(request).operator.role
    settings = services.settings.console
    queue, handoff = request.query.get("queue") == "1", _number(request.query.get("handoff"))
    try:
        view = view_of(request.query, current(request).operator.id) if request.query.get("inbox") == "1" else None
    except InboxError as exc:
        return refuse(request, 400, str(exc))
    if not queue and view is None and handoff is None:
        return refuse(request, 400, "say what to watch: queue=1, inbox=1 and/or handoff=ID")
    if ((queue or view) and not allowed(role, "queue", settings)) or (
        handoff is not None and not allowed(role, "conversations.read", settings)
    ):
        return refuse(request, 403, f"Your role ({role}) does not allow this.")
    conversation_id = await _conversation_of(services, handoff) if handoff is not None else None
    if handoff is not None and conversation_id is None:
        return refuse(request, 404, f"There is no handoff {handoff} with a conversation.")
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT)
    await ws.prepare(request)
    stream = _Stream(services, ws, current(request).token_hash)
    page = _number(request.query.get("page")) or 0 if queue else 0
    await stream.run(queue, conversation_id, _number(request.query.get("since")) or 0, view, page)
    return ws


class _Stream:
    """One open console socket: its subscriptions and the sends to it."""

    def __init__(self, services: Services, ws: web.WebSocketResponse, token_hash: str) -> None:
        self.services, self.ws, self.token_hash = services, ws, token_hash
        self.lock = asyncio.Lock()
        self.closing: asyncio.Task | None = None  # the forwarder closing the socket, if any

    async def run(
        self, queue: bool, conversation_id: int | None, since: int, view: InboxView | None = None, page: int = 0
    ) -> None:
        """Subscribe, catch up, forward until the page goes away; `page`: the queue page's page (0: all of it)."""
        async with AsyncExitStack() as stack:
            topics = ([QUEUE] if queue else []) + ([conversation_id] if conversation_id else [])
            feeds = [await stack.enter_async_context(self.services.hub.watch(topic)) for topic in topics]
            inboxed = (QUEUE, INBOX) if view is not None else ()
            changes = [await stack.enter_async_context(self.services.hub.watch(topic)) for topic in inboxed]
            if queue:
                handoffs = await self.services.handoffs.queue()
                shown = page_of(handoffs, page) if page else urgent_first(handoffs)
                await self.send({"type": "queue", "handoffs": shown})
            if conversation_id:
                await self._history(conversation_id, since)
            forwarders = [asyncio.create_task(self._forward(feed)) for feed in feeds]
            if view is not None:
                forwarders.append(asyncio.create_task(self._inbox(view, changes)))
            try:
                await self._until_closed()
            finally:
                for task in forwarders:
                    if task is not self.closing:  # that one finishes the closing handshake
                        task.cancel()
                if self.closing is not None:
                    await self.closing

    async def _until_closed(self) -> None:
        """Wait for the page to go (it sends nothing we need), closing the socket if its login ends."""
        while not self.ws.closed:
            try:
                frame = await self.ws.receive(timeout=SESSION_CHECK)
            except TimeoutError:
                if not await self._logged_in():
                    await self.ws.close(code=LOGGED_OUT, message=b"logged out")
                continue
            if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return

    async def _logged_in(self) -> bool:
        """Whether the login is still live; a live one is marked as seen (an open page: the operator is online)."""
        async with self.services.sessions() as session:
            live = await session_operator(session, self.token_hash, self.services.clock.now()) is not None
        if live:
            await see(self.services, self.token_hash)
        return live

    async def _history(self, conversation_id: int, since: int) -> None:
        async with self.services.sessions() as session:
            messages = await conversation_messages(session, conversation_id, since, TRANSCRIPT_LIMIT)
        for message in messages:
            await self.send(message_frame(message))

    async def _inbox(self, view: InboxView, changes: list[asyncio.Queue]) -> None:
        """The inbox page now, and again after each change (changes that come while it is read count once)."""
        changed = asyncio.Event()
        changed.set()

        async def note(feed: asyncio.Queue) -> None:
            while True:
                await feed.get()
                changed.set()

        notes = [asyncio.create_task(note(feed)) for feed in changes]
        try:
            while True:
                await changed.wait()
                changed.clear()
                await self.send(inbox_frame(await inbox_rows(self.services, view)))
        finally:
            for task in notes:
                task.cancel()

    async def _forward(self, feed: asyncio.Queue) -> None:
        """Pass frames on; close the socket when the conversation it watches is erased."""
        while (frame := await feed.get()).get("type") != "erased":
            await self.send(frame)
        self.closing = asyncio.current_task()
        async with self.lock:
            await self.ws.close(code=ERASED, message=b"erased")

    async def send(self, frame: dict) -> None:
        """One frame to the page; a page that went away misses nothing it cannot get on reload."""
        if self.ws.closed:
            return
        async with self.lock:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_json(frame)


async def _conversation_of(services: Services, handoff_id: int) -> int | None:
    async with services.sessions() as session:
        handoff = await session.get(Handoff, handoff_id)
    return handoff.conversation_id if handoff else None


def _number(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isdigit() and len(raw) < 10 else None
