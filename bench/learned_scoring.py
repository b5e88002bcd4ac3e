"""Learned scoring benchmark: `kindling score fit` on 1,000,000 leads with 10,000,000 events in PostgreSQL.

    .venv/bin/python bench/learned_scoring.py [--database-url URL] [--leads 1000000] [--events 10000000] [--keep]
    .venv/bin/python bench/learned_scoring.py --database-url sqlite+aiosqlite:////tmp/scoring-bench.db

One command: (re)creates the database (default kindling_scoring_bench on the local PostgreSQL), migrates it and
fills it inside PostgreSQL with generate_series (no rows cross the wire): leads arriving evenly over the year
before END, a third from google/cpc and a third from facebook/social; events spread over the leads at random
within their first ten days (so some fall after the 7-day cut-off): page views (/pricing, /blog, /docs,
/features, /), messages, buttons and custom signups, at random hours; the rule score's ledger (+10 for each
pricing page view, +2 for each message); and an outcome per lead from a logistic model of what it did before
its cut-off (pricing visits, google/cpc, messages, signups), reached within the 30-day horizon. Then VACUUM
ANALYZE. `--keep` reuses a database filled before. No nurture deliveries or handoffs: their queries run, on
empty tables.

It then runs the command's own code (flows.learned_fit.fit_and_store, as `kindling score fit` at END) and
reports the time to read the history, to fit and judge, and to rescore every lead, with the process's peak
resident memory; and the held-out figures against the rule score.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


from harness import fill_postgres  # noqa: E402

from flows.learned import LearnedScoring  # noqa: E402
from flows.learned_fit import fit_and_store  # noqa: E402
from storage.db import create_engine, sessionmaker  # noqa: E402
from storage.migrate import recreate  # noqa: E402

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/kindling_scoring_bench"
END = datetime(2026, 11, 1, tzinfo=UTC)

FILL = [
    (
        "leads",
        """
        INSERT INTO lead (id, created_at, updated_at, stage, stage_at, score, first_touch, last_touch, tags,
                          channel_marketing)
        SELECT g, created, created, 'visitor', created, 0,
               CASE WHEN r < 0.33 THEN json_build_object('source', 'google', 'medium', 'cpc', 'channel', 'webchat')
                    WHEN r < 0.66 THEN json_build_object('source', 'facebook', 'medium', 'social',
                                                         'channel', 'webchat')
                    ELSE json_build_object('channel', 'telegram') END,
               '{}'::json, '[]'::json, '{}'::json
        FROM (SELECT g, CAST(:end AS timestamp) - interval '365 days' + (g::float8 / :leads) * interval '365 days'
                       AS created, random() AS r
              FROM generate_series(1, :leads) g) s;
        SELECT setval(pg_get_serial_sequence('lead', 'id'), :leads)""",
    ),
    (
        "events",
        """
        INSERT INTO event (lead_id, type, name, payload, at)
        SELECT s.lead_id, CASE WHEN k < 0.55 THEN 'page_view' WHEN k < 0.80 THEN 'message'
                               WHEN k < 0.92 THEN 'button' ELSE 'custom' END,
               CASE WHEN k >= 0.92 THEN 'signup' END,
               CASE WHEN k < 0.55 THEN json_build_object('path', (ARRAY['/pricing', '/blog/a', '/docs/x',
                                                          '/features', '/'])[1 + floor(k / 0.11)::int])
                    ELSE '{}'::json END,
               l.created_at + random() * interval '10 days'
        FROM (SELECT 1 + floor(random() * :leads)::int AS lead_id, random() AS k
              FROM generate_series(1, :events) g) s
        JOIN lead l ON l.id = s.lead_id""",
    ),
    (
        "points",
        """
        INSERT INTO pointsentry (lead_id, event_id, rule, points, at)
        SELECT lead_id, id, CASE WHEN type = 'message' THEN 'message' ELSE 'pricing page' END,
               CASE WHEN type = 'message' THEN 2 ELSE 10 END, at
        FROM event WHERE type = 'message' OR (type = 'page_view' AND payload->>'path' = '/pricing')""",
    ),
    (
        "outcomes",
        """
        INSERT INTO stageentry (lead_id, stage, entered_at, cohort_at, source, campaign, channel)
        SELECT l.id, 'customer', l.created_at + interval '7 days' + random() * interval '29 days', l.created_at,
               '(none)', '(none)', '(none)'
        FROM lead l LEFT JOIN (
            SELECT e.lead_id,
                   COUNT(*) FILTER (WHERE e.type = 'page_view' AND e.payload->>'path' = '/pricing') AS pricing,
                   COUNT(*) FILTER (WHERE e.type = 'message') AS messages,
                   COUNT(*) FILTER (WHERE e.type = 'custom') AS signups
            FROM event e JOIN lead l2 ON l2.id = e.lead_id
            WHERE e.at < l2.created_at + interval '7 days' GROUP BY e.lead_id) c ON c.lead_id = l.id
        WHERE random() < 1 / (1 + exp(-(-3.0 + 1.6 * ln(1 + coalesce(c.pricing, 0))
                                         + 1.0 * (CASE WHEN l.first_touch->>'source' = 'google' THEN 1 ELSE 0 END)
                                         + 0.4 * ln(1 + coalesce(c.messages, 0))
                                         + 0.8 * ln(1 + coalesce(c.signups, 0)))))""",
    ),
]


# The same history in SQLite, filled through Python's sqlite3 on the file (recursive CTEs for generate_series; a
# CTE's columns hold one random draw each, where a subquery's random() would be drawn again at every use).
UNIFORM = "(abs(random()) / 9223372036854775807.0)"
STAMP = "strftime('%Y-%m-%d %H:%M:%S', {0}, {1}) || '.000000'"
REACHED = STAMP.format("l.created_at", "'+' || (604800 + abs(random()) % 2505600) || ' seconds'")  # in the horizon
FILL_SQLITE = [
    (
        "leads",
        f"""
        WITH RECURSIVE g(x, r) AS (SELECT 1, {UNIFORM} UNION ALL SELECT x + 1, {UNIFORM} FROM g WHERE x < :leads)
        INSERT INTO lead (id, created_at, updated_at, stage, stage_at, score, first_touch, last_touch, tags,
                          channel_marketing)
        SELECT x, c, c, 'visitor', c, 0,
               CASE WHEN r < 0.33 THEN json_object('source', 'google', 'medium', 'cpc', 'channel', 'webchat')
                    WHEN r < 0.66 THEN json_object('source', 'facebook', 'medium', 'social', 'channel', 'webchat')
                    ELSE json_object('channel', 'telegram') END, '{{}}', '[]', '{{}}'
        FROM (SELECT x, r, {STAMP.format(":start", "'+' || (x * 31536000 / :leads) || ' seconds'")} AS c FROM g)""",
    ),
    (
        "events",
        f"""
        WITH RECURSIVE g(x, t, lead) AS (
            SELECT 1, abs(random()) % 20, 1 + abs(random()) % :leads
            UNION ALL SELECT x + 1, abs(random()) % 20, 1 + abs(random()) % :leads FROM g WHERE x < :events)
        INSERT INTO event (lead_id, type, name, payload, at)
        SELECT g.lead, CASE WHEN t < 11 THEN 'page_view' WHEN t < 16 THEN 'message' WHEN t < 18 THEN 'button'
                            ELSE 'custom' END,
               CASE WHEN t >= 18 THEN 'signup' END,
               CASE WHEN t < 11 THEN json_object('path', CASE t % 5 WHEN 0 THEN '/pricing' WHEN 1 THEN '/blog/a'
                                                 WHEN 2 THEN '/docs/x' WHEN 3 THEN '/features' ELSE '/' END)
                    ELSE '{{}}' END,
               {STAMP.format("l.created_at", "'+' || (abs(random()) % 864000) || ' seconds'")}
        FROM g JOIN lead l ON l.id = g.lead""",
    ),
    (
        "points",
        """
        INSERT INTO pointsentry (lead_id, event_id, rule, points, at)
        SELECT lead_id, id, CASE WHEN type = 'message' THEN 'message' ELSE 'pricing page' END,
               CASE WHEN type = 'message' THEN 2 ELSE 10 END, at
        FROM event WHERE type = 'message' OR (type = 'page_view' AND json_extract(payload, '$.path') = '/pricing')""",
    ),
    (
        "outcomes",
        f"""
        INSERT INTO stageentry (lead_id, stage, entered_at, cohort_at, source, campaign, channel)
        SELECT l.id, 'customer', {REACHED},
               l.created_at, '(none)', '(none)', '(none)'
        FROM lead l LEFT JOIN (
            SELECT e.lead_id,
                   COUNT(*) FILTER (WHERE e.type = 'page_view' AND json_extract(e.payload, '$.path') = '/pricing')
                       AS pricing,
                   COUNT(*) FILTER (WHERE e.type = 'message') AS messages,
                   COUNT(*) FILTER (WHERE e.type = 'custom') AS signups
            FROM event e JOIN lead l2 ON l2.id = e.lead_id
            WHERE e.at < strftime('%Y-%m-%d %H:%M:%S', l2.created_at, '+7 days') GROUP BY e.lead_id) c
          ON c.lead_id = l.id
        WHERE {UNIFORM} < 1 / (1 + exp(-(-3.0 + 1.6 * ln(1 + coalesce(c.pricing, 0))
                                         + 1.0 * (coalesce(json_extract(l.first_touch, '$.source'), '') = 'google')
                                         + 0.4 * ln(1 + coalesce(c.messages, 0))
                                         + 0.8 * ln(1 + coalesce(c.signups, 0)))))""",
    ),
]


def fill_sqlite(url: str, leads: int, events: int) -> None:
    """A new SQLite file, migrated, filled with sqlite3 in one transaction per phase."""
    path = Path(url.split(":///", 1)[1])
    for old in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        old.unlink(missing_ok=True)
    asyncio.run(_migrate(url))
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA foreign_keys=OFF")
    params = {"start": (END - timedelta(days=365)).strftime("%Y-%m-%d %H:%M:%S"), "leads": leads, "events": events}
    for name, sql in FILL_SQLITE:
        started = time.perf_counter()
        with connection:
            connection.execute(sql, params)
        print(f"filled {name} in {time.perf_counter() - started:.1f} s", flush=True)
    connection.execute("ANALYZE")
    connection.close()


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    await recreate(engine)
    await engine.dispose()


async def fill(url: str, leads: int, events: int) -> None:
    """Recreate, migrate and fill the benchmark database, printing each phase's time."""
    params = {"end": END.replace(tzinfo=None), "leads": leads, "events": events}
    await fill_postgres(url, FILL, params, seed=0.21)


