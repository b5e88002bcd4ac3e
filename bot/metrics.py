"""Prometheus metrics at /metrics.

Backlogs (due steps, the outbox, outgoing webhooks, waiting handoffs, SLA breaches, how late the oldest due
work is) are read from the database at scrape time, so every instance reports the same truth. Inbound messages
are counted by the process that received them, as Prometheus counters are: sum them over instances.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.db import transaction
from storage.models import Delivery, Enrollment, Handoff
from storage.webhooks import counts as webhook_counts


class Metrics:
    """One registry per app: the process's counters and the figures read at the last scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.inbound = Counter("kindling_inbound_messages", "Messages received from leads", registry=self.registry)
        self.figures: dict[str, object] = {}
        self.registry.register(_Figures(self))

    async def read(self, sessions, now: datetime, inbox_held: int) -> bytes:  # type: ignore[no-untyped-def]
        """Read the backlogs from the database and render every metric in the text format."""
        self.figures = await transaction(sessions, lambda session: _figures(session, now))
        self.figures["inbox_held"] = inbox_held
        return generate_latest(self.registry)


class _Figures:
    """A collector over the figures `Metrics.read` just took from the database."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """The database figures as gauges (nothing before the first scrape)."""
        figures = self.metrics.figures
        if not figures:
            return
        deliveries = GaugeMetricFamily("kindling_deliveries", "Outbox rows by status", labels=["status"])
        for status, count in sorted(figures["deliveries"].items()):  # type: ignore[attr-defined]
            deliveries.add_metric([status], count)
        yield deliveries
        webhooks = GaugeMetricFamily(
            "kindling_webhooks", "Outgoing webhook deliveries by endpoint and status", labels=["endpoint", "status"]
        )
        for (endpoint, status), count in sorted(figures["webhooks"].items()):  # type: ignore[attr-defined]
            webhooks.add_metric([endpoint, status], count)
        yield webhooks
        for name, help_text in _GAUGES.items():
            yield GaugeMetricFamily(f"kindling_{name}", help_text, value=figures[name])


_GAUGES = {
    "outbox_due": "Outbox rows due to be sent now",
    "steps_due": "Drip steps due now and not yet run",
    "handoffs_waiting": "Warm leads waiting for an operator",
    "handoffs_sla_breached": "Handoffs that missed their SLA, ever",
    "tick_lag_seconds": "How long the oldest due step or outbox row has been waiting",
    "inbox_held": "Inbound updates left in the inbox for a person to look at (unreadable, or intake gave up)",
}


async def _figures(session: AsyncSession, now: datetime) -> dict[str, object]:
    by_status = dict((await session.exec(select(Delivery.status, func.count()).group_by(Delivery.status))).all())
    due_rows = (Delivery.status == "pending") & (Delivery.not_before <= now)
    outbox_due, oldest_row = (
        await session.exec(select(func.count(), func.min(Delivery.not_before)).where(due_rows))
    ).one()
    due_steps = (Enrollment.status == "active") & (Enrollment.due_at <= now)
    steps_due, oldest_step = (
        await session.exec(select(func.count(), func.min(Enrollment.due_at)).where(due_steps))
    ).one()
    waiting = (await session.exec(select(func.count()).where(Handoff.status == "waiting"))).one()
    breached = (await session.exec(select(func.count()).where(Handoff.breached_at.is_not(None)))).one()
    oldest = min((moment for moment in (oldest_row, oldest_step) if moment is not None), default=None)
    return {
        "deliveries": by_status,
        "webhooks": await webhook_counts(session),
        "outbox_due": outbox_due,
        "steps_due": steps_due,
        "handoffs_waiting": waiting,
        "handoffs_sla_breached": breached,
        "tick_lag_seconds": 0.0 if oldest is None else max(0.0, (now - _aware(oldest)).total_seconds()),
    }


def _aware(moment: datetime) -> datetime:
    """`min()` over a UTC column comes back as the driver gives it: naive on SQLite."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
