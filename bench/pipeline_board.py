"""Pipeline board benchmark: the board's queries on 1,000,000 leads in PostgreSQL.

    .venv/bin/python bench/pipeline_board.py [--database-url URL] [--leads 1000000] [--repeat 50] [--keep] [--explain]

One command: (re)creates the database (default kindling_pipeline_bench on the local PostgreSQL), migrates it
(so the board's indexes of migration 0019 are there, as in production) and fills it inside PostgreSQL with
generate_series (no rows cross the wire): leads over a year, spread over the stages (40% visitor, 30% lead,
15% mql, 10% sql, 5% customer), 8 sources, 20 campaigns and 4 channels, with a last activity after their
last stage change; 1% merged into another lead; one conversation per lead (owner bot, 2% queued, 3% human);
20% of leads in one of 4 flows (active or paused); claimed handoffs for 1% held by 20 operators. Then VACUUM
ANALYZE. `--keep` reuses a database filled before.

It then times the board's own query functions (storage.pipeline, which /console/pipeline calls) after a
warm-up, `--repeat` times each, reporting the median and the 95th percentile: a column's first page of 50 for
each stage; deep pages of the largest stages (after the 10,000th, 100,000th and 290,000th card, reached by
keyset from a cursor as the "More" link carries it); filtered first pages (a source, a channel, an owner, a
flow, source and campaign together, a rare campaign); the column counts and medians (unfiltered, filtered);
and the whole board as the page reads it (counts, five first pages, the cards' channels and handoffs). In the
same run, the baseline: the same pages the naive way, OFFSET into the stage's leads ordered by last activity,
and the first page with `ix_lead_board` dropped (inside a transaction rolled back afterwards). `--explain`
prints EXPLAIN ANALYZE of the main queries.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness import fill_postgres  # noqa: E402
from sqlalchemy import text, tuple_  # noqa: E402
from sqlmodel import col, select  # noqa: E402

from storage.db import Sessions, create_engine, sessionmaker  # noqa: E402
from storage.models import Lead  # noqa: E402
from storage.pipeline import BoardFilter, Cursor, card_details, column_page, columns, conditions  # noqa: E402

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/kindling_pipeline_bench"
END = datetime(2026, 11, 1, tzinfo=UTC)  # the data covers the year before this
STAGES = ("visitor", "lead", "mql", "sql", "customer")
PAGE = 50

FILL = [
    (
        "operators",
        """
        INSERT INTO operator (name, role, password_hash, created_at)
        SELECT 'op-' || g, 'operator', 'x', CAST(:end AS timestamp) - interval '400 days'
        FROM generate_series(1, 20) g""",
    ),
    (
        "leads",
        """
        INSERT INTO lead (id, created_at, updated_at, stage, stage_at, score, first_touch, last_touch, tags,
                          channel_marketing, first_name)
        SELECT g, created, created + (stay + quiet) * interval '1 second',
               CASE WHEN r < 0.40 THEN 'visitor' WHEN r < 0.70 THEN 'lead' WHEN r < 0.85 THEN 'mql'
                    WHEN r < 0.95 THEN 'sql' ELSE 'customer' END,
               created + stay * interval '1 second', floor(random() * 100),
               json_build_object('source', (ARRAY['google','facebook','newsletter','linkedin','bing','partner',
                                                  'twitter','(none)'])[1 + floor(random() * 8)::int],
                                 'campaign', 'campaign-' || floor(random() * 20)::int,
                                 'channel', channel),
               '{}'::json, '[]'::json, '{}'::json, 'Lead ' || g
        FROM (SELECT g, CAST(:end AS timestamp) - interval '365 days' + (g::float8 / :leads) * interval '365 days'
                       AS created,
                     random() AS r, random() ^ 2 * 2000000 AS stay, random() ^ 3 * 3000000 AS quiet,
                     (ARRAY['webchat','webchat','telegram','webhook'])[1 + floor(random() * 4)::int] AS channel
              FROM generate_series(1, :leads) g) s;
        SELECT setval(pg_get_serial_sequence('lead', 'id'), :leads);
        UPDATE lead SET merged_into_id = id - 1 WHERE id % 100 = 50""",
    ),
    (
        "conversations",
        """
        INSERT INTO conversation (lead_id, channel, external_id, owner, contact_requested, name_asked, created_at)
        SELECT id, first_touch->>'channel', 'c-' || id,
               CASE WHEN id % 50 = 7 THEN 'queued' WHEN id % 33 = 5 THEN 'human' ELSE 'bot' END,
               false, false, created_at
        FROM lead""",
    ),
    (
        "enrollments",
        """
        INSERT INTO enrollment (lead_id, flow_slug, flow_version, step_index, due_at, status, enrolled_at,
                                updated_at)
        SELECT id, (ARRAY['new-lead-7-in-7','pricing-not-ready','speed-to-lead','stuck-reengage'])[1 + id % 4],
               'v1', 1, updated_at, CASE WHEN id % 3 = 0 THEN 'paused' ELSE 'active' END, created_at, updated_at
        FROM lead WHERE id % 5 = 1""",
    ),
    (
        "handoffs",
        """
        INSERT INTO handoff (lead_id, conversation_id, trigger, reason, card, status, warm_at, created_at,
                             sla_due_at, claimed_by_id, claimed_at, source, campaign, channel)
        SELECT l.id, c.id, 'intent', 'call me', '{}'::json, 'claimed', l.updated_at, l.updated_at,
               l.updated_at + interval '5 minutes', 1 + l.id % 20, l.updated_at, '(none)', '(none)', '(none)'
        FROM lead l JOIN conversation c ON c.lead_id = l.id
        WHERE l.id % 100 = 3""",
    ),
]

FIRST_PAGES = {"visitor": BoardFilter(), "lead": BoardFilter(), "customer": BoardFilter()}
FILTERED = {
    "source=google": BoardFilter(source="google"),
    "channel=telegram": BoardFilter(channel="telegram"),
    "owner=queued": BoardFilter(owner="queued"),
    "owner=op-7 (held)": BoardFilter(owner="op-7"),
    "flow=speed-to-lead": BoardFilter(flow="speed-to-lead"),
    "source=google, campaign=campaign-3": BoardFilter(source="google", campaign="campaign-3"),
}
DEEP = (0.01, 0.10, 0.29)  # of all leads: after 10,000, 100,000 and 290,000 cards with 1M

NAIVE = """
    SELECT * FROM lead WHERE stage = :stage AND merged_into_id IS NULL
    ORDER BY updated_at DESC, id DESC OFFSET :skip LIMIT :limit"""


async def fill(url: str, leads: int) -> None:
    """Recreate, migrate and fill the benchmark database, printing each phase's time."""
    await fill_postgres(url, FILL, {"end": END.replace(tzinfo=None), "leads": leads}, seed=0.42)


