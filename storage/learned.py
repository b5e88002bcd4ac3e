"""Learned scoring's queries: what each lead did before its cut-off, summed by the database; models; likelihoods.

A lead's cut-off is `window` after it arrived, or `now` if that is sooner. Every query counts only rows from
before it, grouped in the database so that millions of events come back as a few rows per lead. Results are
streamed in partitions. On SQLite the reads run on a connection of their own that does not take the write lock
(the app's transactions begin IMMEDIATE), so a fit on a live database does not hold up its writers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.db import Sessions, is_sqlite, transaction
from storage.models import ScoringModel

PARTITION = 50_000
BATCH = 5_000  # leads per transaction when writing likelihoods


class Cutoffs:
    """The SQL for a cut-off (`window` after arrival, at most `now`) and its parameters, in one dialect."""

    def __init__(self, dialect: str, window: timedelta, now: datetime) -> None:
        naive = now.astimezone(UTC).replace(tzinfo=None)
        self.sqlite = dialect == "sqlite"
        if self.sqlite:
            self.cut = "min(datetime(l.created_at, :window), :now)"
            self.params: dict[str, Any] = {"window": f"+{int(window.total_seconds())} seconds"}
            self.params["now"] = naive.strftime("%Y-%m-%d %H:%M:%S.%f")
        else:
            self.cut = "LEAST(l.created_at + make_interval(secs => :window), :now)"
            self.params = {"window": float(window.total_seconds()), "now": naive}

    def epoch(self, column: str) -> str:
        """Seconds since 1970 of a time column."""
        return f"((julianday({column}) - 2440587.5) * 86400.0)" if self.sqlite else f"EXTRACT(EPOCH FROM {column})"

    def json(self, column: str, key: str) -> str:
        """A text value of a JSON column's key."""
        return f"json_extract({column}, '$.{key}')" if self.sqlite else f"({column} ->> '{key}')"

    def hour(self, column: str) -> str:
        return f"CAST(strftime('%H', {column}) AS INTEGER)" if self.sqlite else f"EXTRACT(HOUR FROM {column})"

    def weekend(self, column: str) -> str:
        return f"strftime('%w', {column}) IN ('0', '6')" if self.sqlite else f"EXTRACT(ISODOW FROM {column}) IN (6, 7)"


def _leads_sql(c: Cutoffs, only: str) -> str:
    touch = ", ".join(c.json("l.first_touch", key) for key in ("source", "medium", "campaign", "channel"))
    return f"""SELECT l.id, {c.epoch("l.created_at")}, {touch}, l.locale, {c.epoch("g.entered_at")}
        FROM lead l LEFT JOIN stageentry g ON g.lead_id = l.id AND g.stage = :goal
        WHERE l.merged_into_id IS NULL{only} ORDER BY l.id"""


def _events_sql(c: Cutoffs, only: str) -> str:
    hour = c.hour("e.at")
    parts = [f"SUM(CASE WHEN {hour} >= {a} AND {hour} < {b} THEN 1 ELSE 0 END)" for a, b in ((0, 6), (6, 12), (12, 18))]
    parts.append(f"SUM(CASE WHEN {hour} >= 18 THEN 1 ELSE 0 END)")
    first = f"CASE WHEN e.type = 'message' THEN {c.epoch('MIN(e.at)')} - {c.epoch('l.created_at')} END"
    return f"""SELECT e.lead_id, e.type, CASE WHEN e.type = 'custom' THEN e.name END,
            CASE WHEN e.type = 'page_view' THEN {c.json("e.payload", "path")} END, COUNT(*), {", ".join(parts)},
            SUM(CASE WHEN {c.weekend("e.at")} THEN 1 ELSE 0 END), {first}
        FROM event e JOIN lead l ON l.id = e.lead_id
        WHERE l.merged_into_id IS NULL AND e.at < {c.cut}{only}
        GROUP BY e.lead_id, e.type, 3, 4, l.created_at"""


def _steps_sql(c: Cutoffs, only: str) -> str:
    return f"""SELECT d.lead_id, d.flow_slug, d.step, COUNT(*), SUM(CASE WHEN d.replied_at < {c.cut} THEN 1 ELSE 0 END)
        FROM delivery d JOIN lead l ON l.id = d.lead_id
        WHERE l.merged_into_id IS NULL AND d.kind = 'nurture' AND d.sent_at < {c.cut}{only}
        GROUP BY d.lead_id, d.flow_slug, d.step"""


def _handoffs_sql(c: Cutoffs, only: str) -> str:
    return f"""SELECT h.lead_id, CASE WHEN h.closed_at < {c.cut} THEN h.outcome END, COUNT(*)
        FROM handoff h JOIN lead l ON l.id = h.lead_id
        WHERE l.merged_into_id IS NULL AND h.created_at < {c.cut}{only}
        GROUP BY h.lead_id, 2"""


