"""Handoffs for operators: the queue, atomic claims, replies to the lead, hand back with an outcome.

Every change is published on the hub's `QUEUE` topic as
`{"type": "handoff", "change": opened|notified|claimed|breached|closed, "handoff": summary(...)}`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.delivery.dispatcher import Dispatcher
from bot.delivery.hub import Hub
from bot.handoff.notify import LIKELIEST_FIRST, Notifier, summary
from flows.clock import Clock
from flows.engine import Engine, enroll, lead_enrollments, may_enroll
from flows.handoff import OPEN, end_paused, latest_conversation, open_handoff, resume_nurture
from flows.outgoing import handoff_summary, queue_webhook
from flows.reactions import set_stage
from storage.db import Sessions, transaction
from storage.leads import LeadNotFound, get_lead
from storage.models import Conversation, Delivery, Event, Handoff, Lead, Operator

log = logging.getLogger(__name__)
OUTCOMES = ("won", "nurture", "lost")
CUSTOMER = "customer"


class HandoffError(Exception):
    """A handoff action that cannot be done; the message says why (for the operator)."""


class HandoffNotFound(HandoffError):
    """No handoff (or lead, or operator) with that id."""


class NotHolder(HandoffError):
    """The operator does not hold this handoff (someone else does, nobody took it yet, or it is closed)."""


class NotOperator(HandoffError):
    """A Telegram user who is not linked to any Kindling operator."""


@dataclass(frozen=True)
class ClaimResult:
    """How a claim went: `ok` for the claimer; otherwise `holder` names who has it, `message` says it."""

    ok: bool
    handoff_id: int
    holder: str | None
    message: str


class Handoffs:
    """What the console and the Telegram operators' group call; each method is one transaction."""

    def __init__(
        self, sessions: Sessions, clock: Clock, engine: Engine, hub: Hub, dispatcher: Dispatcher, notifier: Notifier
    ) -> None:
        self.sessions, self.clock, self.engine, self.hub = sessions, clock, engine, hub
        self.dispatcher, self.notifier = dispatcher, notifier

    async def open_for_lead(self, lead_id: int, operator_id: int) -> ClaimResult:
        """The operator picks a lead up: opens a handoff (or finds its open one) and claims it."""
        handoff_id = await transaction(self.sessions, lambda session: self._open(session, lead_id, operator_id))
        await self.notifier.announce(handoff_id)
        return await self.claim(handoff_id, operator_id)

    async def next_for(self, operator_id: int) -> ClaimResult | None:
        """Claim the first waiting handoff in the queue's order (the likeliest lead, then the SLA deadline, then
        score); None if the queue is empty."""
        async with self.sessions() as session:
            query = (
                select(Handoff.id)
                .join(Lead, Lead.id == Handoff.lead_id)
                .where(Handoff.status == "waiting")
                .order_by(*LIKELIEST_FIRST, Handoff.sla_due_at, Lead.score.desc(), Handoff.id)
                .limit(10)
            )
            candidates = list((await session.exec(query)).all())
        for handoff_id in candidates:  # another operator may win one of them meanwhile: try the next
            result = await self.claim(handoff_id, operator_id)
            if result.ok:
                return result
        return None

    async def claim(self, handoff_id: int, operator_id: int) -> ClaimResult:
        """Take a waiting handoff; exactly one of several operators claiming at once wins."""
        result = await transaction(self.sessions, lambda session: self._claim(session, handoff_id, operator_id))
        if result.ok:
            await self.notifier.changed("claimed", handoff_id)
        return result

    async def reply(
        self, handoff_id: int, operator_id: int, text: str, key: str | None = None, template: dict | None = None
    ) -> int:
        """Send `text` (or a WhatsApp `template`: name, language, parameters) to the lead on their channel now.

        Returns the delivery id. Raises NotHolder, or HandoffError when the channel refuses a free-form
        reply now (WhatsApp's window has closed) and says why.
        """
        if not text.strip():
            raise HandoffError("an empty reply")
        key = key or f"operator:{handoff_id}:{uuid.uuid4().hex}"
        delivery_id = await transaction(
            self.sessions, lambda session: self._reply(session, handoff_id, operator_id, text, key, template)
        )
        await self.dispatcher.send_now([delivery_id])
        return delivery_id

    async def hand_back(
        self, handoff_id: int, operator_id: int, outcome: str, reason: str | None = None, flow: str | None = None
    ) -> None:
        """Close the handoff with won / nurture (resume, or start `flow`) / lost (needs a reason); bot owns again."""
        if outcome not in OUTCOMES:
            raise HandoffError(f"unknown outcome {outcome!r}: won, nurture or lost")
        if outcome == "lost" and not (reason or "").strip():
            raise HandoffError("a lost lead needs a reason")
        if flow is not None and (outcome != "nurture" or flow not in self.engine.library.flows):
            raise HandoffError(f"cannot start flow {flow!r}: only with nurture, and only a loaded flow")
        await transaction(
            self.sessions, lambda session: self._close(session, handoff_id, operator_id, outcome, reason, flow)
        )
        await self.notifier.changed("closed", handoff_id)

    async def queue(self) -> list[dict]:
        """Waiting and claimed handoffs, the likeliest leads first, then by SLA deadline, with seconds left."""
        async with self.sessions() as session:
            query = (
                select(Handoff, Lead.likelihood)
                .join(Lead, Lead.id == Handoff.lead_id)
                .where(Handoff.status.in_(OPEN))
                .order_by(*LIKELIEST_FIRST, Handoff.sla_due_at, Handoff.id)
            )
            found = (await session.exec(query)).all()
            return [await summary(session, handoff, self.clock.now(), likelihood) for handoff, likelihood in found]

    async def telegram_operator(self, telegram_user_id: int) -> int:
        """The id of the operator linked to a Telegram user; raises NotOperator for a stranger."""
        async with self.sessions() as session:
            query = select(Operator.id).where(
                Operator.telegram_user_id == str(telegram_user_id), Operator.removed_at.is_(None)
            )
            operator_id = (await session.exec(query)).first()
        if operator_id is None:
            raise NotOperator(
                "you are not a Kindling operator: ask an admin to run "
                f"kindling operator add NAME --telegram-id {telegram_user_id}"
            )
        return operator_id

    async def handoff_of_card(self, card_message_id: int) -> int:
        """The handoff whose card is that message in the operators' group; raises HandoffNotFound."""
        async with self.sessions() as session:
            query = select(Handoff.id).where(Handoff.telegram_message_id == str(card_message_id))
            handoff_id = (await session.exec(query.order_by(Handoff.id.desc()))).first()
        if handoff_id is None:
            raise HandoffNotFound("that message is not a lead's card")
        return handoff_id

    async def _open(self, session: AsyncSession, lead_id: int, operator_id: int) -> int:
        operator = await _operator(session, operator_id)
        lead = await _lead(session, lead_id)
        now = self.clock.now()
        reason = f"picked up by {operator.name}"
        handoff, _ = await open_handoff(session, self.engine, lead, trigger="operator", reason=reason, now=now)
        return handoff.id

    async def _claim(self, session: AsyncSession, handoff_id: int, operator_id: int) -> ClaimResult:
        operator, now = await _operator(session, operator_id), self.clock.now()
        won = await session.exec(
            update(Handoff)
            .where(Handoff.id == handoff_id, Handoff.status == "waiting")
            .values(status="claimed", claimed_by_id=operator.id, claimed_at=now)
        )
        handoff = await _handoff(session, handoff_id)
        if won.rowcount != 1:
            return await _not_claimed(session, handoff, operator)
        await _set_owner(session, handoff.lead_id, ("queued", "bot"), "human")
        waited = (now - handoff.warm_at).total_seconds()
        payload = {"handoff_id": handoff.id, "operator": operator.name, "seconds_since_warm": waited}
        session.add(Event(lead_id=handoff.lead_id, type="handoff_claimed", payload=payload, at=now))
        return ClaimResult(True, handoff.id, operator.name, f"you took lead #{handoff.lead_id}")

    async def _reply(
        self, session: AsyncSession, handoff_id: int, operator_id: int, text: str, key: str, template: dict | None
    ) -> int:
        handoff, operator = await _held(session, handoff_id, operator_id)
        earlier = (await session.exec(select(Delivery.id).where(Delivery.idempotency_key == key))).first()
        if earlier is not None:
            return earlier  # the same reply again (a retried Telegram update): sent once
        conversation = await self._conversation(session, handoff)
        refused = None if template else self.dispatcher.refusal(conversation, "operator")  # a closed window, say
        if refused is not None:
            raise HandoffError(refused)
        now = self.clock.now()
        delivery = Delivery(
            lead_id=handoff.lead_id, conversation_id=conversation.id, channel=conversation.channel,
            address=conversation.external_id, kind="operator", priority=0, text=text,
            idempotency_key=key, not_before=now, created_at=now, template=template,
        )  # fmt: skip
        session.add(delivery)
        await session.flush()
        handoff.first_reply_at = handoff.first_reply_at or now
        payload = {"handoff_id": handoff.id, "operator": operator.name, "delivery_id": delivery.id}
        session.add_all([handoff, Event(lead_id=handoff.lead_id, type="handoff_replied", payload=payload, at=now)])
        return delivery.id

    async def _conversation(self, session: AsyncSession, handoff: Handoff) -> Conversation:
        conversation = None
        if handoff.conversation_id is not None:
            conversation = await session.get(Conversation, handoff.conversation_id)
        conversation = conversation or await latest_conversation(session, handoff.lead_id)
        if conversation is None:
            raise HandoffError("the lead has no conversation to reply in")
        return conversation

    async def _close(
        self,
        session: AsyncSession,
        handoff_id: int,
        operator_id: int,
        outcome: str,
        reason: str | None,
        flow: str | None,
    ) -> None:
        handoff, operator = await _held(session, handoff_id, operator_id)
        now, lead = self.clock.now(), await get_lead(session, handoff.lead_id)
        handoff.status, handoff.closed_at, handoff.outcome, handoff.outcome_reason = "closed", now, outcome, reason
        session.add(handoff)
        await session.flush()
        await _set_owner(session, lead.id, ("queued", "human"), "bot")
        if outcome == "nurture":
            resumed = await resume_nurture(session, lead.id, now)
            started = await self._start_flow(session, lead, flow, now) if flow else False
        else:
            resumed, started = 0, False
            await end_paused(session, lead.id, f"handoff {outcome}", now)
        if outcome == "won" and lead.stage != CUSTOMER:
            why = f"handoff won by {operator.name}"
            change = await set_stage(session, self.engine.stages, self.engine.webhooks, lead, CUSTOMER, why, now)
            await self.engine.react(session, lead, [change], now)
        payload = {"handoff_id": handoff.id, "outcome": outcome, "reason": reason, "operator": operator.name,
                   "resumed": resumed, "flow": flow if started else None}  # fmt: skip
        session.add(Event(lead_id=lead.id, type="handoff_closed", payload=payload, at=now))
        closed = {"handoff": {**handoff_summary(handoff), "operator": operator.name}}
        await queue_webhook(session, self.engine.webhooks, "handoff.closed", lead, closed, now)

    async def _start_flow(self, session: AsyncSession, lead: Lead, slug: str, now: datetime) -> bool:
        spec = self.engine.library.flows[slug]
        if not may_enroll(spec, await lead_enrollments(session, lead.id), lead, now):
            return False
        await enroll(session, spec, lead, now, None)
        return True


