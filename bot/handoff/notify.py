"""Telling people about handoffs, outbox-style: the Handoff row is the to-do, so nothing is lost.

A handoff whose `console_notified_at` or (with an operators' group) `telegram_notified_at` is empty is
still to be announced: right after the commit that opened it, and by the tick for those opened by the
flow runner or missed in a crash. A group that cannot be reached leaves `notify_error` and is retried.
The tick also escalates waiting handoffs past their SLA: marked breached, operators reminded, and the
visitor gets one holding message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, case, or_, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.delivery.dispatcher import Dispatcher
from bot.delivery.hub import QUEUE, Hub
from bot.intake.messages import SystemMessages
from bot.intake.replies import system_message
from bot.intake.warm import visitor_notice
from flows.clock import Clock
from flows.handoff import OPEN, HandoffPolicy
from flows.handoff_card import card_text
from flows.reactions import lead_label
from storage.db import Sessions, transaction
from storage.leads import get_lead
from storage.models import Conversation, Delivery, Event, Handoff, Lead, Operator
from storage.operators import operator_at_console

log = logging.getLogger(__name__)
LEASE = timedelta(seconds=60)
RETRY = timedelta(seconds=60)  # how soon an unreachable operators' group is tried again
BATCH = 50


class RoomError(Exception):
    """The operators' group could not be reached or refused the message; says why, and when to try again."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds Telegram asked us to wait (429), if it said


class OperatorsRoom(Protocol):
    """Where operators outside the console hear about handoffs (the Telegram operators' group)."""

    async def post_card(self, text: str, handoff_id: int) -> str: ...  # the card's message id

    async def card_taken(self, message_id: str, text: str) -> None: ...

    async def remind(self, text: str, handoff_id: int) -> None: ...


