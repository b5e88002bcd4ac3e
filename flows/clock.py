"""Time is injected: code asks a clock, tests move it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Protocol
from zoneinfo import available_timezones


@cache
def time_zones() -> frozenset[str]:
    """The IANA zone names this machine knows; listing them scans the tz database, so once per process."""
    return frozenset(available_timezones())


class Clock(Protocol):
    """Something that tells the current time, aware and in UTC."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that moves only when told to (tests, simulations)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 5, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta
