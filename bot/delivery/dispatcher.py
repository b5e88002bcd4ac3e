"""The dispatcher: claims outbox rows, sends them through their channel, records the outcome."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import ColumnElement, and_, exists, func, or_, tuple_, update
from sqlalchemy.orm import aliased
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.delivery.channel import Channel, SendResult, refusal, window_of
from bot.delivery.hub import INBOX, Hub, message_frame
from flows.channel_consent import marketing_opt_out
from flows.clock import Clock
from flows.optout import email_bounced, opt_out
from flows.reach import EMAIL, EmailPolicy, email_block
from flows.safety import Policy, Verdict, local_day_start, nurture_verdict
from storage.db import DatabaseUnavailable, Sessions, transaction
from storage.groupcommit import GroupCommit
from storage.leads import get_lead
from storage.models import Conversation, Delivery, Lead, Message

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 8
SEND_CONCURRENCY = 60  # leads whose messages are being sent at once, per claimed batch (most wait for their chat)
IMMEDIATE_CONCURRENCY = 8  # immediate sends claiming at once
SOON_BATCH = 100  # fresh replies claimed together by the one task that sends them (see `queue`)


def due(row: type[Delivery], now: datetime) -> ColumnElement[bool]:
    """Pending and due, or claimed by a sender whose lease ran out (it died mid-send)."""
    return or_(
        and_(row.status == "pending", row.not_before <= now),
        and_(row.status == "sending", row.lease_until < now),
    )


def first_of_its_lead(now: datetime) -> ColumnElement[bool]:
    """Due, with none of the lead's messages in flight and none due ahead of it (by priority, then time)."""
    other = aliased(Delivery)
    order = (Delivery.priority, Delivery.not_before, Delivery.id)
    ahead = or_(
        and_(other.status == "sending", other.lease_until >= now),
        and_(due(other, now), tuple_(other.priority, other.not_before, other.id) < tuple_(*order)),
    )
    return and_(due(Delivery, now), ~exists().where(other.lead_id == Delivery.lead_id, other.id != Delivery.id, ahead))