class Notifier:
    """Announces handoffs to the console (hub) and the operators' group, and escalates missed SLAs."""

    def __init__(
        self,
        sessions: Sessions,
        clock: Clock,
        hub: Hub,
        dispatcher: Dispatcher,
        messages: SystemMessages,
        policy: HandoffPolicy,
    ) -> None:
        self.sessions, self.clock, self.hub, self.dispatcher = sessions, clock, hub, dispatcher
        self.messages, self.policy = messages, policy
        self.room: OperatorsRoom | None = None

    async def announce(self, handoff_id: int) -> None:
        """Tell the console and the operators' group about a new handoff, and the visitor that a human is coming."""
        leased = await transaction(self.sessions, lambda session: self._lease(session, handoff_id))
        if leased is None:
            return  # announced already, closed, or another instance is at it
        handoff, info, notice_ids, fresh = leased
        if fresh:
            self.hub.publish(QUEUE, {"type": "handoff", "change": "opened", "handoff": info})
        if self.room is not None and handoff.telegram_notified_at is None and handoff.status == "waiting":
            await self._post_card(self.room, handoff)
        await self.dispatcher.send_now(notice_ids)

    async def pending(self) -> int:
        """Announce handoffs not (fully) announced yet; returns how many were tried."""
        now = self.clock.now()
        unsaid = Handoff.console_notified_at.is_(None)
        if self.room is not None:  # a card with a Take button is no use once someone took the lead
            unsaid = or_(unsaid, and_(Handoff.telegram_notified_at.is_(None), Handoff.status == "waiting"))
        free = or_(Handoff.notify_lease_until.is_(None), Handoff.notify_lease_until < now)
        async with self.sessions() as session:
            query = select(Handoff.id).where(Handoff.status.in_(OPEN), unsaid, free).order_by(Handoff.id).limit(BATCH)
            ids = list((await session.exec(query)).all())
        for handoff_id in ids:
            await self.announce(handoff_id)
        return len(ids)

    async def changed(self, change: str, handoff_id: int) -> None:
        """Publish a claim or close to the console; a claim also marks the card in the operators' group."""
        async with self.sessions() as session:
            handoff = await session.get(Handoff, handoff_id)
            if handoff is None:
                return
            info = await summary(session, handoff, self.clock.now())
        self.hub.publish(QUEUE, {"type": "handoff", "change": change, "handoff": info})
        if change == "claimed" and self.room is not None and handoff.telegram_message_id:
            text = f"{card_text(handoff.card, handoff.reason)}\n\nTaken by {info['claimed_by']}."
            try:
                await self.room.card_taken(handoff.telegram_message_id, text)
            except RoomError as exc:
                log.warning("handoff %s: the card in the operators' group was not updated: %s", handoff_id, exc)

    async def sweep(self) -> int:
        """Escalate waiting handoffs past their SLA (and remind again per `escalation`); returns how many."""
        breached = await transaction(self.sessions, self._breach)
        reminded = await transaction(self.sessions, self._escalate)
        for handoff, info, notice_ids in [*breached, *reminded]:
            self.hub.publish(QUEUE, {"type": "handoff", "change": "breached", "handoff": info})
            await self._remind(handoff, info)
            await self.dispatcher.send_now(notice_ids)
        return len(breached) + len(reminded)

    async def tick(self) -> None:
        """What the scheduler runs: announcements first, then escalations."""
        await self.pending()
        await self.sweep()

    async def _lease(self, session: AsyncSession, handoff_id: int):  # type: ignore[no-untyped-def]
        now = self.clock.now()
        free = or_(Handoff.notify_lease_until.is_(None), Handoff.notify_lease_until < now)
        won = await session.exec(
            update(Handoff)
            .where(Handoff.id == handoff_id, Handoff.status.in_(OPEN), free)
            .values(notify_lease_until=now + LEASE)
        )
        if won.rowcount != 1:
            return None
        handoff = await session.get(Handoff, handoff_id, populate_existing=True)
        assert handoff is not None
        fresh = handoff.console_notified_at is None
        if fresh:  # the hub is in-process: publishing right after this commit cannot fail
            handoff.console_notified_at = now
            _notified(session, handoff, "console", now)
        if self.room is None or handoff.telegram_notified_at is not None or handoff.status != "waiting":
            handoff.notify_lease_until = None
        session.add(handoff)
        notice_ids = await self._message(session, handoff, "coming", now)
        return handoff, await summary(session, handoff, now), notice_ids, fresh

    async def _post_card(self, room: OperatorsRoom, handoff: Handoff) -> None:
        try:
            message_id, error = await room.post_card(card_text(handoff.card, handoff.reason), handoff.id), None
            retry = RETRY
        except RoomError as exc:
            message_id, error = None, str(exc)
            log.warning("handoff %s: the operators' group was not told (%s); trying again later", handoff.id, error)
            # Telegram's own wait when it gave one (429): the tick then retries within seconds, not a minute.
            retry = RETRY if exc.retry_after is None else timedelta(seconds=exc.retry_after)
        await transaction(self.sessions, lambda session: self._posted(session, handoff.id, message_id, error, retry))

    async def _posted(
        self,
        session: AsyncSession,
        handoff_id: int,
        message_id: str | None,
        error: str | None,
        retry: timedelta = RETRY,
    ) -> None:
        now = self.clock.now()
        handoff = await session.get(Handoff, handoff_id, with_for_update=True)
        if handoff is None:  # the lead was erased while its card was being posted
            return
        if message_id is not None:
            handoff.telegram_notified_at, handoff.telegram_message_id = now, message_id
            handoff.notify_error, handoff.notify_lease_until = None, None
            _notified(session, handoff, "telegram", now)
        else:
            handoff.notify_error, handoff.notify_lease_until = error, now + retry
        session.add(handoff)

    async def _message(self, session: AsyncSession, handoff: Handoff, which: str, now: datetime) -> list[int]:
        """The visitor's 'a human is coming' or holding message, once per handoff; ids to send."""
        key = f"handoff:{handoff.id}:{which}"
        if (
            handoff.conversation_id is None
            or (await session.exec(select(Delivery.id).where(Delivery.idempotency_key == key))).first()
        ):
            return []
        conversation = await session.get(Conversation, handoff.conversation_id)
        if conversation is None or conversation.owner not in ("queued", "human"):
            return []
        lead = await get_lead(session, handoff.lead_id)
        if which == "coming":
            online = not self.policy.is_open(now) and await operator_at_console(session, now)
            delivery = visitor_notice(self.messages, self.policy, handoff, lead, conversation, now, online)
        else:
            delivery = system_message(self.messages, "handoff_holding", {}, lead, conversation, key, now)
        if delivery is None:
            return []
        session.add(delivery)
        await session.flush()
        return [delivery.id]

    async def _breach(self, session: AsyncSession) -> list[tuple[Handoff, dict, list[int]]]:
        now = self.clock.now()
        late = and_(Handoff.status == "waiting", Handoff.breached_at.is_(None), Handoff.sla_due_at <= now)
        found = []
        for handoff in await _locked(session, late):
            handoff.breached_at, handoff.escalated_at = now, now
            late_by = (now - handoff.sla_due_at).total_seconds()
            payload = {"handoff_id": handoff.id, "sla_due_at": handoff.sla_due_at.isoformat(), "late_seconds": late_by}
            session.add_all([handoff, Event(lead_id=handoff.lead_id, type="handoff_breached", payload=payload, at=now)])
            found.append(
                (handoff, await summary(session, handoff, now), await self._message(session, handoff, "holding", now))
            )
        return found

    async def _escalate(self, session: AsyncSession) -> list[tuple[Handoff, dict, list[int]]]:
        if self.policy.escalation is None:
            return []
        now = self.clock.now()
        again = and_(
            Handoff.status == "waiting",
            Handoff.breached_at.is_not(None),
            Handoff.escalated_at <= now - self.policy.escalation,
        )
        found = []
        for handoff in await _locked(session, again):
            handoff.escalated_at = now
            session.add_all(
                [
                    handoff,
                    Event(
                        lead_id=handoff.lead_id, type="handoff_escalated", payload={"handoff_id": handoff.id}, at=now
                    ),
                ]
            )
            found.append((handoff, await summary(session, handoff, now), []))
        return found

    async def _remind(self, handoff: Handoff, info: dict) -> None:
        if self.room is None:
            return
        waited, name = int(info["waited_seconds"] // 60), info["label"]
        text = f"Lead #{handoff.lead_id} has waited {waited} min, past its SLA: {name}, {handoff.reason}. Who takes it?"
        try:
            await self.room.remind(text, handoff.id)
        except RoomError as exc:
            error = str(exc)
            log.warning("handoff %s: the operators' group was not reminded: %s", handoff.id, error)
            await transaction(self.sessions, lambda session: _record_error(session, handoff.id, error))


# ORDER BY terms putting the likeliest leads first: those with a learned likelihood, highest first, then those
# without (none yet from an accepted model); what follows (the SLA deadline) decides between equals.
LIKELIEST_FIRST = (case((Lead.likelihood.is_(None), 1), else_=0), Lead.likelihood.desc())


UNREAD: Any = object()  # `summary`'s likelihood not read by the caller's query: it reads it


async def summary(session: AsyncSession, handoff: Handoff, now: datetime, likelihood: int | None = UNREAD) -> dict:
    """A handoff as the queue shows it: who, why, SLA and seconds left, notification delays, holder, the lead's
    learned likelihood now (None without one; lists pass it from their own query, so it is not read per row)."""
    holder = await session.get(Operator, handoff.claimed_by_id) if handoff.claimed_by_id else None
    if likelihood is UNREAD:
        likelihood = (await session.exec(select(Lead.likelihood).where(Lead.id == handoff.lead_id))).first()
    card = handoff.card
    return {
        "id": handoff.id,
        "lead_id": handoff.lead_id,
        "conversation_id": handoff.conversation_id,
        "status": handoff.status,
        "trigger": handoff.trigger,
        "reason": handoff.reason,
        "name": card.get("name"),
        "label": lead_label(card),  # the name, else email, phone, "Visitor from <source>"
        "score": card.get("score"),
        "likelihood": likelihood,
        "channel": card.get("channel"),
        "warm_at": handoff.warm_at.isoformat(),
        "sla_due_at": handoff.sla_due_at.isoformat(),
        "sla_seconds_left": (handoff.sla_due_at - now).total_seconds(),
        "waited_seconds": (now - handoff.warm_at).total_seconds(),
        "breached": handoff.breached_at is not None,
        "claimed_by": holder.name if holder else None,
        "claimed_at": handoff.claimed_at.isoformat() if handoff.claimed_at else None,
        "console_after_seconds": _after(handoff.warm_at, handoff.console_notified_at),
        "telegram_after_seconds": _after(handoff.warm_at, handoff.telegram_notified_at),
        "notify_error": handoff.notify_error,
    }


def _after(start: datetime, end: datetime | None) -> float | None:
    return None if end is None else (end - start).total_seconds()


def _notified(session: AsyncSession, handoff: Handoff, via: str, now: datetime) -> None:
    """Speed to lead: how long from the warm signal to this notification, as an event."""
    payload = {"handoff_id": handoff.id, "via": via, "seconds_since_warm": (now - handoff.warm_at).total_seconds()}
    session.add(Event(lead_id=handoff.lead_id, type="handoff_notified", payload=payload, at=now))


async def _locked(session: AsyncSession, condition) -> Iterable[Handoff]:  # type: ignore[no-untyped-def]
    query = select(Handoff).where(condition).order_by(Handoff.sla_due_at).limit(BATCH)
    return (await session.exec(query.with_for_update(skip_locked=True))).all()


async def _record_error(session: AsyncSession, handoff_id: int, error: str) -> None:
    await session.exec(update(Handoff).where(Handoff.id == handoff_id).values(notify_error=error))
