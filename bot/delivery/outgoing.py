"""Outgoing webhooks to CRMs: claim due rows, POST them signed, record delivered, retry later, or dead.

At least once: a row is claimed with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the write lock on
SQLite), so no two instances POST it at the same time; but a crash after the receiver answered and before
the answer was recorded sends it again once the lease runs out. Receivers dedupe on `X-Kindling-Delivery`.
Order: one lead's rows for one endpoint go one at a time, oldest first, so a CRM never sees `mql -> sql`
before `lead -> mql`; a row waiting for its retry holds back that lead's later rows (a dead one does not).

When: right after the commit that added rows (any transaction of this process: intake, the API, the
console, the flow runner), so a CRM hears of a warm lead at once; the tick sends retries and whatever
another process (or a crash) left behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from sqlalchemy import and_, event, exists, or_, update
from sqlalchemy.orm import Session, aliased
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import WebhookEndpoint
from bot.web.signing import signed_headers
from flows.clock import Clock
from flows.outgoing import QUEUED
from storage.db import DatabaseUnavailable, Sessions, transaction
from storage.models import WebhookDelivery
from storage.webhooks import WAITING

log = logging.getLogger(__name__)
LEASE = timedelta(seconds=60)  # well over the POST's timeout, so a live sender never loses its row
TIMEOUT = aiohttp.ClientTimeout(total=10)
# The wait after each failed attempt (then +-20% jitter); the 10th failure is final, some 22 hours in.
BACKOFF = tuple(
    timedelta(minutes=minutes) for minutes in (1, 5, 15, 30, 60, 120, 240, 360, 480)
)  # fmt: skip
MAX_ATTEMPTS = len(BACKOFF) + 1
LONGEST_RETRY_AFTER = timedelta(days=1)
BATCH = 20


@dataclass(frozen=True)
class Outcome:
    """What one POST came to: delivered, worth retrying (maybe not before `retry_after`), or not."""

    delivered: bool
    retry: bool = False
    status: int | None = None
    error: str | None = None
    retry_after: timedelta | None = None


class WebhookSender:
    """POSTs outgoing webhook rows to their endpoints; `send_due` is the scheduler's tick."""

    def __init__(
        self,
        sessions: Sessions,
        clock: Clock,
        endpoints: Mapping[str, WebhookEndpoint],
        spawn: Callable[[Coroutine[Any, Any, Any]], None] | None = None,
    ) -> None:
        self.sessions, self.clock, self.endpoints = sessions, clock, endpoints
        self.spawn = spawn  # runs the sends a commit kicks off in the background (`Services.spawn`)
        self.http: aiohttp.ClientSession | None = None
        self._kicked = False  # a kicked send is running
        self._again = False  # ... and another commit added rows since it started

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=TIMEOUT)
        if self.endpoints and self.spawn is not None:
            event.listen(Session, "after_commit", self._committed)

    async def stop(self) -> None:
        if event.contains(Session, "after_commit", self._committed):
            event.remove(Session, "after_commit", self._committed)
        if self.http is not None:
            await self.http.close()

    def _committed(self, session: Session) -> None:
        """After any commit of this app's database: send now if the transaction added webhook rows."""
        if session.bind is self.sessions.kw["bind"].sync_engine and session.info.pop(QUEUED, False):
            self.kick()

    def kick(self) -> None:
        """Send what is due in the background; one send at a time, which runs again if kicked meanwhile."""
        self._again = True
        if not self._kicked and self.spawn is not None:
            self._kicked = True
            self.spawn(self._send_kicked())

    async def _send_kicked(self) -> None:
        try:
            while self._again:
                self._again = False
                while await self.send_due():  # a lead's next row is due once its previous one is delivered
                    pass
        except DatabaseUnavailable as exc:  # the rows stay pending: the tick sends them
            log.warning("webhooks left to the tick: %s", exc)
        finally:
            self._kicked = False

    async def send_due(self, limit: int = BATCH) -> int:
        """Claim due rows (and rows whose sender died mid-lease), POST them, record how it went; returns how many."""
        if not self.endpoints:
            return 0
        claimed = await transaction(self.sessions, lambda session: self._claim(session, limit))
        await asyncio.gather(*(self._deliver(row) for row in claimed))
        return len(claimed)

    async def _claim(self, session: AsyncSession, limit: int) -> list[WebhookDelivery]:
        now, row, older = self.clock.now(), WebhookDelivery, aliased(WebhookDelivery)
        due = or_(
            and_(row.status == "pending", row.next_attempt_at <= now),
            and_(row.status == "sending", row.lease_until < now),
        )
        earlier_waiting = exists().where(
            older.endpoint == row.endpoint, older.lead_id == row.lead_id, older.id < row.id, older.status.in_(WAITING)
        )
        query = (
            select(row.id)
            .where(row.endpoint.in_(list(self.endpoints)), due, ~earlier_waiting)
            .order_by(row.next_attempt_at, row.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=row)
        )
        ids = list((await session.exec(query)).all())
        if not ids:
            return []
        await session.exec(
            update(row)
            .where(row.id.in_(ids))
            .values(status="sending", lease_until=now + LEASE, attempts=row.attempts + 1, last_attempt_at=now)
        )
        return list((await session.exec(select(row).where(row.id.in_(ids)).order_by(row.id))).all())

    async def _deliver(self, row: WebhookDelivery) -> None:
        outcome = await self._post(self.endpoints[row.endpoint], row)
        await transaction(self.sessions, lambda session: self._record(session, row, outcome))

    async def _post(self, endpoint: WebhookEndpoint, row: WebhookDelivery) -> Outcome:
        """POST the row's body, signed like Kindling's inbound webhooks, and judge the answer."""
        now = self.clock.now()
        body = json.dumps(row.body, ensure_ascii=False).encode()
        headers = {
            **signed_headers(endpoint.secret, body, now),
            "Content-Type": "application/json",
            "User-Agent": "Kindling-Webhooks/1",
            "X-Kindling-Delivery": row.event_id,
            "X-Kindling-Event": row.event_type,
        }
        assert self.http is not None, "the webhook sender was not started"
        try:
            async with self.http.post(endpoint.url, data=body, headers=headers, allow_redirects=False) as response:
                return await judge(response, now)
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return Outcome(delivered=False, retry=True, error=f"unreachable: {reason}"[:300])

    async def _record(self, session: AsyncSession, claimed: WebhookDelivery, outcome: Outcome) -> None:
        now = self.clock.now()
        row = await session.get(WebhookDelivery, claimed.id, with_for_update=True, populate_existing=True)
        if row is None or row.status != "sending" or row.attempts != claimed.attempts:
            return  # its lease ran out and another sender took it over: theirs is the answer that counts
        row.lease_until, row.last_status = None, outcome.status
        if outcome.delivered:
            row.status, row.delivered_at, row.last_error = "delivered", now, None
        elif outcome.retry and row.attempts < MAX_ATTEMPTS:
            row.status, row.last_error = "pending", outcome.error
            row.next_attempt_at = now + backoff(row.attempts, outcome.retry_after)
            log.warning(
                "webhook %s %s to %s failed (attempt %d of %d), next try at %s: %s", row.id, row.event_type,
                row.endpoint, row.attempts, MAX_ATTEMPTS, f"{row.next_attempt_at:%H:%M:%S}", row.last_error,
            )  # fmt: skip
        else:
            row.status, row.last_error = "dead", outcome.error
            log.warning(
                "webhook %s %s to %s failed for good after %d attempts (kindling webhooks retry %s): %s",
                row.id, row.event_type, row.endpoint, row.attempts, row.id, row.last_error,
            )  # fmt: skip
        session.add(row)


