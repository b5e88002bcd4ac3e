"""Running due steps: claim a batch of due enrollments, render each step into an outbox row, move on.

A batch is claimed and advanced in one transaction: the rows are locked (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, the write lock taken at `BEGIN IMMEDIATE` on SQLite) until the commit that records their
deliveries, so another instance skips them, and a process that dies mid-batch leaves nothing half done.
The batch is read and written in a few set-based statements, not a round trip per step, and as plain
rows: a step without an action never builds an ORM object (building and flushing them took a third of the
time). A lead whose step acts on it (handoff, stage, tag, score, exit) goes through the ORM as before, all
of its steps in the batch, so those actions stay the code the rest of the app uses and its later steps see
what they did. A delivery's idempotency key (enrollment, flow version, step) is unique and a repeat insert
is ignored, so a step is recorded exactly once. Sending, and the last safety check before it, is the
dispatcher's job.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, Select, bindparam, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from flows.clock import Clock
from flows.engine import Engine, condition_exit, context, end
from flows.handoff import open_handoff
from flows.reach import EMAIL, LIVE_WINDOW, choose
from flows.reactions import LEAD_CONTEXT_KEYS, ledger, set_stage
from flows.render import Rendered, RenderError, render_step
from flows.scoring import Scoring
from flows.spec import FlowSpec, StepSpec
from storage.db import DatabaseUnavailable, Sessions, transaction
from storage.leads import email_conversation, get_lead
from storage.models import Conversation, Delivery, Enrollment, Event, Lead, PointsEntry

log = logging.getLogger(__name__)
NURTURE_PRIORITY = 2
RETRY_FAILED_STEP = timedelta(minutes=10)
# What a due step reads and writes back: the claim loads these, `_write_back` stores the changed ones.
CLAIMED = (
    Enrollment.id,
    Enrollment.lead_id,
    Enrollment.flow_slug,
    Enrollment.flow_version,
    Enrollment.step_index,
    Enrollment.due_at,
    Enrollment.status,
    Enrollment.exit_reason,
)
EMAIL_STATE = ("email_consent_at", "email_opted_out_at", "email_bounced_at")
LEAD_COLUMNS = tuple(getattr(Lead, name) for name in (*LEAD_CONTEXT_KEYS, "opted_out_at", *EMAIL_STATE))
REACH_COLUMNS = tuple(
    getattr(Conversation, name) for name in ("id", "lead_id", "channel", "external_id", "last_message_at", "created_at")
)


class Claimed:
    """A claimed enrollment as plain values: read by the claim, changed in memory, written back in one statement."""

    __slots__ = (*(column.key for column in CLAIMED), "lease_until", "updated_at")

    def __init__(self, row: Row[Any]) -> None:
        for column, value in zip(CLAIMED, row, strict=True):
            setattr(self, column.key, value)

    def written(self) -> dict[str, Any]:
        """The values an UPDATE stores for this enrollment."""
        return {
            "claimed_id": self.id,
            "status": self.status,
            "exit_reason": self.exit_reason,
            "step_index": self.step_index,
            "due_at": self.due_at,
            "lease_until": self.lease_until,
            "updated_at": self.updated_at,
        }


class Runner:
    """Advances due enrollments; `run_due` is what the scheduler ticks (and tests call with a fixed clock)."""

    def __init__(self, sessions: Sessions, engine: Engine, scoring: Scoring, clock: Clock) -> None:
        self.sessions, self.engine, self.scoring, self.clock = sessions, engine, scoring, clock

    async def run_due(self, limit: int = 200) -> int:
        """Advance up to `limit` due enrollments in one transaction; returns how many."""
        try:
            return await transaction(self.sessions, lambda session: self._run(session, self._due(limit)))
        except DatabaseUnavailable:
            raise
        except Exception:  # a bug met by one step must not stall every flow: isolate it
            log.exception("a batch of due steps failed; advancing them one by one")
            return await self._one_by_one(limit)

    def _due(self, limit: int, what: Sequence[Any] = CLAIMED) -> Select:
        """Due active enrollments, oldest due first, locked for this transaction; others skip them."""
        now = self.clock.now()
        due = select(*what).where(Enrollment.status == "active", Enrollment.due_at <= now)
        return due.order_by(Enrollment.due_at).limit(limit).with_for_update(skip_locked=True)

    async def _run(self, session: AsyncSession, claim: Select) -> int:
        now = self.clock.now()
        claimed = [Claimed(row) for row in await _rows(session, claim)]
        if not claimed:
            return 0
        leads, orm_leads = await self._leads_of(session, claimed)
        reach = await _conversations(session, {lead.id for lead in leads.values()}, self.engine.channels)
        live = await self._live(session, reach, now)
        orm = await _orm_enrollments(session, [e.id for e in claimed if leads[e.lead_id].id in orm_leads])
        outbox: list[dict[str, Any]] = []
        for enrollment in claimed:
            lead = leads[enrollment.lead_id]
            if lead.id in orm_leads:
                orm_lead = await session.get(Lead, lead.id)
                await self._advance(session, orm[enrollment.id], orm_lead, (reach[lead.id], live), outbox, now)
            else:
                await self._advance(session, enrollment, lead, (reach[lead.id], live), outbox, now)
        if outbox:
            await session.flush()  # what the ORM path changed goes first, as an ORM statement would flush it
            await (await session.connection()).execute(_insert_once(session), outbox)
        await _write_back(session, [enrollment for enrollment in claimed if enrollment.id not in orm])
        return len(claimed)

    async def _live(self, session: AsyncSession, reach: dict[int, list[Row[Any]]], now: datetime) -> set[int]:
        """The widget conversations whose visitor is on the site: a socket open here, or recent widget activity."""
        web = [c for conversations in reach.values() for c in conversations if c.channel == "webchat"]
        live = {c.id for c in web if self.engine.presence.online(c.channel, c.external_id)}
        rest = [c.id for c in web if c.id not in live]
        if rest:  # sockets on other instances: a page view or message within LIVE_WINDOW (the lead's events index)
            recent = select(Event.conversation_id).where(
                Event.lead_id.in_(list(reach)), Event.at >= now - LIVE_WINDOW, Event.conversation_id.in_(rest)
            )
            live.update(row.conversation_id for row in await _rows(session, recent.distinct()))
        return live

    async def _leads_of(self, session: AsyncSession, claimed: Sequence[Claimed]) -> tuple[dict[int, Any], set[int]]:
        """The batch's leads by enrollment lead id, and the ids of those a step acts on (they go through the ORM)."""
        leads: dict[int, Any] = await _leads(session, {enrollment.lead_id for enrollment in claimed})
        for enrollment in claimed:  # a lead merged into another since: the survivor gets the step
            if enrollment.lead_id not in leads:
                leads[enrollment.lead_id] = await get_lead(session, enrollment.lead_id)
        orm_leads = set()
        for enrollment in claimed:
            lead_id = leads[enrollment.lead_id].id
            if lead_id not in orm_leads and await self._acts(session, enrollment, lead_id):
                orm_leads.add(lead_id)
        return leads, orm_leads

    async def _acts(self, session: AsyncSession, enrollment: Claimed, lead_id: int) -> bool:
        """Whether the step due may act on the lead (or cannot be told apart): then it goes through the ORM."""
        spec = await self.engine.spec_of(session, enrollment)
        if spec is None:
            return False
        names = spec.step_names
        if enrollment.step_index >= len(names):
            return True  # broken: let the ORM path fail as it always did
        return spec.step_for(names[enrollment.step_index], lead_id).action is not None

    async def _one_by_one(self, limit: int) -> int:
        """Each due enrollment in its own transaction; one that fails is retried later and says why."""
        now = self.clock.now()
        async with self.sessions() as session:
            ids = (await session.exec(self._due(limit, (Enrollment.id,)))).all()
        for enrollment_id in ids:
            try:
                claim = self._due(1).where(Enrollment.id == enrollment_id)
                await transaction(self.sessions, lambda session, claim=claim: self._run(session, claim))
            except DatabaseUnavailable:
                raise
            except Exception as exc:
                log.exception("enrollment %s: the step failed; retrying in %s", enrollment_id, RETRY_FAILED_STEP)
                await transaction(self.sessions, lambda session, i=enrollment_id, e=exc: _failed(session, i, e, now))
        return len(ids)

    async def _advance(
        self,
        session: AsyncSession,
        enrollment: Enrollment | Claimed,
        lead: Lead | Row[Any],
        reach: tuple[list[Row[Any]], set[int]],
        outbox: list[dict[str, Any]],
        now: datetime,
    ) -> None:
        spec = await self.engine.spec_of(session, enrollment)
        reason = _stop_reason(self.engine, spec, lead, now)
        if reason or spec is None:
            end(enrollment, "exited", reason, now)
            return
        step = spec.step_for(spec.step_names[enrollment.step_index], lead.id, self.engine.locales.of(lead.locale))
        ctx = {**context(lead, None, now), "flow": {"slug": spec.slug, "name": spec.name}, "step": {"name": step.name}}
        if step.when is not None and not step.when.holds(**ctx):
            _skipped(session, lead, spec, step, f"when is false: {step.when.source}", now)
        else:
            try:
                rendered = render_step(spec, step.name, step.variant, ctx, step.locale)
            except RenderError as exc:  # never send raw template text: skip and say why
                log.error("flow %s step %s not sent: %s", spec.slug, step.name, exc)
                _skipped(session, lead, spec, step, f"render error: {exc}", now)
            else:
                if rendered.text:
                    row = await self._route(session, spec, step, lead, reach, rendered, now)
                    outbox.extend([_outbox_row(spec, step, enrollment, lead, rendered, now, **row)] if row else [])
                if step.action is not None:
                    await self._act(session, spec, step, enrollment, lead, now)
        if enrollment.status in ("active", "paused"):  # a handoff step pauses its own flow: resume after it
            _move_on(enrollment, spec, lead, now)

    async def _route(self, session, spec, step, lead, reach, rendered: Rendered, now: datetime) -> dict | None:  # type: ignore[no-untyped-def]
        """Where the step goes (conversation, channel, address, subject), or None when skipped with the reason."""
        conversations, live = reach
        template = step.whatsapp is not None  # a WhatsApp template may go after WhatsApp's window
        route = choose(step.channels, lead, conversations, live, self.engine.email, now, template)
        if isinstance(route, str):
            _skipped(session, lead, spec, step, route, now)
            return None
        conversation = route.conversation
        if route.channel != EMAIL:
            return {"conversation_id": conversation.id, "channel": route.channel, "address": conversation.external_id}
        conversation = await email_conversation(session, lead, now)
        assert conversation is not None  # an email route means the lead has an address
        if conversation.lead_id != lead.id:  # an address two leads claim: its replies belong to the other one
            _skipped(session, lead, spec, step, f"the email address is lead {conversation.lead_id}'s", now)
            return None
        subject = rendered.subject or spec.name  # a default-channel step without a subject: the flow's name
        address = conversation.external_id
        return {"conversation_id": conversation.id, "channel": EMAIL, "address": address, "subject": subject}

    async def _act(self, session, spec, step, enrollment, lead, now) -> None:  # type: ignore[no-untyped-def]
        action, why = step.action, f"flow {spec.slug}, step {step.name}"
        if action.kind == "handoff":
            await open_handoff(session, self.engine, lead, trigger="flow", reason=why, now=now)
        elif action.kind == "stage" and action.value != lead.stage:
            await set_stage(session, self.engine.stages, self.engine.webhooks, lead, str(action.value), why, now)
        elif action.kind == "tag":
            lead.tags = sorted({*lead.tags, str(action.value)})
        elif action.kind == "score":
            session.add(PointsEntry(lead_id=lead.id, rule=why, points=float(action.value or 0), at=now))
            await session.flush()
            lead.score = self.scoring.score(await ledger(session, lead.id), now)
        elif action.kind == "exit":
            end(enrollment, "exited", f"step {step.name} ends the flow", now)


