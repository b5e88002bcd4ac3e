"""Live updates inside one process: whoever watches a topic gets what is published on it.

Topics: a conversation id (int) carries its new transcript messages (`Message` rows: the visitor's,
the bot's and operators'); `QUEUE` carries handoff changes as dicts (see `bot/handoffs.py`).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any

from storage.models import Message

QUEUE = "queue"


class Hub:
    """Publish/subscribe by topic; slow subscribers drop nothing (unbounded queues)."""

    def __init__(self) -> None:
        self._subscribers: dict[Hashable, set[asyncio.Queue]] = defaultdict(set)

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

    def publish(self, topic: Hashable, item: Any) -> None:
        """Hand an item to every current watcher of the topic."""
        for queue in self._subscribers.get(topic, ()):
            queue.put_nowait(item)


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
