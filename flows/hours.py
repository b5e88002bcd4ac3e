"""Business hours (`Mon-Fri 09:00-18:00` in a time zone): whether operators are in, and when they are next."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from flows.durations import parse_clock

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPEC = re.compile(r"^\s*([A-Za-z]{3})(?:\s*-\s*([A-Za-z]{3}))?\s+(\S+)\s*-\s*(\S+)\s*$")


@dataclass(frozen=True)
class BusinessHours:
    """Weekdays (0 = Monday) and a daily window, in one time zone."""

    days: frozenset[int]
    start: time
    end: time
    timezone: str = "UTC"

    @classmethod
    def parse(cls, text: str, timezone: str = "UTC") -> BusinessHours | None:
        """`Mon-Fri 09:00-18:00`, `Sat 10:00-14:00`, or `always` (None); raise ValueError otherwise."""
        if text.strip().lower() == "always":
            return None
        match = _SPEC.match(text)
        if not match:
            raise ValueError(f"bad business hours {text!r}: write them like Mon-Fri 09:00-18:00, or always")
        first, last, start, end = match.groups()
        days = _day_range(first, last or first)
        opens, closes = parse_clock(start), parse_clock(end)
        if closes <= opens:
            raise ValueError(f"bad business hours {text!r}: the day must end after it starts")
        return cls(days, opens, closes, timezone)

    def is_open(self, now: datetime) -> bool:
        """Whether `now` falls inside business hours."""
        local = now.astimezone(ZoneInfo(self.timezone))
        return local.weekday() in self.days and self.start <= local.time() < self.end

    def next_open(self, now: datetime) -> datetime:
        """`now` if open, else the next opening time (aware)."""
        if self.is_open(now):
            return now
        local = now.astimezone(ZoneInfo(self.timezone))
        for ahead in range(8):
            day = local.date() + timedelta(days=ahead)
            opens = datetime.combine(day, self.start, tzinfo=local.tzinfo)
            if day.weekday() in self.days and opens > local:
                return opens
        raise AssertionError("business hours open at least one day a week")


def _day_range(first: str, last: str) -> frozenset[int]:
    try:
        a, b = DAYS.index(first.lower()), DAYS.index(last.lower())
    except ValueError:
        raise ValueError(f"bad day in {first}-{last}: use Mon, Tue, Wed, Thu, Fri, Sat, Sun") from None
    return frozenset((a + offset) % 7 for offset in range((b - a) % 7 + 1))