def _stop_reason(engine: Engine, spec: FlowSpec | None, lead: Lead | Row[Any], now: datetime) -> str | None:
    if spec is None:
        return "flow version unreadable"
    if lead.opted_out_at is not None:
        return "opt_out"
    return condition_exit(spec, engine.stages, lead, None, now)


async def _leads(session: AsyncSession, ids: Collection[int]) -> dict[int, Row[Any]]:
    """The batch's leads by id as plain rows, in one query; a merged-away lead is left to `get_lead`."""
    query = select(*LEAD_COLUMNS).where(Lead.id.in_(list(ids)), Lead.merged_into_id.is_(None))
    return {lead.id: lead for lead in await _rows(session, query)}


async def _conversations(
    session: AsyncSession, lead_ids: Collection[int], channels: Collection[str]
) -> defaultdict[int, list[Row[Any]]]:
    """The conversations a nurture message can go to, per lead, in one query."""
    reach: defaultdict[int, list[Row[Any]]] = defaultdict(list)
    if lead_ids and channels:
        # By lead only: with the channel in the query SQLite picks the (channel, external_id) index and
        # walks every conversation on that channel, which grows with the number of leads.
        query = select(*REACH_COLUMNS).where(Conversation.lead_id.in_(list(lead_ids)))
        for conversation in await _rows(session, query):
            if conversation.channel in channels and conversation.channel != EMAIL:  # email: see `flows.reach`
                reach[conversation.lead_id].append(conversation)
    return reach


