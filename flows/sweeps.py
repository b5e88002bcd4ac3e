"""Triggers no single event fires: leads stuck in a stage, likely leads, and scheduled broadcasts to an audience.

A `likelihood >= N` trigger is swept rather than fired by an event because what changes a likelihood is not an
event of the lead's: `kindling score fit` rewrites every lead's after an accepted fit (storage/learned.py), and a
lead may be rescored after the intake's commit. Sweeping the leads at N or more that the flow may take finds them
whichever wrote the likelihood, on whichever instance, within a sweep of it.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta

from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import exists, or_, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from flows.clock import Clock
from flows.durations import Delay
from flows.engine import LIVE, Engine, context, enroll, lead_enrollments, may_enroll
from flows.spec import FlowSpec
from storage.db import Sessions, transaction
from storage.models import Enrollment, Lead, Setting

log = logging.getLogger(__name__)
BATCH = 500
BROADCAST_PACE = timedelta(milliseconds=100)  # ten enrollments a second come due, not all at once


class Sweeps:
    """Periodic enrollment; each sweep is safe to run on every instance at once."""

    def __init__(self, sessions: Sessions, engine: Engine, clock: Clock, timezone: str = "UTC") -> None:
        self.sessions, self.engine, self.clock, self.timezone = sessions, engine, clock, timezone

    async def run(self) -> int:
        """Every stuck and schedule flow once; returns how many leads were enrolled."""
        enrolled = 0
        for spec in list(self.engine.library.flows.values()):
            if spec.trigger.kind == "stuck":
                enrolled += await transaction(self.sessions, lambda s, f=spec: self._stuck(s, f))
            elif spec.trigger.kind == "schedule":
                enrolled += await transaction(self.sessions, lambda s, f=spec: self._scheduled(s, f))
            elif spec.trigger.kind == "likelihood":
                enrolled += await transaction(self.sessions, lambda s, f=spec: self._likely(s, f))
        return enrolled

    async def _stuck(self, session: AsyncSession, spec: FlowSpec) -> int:
        """Enroll leads that have sat in the trigger's stage for its duration, once per stay in that stage."""
        now, trigger = self.clock.now(), spec.trigger
        assert trigger.after is not None
        nudged = exists().where(
            Enrollment.lead_id == Lead.id, Enrollment.flow_slug == spec.slug, Enrollment.enrolled_at >= Lead.stage_at
        )
        candidates = await session.exec(
            select(Lead)
            .where(Lead.stage == trigger.stage, Lead.stage_at <= now - _at_least(trigger.after))
            .where(Lead.merged_into_id.is_(None), Lead.opted_out_at.is_(None), ~nudged)
            .order_by(Lead.stage_at)
            .limit(BATCH)
        )
        count = 0
        for lead in candidates.all():
            if trigger.after.due(lead.stage_at, lead.timezone) <= now and await self._enroll(session, spec, lead, now):
                count += 1
        return count

    async def _likely(self, session: AsyncSession, spec: FlowSpec) -> int:
        """Enroll leads whose learned likelihood is at the trigger's threshold or above, as `reenter` allows.

        Leads the flow may not take again (in it now, or since less than `reenter`) are left out by the query; those
        whose `when` fails stay candidates, so the sweep pages through all of them by id.
        """
        now, after, count = self.clock.now(), 0, 0
        assert spec.trigger.threshold is not None
        threshold = math.ceil(spec.trigger.threshold)  # likelihoods are whole percents
        taken = exists().where(Enrollment.lead_id == Lead.id, Enrollment.flow_slug == spec.slug)
        if spec.reenter is not None:  # taken again, but not while in it, nor sooner than `reenter` after the last
            lately = Enrollment.enrolled_at > now - _at_least(spec.reenter)
            taken = taken.where(or_(Enrollment.status.in_(LIVE), lately))
        while True:
            batch = (
                await session.exec(
                    select(Lead)
                    .where(Lead.likelihood >= threshold, Lead.id > after)
                    .where(Lead.merged_into_id.is_(None), Lead.opted_out_at.is_(None), ~taken)
                    .order_by(Lead.id)
                    .limit(BATCH)
                )
            ).all()
            for lead in batch:
                if await self._enroll(session, spec, lead, now) is not None:
                    count += 1
            if len(batch) < BATCH:
                return count
            after = batch[-1].id

    async def _scheduled(self, session: AsyncSession, spec: FlowSpec) -> int:
        """At each cron time, enroll the audience, paced; only one instance wins each firing."""
        now, key = self.clock.now(), f"schedule:{spec.slug}"
        row = await session.get(Setting, key)
        if row is None:  # first sight: broadcasts start from the next firing, not a missed one
            session.add(Setting(key=key, value=now.isoformat()))
            return 0
        cron = CronTrigger.from_crontab(spec.trigger.cron or "", timezone=self.timezone)
        fire = cron.get_next_fire_time(None, datetime.fromisoformat(row.value) + timedelta(seconds=1))
        if fire is None or fire > now:
            return 0
        won = await session.exec(update(Setting).where(Setting.key == key, Setting.value == row.value)
                                 .values(value=now.isoformat()))  # fmt: skip
        if won.rowcount != 1:
            return 0
        leads = await session.exec(select(Lead).where(Lead.merged_into_id.is_(None), Lead.opted_out_at.is_(None)))
        count = 0
        for lead in leads.all():
            if spec.audience is not None and not spec.audience.holds(**context(lead, None, now)):
                continue
            enrollment = await self._enroll(session, spec, lead, now)
            if enrollment is not None:
                enrollment.due_at += BROADCAST_PACE * count
                count += 1
        log.info("flow %s: scheduled run enrolled %d leads", spec.slug, count)
        return count

    async def _enroll(self, session: AsyncSession, spec: FlowSpec, lead: Lead, now: datetime) -> Enrollment | None:
        if not may_enroll(spec, await lead_enrollments(session, lead.id), lead, now):
            return None
        if spec.when is not None and not spec.when.holds(**context(lead, None, now)):
            return None
        return await enroll(session, spec, lead, now, None)


def _at_least(delay: Delay) -> timedelta:
    """A lower bound of a delay, for the database to narrow candidates (the exact check follows)."""
    return max(delay.span + timedelta(days=delay.days + delay.business_days - 1), timedelta(0))
