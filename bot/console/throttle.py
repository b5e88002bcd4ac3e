"""Login throttling: a moving window of failed logins per client address and per operator name.

Failures are rows in the database, so every instance counts the same ones and a restart forgets
nothing; time comes from the app's clock, so tests move it instead of sleeping.
"""

from __future__ import annotations

import math
from datetime import timedelta

from flows.clock import Clock
from storage.db import Sessions, transaction
from storage.operators import failures_since, record_failure

WINDOW = timedelta(minutes=1)


class LoginThrottle:
    """At most `per_minute` failed logins in any minute, per address and per name."""

    def __init__(self, sessions: Sessions, clock: Clock, per_minute: int) -> None:
        self.sessions, self.clock, self.per_minute = sessions, clock, per_minute

    @staticmethod
    def keys(address: str | None, name: str) -> list[str]:
        """The counters a login attempt is charged to."""
        return [f"ip:{address or 'unknown'}", f"name:{name.strip().lower()[:64]}"]

    async def retry_after(self, keys: list[str]) -> int:
        """Seconds until another attempt is allowed; 0 when it is allowed now."""
        now = self.clock.now()
        async with self.sessions() as session:
            failures = await failures_since(session, keys, now - WINDOW)
        waits = [
            (times[len(times) - self.per_minute] + WINDOW - now).total_seconds()
            for times in failures.values()
            if len(times) >= self.per_minute
        ]
        return max((max(1, math.ceil(wait)) for wait in waits), default=0)

    async def failed(self, keys: list[str]) -> None:
        """Count a failed login."""
        now = self.clock.now()

        async def work(session) -> None:  # type: ignore[no-untyped-def]
            await record_failure(session, keys, now, forget_before=now - WINDOW)

        await transaction(self.sessions, work)
