"""Enrollment: which flows an event starts for a lead, and which of its flows it ends.

Runs inside the intake transaction (`react`), so an event and the enrollments it causes commit together.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from flows.handoff import HandoffPolicy, close_won, wins
from flows.library import FlowLibrary
from flows.locales import Locales
from flows.outgoing import Subscriptions
from flows.reach import EmailPolicy, Sockets
from flows.reactions import event_context, lead_context
from flows.scoring import Scoring
from flows.spec import FlowSpec
from flows.stages import Stages
from storage.known import known
from storage.models import Enrollment, Event, FlowVersion, Lead

LIVE = ("active", "paused")
REPLIES = ("message", "button")


@dataclass
class Engine:
    """The flow engine's state: flows, funnel, channels and who is on them, scoring, handoff, webhooks, languages."""

    library: FlowLibrary
    stages: Stages
    channels: Collection[str]
    scoring: Scoring = field(default_factory=Scoring)
    handoff: HandoffPolicy = field(default_factory=HandoffPolicy)
    webhooks: Subscriptions = field(default_factory=Subscriptions)
    presence: Sockets = field(default_factory=Sockets)  # who is on the widget now, in this process
    email: EmailPolicy = field(default_factory=EmailPolicy)
    locales: Locales = field(default_factory=Locales)  # the languages there are; steps go in the lead's

    async def react(self, session: AsyncSession, lead: Lead, events: Sequence[Event], now: datetime) -> None:
        """End the flows these events end, then enroll the lead in the flows they trigger."""
        enrollments = await lead_enrollments(session, lead.id)
        for enrollment in enrollments:
            if enrollment.status in LIVE:
                spec = await self.spec_of(session, enrollment)
                reason = exit_reason(spec, self.stages, lead, events, now) if spec else "flow version unreadable"
                if reason:
                    end(enrollment, "exited", reason, now)
        if (why := wins(lead, events)) is not None:
            await close_won(session, self, lead, why, now)
        if lead.opted_out_at is not None:
            return
        for spec in list(self.library.flows.values()):
            event = next((event for event in events if self.triggered(spec, lead, event, now)), None)
            if event is not None and may_enroll(spec, enrollments, lead, now):
                enrollments.append(await enroll(session, spec, lead, now, event))

    def triggered(self, spec: FlowSpec, lead: Lead, event: Event, now: datetime) -> bool:
        """Whether `event` starts `spec` for this lead (trigger, then the flow's `when`)."""
        trigger = spec.trigger
        if trigger.kind == "event":
            fired = trigger.matches_event(event.type, event.name)
        elif trigger.kind == "stage":
            fired = event.type == "stage_changed" and event.payload.get("to") == trigger.stage
        elif trigger.kind == "score":
            fired = trigger.threshold is not None and lead.score >= trigger.threshold
        else:
            return False  # stuck, likelihood and schedule triggers are swept (flows/sweeps.py), not event-driven
        return fired and (spec.when is None or spec.when.holds(**context(lead, event, now)))

    async def spec_of(self, session: AsyncSession, enrollment: Enrollment) -> FlowSpec | None:
        """The flow version an enrollment is pinned to, from memory or from its stored text."""
        spec = self.library.get(enrollment.flow_slug, enrollment.flow_version)
        if spec is not None:
            return spec
        stored = await session.get(FlowVersion, (enrollment.flow_slug, enrollment.flow_version))
        return None if stored is None else self.library.pinned(stored.slug, stored.version, stored.source)


def context(lead: Lead, event: Event | None, now: datetime) -> dict:
    """What `when`, exit and step templates see."""
    return {"lead": lead_context(lead), "event": event_context(event) if event else blank_event(), "now": now}


def blank_event() -> dict:
    """An event context with every key and no values (steps run later than their trigger)."""
    return {"type": "", "properties": {}} | dict.fromkeys(("name", "path", "url", "text", "value", "channel"))


def exit_reason(spec: FlowSpec, stages: Stages, lead: Lead, events: Sequence[Event], now: datetime) -> str | None:
    """Why these events end the flow for the lead, or None."""
    for event in events:
        if event.type in REPLIES and spec.exits_on("reply"):
            return "reply"
        if event.type in ("handoff", "opt_out") and spec.exits_on(event.type):
            return event.type
        moved_to = event.payload.get("to") if event.type == "stage_changed" else None
        matched = next((rule for rule in spec.exits if rule.matches_event(event.type, event.name, moved_to)), None)
        if matched is not None:
            return matched.source
    return condition_exit(spec, stages, lead, events[0] if events else None, now)


def condition_exit(spec: FlowSpec, stages: Stages, lead: Lead, event: Event | None, now: datetime) -> str | None:
    """The first `stage >= X` or expression exit that holds now, or None."""
    for rule in spec.exits:
        if rule.kind == "stage" and rule.stage_reached(stages, lead.stage):
            return rule.source
        if rule.kind == "expression" and rule.expression and rule.expression.holds(**context(lead, event, now)):
            return rule.source
    return None


def may_enroll(spec: FlowSpec, enrollments: Sequence[Enrollment], lead: Lead, now: datetime) -> bool:
    """No live enrollment in this flow, and the flow's `reenter` policy allows another one."""
    mine = [enrollment for enrollment in enrollments if enrollment.flow_slug == spec.slug]
    if any(enrollment.status in LIVE for enrollment in mine):
        return False
    if not mine:
        return True
    last = max(mine, key=lambda enrollment: enrollment.enrolled_at)
    return spec.reenter is not None and spec.reenter.due(last.enrolled_at, lead.timezone) <= now


async def enroll(session: AsyncSession, spec: FlowSpec, lead: Lead, now: datetime, event: Event | None) -> Enrollment:
    """Put the lead at the flow's first step, pinned to this version."""
    if await session.get(FlowVersion, (spec.slug, spec.version)) is None:
        session.add(FlowVersion(slug=spec.slug, version=spec.version, source=spec.source, created_at=now))
    first = spec.step_for(spec.step_names[0], lead.id)
    enrollment = Enrollment(
        lead_id=lead.id,
        flow_slug=spec.slug,
        flow_version=spec.version,
        due_at=first.delay.due(now, lead.timezone),
        enrolled_at=now,
        updated_at=now,
        goal=spec.goal,
    )
    trigger = {"event_id": event.id, "type": event.type} if event is not None else {}
    session.add_all(
        [
            enrollment,
            Event(
                lead_id=lead.id,
                type="flow_enrolled",
                at=now,
                payload={"flow": spec.slug, "version": spec.version, "trigger": trigger},
            ),
        ]
    )
    await session.flush()  # a second live enrollment breaks the unique index; intake then retries
    answers = known(session)
    if answers is not None and lead.id in answers.enrollments:
        answers.enrollments[lead.id].append(enrollment)
    return enrollment


def end(enrollment: Enrollment, status: str, reason: str | None, now: datetime) -> None:
    """Finish (`done`) or leave (`exited`) a flow."""
    enrollment.status, enrollment.exit_reason = status, reason
    enrollment.lease_until, enrollment.updated_at = None, now


async def lead_enrollments(session: AsyncSession, lead_id: int) -> list[Enrollment]:
    """Every enrollment of a lead, oldest first."""
    answers = known(session)
    if answers is not None and lead_id in answers.enrollments:
        return list(answers.enrollments[lead_id])
    rows = await session.exec(select(Enrollment).where(Enrollment.lead_id == lead_id).order_by(Enrollment.id))
    return list(rows.all())