async def run(url: str) -> None:
    """Time `kindling score fit` at END on the filled database."""
    engine = create_engine(url)
    sessions = sessionmaker(engine)
    started = time.perf_counter()
    outcome = await fit_and_store(sessions, url, LearnedScoring(), END, None)
    total = time.perf_counter() - started
    await engine.dispose()
    fit, seconds = outcome.fit, outcome.seconds
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{fit.successes} successes, {fit.failures} failures; {fit.verdict}")
    if fit.figures:
        learned, rule = fit.figures["learned"], fit.figures["rule"]
        held, factors = fit.figures["held_out"], fit.figures["factors"]
        print(f"held out {held}: AUC {learned['auc']:.3f} (rule {rule['auc']:.3f}),")
        print(f"  Brier {learned['brier']:.4f} (rule {rule['brier']:.4f}), {factors} factors")
    print(
        f"read {seconds['read']:.1f} s, fit {seconds['fit']:.1f} s, rescore {seconds.get('rescore', 0):.1f} s"
        f" ({outcome.rescored} leads), total {total:.1f} s; peak memory {peak:.0f} MB"
    )


def main() -> None:
    """Fill (unless --keep) and run."""
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--database-url", default=DEFAULT_URL)
    args.add_argument("--leads", type=int, default=1_000_000)
    args.add_argument("--events", type=int, default=10_000_000)
    args.add_argument("--keep", action="store_true", help="reuse the database filled before")
    options = args.parse_args()
    if options.keep:
        pass
    elif options.database_url.startswith("sqlite"):
        fill_sqlite(options.database_url, options.leads, options.events)
    else:
        asyncio.run(fill(options.database_url, options.leads, options.events))
    asyncio.run(run(options.database_url))


if __name__ == "__main__":
    main()
