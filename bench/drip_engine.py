"""Drip engine benchmark: Kindling's Runner.run_due against a naive one-APScheduler-job-per-lead-step design.

    .venv/bin/python bench/drip_engine.py --enrollments 100000 [--database-url URL]

Both designs run in the same invocation on the same machine, each measured in fresh child processes so
start-up times and memory figures are not polluted by the data loading.

Kindling (the app's own code, untuned):
  N leads, each with a Telegram conversation, and N active enrollments in a one-step flow are bulk-inserted
  (setup, timed but not compared). A fraction is due now (default: 10% of N, at least 10,000, at most N);
  the rest are due hours to weeks later. A child process then
    * measures start-up: create_engine + sessionmaker + FlowLibrary.load + Engine + Runner, and one
      Runner._due claim (the locking query run_due starts with) on the loaded database, rolled back;
    * calls Runner.run_due(limit=...) in a loop until it returns 0, with a FrozenClock at "now":
      due steps claimed, rendered and recorded (Delivery outbox rows) per second;
    * reports peak RSS above the RSS right after imports (VmHWM - VmRSS, reset via /proc/self/clear_refs).
  Sending (the dispatcher, the fake Bot API) is not part of this measure.

Naive baseline (APScheduler 3, BackgroundScheduler + ThreadPoolExecutor(10), SQLAlchemyJobStore):
  one `date` job per lead-step, added with scheduler.add_job (timed) into the job store on a SQLite file
  (WAL, synchronous=NORMAL, busy_timeout: the same durability settings Kindling uses on SQLite). Each job
  reads its lead, renders the same step text with Jinja and inserts a delivery row in its own transaction.
  A child process measures start-up (store + scheduler.start(paused=True) + the scheduler's first
  get_due_jobs(now)), then resumes the scheduler and times until every due job has executed.
  With --naive-database-url postgresql+psycopg://... the baseline's job store and tables live in PostgreSQL
  instead (install the bench extra: pip install -e '.[bench]').

The child phases are this same script with --phase; they print one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

T_START = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SLUG = "bench"
STEP = "only"
# The step text both designs render: a macro call, a variable, a partial's variable.
STEP_BODY = (
    "{{ hello(lead) }}, thanks for your interest in {{ company }}!\n\n"
    "Most teams start with a quick 15-minute call: you tell us what you're working on, we show you the parts "
    "that matter for it. Or reply here with a question, any time."
)
IMPORTS = '{% from "_partials/macros.j2" import hello %}\n{% from "_partials/brand.j2" import company %}\n'
FLOW = (
    '+++\nname = "Bench: one step"\ntrigger = "custom:bench"\n'
    'exit = ["reply", "handoff", "opt_out", "stage >= sql"]\n+++\n'
    + IMPORTS
    + f'{{% step "{STEP}", after="1m", buttons=["Book a call", "Not now"] %}}\n'
    + STEP_BODY
    + "\n{% endstep %}\n"
)
FIRST_CHAT = 1_000_000_000
NAMES = ("Ana", "Ben", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", None, None)
ZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo", None)
CHUNK = 20_000


# --- memory ------------------------------------------------------------------------------------------


def _status(key: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss() -> int:
    return _status("VmRSS")


def peak_rss() -> int:
    return _status("VmHWM")


def reset_peak() -> None:
    """Make VmHWM start again from the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


# --- the data ----------------------------------------------------------------------------------------


def due_count(n: int, fraction: float, minimum: int) -> int:
    """Default: 10% of N, at least 10,000, never more than N."""
    return min(n, max(round(n * fraction), minimum))


def due_times(n: int, due: int, now: datetime, seed: int = 42) -> list[datetime]:
    """When each lead's step is due: `due` of them within the last hour, the rest 1 hour to 30 days ahead."""
    rng = random.Random(seed)
    due_set = set(rng.sample(range(n), due))
    times = []
    for index in range(n):
        if index in due_set:
            times.append(now - timedelta(seconds=rng.uniform(1, 3600)))
        else:
            times.append(now + timedelta(seconds=rng.uniform(3600, 30 * 86400)))
    return times


def lead_row(index: int, now: datetime) -> dict:
    lead_id = index + 1
    return {
        "id": lead_id,
        "created_at": now,
        "updated_at": now,
        "first_name": NAMES[index % len(NAMES)],
        "last_name": None,
        "email": None,
        "phone": None,
        "locale": "en",
        "timezone": ZONES[index % len(ZONES)],
        "stage": "lead",
        "stage_at": now,
        "score": 0.0,
        "first_touch": {},
        "last_touch": {},
        "tags": [],
        "merged_into_id": None,
        "opted_out_at": None,
    }


