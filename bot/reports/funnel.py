"""The funnel report: how far the leads that arrived in a period got, stage by stage, from the stage history."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, literal
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.reports.bands import likelihood_band
from bot.reports.period import Query
from bot.reports.stats import Histogram
from flows.stages import Stages
from storage.models import Lead, StageEntry

ALL = "all"
RULE = (
    "Leads that arrived in the period, and every stage they have reached since. A lead counts in a stage "
    "once, the first time it got there; skipping stages counts as passing through them at that moment; "
    "moving back does not un-count. Time in a stage runs from first reaching it to first reaching a later "
    "one, over the leads that have moved on (not those passed through in a jump); its median is read from a "
    "histogram with 32 steps per doubling: exact when the stays around it are 2% apart, else within 2%."
)


async def funnel(session: AsyncSession, stages: Stages, query: Query) -> dict[str, Any]:
    """Per group (all leads, and each source/campaign/channel or likelihood band): reached, conversion and median
    time per stage."""
    dim = likelihood_band() if query.by == "likelihood" else getattr(StageEntry, query.by) if query.by else None
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
    """(group, stage) -> (reached, moved on, median seconds in stage), from one histogram query.

    The database counts the rows per stage, group and stay bucket, with each bucket's shortest and
    longest stay (a hash aggregate over an index, no sort of a million stays); the totals, and the
    medians read off the histograms, are added up here.
    """
    key = dim if dim is not None else literal(None)
    seconds = StageEntry.stay_seconds
    statement = (
        select(StageEntry.stage, key, StageEntry.stay_bucket, func.count(), func.min(seconds), func.max(seconds))
        .where(StageEntry.cohort_at >= query.since, StageEntry.cohort_at < query.until)
        .group_by(StageEntry.stage, key, StageEntry.stay_bucket)
    )  # stages no longer configured are dropped below, not in SQL: matching names row by row costs a third
    if query.by == "likelihood":  # the band is the lead's now, not a copy in the row
        statement = statement.join(Lead, Lead.id == StageEntry.lead_id)
    known = set(stages.order)
    counts: defaultdict[tuple[str, str], int] = defaultdict(int)
    stays: defaultdict[tuple[str, str], Histogram] = defaultdict(Histogram)
    rows = await (await session.connection()).execute(statement)  # plain rows: tens of thousands of them
    for stage, value, bucket, count, shortest, longest in rows:
        if stage not in known:
            continue
        for group in (ALL, value) if dim is not None else (ALL,):
            counts[(group, stage)] += count
            if bucket is not None:
                stays[(group, stage)].add(bucket, count, shortest, longest)
    return {slot: (count, stays[slot].count, _seconds(stays[slot].median())) for slot, count in counts.items()}


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
