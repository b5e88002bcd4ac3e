"""Running due steps: claim due enrollments, render the step into an outbox row, do its action, move on.

Each enrollment advances in its own transaction together with the delivery it creates, and the
delivery's idempotency key (enrollment, flow version, step) is unique: a step is recorded exactly once,
whichever instance claims it. Sending, and the last safety check before it, is the dispatcher's job.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from flows.clock import Clock
from flows.engine import Engine, condition_exit, context, end, reachable_conversation
from flows.handoff import open_handoff
from flows.reactions import ledger, set_stage
from flows.render import RenderError, render_step
from flows.scoring import Scoring
from flows.spec import FlowSpec, StepSpec
from storage.db import Sessions, transaction
from storage.leads import get_lead
from storage.models import Conversation, Delivery, Enrollment, Event, Lead, PointsEntry

log = logging.getLogger(__name__)
LEASE = timedelta(seconds=60)
NURTURE_PRIORITY = 2


class Runner:
    """Advances due enrollments; `run_due` is what the scheduler ticks (and tests call with a fixed clock)."""

    def __init__(self, sessions: Sessions, engine: Engine, scoring: Scoring, clock: Clock) -> None:
        self.sessions, self.engine, self.scoring, self.clock = sessions, engine, scoring, clock

    async def run_due(self, limit: int = 200) -> int:
        """Process due steps; returns how many enrollments were advanced."""
        ids = await transaction(self.sessions, lambda session: self._claim(session, limit))
        for enrollment_id in ids:
            await transaction(self.sessions, lambda session, i=enrollment_id: self._advance(session, i))
        return len(ids)

    async def _claim(self, session: AsyncSession, limit: int) -> list[int]:
        now = self.clock.now()
        free = or_(Enrollment.lease_until.is_(None), Enrollment.lease_until < now)
        due = and_(Enrollment.status == "active", Enrollment.due_at <= now, free)
        query = select(Enrollment.id).where(due).order_by(Enrollment.due_at).limit(limit)
        ids = list((await session.exec(query.with_for_update(skip_locked=True))).all())
        if ids:
            await session.exec(update(Enrollment).where(Enrollment.id.in_(ids)).values(lease_until=now + LEASE))
        return ids

    async def _advance(self, session: AsyncSession, enrollment_id: int) -> None:
        now = self.clock.now()
        enrollment = await session.get(Enrollment, enrollment_id, with_for_update=True)
        if enrollment is None or enrollment.status != "active" or enrollment.due_at > now:
            return  # another instance got here first, or it was paused or ended meanwhile
        lead = await get_lead(session, enrollment.lead_id)
        spec = await self.engine.spec_of(session, enrollment)
        reason = _stop_reason(self.engine, spec, lead, now)
        if reason or spec is None:
            end(enrollment, "exited", reason, now)
            return
        names = spec.step_names
        step = spec.step_for(names[enrollment.step_index], lead.id)
        await self._run_step(session, spec, step, enrollment, lead, now)
        if enrollment.status == "active":
            _move_on(enrollment, spec, lead, now)
        session.add_all([enrollment, lead])

    async def _run_step(
        self, session: AsyncSession, spec: FlowSpec, step: StepSpec, enrollment: Enrollment, lead: Lead, now: datetime
    ) -> None:
        ctx = {**context(lead, None, now), "flow": {"slug": spec.slug, "name": spec.name}, "step": {"name": step.name}}
        if step.when is not None and not step.when.holds(**ctx):
            return _skipped(session, lead, spec, step, f"when is false: {step.when.source}", now)
        try:
            rendered = render_step(spec, step.name, step.variant, ctx)
        except RenderError as exc:  # never send raw template text: skip and say why
            log.error("flow %s step %s not sent: %s", spec.slug, step.name, exc)
            return _skipped(session, lead, spec, step, f"render error: {exc}", now)
        if rendered.text:
            await self._outbox(session, spec, step, enrollment, lead, rendered, now)
        if step.action is not None:
            await self._act(session, spec, step, enrollment, lead, now)

    async def _outbox(self, session, spec, step, enrollment, lead, rendered, now) -> None:  # type: ignore[no-untyped-def]
        conversation = await reachable_conversation(session, lead.id, self.engine.channels, step.channel)
        if conversation is None:
            return _skipped(session, lead, spec, step, "no channel reaches the lead", now)
        session.add(
            Delivery(
                lead_id=lead.id,
                conversation_id=conversation.id,
                channel=conversation.channel,
                address=conversation.external_id,
                kind="nurture",
                priority=NURTURE_PRIORITY,
                text=rendered.text,
                buttons=[{"type": "reply", "text": label} for label in rendered.buttons],
                idempotency_key=f"flow:{enrollment.id}:{spec.version}:{step.name}",
                enrollment_id=enrollment.id,
                flow_slug=spec.slug,
                step=step.name,
                not_before=now,
                created_at=now,
            )
        )
        await session.flush()

    async def _act(self, session, spec, step, enrollment, lead, now) -> None:  # type: ignore[no-untyped-def]
        action, why = step.action, f"flow {spec.slug}, step {step.name}"
        if action.kind == "handoff":
            await open_handoff(session, self.engine, lead, trigger="flow", reason=why, now=now)
        elif action.kind == "stage" and action.value != lead.stage:
            await set_stage(session, lead, str(action.value), why, now)
        elif action.kind == "tag":
            lead.tags = sorted({*lead.tags, str(action.value)})
        elif action.kind == "score":
            session.add(PointsEntry(lead_id=lead.id, rule=why, points=float(action.value or 0), at=now))
            await session.flush()
            lead.score = self.scoring.score(await ledger(session, lead.id), now)
        elif action.kind == "exit":
            end(enrollment, "exited", f"step {step.name} ends the flow", now)


async def handoff_started(session: AsyncSession, engine: Engine, lead: Lead, reason: str, now: datetime) -> Event:
    """The lead waits for a human: the bot steps aside and nurture stops (or pauses, per flow)."""
    await session.exec(
        update(Conversation).where(Conversation.lead_id == lead.id, Conversation.owner == "bot").values(owner="queued")
    )
    event = Event(lead_id=lead.id, type="handoff", payload={"reason": reason}, at=now)
    session.add(event)
    live = await session.exec(
        select(Enrollment).where(Enrollment.lead_id == lead.id, Enrollment.status.in_(("active", "paused")))
    )
    for enrollment in live.all():
        spec = await engine.spec_of(session, enrollment)
        if spec is None or spec.exits_on("handoff"):
            end(enrollment, "exited", "handoff", now)
        else:
            enrollment.status, enrollment.lease_until, enrollment.updated_at = "paused", None, now
        session.add(enrollment)
    await session.flush()
    return event


def _stop_reason(engine: Engine, spec: FlowSpec | None, lead: Lead, now: datetime) -> str | None:
    if spec is None:
        return "flow version unreadable"
    if lead.opted_out_at is not None:
        return "opt_out"
    return condition_exit(spec, engine.stages, lead, None, now)


def _move_on(enrollment: Enrollment, spec: FlowSpec, lead: Lead, now: datetime) -> None:
    """Point the enrollment at its next step, due relative to this step's due time; or finish."""
    enrollment.step_index += 1
    enrollment.lease_until, enrollment.updated_at = None, now
    names = spec.step_names
    if enrollment.step_index >= len(names):
        end(enrollment, "done", None, now)
        return
    following = spec.step_for(names[enrollment.step_index], lead.id)
    enrollment.due_at = following.delay.due(enrollment.due_at, lead.timezone)


def _skipped(session: AsyncSession, lead: Lead, spec: FlowSpec, step: StepSpec, reason: str, now: datetime) -> None:
    """A step that was due and not sent is an event, so `kindling lead show` and reports say why."""
    payload = {"flow": spec.slug, "step": step.name, "variant": step.variant, "reason": reason}
    session.add(Event(lead_id=lead.id, type="step_skipped", payload=payload, at=now))
