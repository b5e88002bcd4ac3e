"""Reports benchmark: the funnel, flow and handoff reports on 1M leads and 10M events in PostgreSQL.

    .venv/bin/python bench/reports.py [--database-url URL] [--leads 1000000] [--events 10000000] [--repeat 5]

One command: (re)creates the database (default kindling_h1_bench on the local PostgreSQL), migrates it, and
fills it inside PostgreSQL with generate_series (no rows cross the wire): leads created over a year with
first-touch source, campaign and channel; their stage history (each lead reaches the first stage, 60% the
second, 30%, 12% and 4% the next ones, 10% of moves jump a stage at once) and a matching `stage_changed`
event per move; one conversation per lead; enrollments for half of the leads, with nurture deliveries
(an A/B step among them), replies, buttons, handoffs and opt-outs credited to them, skipped steps as
`step_skipped` events; handoffs for 5% of leads with notification, claim and reply times, breaches and
outcomes, their events; and page views and messages to make up the events to the total. Rows go in
in time order, as an append-only system writes them (ids follow creation times), except the page views
and messages. Then VACUUM ANALYZE. `--keep` reuses a database filled before (the fill takes a few minutes).

It then times each report through the app's own code (bot.reports.build_report, as the CLI, API and console
call it): the funnel plain and by source, campaign and channel, the flows, the handoffs, for the last 30
days and for the whole year; one warm-up run, then the median and the slowest of --repeat runs. In the same
run it times the baseline: the funnel the straightforward way, from the `stage_changed` events' JSON
payloads joined to the leads (counts per stage, and the median time between a lead's consecutive changes
with a window function), plain and by source.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from harness import fill_postgres  # noqa: E402
from sqlalchemy import text  # noqa: E402

from bot.config import load_settings  # noqa: E402
from bot.reports import build_report, parse_query  # noqa: E402
from flows.library import FlowLibrary  # noqa: E402
from storage.db import create_engine, sessionmaker  # noqa: E402

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/kindling_h1_bench"
END = datetime(2026, 11, 1, tzinfo=UTC)  # the data covers the year before this
STAGES = ("visitor", "lead", "mql", "sql", "customer")
FLOWS = ("new-lead-7-in-7", "pricing-not-ready", "speed-to-lead", "stuck-reengage")

FILL = [
    (
        "operators",
        """
        INSERT INTO operator (name, role, password_hash, created_at)
        SELECT 'op-' || g, 'operator', 'x', CAST(:end AS timestamp) - interval '400 days'
        FROM generate_series(1, 20) g""",
    ),
    (
        "plan",
        """
        CREATE UNLOGGED TABLE plan AS
        SELECT row_number() OVER (ORDER BY at) AS id, at AS created_at,
               CASE WHEN r < 0.04 THEN 4 WHEN r < 0.12 THEN 3 WHEN r < 0.30 THEN 2 WHEN r < 0.60 THEN 1 ELSE 0 END
                 AS top,
               (ARRAY['google','facebook','newsletter','linkedin','bing','partner','twitter','(none)'])
                 [1 + floor(random() * 8)::int] AS source,
               'campaign-' || floor(random() * 20)::int AS campaign,
               (ARRAY['webchat','webchat','telegram','webhook'])[1 + floor(random() * 4)::int] AS channel,
               ARRAY[0,
                     CASE WHEN random() < 0.1 THEN 0 ELSE random() ^ 2 * 864000 END,
                     CASE WHEN random() < 0.1 THEN 0 ELSE random() ^ 2 * 864000 END,
                     CASE WHEN random() < 0.1 THEN 0 ELSE random() ^ 2 * 864000 END,
                     CASE WHEN random() < 0.1 THEN 0 ELSE random() ^ 2 * 864000 END]::float8[] AS gaps
        FROM (SELECT CAST(:end AS timestamp) - random() * interval '365 days' AS at, random() AS r
              FROM generate_series(1, :leads) g) s""",
    ),
    (
        "plan offsets",
        """
        ALTER TABLE plan ADD COLUMN offs float8[];
        UPDATE plan SET offs = ARRAY[0, gaps[2], gaps[2] + gaps[3], gaps[2] + gaps[3] + gaps[4],
                                     gaps[2] + gaps[3] + gaps[4] + gaps[5]]""",
    ),
    (
        "leads",
        """
        INSERT INTO lead (id, created_at, updated_at, stage, stage_at, score, first_touch, last_touch, tags)
        SELECT id, created_at, created_at + offs[top + 1] * interval '1 second',
               (ARRAY['visitor','lead','mql','sql','customer'])[top + 1],
               created_at + offs[top + 1] * interval '1 second', top * 20 + random() * 20,
               json_build_object('source', NULLIF(source, '(none)'), 'campaign', campaign, 'channel', channel),
               json_build_object('source', NULLIF(source, '(none)'), 'campaign', campaign, 'channel', channel),
               '[]'::json
        FROM plan ORDER BY id;
        SELECT setval('lead_id_seq', (SELECT max(id) FROM lead))""",
    ),
    (
        "conversations",
        """
        INSERT INTO conversation (id, lead_id, channel, external_id, owner, contact_requested, created_at)
        SELECT id, id, channel, 'v' || id, 'bot', false, created_at FROM plan ORDER BY id;
        SELECT setval('conversation_id_seq', (SELECT max(id) FROM conversation))""",
    ),
    (
        "stage history",
        """
        INSERT INTO stageentry (lead_id, stage, entered_at, left_at, stay_seconds, stay_bucket, cohort_at, source,
                                campaign, channel)
        SELECT p.id, (ARRAY['visitor','lead','mql','sql','customer'])[k + 1],
               p.created_at + p.offs[k + 1] * interval '1 second',
               CASE WHEN k < p.top THEN p.created_at + p.offs[k + 2] * interval '1 second' END,
               CASE WHEN k < p.top AND p.offs[k + 2] > p.offs[k + 1] THEN p.offs[k + 2] - p.offs[k + 1] END,
               CASE WHEN k < p.top AND p.offs[k + 2] > p.offs[k + 1] THEN  -- flows.history.stay
                 CASE WHEN p.offs[k + 2] - p.offs[k + 1] < 1 THEN 0
                      ELSE 1 + floor(ln(p.offs[k + 2] - p.offs[k + 1]) / ln(2) * 32) END END,
               p.created_at, p.source, p.campaign, p.channel
        FROM plan p CROSS JOIN LATERAL generate_series(0, p.top) k
        ORDER BY 3""",
    ),
    (
        "stage_changed events",
        """
        INSERT INTO event (lead_id, type, payload, at)
        SELECT p.id, 'stage_changed',
               json_build_object('from', (ARRAY['visitor','lead','mql','sql','customer'])[k],
                                 'to', (ARRAY['visitor','lead','mql','sql','customer'])[k + 1], 'reason', 'bench'),
               p.created_at + p.offs[k + 1] * interval '1 second'
        FROM plan p CROSS JOIN LATERAL generate_series(1, p.top) k
        ORDER BY 4""",
    ),
    (
        "enrollments",
        """
        INSERT INTO enrollment (lead_id, flow_slug, flow_version, step_index, due_at, status, exit_reason,
                                enrolled_at, updated_at, goal, goal_reached_at, handed_off_at)
        SELECT id, flow, 'bench', 0, at, status,
               CASE WHEN status = 'exited' THEN (ARRAY['reply','opt_out','handoff','stage >= mql'])
                 [1 + floor(random() * 4)::int] END,
               at, at + interval '7 days', goal,
               CASE WHEN random() < 0.15 THEN at + random() * interval '10 days' END,
               CASE WHEN random() < 0.03 THEN at + random() * interval '5 days' END
        FROM (
          SELECT id, created_at + random() * interval '2 days' AS at, f.flow, f.goal,
                 CASE WHEN r < 0.5 THEN 'done' WHEN r < 0.8 THEN 'exited' ELSE 'active' END AS status
          FROM (SELECT id, created_at, random() AS r, floor(random() * 4)::int AS pick FROM plan) p
          JOIN (VALUES (0, 'new-lead-7-in-7', 'mql'), (1, 'pricing-not-ready', 'sql'),
                       (2, 'speed-to-lead', 'lead'), (3, 'stuck-reengage', 'mql')) f(pick, flow, goal)
            ON f.pick = p.pick
          WHERE random() < 0.5
        ) e
        ORDER BY at""",
    ),
    (
        "deliveries",
        """
        INSERT INTO delivery (lead_id, conversation_id, channel, address, kind, priority, text, buttons,
                              idempotency_key, enrollment_id, flow_slug, step, variant, status, attempts,
                              not_before, created_at, sent_at, last_error, replied_at, button_at, handed_off_at,
                              opted_out_at)
        SELECT lead_id, lead_id, 'webchat', 'v' || lead_id, 'nurture', 2, 'Hello', '[]'::json,
               'bench:' || id || ':' || k, id, flow_slug, 'step-' || k,
               CASE WHEN k = 2 THEN (ARRAY['story','numbers'])[1 + lead_id % 2] END,
               status, 1, at, at, CASE WHEN status = 'sent' THEN at END,
               CASE WHEN status = 'skipped' THEN (ARRAY['opted out','a human owns the conversation (human)'])
                 [1 + floor(random() * 2)::int] END,
               CASE WHEN status = 'sent' AND random() < 0.08 THEN at + random() * interval '20 hours' END,
               CASE WHEN status = 'sent' AND random() < 0.05 THEN at + random() * interval '20 hours' END,
               CASE WHEN status = 'sent' AND random() < 0.01 THEN at + random() * interval '20 hours' END,
               CASE WHEN status = 'sent' AND random() < 0.01 THEN at + random() * interval '20 hours' END
        FROM (
          SELECT e.id, e.lead_id, e.flow_slug, k, e.enrolled_at + k * interval '1 day' AS at,
                 CASE WHEN r < 0.90 THEN 'sent' WHEN r < 0.95 THEN 'skipped' WHEN r < 0.96 THEN 'dead'
                      ELSE 'pending' END AS status
          FROM enrollment e
          CROSS JOIN LATERAL generate_series(1, 1 + floor(random() * 4 + e.id * 0)::int) k
          CROSS JOIN LATERAL (SELECT random() + k * 0 AS r) rr
        ) d
        ORDER BY at""",
    ),
    (
        "step_skipped events",
        """
        INSERT INTO event (lead_id, type, payload, at)
        SELECT lead_id, 'step_skipped',
               json_build_object('flow', flow_slug, 'step', 'step-5', 'variant', NULL,
                                 'reason', 'when is false: lead.score < 50'),
               enrolled_at + interval '5 days'
        FROM enrollment WHERE random() < 0.1
        ORDER BY 4""",
    ),
    (
        "flow_enrolled events",
        """
        INSERT INTO event (lead_id, type, payload, at)
        SELECT lead_id, 'flow_enrolled', json_build_object('flow', flow_slug, 'version', 'bench'), enrolled_at
        FROM enrollment ORDER BY enrolled_at""",
    ),
    (
        "handoffs",
        """
        INSERT INTO handoff (lead_id, conversation_id, trigger, reason, card, status, warm_at, created_at,
                             sla_due_at, console_notified_at, telegram_notified_at, breached_at, claimed_by_id,
                             claimed_at, first_reply_at, closed_at, outcome, source, campaign, channel)
        SELECT id, id, 'intent', 'wrote "call me"', '{}'::json,
               CASE WHEN claim IS NULL THEN 'waiting' WHEN outcome IS NULL THEN 'claimed' ELSE 'closed' END,
               warm, warm, warm + interval '5 minutes',
               warm + random() * interval '2 seconds', warm + random() * interval '5 seconds',
               CASE WHEN claim IS NULL OR claim > interval '5 minutes' THEN warm + interval '5 minutes' END,
               CASE WHEN claim IS NOT NULL THEN 1 + floor(random() * 20)::int END,
               warm + claim, warm + claim + random() * interval '10 minutes',
               CASE WHEN outcome IS NOT NULL THEN warm + claim + interval '1 hour' END, outcome,
               source, campaign, channel
        FROM (
          SELECT id, source, campaign, channel, created_at + random() * interval '3 days' AS warm,
                 CASE WHEN random() < 0.92 THEN random() ^ 3 * interval '2 hours' END AS claim,
                 (ARRAY['won','nurture','lost',NULL])[1 + floor(random() * 4)::int] AS outcome
          FROM plan WHERE random() < 0.05
        ) h
        ORDER BY warm""",
    ),
    (
        "handoff events",
        """
        INSERT INTO event (lead_id, type, payload, at)
        SELECT h.lead_id, t.type, json_build_object('handoff_id', h.id), h.warm_at
        FROM handoff h CROSS JOIN (VALUES ('handoff'), ('handoff_claimed'), ('handoff_closed')) t(type)""",
    ),
    (
        "page views and messages",
        """
        INSERT INTO event (lead_id, type, payload, at)
        SELECT p.id, CASE WHEN g % 3 = 0 THEN 'message' ELSE 'page_view' END,
               CASE WHEN g % 3 = 0 THEN json_build_object('channel', p.channel, 'text', 'hello there')
                    ELSE json_build_object('channel', p.channel, 'path', '/pricing', 'url', 'https://x.example/pricing')
               END,
               p.created_at + random() * interval '30 days'
        FROM generate_series(1, greatest(:events - (SELECT count(*) FROM event), 0)) g
        JOIN plan p ON p.id = 1 + g % :leads""",
    ),
    ("drop plan", "DROP TABLE plan"),
]

BASELINE = """
    WITH cohort AS (
        SELECT id, created_at, {dim} AS dim FROM lead WHERE created_at >= :since AND created_at < :until
    ), changes AS (
        SELECT c.id, c.dim, e.payload->>'to' AS stage, e.at,
               lead(e.at) OVER (PARTITION BY e.lead_id ORDER BY e.at, e.id) AS next_at
        FROM event e JOIN cohort c ON c.id = e.lead_id
        WHERE e.type = 'stage_changed'
    ), firsts AS (
        SELECT c.dim, 'visitor' AS stage, c.id,
               extract(epoch FROM min(ch.at) - c.created_at) AS seconds
        FROM cohort c LEFT JOIN changes ch ON ch.id = c.id GROUP BY c.dim, c.id, c.created_at
        UNION ALL
        SELECT dim, stage, id, extract(epoch FROM next_at - at) FROM changes
    )
    SELECT dim, stage, count(DISTINCT id),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) FILTER (WHERE seconds > 0)
    FROM firsts GROUP BY dim, stage
