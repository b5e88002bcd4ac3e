"""Durations as people write them: `30s`, `10m`, `2h`, `3d`, `1w`, `2 business days`, optionally `at` a local time."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_BUSINESS = re.compile(r"^\s*(\d+)\s+business\s+days?\s*$", re.IGNORECASE)
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_FORMS = "use a number and s, m, h, d or w, like 30s, 10m, 3d, or `2 business days`"


def parse_duration(text: str) -> timedelta:
    """Parse `10m` into a timedelta; raise ValueError naming the accepted forms."""
    match = _PATTERN.match(str(text))
    if not match:
        raise ValueError(f"bad duration {text!r}: use a number and s, m, h, d or w, like 30s, 10m, 3d")
    number, unit = match.groups()
    return timedelta(**{_UNITS[unit]: int(number)})


def parse_clock(text: str) -> time:
    """Parse a local time of day `HH:MM` (24-hour); raise ValueError otherwise."""
    match = _CLOCK.match(str(text).strip())
    if not match:
        raise ValueError(f"bad time of day {text!r}: use 24-hour HH:MM, like 09:30 or 17:00")
    return time(int(match.group(1)), int(match.group(2)))


def zone(name: str | None) -> tzinfo:
    """The IANA time zone `name`; UTC when missing or unknown (leads' zones come from browsers)."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


@dataclass(frozen=True)
class Delay:
    """A wait: exact time (`span`), calendar days, or business days, then optionally the next `at` local time."""

    span: timedelta = timedelta(0)
    days: int = 0
    business_days: int = 0
    at: time | None = None
    source: str = field(default="", compare=False)

    def due(self, start: datetime, timezone: str | None = None) -> datetime:
        """When the wait that begins at aware `start` ends, in UTC; days are counted in `timezone`."""
        local = (start.astimezone(UTC) + self.span).astimezone(zone(timezone))
        wall = local.replace(tzinfo=None) + timedelta(days=self.days)
        wall = _add_business_days(wall, self.business_days)
        if self.at is not None:
            wall = _next_clock(wall, self.at, weekdays_only=self.business_days > 0)
        return wall.replace(tzinfo=zone(timezone)).astimezone(UTC)

    def __str__(self) -> str:
        at = f" at {self.at:%H:%M}" if self.at else ""
        return f"{self.source or self.span}{at}"


def parse_delay(text: str, at: str | None = None) -> Delay:
    """Parse `3d` or `2 business days` (and an optional `at="10:00"`) into a Delay; raise ValueError."""
    clock = parse_clock(at) if at is not None else None
    source = str(text).strip()
    business = _BUSINESS.match(source)
    if business:
        return Delay(business_days=int(business.group(1)), at=clock, source=source)
    match = _PATTERN.match(source)
    if not match:
        raise ValueError(f"bad duration {text!r}: {_FORMS}")
    number, unit = int(match.group(1)), match.group(2)
    if unit in "dw":
        # Days follow the wall clock, so `3d` stays at the same local hour across a DST change.
        return Delay(days=number * (7 if unit == "w" else 1), at=clock, source=source)
    return Delay(span=timedelta(**{_UNITS[unit]: number}), at=clock, source=source)


def _add_business_days(wall: datetime, count: int) -> datetime:
    """Step forward `count` weekdays (Monday to Friday) on the local calendar."""
    while count > 0:
        wall += timedelta(days=1)
        if wall.weekday() < 5:
            count -= 1
    return wall


def _next_clock(wall: datetime, at: time, weekdays_only: bool) -> datetime:
    """The first moment at or after `wall` whose local time is `at` (skipping weekends if asked)."""
    candidate = wall.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
    if candidate < wall:
        candidate += timedelta(days=1)
    while weekdays_only and candidate.weekday() >= 5:
        candidate += timedelta(days=1)
    return candidate