async def timed(run: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, float]:
    """One warm-up, then the median and the 95th percentile of `repeat` runs, in seconds."""
    await run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        times.append(time.perf_counter() - started)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


async def cursor_at(sessions: Sessions, stage: str, depth: int) -> Cursor:
    """The cursor a "More" link would carry after `depth` cards of the stage (found once, by OFFSET)."""
    async with sessions() as session:
        query = (
            select(Lead.updated_at, Lead.id)
            .where(Lead.stage == stage, col(Lead.merged_into_id).is_(None))
            .order_by(col(Lead.updated_at).desc(), col(Lead.id).desc())
            .offset(depth - 1)
            .limit(1)
        )
        at, lead_id = (await session.exec(query)).one()
    return Cursor(at, lead_id)


async def whole_board(sessions: Sessions, wanted: BoardFilter) -> None:
    """What GET /console/pipeline reads (bot.console.pipeline.board), without the rendering."""
    async with sessions() as session:
        await columns(session, STAGES, wanted, END)
        pages = [await column_page(session, stage, wanted, None, PAGE) for stage in STAGES]
        await card_details(session, [lead.id for leads, _ in pages for lead in leads])


async def measure(url: str, leads: int, repeat: int, explain: bool) -> list[tuple[str, str, float, float]]:
    """Time the board's queries and the baselines; rows of (what, case, median, p95)."""
    engine = create_engine(url)
    sessions = sessionmaker(engine)
    results: list[tuple[str, str, float, float]] = []

    async def case(what: str, label: str, run: Callable[[], Awaitable[Any]], times: int = repeat) -> None:
        median, p95 = await timed(run, times)
        results.append((what, label, median, p95))
        print(f"  {what:<28} {label:<40} median {median * 1000:8.1f} ms   p95 {p95 * 1000:8.1f} ms", flush=True)

    def page(stage: str, wanted: BoardFilter, after: Cursor | None = None) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            async with sessions() as session:
                return await column_page(session, stage, wanted, after, PAGE)

        return run

    def naive(stage: str, skip: int) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            async with engine.connect() as connection:
                params = {"stage": stage, "skip": skip, "limit": PAGE + 1}
                return (await connection.execute(text(NAIVE), params)).all()

        return run

    for stage in STAGES:
        await case("first page", stage, page(stage, BoardFilter()))
    for stage in ("visitor", "lead"):
        for depth in (round(share * leads) for share in DEEP):
            after = await cursor_at(sessions, stage, depth)
            await case("deep page (keyset)", f"{stage} after {depth:,}", page(stage, BoardFilter(), after))
            await case("baseline: OFFSET", f"{stage} after {depth:,}", naive(stage, depth), max(5, repeat // 10))
    for label, wanted in FILTERED.items():
        await case("filtered first page", f"lead, {label}", page("lead", wanted))
    deep = round(DEEP[1] * leads)
    google = page("lead", FILTERED["source=google"], await cursor_at(sessions, "lead", deep))
    await case("filtered deep page", f"lead, source=google, after {deep:,}", google)

    async def summary(wanted: BoardFilter) -> Any:
        async with sessions() as session:
            return await columns(session, STAGES, wanted, END)

    small = max(3, repeat // 10)
    await case("counts and medians", "no filter", lambda: summary(BoardFilter()), small)
    for label in ("source=google", "owner=op-7 (held)", "source=google, campaign=campaign-3"):
        await case("counts and medians", label, lambda wanted=FILTERED[label]: summary(wanted), small)
    await case("whole board", "no filter", lambda: whole_board(sessions, BoardFilter()), small)
    await case("whole board", "source=google", lambda: whole_board(sessions, FILTERED["source=google"]), small)

    async def without_index() -> Any:
        async with sessions() as session:
            await session.exec(text("DROP INDEX ix_lead_board"))
            started = time.perf_counter()
            await column_page(session, "visitor", BoardFilter(), None, PAGE)
            elapsed = time.perf_counter() - started
            await session.rollback()
            return elapsed

    drops = [await without_index() for _ in range(max(3, repeat // 10))]
    median = statistics.median(drops)
    results.append(("baseline: no ix_lead_board", "visitor first page", median, max(drops)))
    print(f"  baseline without ix_lead_board: visitor first page median {median * 1000:.1f} ms", flush=True)
    if explain:
        await _explain(engine, sessions, round(DEEP[1] * leads))
    await engine.dispose()
    return results


async def _explain(engine: Any, sessions: Sessions, deep: int) -> None:
    """EXPLAIN ANALYZE of a first page, a deep page and a filtered page, as the board's code builds them."""
    after = await cursor_at(sessions, "lead", deep)
    cases = {
        "first page, lead": (BoardFilter(), None),
        f"deep page, lead after {deep:,}": (BoardFilter(), after),
        "first page, lead, source=google": (FILTERED["source=google"], None),
    }
    for label, (wanted, cursor) in cases.items():
        query = select(Lead).where(Lead.stage == "lead", *conditions(wanted))
        if cursor is not None:
            query = query.where(tuple_(Lead.updated_at, Lead.id) < (cursor.at, cursor.lead_id))
        query = query.order_by(col(Lead.updated_at).desc(), col(Lead.id).desc()).limit(PAGE + 1)
        compiled = query.compile(engine.sync_engine, compile_kwargs={"literal_binds": True})
        async with engine.connect() as connection:
            plan = (await connection.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}"))).scalars().all()
        print(f"\nEXPLAIN ANALYZE: {label}\n" + "\n".join(plan), flush=True)


def main() -> int:
    """Fill (unless --keep), measure, print a Markdown table for BENCHMARKS.md."""
    args = _arguments()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    if not args.keep:
        started = time.perf_counter()
        asyncio.run(fill(args.database_url, args.leads))
        print(f"fill: {time.perf_counter() - started:.0f} s")
    results = asyncio.run(measure(args.database_url, args.leads, args.repeat, args.explain))
    print("\n| query | case | median | p95 |\n|---|---|---:|---:|")
    for what, label, median, p95 in results:
        print(f"| {what} | {label} | {median * 1000:.1f} ms | {p95 * 1000:.1f} ms |")
    print(f"load average: {os.getloadavg()}")
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL, help=f"a PostgreSQL database (default {DEFAULT_URL})")
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per page after a warm-up (default 50)")
    parser.add_argument("--keep", action="store_true", help="measure the database filled by an earlier run")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the main queries")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
