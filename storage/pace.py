"""Send budgets every instance shares, kept in PostgreSQL: one row per budget, one slot per send.

This is the generic cell rate algorithm in reservation form. A budget allows one send per `interval`
seconds with bursts of up to `burst`; its row holds the theoretical arrival time (TAT) of the next
send. Reserving moves the TAT one interval on, in one atomic upsert, and answers how long the caller
must wait for its slot. Several instances therefore share one budget exactly, the database's clock
is the only clock (no skew between machines), and slots are granted in the order they are asked for.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from storage.db import Sessions

_RESERVE = text(
    """
    INSERT INTO pace AS p (key, tat) VALUES (:key, clock_timestamp() + make_interval(secs => :interval))
    ON CONFLICT (key) DO UPDATE SET tat = GREATEST(p.tat, clock_timestamp()) + make_interval(secs => :interval)
    RETURNING p.tat - make_interval(secs => :interval * :burst), clock_timestamp()
    """
)
_PUSH = text("UPDATE pace SET tat = GREATEST(tat, :tat) WHERE key = :key")
_FORGET = text("DELETE FROM pace WHERE tat < clock_timestamp() - interval '1 hour'")
FORGET_EVERY = 1000  # reservations between sweeps of idle budgets (one row per chat ever written to)


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

    async def reserve(self, key: str, interval: float, burst: int = 1) -> Slot:
        """Take the next slot of budget `key`."""
        async with self.engine.connect() as connection:
            values = {"key": key, "interval": interval, "burst": burst}
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
        slot = await self.reserve(key, interval, burst)
        if slot.wait > 0:
            await asyncio.sleep(slot.wait)
