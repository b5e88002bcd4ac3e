"""The handoff report: speed to lead, SLA breaches, and outcomes per operator and per source (or campaign, channel)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.reports.bands import likelihood_band
from bot.reports.period import Query
from bot.reports.stats import Measure, durations
from storage.models import Handoff, Lead, Operator

RULE = (
    "Handoffs whose warm signal came in the period. Speed to lead counts from the warm signal to the first "
    "notification (console or Telegram), to the claim, and to the operator's first reply, over the handoffs "
    "that got there. A breach is a handoff nobody took within its SLA. Operators: who claimed it."
)
OUTCOMES = ("won", "nurture", "lost")
SPEED = (
    Measure("notified", Handoff.warm_at, (Handoff.console_notified_at, Handoff.telegram_notified_at)),
    Measure("claimed", Handoff.warm_at, (Handoff.claimed_at,)),
    Measure("first_reply", Handoff.warm_at, (Handoff.first_reply_at,)),
)


async def handoffs(session: AsyncSession, query: Query) -> dict[str, Any]:
    """Speed to lead (p50/p90/p99), breaches and outcomes; per operator, and per `by` (default: source)."""
    period = [Handoff.warm_at >= query.since, Handoff.warm_at < query.until]
    by = query.by or "source"
    dim = likelihood_band() if by == "likelihood" else getattr(Handoff, by)
    by_lead = [(Lead, Lead.id == Handoff.lead_id)] if by == "likelihood" else []  # the band is the lead's now
    operator = func.coalesce(Operator.name, "(nobody)")
    joins = [(Operator, Operator.id == Handoff.claimed_by_id)]
    speed = (await durations(session, [], SPEED, period)).get((), {})
    total = await _outcomes(session, [], period, [])
    per_operator = await _outcomes(session, [operator], period, joins)
    per_group = await _outcomes(session, [dim], period, by_lead)
    claim_times = await durations(session, [operator], SPEED[1:], period, quantiles=(0.5,), joins=joins)
    group_times = await durations(session, [dim], SPEED[1:2], period, quantiles=(0.5,), joins=by_lead)
    staff = [(key, counts) for key, counts in _largest_first(per_operator) if counts["claimed"]]
    return {
        "report": "handoffs",
        "since": query.since.isoformat(),
        "until": query.until.isoformat(),
        "by": by,
        "rule": RULE,
        **total.get((), _blank()),
        "speed_to_lead": {measure.name: speed.get(measure.name, _no_speed()) for measure in SPEED},
        "operators": [_row("operator", key, counts, claim_times, ("claimed", "first_reply")) for key, counts in staff],
        "groups": [_row("key", key, counts, group_times, ("claimed",)) for key, counts in _largest_first(per_group)],
    }


async def _outcomes(session: AsyncSession, keys: list, period: list, joins: list) -> dict[tuple, dict[str, Any]]:
    """Counts per group: handoffs, claimed, breached, each outcome and still open."""
    columns = [
        func.count(),
        func.count(Handoff.claimed_at),
        func.count(Handoff.breached_at),
        *(func.count(case((Handoff.outcome == outcome, 1))) for outcome in OUTCOMES),
    ]
    query = select(*keys, *columns)
    for target, on in joins:
        query = query.outerjoin(target, on)
    query = query.where(*period)
    if keys:
        query = query.group_by(*keys)
    found = {}
    for row in await session.exec(query):
        total, claimed, breached, *outcomes = row[len(keys) :]
        if not total:
            continue
        counts = {"handoffs": total, "claimed": claimed, "breached": breached}
        counts["breach_rate"] = round(breached / total, 4)
        counts.update(zip(OUTCOMES, outcomes, strict=True))
        counts["open"] = total - sum(outcomes)
        found[tuple(row[: len(keys)])] = counts
    return found


def _largest_first(groups: dict[tuple, dict[str, Any]]) -> list[tuple[tuple, dict[str, Any]]]:
    return sorted(groups.items(), key=lambda item: (-item[1]["handoffs"], str(item[0][0])))


def _row(label: str, key: tuple, counts: dict, times: dict, names: tuple[str, ...]) -> dict[str, Any]:
    return {label: key[0], **counts, **_medians(times.get(key, {}), names)}


def _medians(times: dict[str, dict[str, Any]], names: tuple[str, ...]) -> dict[str, float | None]:
    """Median seconds from the warm signal to each of `names` (None where nothing got there)."""
    return {f"median_seconds_to_{name}": times.get(name, {}).get("p50") for name in names}


def _blank() -> dict[str, Any]:
    return {"handoffs": 0, "claimed": 0, "breached": 0, "breach_rate": None, **dict.fromkeys(OUTCOMES, 0), "open": 0}


def _no_speed() -> dict[str, Any]:
    return {"count": 0, "p50": None, "p90": None, "p99": None}
