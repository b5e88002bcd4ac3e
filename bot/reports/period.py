"""What a report is asked for: a period (since, until) and an optional breakdown, checked once for all callers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from bot.web.times import EARLIEST, in_utc

BY = ("source", "campaign", "channel", "likelihood")  # likelihood: the lead's learned likelihood band now (bands.py)
DEFAULT_DAYS = 30


class ReportError(ValueError):
    """A report request that cannot be answered; the message says what to change."""


@dataclass(frozen=True)
class Query:
    """A report's period, [since, until), in UTC, and what to break it down by (None: no breakdown)."""

    since: datetime
    until: datetime
    by: str | None = None


def parse_query(since: str | None, until: str | None, by: str | None, now: datetime) -> Query:
    """Check and complete a request: default until is now, default since 30 days before until."""
    end = _moment(until, "until", end_of_day=True) if until else now
    if since:
        start = _moment(since, "since", end_of_day=False)
    elif end - EARLIEST > timedelta(days=DEFAULT_DAYS):
        start = end - timedelta(days=DEFAULT_DAYS)
    else:
        raise ReportError("'until' is too early for the default period: give 'since' too")
    if start >= end:
        raise ReportError(f"'since' ({start.isoformat()}) must be before 'until' ({end.isoformat()})")
    if by is not None and by not in BY:
        raise ReportError(f"'by' must be one of {', '.join(BY)}, not {by!r}")
    return Query(start, end, by or None)


def _moment(text: str, name: str, end_of_day: bool) -> datetime:
    """An ISO date (a whole day: until means the end of it) or date-time (UTC when it has no zone)."""
    text = text.strip()
    whole_day = len(text) == 10
    try:
        moment = datetime.combine(date.fromisoformat(text), time()) if whole_day else datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(
            f"'{name}' must be an ISO date or time like 2026-01-31 or 2026-01-31T18:00:00Z, not {text!r}"
        ) from None
    try:
        moment = in_utc(moment, f"'{name}'")
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    return moment + timedelta(days=1) if whole_day and end_of_day else moment