def _points_sql(c: Cutoffs, only: str) -> str:
    return f"""SELECT p.lead_id, SUM(p.points) FROM pointsentry p JOIN lead l ON l.id = p.lead_id
        WHERE l.merged_into_id IS NULL AND p.at < {c.cut}{only} GROUP BY p.lead_id"""


QUERIES = {
    "leads": _leads_sql,
    "events": _events_sql,
    "steps": _steps_sql,
    "handoffs": _handoffs_sql,
    "points": _points_sql,
}


class History:
    """Each query's rows for every lead (or one lead) as of its cut-off, on one reading connection.

    Use as `async with History(...) as history:`, then `history.rows(query)`.
    """

    def __init__(
        self,
        url: str,
        goal: str,
        window: timedelta,
        now: datetime,
        lead_id: int | None = None,
        connection: AsyncConnection | None = None,
    ) -> None:
        """With `connection` (one lead, on a page), it reads there instead of on a connection of its own."""
        self.url, self.goal, self.lead_id = url, goal, lead_id
        sqlite = connection.dialect.name == "sqlite" if connection is not None else is_sqlite(url)
        self.cutoffs = Cutoffs("sqlite" if sqlite else "postgresql", window, now)
        self._reading: Any = None
        self._given = connection
        self._connection: AsyncConnection | None = None

    async def __aenter__(self) -> History:
        if self._given is not None:
            self._connection = self._given
            return self
        self._reading = _reading(self.url)
        self._connection = await self._reading.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._reading is not None:
            await self._reading.__aexit__(*exc)
            self._reading = None
        self._connection = None

    async def rows(self, query: str) -> AsyncIterator[list[tuple]]:
        """Partitions of one query's rows: leads, events, steps, handoffs or points (see the SQL above)."""
        assert self._connection is not None, "use History in `async with`"
        only = "" if self.lead_id is None else " AND l.id = :lead_id"
        params = {**self.cutoffs.params, "goal": self.goal, "lead_id": self.lead_id}
        result = await self._connection.stream(text(QUERIES[query](self.cutoffs, only)), params)
        async for partition in result.partitions(PARTITION):
            yield [tuple(row) for row in partition]


@asynccontextmanager
async def _reading(url: str) -> AsyncIterator[AsyncConnection]:
    """A connection for long reads; on SQLite one that reads without the app's write lock (WAL: writers go on)."""
    engine = create_async_engine(url, connect_args={"timeout": 30} if is_sqlite(url) else {})
    try:
        async with engine.connect() as connection:
            if is_sqlite(url):
                await connection.exec_driver_sql("PRAGMA query_only=ON")
                await connection.commit()
            async with connection.begin():
                yield connection
    finally:
        await engine.dispose()


async def save_model(sessions: Sessions, model: ScoringModel) -> int:
    """Store a fit (accepted or refused); returns its version."""

    async def work(session: Any) -> int:
        session.add(model)
        await session.flush()
        return int(model.id)

    return await transaction(sessions, work)


async def accepted_model(sessions: Sessions) -> ScoringModel | None:
    """The newest accepted model: the one that scores leads."""
    async with sessions() as session:
        query = select(ScoringModel).where(ScoringModel.accepted).order_by(ScoringModel.id.desc()).limit(1)
        return (await session.exec(query)).first()


async def scoring_model(session: AsyncSession, model_id: int) -> ScoringModel | None:
    """One stored fit by its version; None if there is none."""
    return await session.get(ScoringModel, model_id)


async def latest_fit(sessions: Sessions) -> ScoringModel | None:
    """The newest fit, accepted or refused."""
    async with sessions() as session:
        return (await session.exec(select(ScoringModel).order_by(ScoringModel.id.desc()).limit(1))).first()


async def set_likelihoods(sessions: Sessions, model_id: int, likelihoods: Iterable[tuple[int, int]]) -> int:
    """Write each lead's likelihood from `model_id`, BATCH leads per transaction; returns how many."""
    written, batch = 0, []
    for pair in likelihoods:
        batch.append(pair)
        if len(batch) == BATCH:
            written += await _write(sessions, model_id, batch)
            batch = []
    if batch:
        written += await _write(sessions, model_id, batch)
    return written


async def _write(sessions: Sessions, model_id: int, batch: list[tuple[int, int]]) -> int:
    async def work(session: Any) -> int:
        connection = await session.connection()
        if connection.dialect.name == "postgresql":
            await connection.execute(
                text(
                    "UPDATE lead SET likelihood = v.l, likelihood_model = :model FROM (SELECT unnest(CAST(:ids AS"
                    " integer[])) AS id, unnest(CAST(:ls AS smallint[])) AS l) v WHERE lead.id = v.id"
                ),
                {"model": model_id, "ids": [i for i, _ in batch], "ls": [v for _, v in batch]},
            )
        else:
            await connection.execute(
                text("UPDATE lead SET likelihood = :l, likelihood_model = :model WHERE id = :id"),
                [{"id": i, "l": v, "model": model_id} for i, v in batch],
            )
        return len(batch)

    return await transaction(sessions, work)
