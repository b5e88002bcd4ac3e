"""How often one sender may do something: at most N times in any minute, on the injected clock.

A sliding log (the times of the last N, per sender). Not `limits` or `aiolimiter`: both read the machine's
own clock (aiolimiter the event loop's, and it makes callers wait rather than refusing them), while
Kindling's time comes from `Services.clock`, which tests move.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta

from flows.clock import Clock

WINDOW = timedelta(minutes=1)
PRUNE_EVERY = 1_000  # checks between sweeps of senders quiet for a whole window (memory stays bounded)


class PerMinute:
    """At most `limit` actions per key in any minute."""

    def __init__(self, limit: int, clock: Clock) -> None:
        self.limit, self.clock = limit, clock
        self.recent: dict[str, deque[datetime]] = {}
        self.checks = 0

    def wait(self, key: str) -> float:
        """Count an action of `key` and return 0, or the seconds until it would be allowed (then it is not counted)."""
        now = self.clock.now()
        self.checks += 1
        if self.checks % PRUNE_EVERY == 0:
            self._prune(now)
        times = self.recent.setdefault(key, deque(maxlen=self.limit))
        while times and times[0] <= now - WINDOW:
            times.popleft()
        if len(times) >= self.limit:
            return (times[0] + WINDOW - now).total_seconds()
        times.append(now)
        return 0.0

    def _prune(self, now: datetime) -> None:
        quiet = [key for key, times in self.recent.items() if not times or times[-1] <= now - WINDOW]
        for key in quiet:
            del self.recent[key]
