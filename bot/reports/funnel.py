"""The funnel report: how far the leads that arrived in a period got, stage by stage, from the stage history."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, literal, tuple_
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.reports.period import Query
from bot.reports.stats import percentile_cont
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
    """Per group (all leads, and each source/campaign/channel): reached, conversion and median time per stage."""
    dim = getattr(StageEntry, query.by) if query.by else None
    tally = await _tally(session, stages, query, dim)
    keys = {key for key, _ in tally} | {ALL}
    groups = [_group(key, stages, tally) for key in keys]
    groups.sort(key=lambda group: (group["key"] != ALL, -group["leads"], group["key"]))
    return {
        "report": "funnel",
        "since": query.since.isoformat(),
        "until": query.until.isoformat(),
        "by": query.by,
        "rule": RULE,
        "stages": list(stages.order),
        "groups": groups,
    }


async def _tally(session: AsyncSession, stages: Stages, query: Query, dim: Any) -> dict[tuple[str, str], tuple]:
    """(group, stage) -> (reached, moved on, median seconds in stage), in one pass over the period's history."""
    where = [StageEntry.cohort_at >= query.since, StageEntry.cohort_at < query.until]
    where.append(StageEntry.stage.in_(stages.order))
    if session.bind.dialect.name != "postgresql":
        return await _tally_in_python(session, where, dim)
    moved = StageEntry.left_at > StageEntry.entered_at
    seconds = func.extract("epoch", StageEntry.left_at - StageEntry.entered_at)
    columns = [func.count(), func.count().filter(moved), func.percentile_cont(0.5).within_group(seconds).filter(moved)]
    if dim is None:
        statement = select(StageEntry.stage, literal(None), *columns).where(*where).group_by(StageEntry.stage)
    else:  # the totals and the breakdown from the same scan
        sets = func.grouping_sets(tuple_(StageEntry.stage), tuple_(StageEntry.stage, dim))
        statement = select(StageEntry.stage, dim, *columns).where(*where).group_by(sets)
    tally = {}
    for stage, key, reached, moved_on, median in await session.exec(statement):
        tally[(ALL if key is None else key, stage)] = (reached, moved_on, _seconds(median))
    return tally


async def _tally_in_python(session: AsyncSession, where: list, dim: Any) -> dict[tuple[str, str], tuple]:
    """SQLite has no percentile_cont: the same figures, computed from the rows."""
    key = dim if dim is not None else literal(None)
    rows = await session.exec(select(StageEntry.stage, key, StageEntry.entered_at, StageEntry.left_at).where(*where))
    counts: defaultdict[tuple[str, str], int] = defaultdict(int)
    stays: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
    for stage, value, entered, left in rows:
        for group in (ALL, value) if value is not None else (ALL,):
            counts[(group, stage)] += 1
            if left is not None and left > entered:
                stays[(group, stage)].append((left - entered).total_seconds())
    return {
        slot: (count, len(stays[slot]), _seconds(percentile_cont(sorted(stays[slot]), 0.5)))
        for slot, count in counts.items()
    }


def _group(key: str, stages: Stages, tally: dict[tuple[str, str], tuple]) -> dict[str, Any]:
    rows, previous = [], None
    for stage in stages.order:
        reached, moved_on, median = tally.get((key, stage), (0, 0, None))
        rows.append(
            {
                "stage": stage,
                "reached": reached,
                "conversion": _ratio(reached, previous) if previous is not None else None,
                "median_seconds_in_stage": median,
                "moved_on": moved_on,
            }
        )
        previous = reached
    first, last = rows[0]["reached"] if rows else 0, rows[-1]["reached"] if rows else 0
    return {"key": key, "leads": first, "overall_conversion": _ratio(last, first), "stages": rows}


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


def _ratio(part: int, whole: int | None) -> float | None:
    """part / whole, 4 decimals; None when there is nothing to divide by."""
    return round(part / whole, 4) if whole else None