"""


async def fill(url: str, leads: int, events: int) -> None:
    """Recreate, migrate and fill the benchmark database, printing each phase's time."""
    params = {"end": END.replace(tzinfo=None), "leads": leads, "events": events}
    await fill_postgres(url, FILL, params, seed=0.42)


async def sizes(url: str) -> dict[str, int]:
    """Row counts of the tables the reports and the baseline read."""
    engine = create_engine(url)
    counted = {}
    async with engine.connect() as connection:
        for table in ("lead", "event", "stageentry", "enrollment", "delivery", "handoff"):
            counted[table] = (await connection.execute(text(f'SELECT count(*) FROM "{table}"'))).scalar_one()
    await engine.dispose()
    return counted


async def timed(run, repeat: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """One warm-up, then the median and the slowest of `repeat` runs, in seconds."""
    await run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), max(times)


async def measure(url: str, repeat: int, baseline_repeat: int) -> list[tuple[str, str, float, float]]:
    """Time every report (and the baseline) over the last 30 days and the whole year."""
    settings = load_settings(ROOT / "config.toml", env={}).with_(database_url=url)
    library = FlowLibrary(ROOT / "templates", settings.stages.order)
    library.load()
    engine = create_engine(url)
    sessions = sessionmaker(engine)
    periods = {"30 days": END - timedelta(days=30), "365 days": END - timedelta(days=366)}
    cases = [("funnel", None), ("funnel", "source"), ("funnel", "campaign"), ("funnel", "channel"),
             ("flows", None), ("handoffs", None)]  # fmt: skip
    results = []
    for period, since in periods.items():
        for name, by in cases:
            query = parse_query(since.isoformat(), END.isoformat(), by, END)

            async def run(name=name, query=query):  # type: ignore[no-untyped-def]
                return await build_report(name, sessions, settings, library, query)

            median, worst = await timed(run, repeat)
            label = f"{name}" + (f" by {by}" if by else "")
            results.append((period, label, median, worst))
            print(f"  {period:>8}  {label:<20} median {median * 1000:7.0f} ms   max {worst * 1000:7.0f} ms", flush=True)
        for dim, label in (("'all'", "baseline funnel"), ("first_touch->>'source'", "baseline funnel by source")):
            sql = text(BASELINE.format(dim=dim))

            async def naive(sql=sql, since=since):  # type: ignore[no-untyped-def]
                async with engine.connect() as connection:
                    await connection.execute(text("SET work_mem = '64MB'"))
                    naive_utc = {"since": since.replace(tzinfo=None), "until": END.replace(tzinfo=None)}
                    return (await connection.execute(sql, naive_utc)).all()

            median, worst = await timed(naive, baseline_repeat)
            results.append((period, label, median, worst))
            print(f"  {period:>8}  {label:<26} median {median * 1000:7.0f} ms   max {worst * 1000:7.0f} ms", flush=True)
    await engine.dispose()
    return results


def main() -> int:
    """Fill (unless --keep), measure, print a Markdown table for BENCHMARKS.md."""
    args = _arguments()
    url = args.database_url
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    if not args.keep:
        started = time.perf_counter()
        asyncio.run(fill(url, args.leads, args.events))
        print(f"fill: {time.perf_counter() - started:.0f} s")
    print("rows:", ", ".join(f"{table} {count:,}" for table, count in asyncio.run(sizes(url)).items()))
    results = asyncio.run(measure(url, args.repeat, args.baseline_repeat))
    print("\n| period | report | median | slowest |\n|---|---|---:|---:|")
    for period, label, median, worst in results:
        print(f"| {period} | {label} | {median * 1000:.0f} ms | {worst * 1000:.0f} ms |")
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=DEFAULT_URL, help=f"a PostgreSQL database (default {DEFAULT_URL})")
    parser.add_argument("--leads", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per report after a warm-up (default 5)")
    parser.add_argument("--baseline-repeat", type=int, default=2, help="timed runs of the baseline (default 2)")
    parser.add_argument("--keep", action="store_true", help="measure the database filled by an earlier run")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
