"""Times people give us (the events API's `at`, report periods on the API, console and CLI), kept to years we count in.

Python's datetime ends at years 1 and 9999: `0001-01-01T00:00:00+14:00` parses but has no UTC time, and a
report's period arithmetic near either end overflows. Such a time is refused with a message naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)


def in_utc(moment: datetime, name: str) -> datetime:
    """`moment` in UTC (UTC when it has no zone); ValueError naming `name` if it lies outside EARLIEST..LATEST."""
    try:
        utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc <= LATEST:
        raise ValueError(
            f"{name} must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC), not {moment.isoformat()}"
        )
    return utc
