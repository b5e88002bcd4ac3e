"""Percentiles of durations (in SQL on PostgreSQL, in Python on SQLite, with the same answers) and A/B notes."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

QUANTILES = (0.5, 0.9, 0.99)
MIN_LEADS = 30  # per variant, before a difference means anything
MIN_OUTCOMES = 5  # expected conversions and non-conversions per variant (the normal approximation needs them)


@dataclass(frozen=True)
class Measure:
    """A duration in seconds from `start` to the earliest of `ends` (rows where all are empty do not count)."""

    name: str
    start: Any
    ends: tuple[Any, ...]


def percentile_cont(ordered: Sequence[float], q: float) -> float | None:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks of sorted values."""
    if not ordered:
        return None
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Histogram:
    """Values counted in buckets, with each bucket's smallest and largest value: a median without a sort.

    Within a bucket the values are taken as spread evenly from its smallest to its largest, so a median
    is exact where its bucket holds one or two values, and otherwise off by less than the bucket's width.
    """

    def __init__(self) -> None:
        self.buckets: dict[int, list] = {}  # bucket -> [count, smallest, largest]
        self.count = 0

    def add(self, bucket: int, count: int, smallest: float, largest: float) -> None:
        self.count += count
        known = self.buckets.get(bucket)
        if known is None:
            self.buckets[bucket] = [count, smallest, largest]
            return
        known[0] += count
        if smallest < known[1]:
            known[1] = smallest
        if largest > known[2]:
            known[2] = largest

    def median(self) -> float | None:
        """As percentile_cont(0.5): halfway between the two middle values when the count is even."""
        total = self.count
        if not total:
            return None
        position = 0.5 * (total - 1)
        low, high = math.floor(position), math.ceil(position)
        return (self._ranked(low) + self._ranked(high)) / 2 if low != high else self._ranked(low)

    def _ranked(self, rank: int) -> float:
        """The rank-th smallest value (from 0)."""
        before = 0
        for bucket in sorted(self.buckets):
            count, smallest, largest = self.buckets[bucket]
            if rank < before + count:
                return smallest if count == 1 else smallest + (largest - smallest) * (rank - before) / (count - 1)
            before += count
        raise ValueError(f"rank {rank} beyond {before} values")


async def durations(
    session: AsyncSession,
    keys: Sequence[ColumnElement],
    measures: Sequence[Measure],
    where: Sequence[Any],
    quantiles: Sequence[float] = QUANTILES,
    joins: Sequence[tuple[Any, Any]] = (),
) -> dict[tuple, dict[str, dict[str, Any]]]:
    """Per group of `keys`: for each measure its count and percentiles, as {"count", "p50", "p90", ...}."""
    if session.bind.dialect.name == "postgresql":
        return await _in_sql(session, keys, measures, where, quantiles, joins)
    return await _in_python(session, keys, measures, where, quantiles, joins)


async def _in_sql(session, keys, measures, where, quantiles, joins):  # type: ignore[no-untyped-def]
    columns = []
    for measure in measures:
        end = measure.ends[0] if len(measure.ends) == 1 else func.least(*measure.ends)
        seconds = func.extract("epoch", end - measure.start)
        columns.append(func.count(end))
        columns += [func.percentile_cont(q).within_group(seconds) for q in quantiles]
    query = _joined(select(*keys, *columns), joins).where(*where)
    if keys:
        query = query.group_by(*keys)
    width, found = 1 + len(quantiles), {}
    for row in await session.exec(query):
        values = list(row[len(keys) :])
        found[tuple(row[: len(keys)])] = {
            measure.name: _summary(values[i * width], values[i * width + 1 : (i + 1) * width], quantiles)
            for i, measure in enumerate(measures)
        }
    return found


async def _in_python(session, keys, measures, where, quantiles, joins):  # type: ignore[no-untyped-def]
    columns = [column for measure in measures for column in (measure.start, *measure.ends)]
    query = _joined(select(*keys, *columns), joins).where(*where)
    seconds: defaultdict[tuple, defaultdict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in await session.exec(query):
        group, values = tuple(row[: len(keys)]), list(row[len(keys) :])
        seconds[group]  # a group with no finished durations still shows, with count 0
        for measure in measures:
            start, *ends = values[: 1 + len(measure.ends)]
            values = values[1 + len(measure.ends) :]
            ends = [end for end in ends if end is not None]
            if start is not None and ends:
                seconds[group][measure.name].append((min(ends) - start).total_seconds())
    found = {}
    for group, by_measure in seconds.items():
        found[group] = {}
        for measure in measures:
            ordered = sorted(by_measure.get(measure.name, []))
            percentiles = [percentile_cont(ordered, q) for q in quantiles]
            found[group][measure.name] = _summary(len(ordered), percentiles, quantiles)
    return found


def _joined(query, joins):  # type: ignore[no-untyped-def]
    for target, on in joins:
        query = query.outerjoin(target, on)
    return query


def _summary(count: int, values: Sequence[float | None], quantiles: Sequence[float]) -> dict[str, Any]:
    summary: dict[str, Any] = {"count": int(count or 0)}
    for q, value in zip(quantiles, values, strict=True):
        summary[f"p{round(q * 100):d}"] = None if value is None else round(float(value), 1)
    return summary


def compare_variants(variants: Sequence[tuple[str, int, int]]) -> str:
    """A plain note on whether variants (name, leads, conversions) differ: a two-proportion z-test, best vs next."""
    if len(variants) < 2:
        return ""
    ranked = sorted(variants, key=lambda v: (-(v[2] / v[1]) if v[1] else 0.0, v[0]))
    (best, n1, x1), (other, n2, x2) = ranked[0], ranked[1]
    pooled = (x1 + x2) / (n1 + n2) if n1 + n2 else 0.0
    small = min(n1, n2) < MIN_LEADS or min(n * pooled for n in (n1, n2)) < MIN_OUTCOMES
    if small or min(n * (1 - pooled) for n in (n1, n2)) < MIN_OUTCOMES:
        return f"too few leads to tell ({n1} and {n2} so far; wait for at least {MIN_LEADS} each and more conversions)"
    p1, p2 = x1 / n1, x2 / n2
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    p_value = math.erfc(abs(p1 - p2) / spread / math.sqrt(2)) if spread else 1.0
    rates = f"{p1:.1%} vs {p2:.1%}, p = {p_value:.3f}"
    if p_value < 0.05:
        return f"{best} does better than {other} ({rates}): unlikely to be chance"
    return f"no clear difference between {best} and {other} yet ({rates}): keep both running"
