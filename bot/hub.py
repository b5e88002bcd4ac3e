"""Live updates inside one process: whoever watches a conversation gets its new messages."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any


class Hub:
    """Publish/subscribe by conversation id; slow subscribers drop nothing (unbounded queues)."""

    def __init__(self) -> None:
        self._subscribers: dict[int, set[asyncio.Queue]] = defaultdict(set)

    @asynccontextmanager
    async def watch(self, conversation_id: int) -> AsyncIterator[asyncio.Queue]:
        """A queue receiving what is published for a conversation while the block runs."""
        queue: asyncio.Queue = asyncio.Queue()
        self._subscribers[conversation_id].add(queue)
        try:
            yield queue
        finally:
            self._subscribers[conversation_id].discard(queue)
            if not self._subscribers[conversation_id]:
                del self._subscribers[conversation_id]

    def publish(self, conversation_id: int, item: Any) -> None:
        """Hand an item to every current watcher of the conversation."""
        for queue in self._subscribers.get(conversation_id, ()):
            queue.put_nowait(item)
