"""Rules every nurture send obeys: opt-out, a human owner, quiet hours and a daily cap, in the lead's time zone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class QuietHours:
    """A nightly window (`21:00-09:00`) in which nurture messages wait."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours | None:
        """`21:00-09:00`, or `off` for none; raise ValueError otherwise."""
        if text.strip().lower() == "off":
            return None
        match = _HOURS.match(text)
        if not match:
            raise ValueError(f"bad quiet hours {text!r}: write them like 21:00-09:00, or off")
        h1, m1, h2, m2 = (int(part) for part in match.groups())
        try:
            return cls(time(h1, m1), time(h2, m2))
        except ValueError:
            raise ValueError(f"bad quiet hours {text!r}: hours 0-23, minutes 0-59") from None

    def contains(self, local: datetime) -> bool:
        """Whether a local time falls in the window (which may span midnight)."""
        now = local.time()
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def ends_after(self, local: datetime) -> datetime:
        """The first moment after `local` when the window is over."""
        end = datetime.combine(local.date(), self.end, tzinfo=local.tzinfo)
        return end if end > local else end + timedelta(days=1)


@dataclass(frozen=True)
class Policy:
    """Safety settings: quiet hours, nurture messages per lead per local day, zone for leads without one."""

    quiet_hours: QuietHours | None = QuietHours(time(21), time(9))
    daily_cap: int = 2
    default_timezone: str = "UTC"

    def zone(self, name: str | None) -> ZoneInfo:
        """The lead's time zone, or the default when unknown."""
        try:
            return ZoneInfo(name or self.default_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            return ZoneInfo(self.default_timezone)


@dataclass(frozen=True)
class Verdict:
    """Whether a nurture message goes now, waits until a time, or is skipped, and why."""

    action: str  # send | postpone | skip
    reason: str | None = None
    until: datetime | None = None


SEND = Verdict("send")


def local_day_start(now: datetime, zone: ZoneInfo) -> datetime:
    """Midnight of the local day `now` falls in, as an aware datetime."""
    local = now.astimezone(zone)
    return datetime.combine(local.date(), time(0), tzinfo=zone)


def nurture_verdict(
    policy: Policy, *, opted_out: bool, owner: str, timezone: str | None, sent_today: int, now: datetime
) -> Verdict:
    """The decision right before a nurture send; operator and system messages never ask."""
    if opted_out:
        return Verdict("skip", "opted out")
    if owner != "bot":
        return Verdict("skip", f"a human owns the conversation ({owner})")
    zone = policy.zone(timezone)
    local = now.astimezone(zone)
    if policy.quiet_hours is not None and policy.quiet_hours.contains(local):
        return Verdict("postpone", "quiet hours", policy.quiet_hours.ends_after(local))
    if sent_today >= policy.daily_cap:
        tomorrow = local_day_start(now, zone) + timedelta(days=1)
        if policy.quiet_hours is not None and policy.quiet_hours.contains(tomorrow):
            tomorrow = policy.quiet_hours.ends_after(tomorrow)
        return Verdict("postpone", f"daily cap of {policy.daily_cap} reached", tomorrow)
    return SEND