class Dispatcher:
    """Sends deliveries exactly once per idempotency key, whichever instance claims them."""

    def __init__(
        self,
        sessions: Sessions,
        channels: Mapping[str, Channel],
        hub: Hub,
        clock: Clock,
        policy: Policy,
        lease: timedelta = timedelta(seconds=60),
        email: EmailPolicy | None = None,
    ) -> None:
        self.sessions, self.channels, self.hub, self.clock = sessions, channels, hub, clock
        self.policy, self.email = policy, email or EmailPolicy(enabled=True)
        self.lease = lease  # how long a claimed row is ours; after that a crashed sender's rows are taken over
        # Immediate sends wait here before claiming, so a flood of replies never holds claimed rows
        # in a pacing queue until their lease runs out (and another instance sends them again).
        self.immediate = asyncio.Semaphore(IMMEDIATE_CONCURRENCY)
        # The checks right before each send, and the records right after, of the deliveries being sent at once
        # share transactions (group commit): two small transactions per send were most of a send's cost on SQLite.
        self.group = GroupCommit(sessions)
        self._soon: list[int] = []  # fresh deliveries waiting for `send_queued`
        self._sending_soon = False
        self._held: dict[int, int] = {}  # the rows being sent now, from their last check to their record: attempts

    def refusal(self, conversation: Conversation, kind: str) -> str | None:
        """Why the conversation's channel would refuse a message of `kind` now (its window closed), or None."""
        return refusal(self.channels.get(conversation.channel), conversation, kind, self.clock.now())

    def window(self, conversation: Conversation) -> str | None:
        """The conversation's messaging window for people (open until when), if its channel has one."""
        return window_of(self.channels.get(conversation.channel), conversation, self.clock.now())

    def queue(self, delivery_ids: Iterable[int]) -> bool:
        """Queue fresh deliveries to be sent right away; True when the caller must start `send_queued`.

        Inbound replies come through here rather than one `send_now` each: under load, one task claims
        the replies of many inbounds in one transaction instead of one claim per inbound.
        """
        self._soon.extend(delivery_ids)
        if self._sending_soon or not self._soon:
            return False
        self._sending_soon = True
        return True

    async def send_queued(self) -> None:
        """Send what `queue` collected, a batch at a time, until nothing is left."""
        try:
            while self._soon:
                ids, self._soon = self._soon[:SOON_BATCH], self._soon[SOON_BATCH:]
                try:
                    await self.send_now(ids)
                except DatabaseUnavailable as exc:  # the rows stay pending: the tick sends them later
                    log.warning("replies left to the outbox tick: %s", exc)
        finally:
            self._sending_soon = False

    async def send_now(self, delivery_ids: Iterable[int]) -> None:
        """Send fresh deliveries right away (the tick picks up whatever this misses)."""
        ids = list(delivery_ids)
        if ids:
            now = self.clock.now()
            async with self.immediate:
                fresh = and_(Delivery.id.in_(ids), Delivery.status == "pending", Delivery.not_before <= now)
                await self._claim_and_send(fresh, len(ids))

    async def dispatch_due(self, limit: int = 100) -> int:
        """Claim and send due deliveries, at most one per lead; returns how many (0: nothing is due).

        Also takes over rows whose sender died mid-lease. One per lead, because a lead's messages go out one
        at a time anyway (its chat takes one a second): a batch holding several of one lead's messages ended
        with that lead, its chat's seconds, while every other chat sat idle. The caller claims again as soon
        as a batch is sent (`bot.app`), and that claim finds the lead's next message.
        """
        return await self._claim_and_send(first_of_its_lead(self.clock.now()), limit)

    async def dispatch_backlog(self, limit: int, going: Callable[[], bool] = lambda: True) -> int:
        """`dispatch_due` batch after batch until nothing is due (or `going` says stop); returns how many.

        The next batch is claimed as soon as every lead of the current one is being sent, while its last
        sends are still in flight (waiting for their pacing slot or their answer), so sending does not stop
        at each batch's end. At most two batches are in flight: the next claim waits until the batch before
        the current one is done. The claim leaves out leads with a message in flight (`first_of_its_lead`), so each
        lead's messages still go one at a time and in order; returns once every claimed row is recorded.
        """
        total, in_flight = 0, []
        try:
            while going():
                condition = first_of_its_lead(self.clock.now())
                claimed = await transaction(self.sessions, partial(self._claim, condition=condition, limit=limit))
                if not claimed:  # nothing but the next messages of leads in flight, perhaps: wait for them
                    if not in_flight:
                        break
                    await in_flight.pop(0)
                    continue
                total += len(claimed)
                taken = asyncio.Event()
                in_flight.append(asyncio.create_task(self._deliver_by_lead(claimed, taken)))
                await taken.wait()  # set at the latest when the batch is done (or failed)
                while in_flight and (len(in_flight) > 1 or in_flight[0].done()):  # the batch before; a done one
                    await in_flight.pop(0)  # raises what the batch raised
        except asyncio.CancelledError:  # shutting down: as when a single batch is cancelled mid-send
            for task in in_flight:
                task.cancel()
            raise
        finally:
            await asyncio.gather(*in_flight, return_exceptions=True)
        return total

    async def _claim_and_send(self, condition: ColumnElement[bool], limit: int) -> int:
        claimed = await transaction(self.sessions, lambda session: self._claim(session, condition, limit))
        await self._deliver_by_lead(claimed)
        return len(claimed)

    async def _claim(self, session: AsyncSession, condition: ColumnElement[bool], limit: int) -> list[Delivery]:
        now = self.clock.now()
        ids = (
            await session.exec(
                select(Delivery.id)
                .where(condition)
                .order_by(Delivery.priority, Delivery.not_before, Delivery.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not ids:
            return []
        await session.exec(
            update(Delivery)
            .where(Delivery.id.in_(ids))
            .values(status="sending", lease_until=now + self.lease, attempts=Delivery.attempts + 1)
        )
        rows = await session.exec(select(Delivery).where(Delivery.id.in_(ids)).order_by(Delivery.priority, Delivery.id))
        return list(rows.all())

    async def _deliver_by_lead(self, claimed: list[Delivery], taken: asyncio.Event | None = None) -> None:
        """Send each lead's messages in order, several leads at once.

        One lead's messages stay in order (and its daily cap is checked one message at a time); a lead
        waiting for its chat's pacing slot, or a slow receiver, does not hold up the other leads. `taken` is
        set once every lead has been taken by a worker (their sends may still be in flight).
        """
        by_lead: dict[int, list[Delivery]] = defaultdict(list)
        for delivery in claimed:
            by_lead[delivery.lead_id].append(delivery)
        leads = iter(by_lead.values())
        left = len(by_lead)

        async def worker() -> None:
            nonlocal left
            for deliveries in leads:  # workers share one iterator: each lead is taken by one of them
                left -= 1
                if left == 0 and taken is not None:
                    taken.set()
                for delivery in deliveries:
                    await self._deliver(delivery)

        try:
            await asyncio.gather(*(worker() for _ in range(min(SEND_CONCURRENCY, len(by_lead)))))
        finally:
            if taken is not None:
                taken.set()

    async def _deliver(self, delivery: Delivery) -> None:
        known: tuple[Conversation | None, Lead] | None = None  # read by the check: the channel need not again
        if delivery.kind == "nurture":
            # Checked again right before the send: a human may have taken over since it was queued.
            known = await self.group.run(lambda session: self._nurture_allowed(session, delivery))
            go = known is not None
        elif delivery.channel == EMAIL:  # an answer by email: not to an address that bounced since
            go = await self.group.run(lambda session: self._email_allowed(session, delivery))
        else:
            go = await self.group.run(lambda session: self._renew(session, delivery))
        if not go:
            return
        self._held[delivery.id] = delivery.attempts  # `renew_leases` keeps it ours until it is recorded
        try:
            result = await self._send(delivery, known)
            message = await self.group.run(lambda session: self._record(session, delivery, result))
        finally:
            del self._held[delivery.id]
        if message is not None:
            self.hub.publish(message.conversation_id, message_frame(message))
            if message.author == "operator":  # the inbox: this conversation may no longer need a reply
                self.hub.publish(INBOX, {"type": "activity", "conversation_id": message.conversation_id})

    async def _send(self, delivery: Delivery, known: tuple[Conversation | None, Lead] | None) -> SendResult:
        """Hand the delivery to its channel; how it went (a channel's bug is a retry, never a lost message)."""
        channel = self.channels.get(delivery.channel)
        if channel is None:
            return SendResult.retry(f"channel {delivery.channel} is not enabled", after=60)
        send_known = getattr(channel, "send_known", None)
        try:
            if known is not None and send_known is not None:
                return await send_known(delivery, *known)
            return await channel.send(delivery)
        except Exception as exc:
            log.exception("sending delivery %s through %s failed", delivery.id, delivery.channel)
            return SendResult.retry(f"{type(exc).__name__}: {exc}")

    async def renew_leases(self) -> int:
        """Renew the lease of every row this process is sending now; how many (the app ticks this every third
        of a lease).

        A lease runs out when its sender died. A live sender's send can outlast it (waiting for its pacing
        slot, a receiver slow to answer, a loaded machine), and then another claim, this instance's own
        included, would send the row again: under load the crash test saw one instance send a row twice.
        """
        held = list(self._held.items())
        if not held:
            return 0

        async def renew(session: AsyncSession) -> int:
            renewed = await session.exec(
                update(Delivery)
                .where(tuple_(Delivery.id, Delivery.attempts).in_(held), Delivery.status == "sending")
                .values(lease_until=self.clock.now() + self.lease)
            )
            return renewed.rowcount

        return await self.group.run(renew)

    async def _renew(self, session: AsyncSession, delivery: Delivery) -> bool:
        """Renew our lease right before the send; False if the row is gone or another sender took it over.

        A batch is claimed at once but sent over time: each send starts with a full lease, and a row whose
        lease ran out meanwhile (another instance claimed it: `attempts` moved on) is left to that one.
        """
        renewed = await session.exec(
            update(Delivery)
            .where(Delivery.id == delivery.id, Delivery.status == "sending", Delivery.attempts == delivery.attempts)
            .values(lease_until=self.clock.now() + self.lease)
        )
        return renewed.rowcount == 1

    async def _email_allowed(self, session: AsyncSession, delivery: Delivery) -> bool:
        """Renew our lease, then check the address still takes service email (it has not bounced)."""
        if not await self._renew(session, delivery):
            return False
        blocked = email_block(await get_lead(session, delivery.lead_id), self.email, service=True)
        if blocked is None:
            return True
        await session.exec(
            update(Delivery)
            .where(Delivery.id == delivery.id)
            .values(status="skipped", last_error=blocked, lease_until=None, attempts=Delivery.attempts - 1)
        )
        return False

    async def _nurture_allowed(
        self, session: AsyncSession, delivery: Delivery
    ) -> tuple[Conversation | None, Lead] | None:
        """Renew our lease, then apply opt-out, owner, quiet hours and the daily cap; a held-back row says why.

        The conversation and lead it read when the message may go (for the channel's `send_known`), else None.
        """
        now = self.clock.now()
        row = await session.get(Delivery, delivery.id, with_for_update=True)
        if row is None or row.status != "sending" or row.attempts != delivery.attempts:
            return None
        row.lease_until = now + self.lease
        lead = await get_lead(session, row.lead_id)
        conversation = await session.get(Conversation, row.conversation_id)
        zone = self.policy.zone(lead.timezone)
        sent_today = (
            await session.exec(
                select(func.count(Delivery.id)).where(
                    Delivery.lead_id == lead.id,
                    Delivery.kind == "nurture",
                    Delivery.status == "sent",
                    Delivery.sent_at >= local_day_start(now, zone),
                )
            )
        ).one()
        owner = conversation.owner if conversation else "closed"
        verdict = nurture_verdict(
            self.policy, opted_out=lead.opted_out_at is not None, owner=owner,
            timezone=lead.timezone, sent_today=sent_today, now=now,
        )  # fmt: skip
        if verdict.action == "send" and row.channel == EMAIL:
            blocked = email_block(lead, self.email)  # consent withdrawn, unsubscribed or bounced since it was queued
            verdict = Verdict("skip", blocked) if blocked else verdict
        if verdict.action == "send":
            return conversation, lead
        row.last_error, row.lease_until = verdict.reason, None
        row.status = "pending" if verdict.action == "postpone" else "skipped"
        if verdict.until is not None:
            row.not_before = verdict.until
        row.attempts -= 1  # waiting is not a failed attempt
        session.add(row)
        return None

    async def _record(self, session: AsyncSession, delivery: Delivery, result: SendResult) -> Message | None:
        now = self.clock.now()
        row = await session.get(Delivery, delivery.id, with_for_update=True)
        if row is None or row.status != "sending" or row.attempts != delivery.attempts:
            return None  # its lease ran out and another sender took it over
        if result.status == "sent":
            row.status, row.sent_at, row.provider_message_id = "sent", now, result.provider_id
            row.delivered_at = now if result.delivered else None
            row.last_error = None
            message = Message(
                conversation_id=row.conversation_id,
                lead_id=row.lead_id,
                direction="out",
                author="operator" if row.kind == "operator" else "bot",
                text=row.text,
                buttons=row.buttons,
                delivery_id=row.id,
                at=now,
            )
            session.add_all([row, message])
            await session.flush()
            return message
        row.last_error = result.error
        if result.status == "skipped":  # held back by the channel: shown with its reason, never retried
            row.status, row.lease_until = "skipped", None
            row.attempts -= 1  # it was not an attempt that failed
            session.add(row)
            return None
        if result.marketing_off:
            lead = await get_lead(session, row.lead_id)
            await marketing_opt_out(session, lead, row.channel, result.error or "cannot be reached", now)
        if result.blocked:
            lead = await get_lead(session, row.lead_id)
            await opt_out(session, lead, f"blocked us on {row.channel}", now)
        if result.bounced:
            row.bounced_at = now
            await email_bounced(session, row.lead_id, row.address, result.error or "bounced", now)
        if result.status == "retry" and row.attempts < MAX_ATTEMPTS:
            backoff = result.retry_after or min(2**row.attempts, 300)
            row.status, row.not_before = "pending", now + timedelta(seconds=backoff)
        else:
            row.status = "dead"
            log.warning("delivery %s given up: %s", row.id, result.error)
        session.add(row)
        return None