def check_bench_database(url: str) -> None:
    """Only ever reset a database whose name says it is for benchmarks (never `test`, `kindling_dev`, ...)."""
    from sqlalchemy.engine import make_url

    name = make_url(url).database or ""
    if name == "test" or "bench" not in name:
        raise SystemExit(f"refusing to use PostgreSQL database {name!r}: use one named like kindling_bench")


def ensure_pg_database(url: str) -> None:
    """Create the benchmark database with psql if it is missing."""
    from sqlalchemy.engine import make_url

    check_bench_database(url)
    parts = make_url(url)
    env = {**os.environ, **({"PGPASSWORD": parts.password} if parts.password else {})}
    base = ["psql", "-h", parts.host or "127.0.0.1", "-p", str(parts.port or 5432), "-U", parts.username or "postgres"]
    found = subprocess.run(
        [*base, "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{parts.database}'"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if found != "1":
        subprocess.run([*base, "-d", "postgres", "-c", f'CREATE DATABASE "{parts.database}"'], env=env, check=True)
        log(f"created PostgreSQL database {parts.database}")


async def load_kindling(url: str, n: int, due: int, now: datetime) -> dict:
    """Fresh schema (Alembic, as `kindling migrate`), then N leads, conversations and enrollments in bulk."""
    from sqlalchemy import func, select, text

    from flows.spec import flow_version
    from storage.db import create_engine, is_sqlite
    from storage.migrate import recreate
    from storage.models import Conversation, Delivery, Enrollment, FlowVersion, Lead

    engine = create_engine(url)
    try:
        await recreate(engine)
        version = flow_version(FLOW)
        times = due_times(n, due, now)
        started = time.perf_counter()
        async with engine.begin() as connection:
            await connection.execute(
                FlowVersion.__table__.insert(), [{"slug": SLUG, "version": version, "source": FLOW, "created_at": now}]
            )
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            async with engine.begin() as connection:
                await connection.execute(Lead.__table__.insert(), [lead_row(i, now) for i in range(start, stop)])
                await connection.execute(
                    Conversation.__table__.insert(),
                    [
                        {
                            "id": i + 1,
                            "lead_id": i + 1,
                            "channel": "telegram",
                            "external_id": str(FIRST_CHAT + i),
                            "owner": "bot",
                            "contact_requested": False,
                            "created_at": now,
                            "last_message_at": None,
                        }  # fmt: skip
                        for i in range(start, stop)
                    ],
                )
                await connection.execute(
                    Enrollment.__table__.insert(),
                    [
                        {
                            "id": i + 1,
                            "lead_id": i + 1,
                            "flow_slug": SLUG,
                            "flow_version": version,
                            "step_index": 0,
                            "due_at": times[i],
                            "status": "active",
                            "exit_reason": None,
                            "lease_until": None,
                            "enrolled_at": now,
                            "updated_at": now,
                        }  # fmt: skip
                        for i in range(start, stop)
                    ],
                )
            if stop % 200_000 == 0:
                log(f"  kindling: {stop:,} of {n:,} leads loaded")
        if not is_sqlite(url):
            async with engine.begin() as connection:
                for table in ("lead", "conversation", "enrollment"):
                    await connection.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {n})"))
            async with engine.connect() as connection:  # autovacuum would do this shortly after a bulk load
                await (await connection.execution_options(isolation_level="AUTOCOMMIT")).execute(text("ANALYZE"))
        loaded = time.perf_counter() - started
        async with engine.connect() as connection:
            counts = {
                "enrollments": (await connection.execute(select(func.count()).select_from(Enrollment))).scalar_one(),
                "due": (
                    await connection.execute(
                        select(func.count()).select_from(Enrollment).where(Enrollment.due_at <= now)
                    )
                ).scalar_one(),
                "deliveries": (await connection.execute(select(func.count()).select_from(Delivery))).scalar_one(),
            }
        return {"load_s": loaded, **counts}
    finally:
        await engine.dispose()


def bench_templates(folder: Path) -> Path:
    """The shipped templates (partials, system messages) with only the benchmark's flow."""
    templates = folder / "templates"
    shutil.copytree(ROOT / "templates", templates)
    for shipped in (templates / "flows").glob("*.j2"):
        shipped.unlink()
    (templates / "flows" / f"{SLUG}.j2").write_text(FLOW, encoding="utf-8")
    return templates


# --- Kindling: the measuring child process -----------------------------------------------------------


async def kindling_run(args: argparse.Namespace) -> dict:
    from sqlalchemy import func, select

    from flows.clock import FrozenClock
    from flows.engine import Engine
    from flows.library import FlowLibrary
    from flows.runner import Runner
    from flows.scoring import Scoring
    from flows.stages import Stages
    from storage.db import Checkpoints, create_engine, sessionmaker
    from storage.models import Delivery, Enrollment

    imports_s = time.perf_counter() - T_START
    now = datetime.fromisoformat(args.now)
    rss0 = rss()
    reset_peak()

    started = time.perf_counter()
    database = create_engine(args.database_url)
    sessions = sessionmaker(database)
    stages = Stages()
    library = FlowLibrary(Path(args.templates), stages.order)
    problems = library.load()
    engine = Engine(library, stages, ("telegram",))
    runner = Runner(sessions, engine, Scoring(), FrozenClock(now))
    async with sessions() as session:
        transaction = await session.begin()
        first_claim = (await session.exec(runner._due(args.limit))).all()  # the claim run_due starts with; rolled back
        await transaction.rollback()
    startup_s = time.perf_counter() - started
    startup_peak = peak_rss() - rss0
    if problems or SLUG not in library.flows:
        raise SystemExit(f"the benchmark flow did not load: {problems}")

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    # As `kindling serve` ticks it (bot/app.py): on SQLite the write-ahead log is checkpointed beside the runner.
    checkpoints = Checkpoints(sessions)

    async def checkpointing() -> None:
        while True:
            await asyncio.sleep(Checkpoints.SECONDS)
            await checkpoints.run()

    ticking = asyncio.create_task(checkpointing())
    steps = calls = 0
    last_note = started = time.perf_counter()
    cpu_started = time.process_time()
    while True:
        if profiler and calls < args.profile:
            profiler.enable()
        advanced = await runner.run_due(limit=args.limit)
        if profiler and calls < args.profile:
            profiler.disable()
        calls += 1
        steps += advanced
        if advanced == 0:
            break
        if time.perf_counter() - last_note > 15:
            last_note = time.perf_counter()
            log(f"  kindling: {steps:,} steps in {last_note - started:.0f} s ({steps / (last_note - started):,.0f}/s)")
    run_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    run_peak = peak_rss() - rss0
    ticking.cancel()
    await checkpoints.close()

    async with database.connect() as connection:
        deliveries = (await connection.execute(select(func.count()).select_from(Delivery))).scalar_one()
        done = (
            await connection.execute(select(func.count()).select_from(Enrollment).where(Enrollment.status == "done"))
        ).scalar_one()
        still_due = (
            await connection.execute(
                select(func.count())
                .select_from(Enrollment)
                .where(Enrollment.status == "active", Enrollment.due_at <= now)
            )
        ).scalar_one()
        sample = (await connection.execute(select(Delivery.text).limit(1))).scalar()
    if profiler:
        import io
        import pstats

        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
        Path(args.profile_out).write_text(out.getvalue())
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
        Path(args.profile_out).with_suffix(".tottime.txt").write_text(out.getvalue())
    await database.dispose()

    # What `kindling serve` does before start-up: check the schema is at head (informational, after the
    # memory figures so Alembic's import does not count there).
    from storage.migrate import upgrade

    database = create_engine(args.database_url)
    migrate_started = time.perf_counter()
    await upgrade(database)
    migrate_s = time.perf_counter() - migrate_started
    await database.dispose()
    return {
        "imports_s": imports_s,
        "startup_s": startup_s,
        "startup_claimed": len(first_claim),
        "startup_peak_rss": startup_peak,
        "migrate_check_s": migrate_s,
        "steps": steps,
        "calls": calls,
        "run_s": run_s,
        "cpu_s": cpu_s,
        "rate": steps / run_s if run_s else 0.0,
        "peak_rss_delta": max(run_peak, startup_peak),
        "rss_after_imports": rss0,
        "deliveries": deliveries,
        "done": done,
        "still_due": still_due,
        "sample_text": sample,
    }


# --- the naive baseline ------------------------------------------------------------------------------

NAIVE_ENGINE = None
NAIVE_TEMPLATE = None
NAIVE_TABLES = None


def naive_engine(path: str, foreign_keys: bool = False):  # type: ignore[no-untyped-def]
    """Sync SQLAlchemy: on PostgreSQL (psycopg) when given a URL, else on the SQLite file with the pragmas
    Kindling uses (WAL, synchronous=NORMAL; foreign keys for the same-work baseline on Kindling's schema)."""
    from sqlalchemy import create_engine, event

    if path.startswith("postgresql"):
        return create_engine(path, pool_size=12)  # ten worker threads and the scheduler's own
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        if foreign_keys:
            cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def naive_tables():  # type: ignore[no-untyped-def]
    from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text

    metadata = MetaData()
    lead = Table(
        "naive_lead", metadata,
        Column("id", Integer, primary_key=True), Column("first_name", String), Column("chat_id", String),
    )  # fmt: skip
    delivery = Table(
        "naive_delivery", metadata,
        Column("id", Integer, primary_key=True), Column("lead_id", Integer, nullable=False),
        Column("address", String, nullable=False), Column("text", Text, nullable=False),
        Column("idempotency_key", String, nullable=False, unique=True), Column("created_at", DateTime, nullable=False),
    )  # fmt: skip
    return metadata, lead, delivery


def naive_template(templates: str):  # type: ignore[no-untyped-def]
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(templates), undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    return env.from_string(IMPORTS + STEP_BODY)


def naive_step(lead_id: int, step: str) -> None:
    """The job: read the lead, render the step, record the outbox row; one transaction."""
    from sqlalchemy import select

    _, lead, delivery = NAIVE_TABLES
    with NAIVE_ENGINE.begin() as connection:
        row = connection.execute(select(lead.c.first_name, lead.c.chat_id).where(lead.c.id == lead_id)).one()
        text = NAIVE_TEMPLATE.render(lead={"id": lead_id, "first_name": row.first_name}).strip()
        connection.execute(
            delivery.insert().values(
                lead_id=lead_id, address=row.chat_id, text=text,
                idempotency_key=f"naive:{lead_id}:{step}", created_at=datetime.now(UTC).replace(tzinfo=None),
            )
        )  # fmt: skip


NAIVE_SAME = None  # the same-work job's flow, stages and Kindling tables, set in the run phase


def naive_same_setup(templates: str) -> None:
    global NAIVE_SAME
    from flows.library import FlowLibrary
    from flows.stages import Stages
    from storage.models import Conversation, Delivery, Enrollment, Lead

    stages = Stages()
    library = FlowLibrary(Path(templates), stages.order)
    if library.load() or SLUG not in library.flows:
        raise SystemExit("the benchmark flow did not load")
    NAIVE_SAME = (library.flows[SLUG], stages, Lead.__table__, Conversation.__table__, Delivery.__table__,
                  Enrollment.__table__)  # fmt: skip


def naive_same_step(enrollment_id: int) -> None:
    """The same-work job: what Kindling does for one due step, in the job's own transaction.

    Reads the enrollment (skipped unless still active), the lead (opt-out, exit conditions) and its
    conversations; renders the step with Kindling's renderer and context; records the outbox row in
    Kindling's delivery table (its indexes, the unique idempotency key); advances the enrollment. It uses
    Kindling's own functions for the checks and the render, so only the design differs: one scheduler job
    and one transaction per lead-step, ten worker threads.
    """
    from sqlalchemy import select

    from flows.engine import condition_exit, context
    from flows.render import RenderError, render_step
    from flows.runner import LEAD_COLUMNS, NURTURE_PRIORITY, REACH_COLUMNS, _best

    spec, stages, lead, conversation, delivery, enrollment = NAIVE_SAME
    now = datetime.now(UTC)
    with NAIVE_ENGINE.begin() as connection:
        row = connection.execute(select(enrollment).where(enrollment.c.id == enrollment_id)).one()
        if row.status != "active":
            return
        who = connection.execute(select(*LEAD_COLUMNS).where(lead.c.id == row.lead_id)).one()
        done = {"step_index": row.step_index + 1, "lease_until": None, "updated_at": now, "status": "done"}
        reason = "opt_out" if who.opted_out_at is not None else condition_exit(spec, stages, who, None, now)
        if reason:
            done.update(status="exited", exit_reason=reason)
        else:
            step = spec.step_for(spec.step_names[row.step_index], who.id)
            reach = connection.execute(select(*REACH_COLUMNS).where(conversation.c.lead_id == who.id)).all()
            where = _best([c for c in reach if c.channel == "telegram"], step.channel)
            ctx = {**context(who, None, now), "flow": {"slug": spec.slug, "name": spec.name}}
            try:
                rendered = render_step(spec, step.name, step.variant, ctx)
            except RenderError:
                rendered = None
            if rendered is not None and where is not None:
                connection.execute(
                    delivery.insert().values(
                        lead_id=who.id, conversation_id=where.id, channel=where.channel, address=where.external_id,
                        kind="nurture", priority=NURTURE_PRIORITY, text=rendered.text,
                        buttons=[{"type": "reply", "text": label} for label in rendered.buttons],
                        idempotency_key=f"flow:{row.id}:{spec.version}:{step.name}", enrollment_id=row.id,
                        flow_slug=spec.slug, step=step.name, variant=step.variant, status="pending", attempts=0,
                        not_before=now, created_at=now,
                    )
                )  # fmt: skip
        connection.execute(enrollment.update().where(enrollment.c.id == row.id).values(**done))


def naive_scheduler(engine):  # type: ignore[no-untyped-def]
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    store = SQLAlchemyJobStore(engine=engine)
    scheduler = BackgroundScheduler(
        jobstores={"default": store},
        executors={"default": ThreadPoolExecutor(10)},
        job_defaults={"misfire_grace_time": None, "coalesce": True},
        timezone=UTC,
    )
    return scheduler, store


def async_url(db: str) -> str:
    """The same-work baseline's database as Kindling's loader reaches it (async drivers)."""
    if db.startswith("postgresql"):
        return "postgresql+asyncpg://" + db.split("://", 1)[1]
    return f"sqlite+aiosqlite:///{db}"


def naive_add(args: argparse.Namespace) -> dict:
    """Leads (bulk, setup) then one add_job per lead-step (timed).

    The same-work baseline (`--naive-work same`) gets Kindling's schema and exactly Kindling's data (the
    same loader), and one job per enrollment.
    """
    import logging

    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    now = datetime.fromisoformat(args.now)
    same = args.naive_work == "same"
    engine = naive_engine(args.db, foreign_keys=same)
    metadata, lead, _ = naive_tables()
    if args.db.startswith("postgresql"):  # a fresh start, as the SQLite baseline gets a new file
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS naive_lead, naive_delivery, apscheduler_jobs")
    if same:
        asyncio.run(load_kindling(async_url(args.db), args.enrollments, args.due, now))
    else:
        metadata.create_all(engine)
    with engine.begin() as connection:
        for start in range(0, args.enrollments if not same else 0, CHUNK):
            stop = min(args.enrollments, start + CHUNK)
            connection.execute(
                lead.insert(),
                [
                    {"id": i + 1, "first_name": NAMES[i % len(NAMES)], "chat_id": str(FIRST_CHAT + i)}
                    for i in range(start, stop)
                ],
            )
    times = due_times(args.enrollments, args.due, now)
    rss0 = rss()
    reset_peak()
    scheduler, _ = naive_scheduler(engine)
    scheduler.start(paused=True)  # add_job writes straight to the job store; nothing runs yet
    started = last_note = time.perf_counter()
    for index, run_date in enumerate(times):
        job, job_args = ("__main__:naive_step", [index + 1, STEP])
        if same:
            job, job_args = "__main__:naive_same_step", [index + 1]
        scheduler.add_job(job, "date", run_date=run_date, args=job_args, id=f"{index + 1}:{STEP}")
        if index % 1000 == 0 and time.perf_counter() - last_note > 15:
            last_note = time.perf_counter()
            log(f"  naive: {index:,} jobs added in {last_note - started:.0f} s")
    add_s = time.perf_counter() - started
    add_peak = peak_rss() - rss0
    # No scheduler.shutdown(): in APScheduler 3.11 it wakes the thread, which then runs one _process_jobs
    # pass on a stopped scheduler and deletes due jobs it can no longer submit. The thread is a daemon.
    engine.dispose()
    return {"add_s": add_s, "add_rate": args.enrollments / add_s, "add_peak_rss_delta": add_peak}


def naive_run(args: argparse.Namespace) -> dict:
    """Start-up with N jobs in the store, then run every due job; count them as they finish."""
    import logging
    import threading

    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED
    from sqlalchemy import func, select, text

    global NAIVE_ENGINE, NAIVE_TEMPLATE, NAIVE_TABLES
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    same = args.naive_work == "same"
    if same:  # imports are not start-up, as for Kindling
        import flows.library  # noqa: F401
        import flows.render  # noqa: F401
        import flows.runner  # noqa: F401
    imports_s = time.perf_counter() - T_START
    rss0 = rss()
    reset_peak()

    started = time.perf_counter()
    NAIVE_ENGINE = naive_engine(args.db, foreign_keys=same)
    NAIVE_TABLES = naive_tables()
    NAIVE_TEMPLATE = naive_template(args.templates)
    if same:
        naive_same_setup(args.templates)
    scheduler, store = naive_scheduler(NAIVE_ENGINE)
    scheduler.start(paused=True)
    start_only_s = time.perf_counter() - started
    first_due = store.get_due_jobs(datetime.now(UTC))  # what the scheduler's first wakeup loads
    startup_s = time.perf_counter() - started
    startup_claimed = len(first_due)
    del first_due
    startup_peak = peak_rss() - rss0

    finished = threading.Event()
    outcome = {"executed": 0, "errors": 0, "missed": 0}
    lock = threading.Lock()

    def listener(event) -> None:  # type: ignore[no-untyped-def]
        with lock:
            if event.code == EVENT_JOB_EXECUTED:
                outcome["executed"] += 1
            elif event.code == EVENT_JOB_ERROR:
                outcome["errors"] += 1
                if outcome["errors"] <= 3:
                    log(f"  naive job error: {event.exception!r}")
            else:
                outcome["missed"] += 1
            if sum(outcome.values()) >= args.due:
                finished.set()

    scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
    started = time.perf_counter()
    cpu_started = time.process_time()
    scheduler.resume()
    while not finished.wait(15):
        elapsed = time.perf_counter() - started
        log(f"  naive: {outcome['executed']:,} jobs run in {elapsed:.0f} s ({outcome['executed'] / elapsed:,.0f}/s)")
        if elapsed > args.timeout:
            log("  naive: timed out")
            break
    run_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    run_peak = peak_rss() - rss0
    scheduler.shutdown(wait=True)
    with NAIVE_ENGINE.connect() as connection:
        outbox = NAIVE_SAME[4] if same else NAIVE_TABLES[2]
        deliveries = connection.execute(select(func.count()).select_from(outbox)).scalar_one()
        jobs_left = connection.execute(text("SELECT count(*) FROM apscheduler_jobs")).scalar_one()
        sample = connection.execute(select(outbox.c.text).limit(1)).scalar()
    NAIVE_ENGINE.dispose()
    return {
        "imports_s": imports_s,
        "start_only_s": start_only_s,
        "startup_s": startup_s,
        "startup_claimed": startup_claimed,
        "startup_peak_rss": startup_peak,
        "steps": outcome["executed"],
        "errors": outcome["errors"],
        "missed": outcome["missed"],
        "run_s": run_s,
        "cpu_s": cpu_s,
        "rate": outcome["executed"] / run_s if run_s else 0.0,
        "peak_rss_delta": max(run_peak, startup_peak),
        "rss_after_imports": rss0,
        "deliveries": deliveries,
        "jobs_left": jobs_left,
        "sample_text": sample,
    }


# --- the parent: set up, run the children, report ---------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def child(phase: str, *extra: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, *extra]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"phase {phase} failed (exit {result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def cpu_ms(side: dict) -> float:
    """CPU time of the measuring process (every thread) per 1,000 steps: less swayed by a busy machine."""
    return 1000 * side["cpu_s"] / max(side["steps"], 1) * 1000


def mb(value: float) -> str:
    return f"{value / 1e6:,.1f} MB"


def per_100k(value: float, n: int) -> float:
    return value * 100_000 / n


def table(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("", "Kindling", "naive APScheduler", "Kindling / naive")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(header))]
    lines.append("-+-".join("-" * width for width in widths))
    lines += [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    return "\n".join(lines)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:,.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--enrollments", type=int, default=100_000, help="N leads / enrollments / jobs")
    parser.add_argument("--database-url", default="", help="Kindling's database (default: a fresh SQLite file)")
    parser.add_argument(
        "--naive-database-url",
        default="",
        help="the baseline's database, postgresql+psycopg://... (default: a fresh SQLite file; needs .[bench])",
    )
    parser.add_argument("--due-fraction", type=float, default=0.10, help="share of N due now (default 0.10)")
    parser.add_argument("--due-minimum", type=int, default=10_000, help="at least this many due (capped at N)")
    parser.add_argument("--limit", type=int, default=200, help="run_due(limit=...) per call (the app's default)")
    parser.add_argument("--baseline-enrollments", type=int, default=None, help="N for the baseline (default: N)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--naive-work",
        default="minimal",
        choices=("minimal", "same", "both"),
        help="the baseline's job: minimal (read the lead, render, insert a row; the default), same (Kindling's "
        "work per step on Kindling's schema), or both, one after the other",
    )
    parser.add_argument("--profile", type=int, default=0, help="cProfile the first K run_due calls")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up on the baseline's run after this")
    # internal: child phases
    parser.add_argument("--phase", default="", help=argparse.SUPPRESS)
    parser.add_argument("--templates", default="", help=argparse.SUPPRESS)
    parser.add_argument("--now", default="", help=argparse.SUPPRESS)
    parser.add_argument("--db", default="", help=argparse.SUPPRESS)
    parser.add_argument("--due", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "kindling-run":
        print(json.dumps(asyncio.run(kindling_run(args))))
        return
    if args.phase == "naive-add":
        print(json.dumps(naive_add(args)))
        return
    if args.phase == "naive-run":
        print(json.dumps(naive_run(args)))
        return

    n = args.enrollments
    due = due_count(n, args.due_fraction, args.due_minimum)
    folder = Path(tempfile.mkdtemp(prefix="kindling-bench-"))
    templates = bench_templates(folder)
    url = args.database_url or f"sqlite+aiosqlite:///{folder / 'kindling.db'}"
    if not url.startswith("sqlite"):
        ensure_pg_database(url)
    now = datetime.now(UTC).replace(microsecond=0)
    results: dict = {
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "n": n,
        "due": due,
        "limit": args.limit,
        "kindling_database": url.split("://")[0] + ("" if url.startswith("sqlite") else "://" + url.rsplit("/", 1)[-1]),
    }
    try:
        log(f"kindling: loading {n:,} leads, conversations and enrollments ({due:,} due) into {url.split('://')[0]}")
        results["kindling_load"] = asyncio.run(load_kindling(url, n, due, now))
        log(f"kindling: loaded in {results['kindling_load']['load_s']:.1f} s; running due steps")
        extra = [
            "--database-url",
            url,
            "--templates",
            str(templates),
            "--now",
            now.isoformat(),
            "--limit",
            str(args.limit),
        ]
        if args.profile:
            profile_out = Path(tempfile.gettempdir()) / f"kindling-bench-profile-{n}.txt"
            extra += ["--profile", str(args.profile), "--profile-out", str(profile_out)]
        results["kindling"] = child("kindling-run", *extra)
        if args.profile:
            log(f"kindling: cProfile of the first {args.profile} run_due calls in {extra[-1]} (and .tottime.txt)")
        k = results["kindling"]
        log(f"kindling: {k['steps']:,} steps in {k['run_s']:.1f} s = {k['rate']:,.0f}/s ({k['cpu_s']:.1f} s CPU)")

        if not args.skip_baseline:
            bn = args.baseline_enrollments or n
            bdue = due_count(bn, args.due_fraction, args.due_minimum)
            results["naive_n"], results["naive_due"] = bn, bdue
            results["naive_database"] = "postgresql+psycopg (sync)" if args.naive_database_url else "sqlite (sync)"
            db = args.naive_database_url or str(folder / "naive.db")
            if args.naive_database_url:
                ensure_pg_database(args.naive_database_url)
            where = "PostgreSQL" if args.naive_database_url else "SQLite"
            for work in ("minimal", "same") if args.naive_work == "both" else (args.naive_work,):
                key = "naive" if work == "minimal" else "naive_same"
                if not args.naive_database_url:
                    db = str(folder / ("naive.db" if work == "minimal" else "naive-same.db"))
                common = ["--db", db, "--templates", str(templates), "--now", now.isoformat(), "--due", str(bdue)]
                common += ["--naive-work", work]
                log(f"{key}: adding {bn:,} jobs ({bdue:,} due) to the SQLAlchemyJobStore on {where}")
                results[f"{key}_add"] = child("naive-add", "--enrollments", str(bn), *common)
                log(f"{key}: added in {results[f'{key}_add']['add_s']:.1f} s; running due jobs")
                results[key] = child("naive-run", "--timeout", str(args.timeout), *common)
                b = results[key]
                log(f"{key}: {b['steps']:,} jobs in {b['run_s']:.1f} s = {b['rate']:,.0f}/s ({b['cpu_s']:.1f} s CPU)")
    finally:
        if args.keep:
            log(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)

    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


def report(results: dict) -> None:
    """One table per baseline that ran (or Kindling alone)."""
    ran = [key for key in ("naive", "naive_same") if key in results] or ["naive"]
    for key in ran:
        report_one(results, key)


def report_one(results: dict, key: str) -> None:
    n, k = results["n"], results["kindling"]
    b, badd = results.get(key), results.get(f"{key}_add")
    bn = results.get("naive_n", n)
    print()
    if key == "naive_same":
        print("baseline: the same work per step as Kindling (--naive-work same)")
    print(f"machine: {results['machine']['nproc']} CPUs, Python {results['machine']['python']}")
    where = results["kindling_database"]
    print(f"Kindling on {where}, N = {n:,}, due = {results['due']:,}, run_due(limit={results['limit']})")
    if b:
        print(f"naive on {results.get('naive_database', 'sqlite (sync)')}, N = {bn:,}, due = {results['naive_due']:,}")
    kmem = per_100k(k["peak_rss_delta"], n)
    bmem = per_100k(b["peak_rss_delta"], bn) if b else None
    rows = [
        ("N (enrollments / jobs)", f"{n:,}", f"{bn:,}" if b else "not run", ""),
        ("due steps processed", f"{k['steps']:,}", f"{b['steps']:,}" if b else "-", ""),
        ("outbox / delivery rows", f"{k['deliveries']:,}", f"{b['deliveries']:,}" if b else "-", ""),
        ("run time", f"{k['run_s']:,.1f} s", f"{b['run_s']:,.1f} s" if b else "-", ""),
        ("due steps / s", f"{k['rate']:,.0f}", f"{b['rate']:,.0f}" if b else "-", ratio(k["rate"], b and b["rate"])),
        (
            "process CPU per 1,000 steps",
            f"{cpu_ms(k):,.0f} ms",
            f"{cpu_ms(b):,.0f} ms" if b else "-",
            ratio(cpu_ms(k), b and cpu_ms(b)),
        ),
        (
            "start-up (objects + first claim)",
            f"{k['startup_s']:.3f} s",
            f"{b['startup_s']:.3f} s" if b else "-",
            ratio(k["startup_s"], b and b["startup_s"]),
        ),
        (
            "  rows loaded by that first query",
            f"{k['startup_claimed']:,}",
            f"{b['startup_claimed']:,}" if b else "-",
            "",
        ),
        ("peak RSS above idle process", mb(k["peak_rss_delta"]), mb(b["peak_rss_delta"]) if b else "-", ""),
        ("  per 100k enrollments / jobs", mb(kmem), mb(bmem) if b else "-", ratio(kmem, bmem)),
        (
            "scheduling N (setup)",
            f"{results['kindling_load']['load_s']:,.1f} s bulk insert",
            f"{badd['add_s']:,.1f} s add_job x N" if badd else "-",
            "",
        ),
        ("imports (informational)", f"{k['imports_s']:.2f} s", f"{b['imports_s']:.2f} s" if b else "-", ""),
        ("schema check at serve (informational)", f"{k['migrate_check_s']:.2f} s", "-", ""),
    ]
    print(table(rows))
    problems = []
    if k["deliveries"] != results["due"] or k["still_due"]:
        problems.append(f"Kindling: {k['deliveries']} deliveries for {results['due']} due, {k['still_due']} still due")
    if b and (b["deliveries"] != results["naive_due"] or b["errors"] or b["missed"]):
        problems.append(
            f"naive: {b['deliveries']} rows for {results['naive_due']} due, {b['errors']} errors, {b['missed']} missed"
        )
    for problem in problems:
        print("CHECK FAILED:", problem)
    if not problems:
        print("checks: every due step recorded exactly once, nothing left due")
    print(f"sample Kindling text: {k['sample_text']!r}")
    if b:
        print(f"sample naive text:    {b['sample_text']!r}")


if __name__ == "__main__":
    main()