async def _operator(session: AsyncSession, operator_id: int) -> Operator:
    operator = await session.get(Operator, operator_id)
    if operator is None or operator.removed_at is not None:
        raise HandoffNotFound(f"no operator {operator_id}")
    return operator


async def _lead(session: AsyncSession, lead_id: int) -> Lead:
    try:
        return await get_lead(session, lead_id)
    except LeadNotFound:
        raise HandoffNotFound(f"no lead {lead_id}") from None


async def _handoff(session: AsyncSession, handoff_id: int) -> Handoff:
    handoff = await session.get(Handoff, handoff_id, populate_existing=True)
    if handoff is None:
        raise HandoffNotFound(f"no handoff {handoff_id}")
    return handoff


async def _held(session: AsyncSession, handoff_id: int, operator_id: int) -> tuple[Handoff, Operator]:
    """The handoff and operator, if the operator holds it; raises NotHolder otherwise."""
    operator = await _operator(session, operator_id)
    handoff = await session.get(Handoff, handoff_id, with_for_update=True)
    if handoff is None:
        raise HandoffNotFound(f"no handoff {handoff_id}")
    if handoff.status == "claimed" and handoff.claimed_by_id == operator.id:
        return handoff, operator
    if handoff.status == "closed":
        raise NotHolder(f"lead #{handoff.lead_id} was handed back already")
    if handoff.status == "waiting":
        raise NotHolder(f"take lead #{handoff.lead_id} first")
    holder = await session.get(Operator, handoff.claimed_by_id)
    raise NotHolder(f"lead #{handoff.lead_id} is held by {holder.name if holder else 'someone else'}")


async def _not_claimed(session: AsyncSession, handoff: Handoff, operator: Operator) -> ClaimResult:
    if handoff.status == "claimed":
        holder = await session.get(Operator, handoff.claimed_by_id)
        name = holder.name if holder else "someone else"
        if handoff.claimed_by_id == operator.id:
            return ClaimResult(True, handoff.id, name, f"you hold lead #{handoff.lead_id} already")
        return ClaimResult(False, handoff.id, name, f"already taken by {name}")
    return ClaimResult(False, handoff.id, None, f"lead #{handoff.lead_id} was handed back already")


async def _set_owner(session: AsyncSession, lead_id: int, old: tuple[str, ...], new: str) -> None:
    await session.exec(
        update(Conversation).where(Conversation.lead_id == lead_id, Conversation.owner.in_(old)).values(owner=new)
    )