async def _rows(session: AsyncSession, query: Select) -> Sequence[Row[Any]]:
    """A plain-column query run on the session's connection: Core rows, without the ORM's result machinery.

    The session is flushed first, as `session.exec` would, so the query sees what the ORM path changed.
    """
    await session.flush()
    return (await (await session.connection()).execute(query)).all()


async def _orm_enrollments(session: AsyncSession, ids: Sequence[int]) -> dict[int, Enrollment]:
    """The enrollments whose steps act on their leads, as ORM objects (already locked by the claim)."""
    if not ids:
        return {}
    rows = await session.exec(select(Enrollment).where(Enrollment.id.in_(ids)))
    return {enrollment.id: enrollment for enrollment in rows}


async def _write_back(session: AsyncSession, claimed: Sequence[Claimed]) -> None:
    """Store the plain enrollments' new state: one UPDATE run with every row's values."""
    if claimed:
        table = Enrollment.__table__
        statement = update(table).where(table.c.id == bindparam("claimed_id"))
        await (await session.connection()).execute(statement, [enrollment.written() for enrollment in claimed])


def _outbox_row(spec, step, enrollment, lead, rendered: Rendered, now: datetime, **route: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A step's outbox row, with its route (conversation_id, channel, address, and an email's subject)."""
    return {
        "lead_id": lead.id,
        "kind": "nurture",
        "priority": NURTURE_PRIORITY,
        "text": rendered.text,
        "buttons": [{"type": "reply", "text": label} for label in rendered.buttons],
        "idempotency_key": f"flow:{enrollment.id}:{spec.version}:{step.name}",
        "enrollment_id": enrollment.id,
        "flow_slug": spec.slug,
        "step": step.name,
        "variant": step.variant,
        "status": "pending",
        "attempts": 0,
        "not_before": now,
        "created_at": now,
        "subject": None,
        "template": rendered.whatsapp if route.get("channel") == "whatsapp" else None,
        **route,
    }


def _insert_once(session: AsyncSession):  # type: ignore[no-untyped-def]
    """An INSERT of outbox rows (run with many rows at once) that leaves a key already there as it is."""
    dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite
    return dialect.insert(Delivery.__table__).on_conflict_do_nothing(index_elements=["idempotency_key"])


async def _failed(session: AsyncSession, enrollment_id: int, error: Exception, now: datetime) -> None:
    """Record a step that raised, and try it again later instead of at every tick."""
    enrollment = await session.get(Enrollment, enrollment_id)
    if enrollment is None:
        return
    enrollment.due_at, enrollment.updated_at = now + RETRY_FAILED_STEP, now
    error_text = f"{type(error).__name__}: {error}"
    payload = {"flow": enrollment.flow_slug, "step_index": enrollment.step_index, "error": error_text}
    session.add_all([enrollment, Event(lead_id=enrollment.lead_id, type="step_failed", payload=payload, at=now)])


def _move_on(enrollment: Enrollment | Claimed, spec: FlowSpec, lead: Lead, now: datetime) -> None:
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
