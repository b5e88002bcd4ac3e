"""Live updates: whoever watches a topic gets what is published on it, on every instance.

Topics: a conversation id (int) carries its new transcript messages as frames (`message_frame`: the
visitor's, the bot's and operators'), and `{"type": "erased"}` when its person is erased (see
`publish_erasure`); `QUEUE` carries handoff changes as dicts (see `bot/handoff/handoffs.py`); `INBOX` says a
conversation handed to people has a new message from its lead or an operator (the console's inbox reloads).
Frames are plain JSON-able dicts, so they can cross processes.

`Hub` delivers inside one process (SQLite runs one instance). `PostgresHub` sends every publish
through PostgreSQL NOTIFY and delivers what it hears through LISTEN, so a console or widget socket
open on one instance sees what another instance did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from storage.db import Sessions
from storage.models import Message
from storage.privacy import Erased

log = logging.getLogger(__name__)

QUEUE = "queue"
INBOX = "inbox"  # `{"type": "activity", "conversation_id"}`: a message in a conversation handed to people
CHANNEL = "kindling_hub"
NOTIFY_LIMIT = 7900  # PostgreSQL refuses NOTIFY payloads of 8000 bytes or more
RECONNECT_SECONDS = 2.0
ERASED = 4410  # WebSocket close code for a socket whose conversation was erased (like HTTP 410 Gone)


class Hub:
    """Publish/subscribe by topic inside one process; slow subscribers drop nothing (unbounded queues)."""

    def __init__(self) -> None:
        self._subscribers: dict[Hashable, set[asyncio.Queue]] = defaultdict(set)

    async def start(self) -> None:
        """Nothing to connect for one process."""

    async def stop(self) -> None:
        """Nothing to close for one process."""

    @asynccontextmanager
    async def watch(self, topic: Hashable) -> AsyncIterator[asyncio.Queue]:
        """A queue receiving what is published on a topic while the block runs."""
        queue: asyncio.Queue = asyncio.Queue()
        self._subscribers[topic].add(queue)
        try:
            yield queue
        finally:
            self._subscribers[topic].discard(queue)
            if not self._subscribers[topic]:
                del self._subscribers[topic]

    def publish(self, topic: Hashable, frame: dict) -> None:
        """Hand a frame to every watcher of the topic."""
        self.deliver(topic, frame)

    async def flush(self) -> None:
        """Return once everything published before the call has reached this process's watchers."""

    def deliver(self, topic: Hashable, frame: dict) -> None:
        """Hand a frame to this process's watchers of the topic."""
        for queue in self._subscribers.get(topic, ()):
            queue.put_nowait(frame)


class PostgresHub(Hub):
    """Every instance on one PostgreSQL database sees every publish: NOTIFY out, LISTEN in.

    Publishes go out in order through one connection; the same connection listens, so this instance
    hears its own publishes the same way as the others do (one delivery path, no doubles). A frame
    too big for NOTIFY goes as a reference to its transcript message, which listeners read back from
    the database. While PostgreSQL is away, publishes are delivered locally and the connection is
    retried; sockets on other instances catch up from the database when they reconnect.
    """

    def __init__(self, database_url: str, sessions: Sessions) -> None:
        super().__init__()
        self.dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.sessions = sessions
        self._outgoing: asyncio.Queue[tuple[Hashable, dict]] = asyncio.Queue()
        self._connection: asyncpg.Connection | None = None
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    async def start(self) -> None:
        """Listen before serving, so nothing published after start is missed."""
        try:
            await self._connect()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("live updates: cannot LISTEN yet (%s); retrying", exc)
            self._reconnect_soon()
        self._spawn(self._send_forever())

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._connection is not None and not self._connection.is_closed():
            await self._connection.close(timeout=2)

    def publish(self, topic: Hashable, frame: dict) -> None:
        self._outgoing.put_nowait((topic, frame))

    async def flush(self) -> None:
        """Publish a marker and wait for it to come back: NOTIFY keeps one session's order."""
        topic = f"flush:{uuid.uuid4()}"
        async with self.watch(topic) as queue:
            self.publish(topic, {"type": "flush"})
            await asyncio.wait_for(queue.get(), timeout=10)

    async def _connect(self) -> None:
        connection = await asyncpg.connect(self.dsn, timeout=5)
        await connection.add_listener(CHANNEL, self._heard)
        connection.add_termination_listener(lambda _connection: self._reconnect_soon())
        self._connection = connection

    def _connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    async def _send_forever(self) -> None:
        while True:
            topic, frame = await self._outgoing.get()
            if not self._connected():
                self.deliver(topic, frame)
                continue
            try:
                await self._notify(topic, frame)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("live updates: NOTIFY failed (%s); delivering on this instance only", exc)
                self.deliver(topic, frame)
                self._reconnect_soon()

    async def _notify(self, topic: Hashable, frame: dict) -> None:
        payload = json.dumps({"topic": topic, "frame": frame}, ensure_ascii=False, separators=(",", ":"))
        if len(payload.encode()) > NOTIFY_LIMIT:
            if frame.get("type") != "message":
                log.warning("live updates: a %s frame is too big for NOTIFY; this instance only", frame.get("type"))
                self.deliver(topic, frame)
                return
            payload = json.dumps({"topic": topic, "message_id": frame["id"]})
        assert self._connection is not None
        await self._connection.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)

    def _reconnect_soon(self) -> None:
        """Start one reconnect loop unless one is running or the app is stopping."""
        if not self._stopping and not any(task.get_name() == "hub-reconnect" for task in self._tasks):
            self._spawn(self._reconnect(), name="hub-reconnect")

    async def _reconnect(self) -> None:
        if self._connection is not None and not self._connection.is_closed():
            with contextlib.suppress(Exception):
                await self._connection.close(timeout=1)
        self._connection = None
        while not self._connected():
            await asyncio.sleep(RECONNECT_SECONDS)
            try:
                await self._connect()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("live updates: reconnecting to PostgreSQL failed (%s)", exc)
        log.info("live updates: listening again")

    def _spawn(self, work: Any, name: str | None = None) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _heard(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            note = json.loads(payload)
            topic = note["topic"]
        except (ValueError, KeyError, TypeError):
            log.warning("live updates: ignored a malformed notification")
            return
        if "frame" in note:
            self.deliver(topic, note["frame"])
        else:
            self._spawn(self._deliver_stored(topic, note.get("message_id")))

    async def _deliver_stored(self, topic: Hashable, message_id: Any) -> None:
        async with self.sessions() as session:
            message = await session.get(Message, message_id) if isinstance(message_id, int) else None
        if message is not None:
            self.deliver(topic, message_frame(message))


def publish_erasure(hub: Hub, erased: Erased) -> None:
    """Tell live sockets a person was erased: their widget sockets close, the console drops their handoffs.

    Sockets must not outlive the data: on SQLite a new conversation can even get the erased one's id.
    """
    for conversation_id in erased.conversation_ids:
        hub.publish(conversation_id, {"type": "erased"})
    for handoff_id in erased.open_handoff_ids:
        handoff = {"id": handoff_id, "lead_id": erased.lead_id, "status": "erased"}
        hub.publish(QUEUE, {"type": "handoff", "change": "erased", "handoff": handoff})


def message_frame(message: Message) -> dict:
    """A transcript message as the widget and the console show it."""
    return {
        "type": "message",
        "id": message.id,
        "conversation": message.conversation_id,
        "from": message.author,
        "text": message.text,
        "buttons": [button["text"] for button in message.buttons if button.get("type", "reply") == "reply"],
        "client_id": message.client_id,
        "at": message.at.isoformat(),
    }
