"""The funnel report: how far the leads that arrived in a period got, stage by stage, from the stage history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.reports.period import Query
from bot.reports.stats import Measure, durations
from flows.stages import Stages
from storage.models import StageEntry

ALL = "all"
RULE = (
    "Leads that arrived in the period, and every stage they have reached since. A lead counts in a stage "
    "once, the first time it got there; skipping stages counts as passing through them at that moment; "
    "moving back does not un-count. Time in a stage runs from first reaching it to first reaching a later "
    "one, over the leads that have moved on (not those passed through in a jump)."
)


async def funnel(session: AsyncSession, stages: Stages, query: Query) -> dict[str, Any]:
    """Per group (all leads, or each source/campaign/channel): reached, conversion and median time per stage."""
    dim = getattr(StageEntry, query.by) if query.by else None
    period = [StageEntry.cohort_at >= query.since, StageEntry.cohort_at < query.until]
    groups = [await _group_rows(session, stages, period, None)]
    if dim is not None:
        groups += await _group_rows(session, stages, period, dim)
    return {
        "report": "funnel",
        "since": query.since.isoformat(),
        "until": query.until.isoformat(),
        "by": query.by,
        "rule": RULE,
        "stages": list(stages.order),
        "groups": groups if dim is not None else groups[:1],
    }


async def _group_rows(session: AsyncSession, stages: Stages, period: list, dim: Any) -> Any:
    """The all-leads group (dim None), or one group per value of `dim`, largest first."""
    keys = [StageEntry.stage] + ([dim] if dim is not None else [])
    counted = select(*keys, func.count()).where(*period, StageEntry.stage.in_(stages.order)).group_by(*keys)
    reached: dict[str, dict[str, int]] = {}
    for row in await session.exec(counted):
        reached.setdefault(row[1] if dim is not None else ALL, {})[row[0]] = row[-1]
    stay = Measure("stay", StageEntry.entered_at, (StageEntry.left_at,))
    moved_on = [*period, StageEntry.stage.in_(stages.order), StageEntry.left_at > StageEntry.entered_at]
    times = await durations(session, keys, [stay], moved_on, quantiles=(0.5,))
    groups = [_group(key, stages, counts, times, dim is not None) for key, counts in reached.items()]
    groups.sort(key=lambda group: (-group["leads"], group["key"]))
    if dim is None:
        return groups[0] if groups else _group(ALL, stages, {}, {}, False)
    return groups


def _group(key: str, stages: Stages, counts: dict[str, int], times: dict, split: bool) -> dict[str, Any]:
    rows, previous = [], None
    for stage in stages.order:
        count = counts.get(stage, 0)
        stay = times.get((stage, key) if split else (stage,), {}).get("stay", {"count": 0, "p50": None})
        rows.append(
            {
                "stage": stage,
                "reached": count,
                "conversion": _ratio(count, previous) if previous is not None else None,
                "median_seconds_in_stage": stay["p50"],
                "moved_on": stay["count"],
            }
        )
        previous = count
    first, last = rows[0]["reached"] if rows else 0, rows[-1]["reached"] if rows else 0
    return {"key": key, "leads": first, "overall_conversion": _ratio(last, first), "stages": rows}


def _ratio(part: int, whole: int | None) -> float | None:
    """part / whole, 4 decimals; None when there is nothing to divide by."""
    return round(part / whole, 4) if whole else None
