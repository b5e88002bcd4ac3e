"""Send budgets every instance shares, kept in PostgreSQL: one row per budget, one slot per send.

This is the generic cell rate algorithm in reservation form. A budget allows one send per `interval`
seconds with bursts of up to `burst`; its row holds the theoretical arrival time (TAT) of the next
send. Reserving moves the TAT one interval on, in one atomic upsert, and answers how long the caller
must wait for its slot. Several instances therefore share one budget exactly, the database's clock
is the only clock (no skew between machines), and slots are granted in the order they are asked for.

A budget many senders of one process wait for at once (a phone number's, with dozens of sends in flight)
is not asked once per send: the senders that come while a reservation is on its way wait for the next,
which takes a slot for each of them in one upsert (consecutive slots, an interval apart, as that many
upserts one after another would have). The budget is never exceeded: those slots are the process's alone,
and a slot nobody takes any more (its sender was cancelled) is lost, never given twice.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text

from storage.db import Sessions

_RESERVE = text(
    """
    INSERT INTO pace AS p (key, tat)
    VALUES (:key, clock_timestamp() + make_interval(secs => CAST(:interval AS float8) * CAST(:count AS int)))
    ON CONFLICT (key) DO UPDATE
    SET tat = GREATEST(p.tat, clock_timestamp()) + make_interval(secs => CAST(:interval AS float8) * :count)
    RETURNING p.tat - make_interval(secs => CAST(:interval AS float8) * (CAST(:burst AS int) + :count - 1)),
        clock_timestamp()
    """
)
_PUSH = text("UPDATE pace SET tat = GREATEST(tat, :tat) WHERE key = :key")
_FORGET = text("DELETE FROM pace WHERE tat < clock_timestamp() - interval '1 hour'")
FORGET_EVERY = 1000  # reservations between sweeps of idle budgets (one row per chat ever written to)
MOST_AT_ONCE = 64  # slots one reservation takes at most, for as many waiting senders


@dataclass(frozen=True)
class Slot:
    """A reserved send: when it may go, and the database's time when it was reserved."""

    start: datetime
    reserved_at: datetime

    @property
    def wait(self) -> float:
        """Seconds to wait before sending."""
        return max(0.0, (self.start - self.reserved_at).total_seconds())


def chat_key(chat_id: int | str) -> str:
    """The budget of one Telegram chat."""
    return f"telegram:{chat_id}"


class SharedPace:
    """Budgets in the `pace` table of a PostgreSQL database."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        # One statement per reservation: in autocommit it needs no BEGIN and COMMIT round trips.
        self.engine = sessions.kw["bind"].execution_options(isolation_level="AUTOCOMMIT")
        self._count = itertools.count(1)
        self._waiting: dict[str, list[asyncio.Future[Slot]]] = {}  # by budget: senders waiting for a reservation
        self._tasks: set[asyncio.Task] = set()

    async def reserve(self, key: str, interval: float, burst: int = 1, count: int = 1) -> Slot:
        """Take the next `count` slots of budget `key`; the first of them (the others follow an interval apart)."""
        async with self.engine.connect() as connection:
            values = {"key": key, "interval": interval, "burst": burst, "count": count}
            start, reserved_at = (await connection.execute(_RESERVE, values)).one()
            if next(self._count) % FORGET_EVERY == 0:
                await connection.execute(_FORGET)
        return Slot(start, reserved_at)

    async def push(self, key: str, tat: datetime) -> None:
        """Move budget `key`'s next slot to `tat` at the earliest (a send went out later than its slot)."""
        async with self.engine.connect() as connection:
            await connection.execute(_PUSH, {"key": key, "tat": tat})

    async def wait(self, key: str, interval: float, burst: int = 1) -> None:
        """Wait for the next slot of budget `key`."""
        slot = await self.slot(key, interval, burst)
        if slot.wait > 0:
            await asyncio.sleep(slot.wait)

    async def slot(self, key: str, interval: float, burst: int = 1) -> Slot:
        """The next slot of budget `key`, reserved together with those of this process's other waiting senders."""
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(key)
        if waiting is None:  # nobody is reserving this budget: this sender does, for whoever comes meanwhile too
            self._waiting[key] = [future]
            task = asyncio.create_task(self._reserve_for_waiting(key, interval, burst))
            self._tasks.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._tasks.discard)
        else:
            waiting.append(future)
        return await future

    async def _reserve_for_waiting(self, key: str, interval: float, burst: int) -> None:
        """Reserve a slot for each sender waiting for budget `key`, in one upsert per group, until none waits."""
        try:
            while True:
                waiting = [future for future in self._waiting[key] if not future.done()]
                group, self._waiting[key] = waiting[:MOST_AT_ONCE], waiting[MOST_AT_ONCE:]
                if not group:
                    return
                try:
                    first = await self.reserve(key, interval, burst, len(group))
                except Exception as exc:  # every sender of the group meets what the database said
                    for future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for index, future in enumerate(group):
                    if not future.done():  # a cancelled sender's slot is lost, never given to another
                        future.set_result(Slot(first.start + timedelta(seconds=index * interval), first.reserved_at))
        finally:
            for future in self._waiting.pop(key, []):  # shutting down: nobody may wait for ever
                future.cancel()