async def judge(response: aiohttp.ClientResponse, now: datetime) -> Outcome:
    """2xx is delivered; 429 and 5xx are worth retrying (after `Retry-After` if given); anything else is final."""
    if 200 <= response.status < 300:
        return Outcome(delivered=True, status=response.status)
    snippet = (await response.content.read(200)).decode(errors="replace").strip()
    error = f"answered {response.status} {response.reason or ''}".strip() + (f": {snippet}" if snippet else "")
    if response.status == 429 or response.status >= 500:
        wait = retry_after(response.headers.get("Retry-After"), now)
        return Outcome(delivered=False, retry=True, status=response.status, error=error, retry_after=wait)
    return Outcome(delivered=False, status=response.status, error=error)


def backoff(attempts: int, asked: timedelta | None = None) -> timedelta:
    """The wait after `attempts` failed attempts: the schedule with jitter, or longer if the receiver asked."""
    planned = BACKOFF[min(attempts, len(BACKOFF)) - 1] * random.uniform(0.8, 1.2)
    return max(planned, min(asked, LONGEST_RETRY_AFTER)) if asked is not None else planned


def retry_after(header: str | None, now: datetime) -> timedelta | None:
    """A `Retry-After` header (seconds, or an HTTP date) as a wait from now; None when absent or unreadable."""
    text = (header or "").strip()
    if text.isdigit():
        return timedelta(seconds=int(text))
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return max(timedelta(0), moment - now)
