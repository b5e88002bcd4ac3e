"""Two instances on PostgreSQL: due nurture steps sent end to end by one `kindling serve`, then by two.

    .venv/bin/python bench/two_instances.py [--leads 20000] [--pg URL] [--timeout 900] [--quick]

Both phases run in this one invocation, on the same machine and database, each on a fresh schema loaded
with the same data:

  * N leads, each with a conversation on the webhook channel (source `bench`) and an active enrollment in
    the drip benchmark's one-step flow (bench/drip_engine.py: a macro, a partial's variable, two buttons),
    due tomorrow, so nothing starts before every instance listens.
  * One phase starts one `python -m bot serve`, the other two, on the same database; once they all listen,
    one UPDATE makes every enrollment due. From then on the servers work on their own ticks, as in
    production: the runner claims due steps and writes outbox rows, the dispatcher claims those rows, checks
    opt-out, owner, quiet hours (off) and the daily cap, and POSTs each message, signed, to the source's URL.
  * That URL is a receiver in this process, one path per instance. It answers 200 at once and records the
    time, the instance and the `X-Kindling-Delivery` header (the delivery's idempotency key).

The webhook channel is used because it has no send budget: over Telegram both instances share one budget
of about 30 messages/s in the database (that is the point of it), so a second instance cannot send more.

Measured: from the UPDATE to the last message received; sends/s = N / that time; and two / one. Checks: each
of the N expected keys (`flow:<enrollment>:<version>:only`) received exactly once (duplicates counted at the
receiver, after 3 s more of listening), every delivery row `sent`, every enrollment `done`. Also the CPU time
of each server process and of their PostgreSQL backends (from /proc), and the load average before and after.
Each phase prints one JSON line on stdout; the table follows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web  # noqa: E402
from drip_engine import FLOW, SLUG, STEP, bench_templates, lead_row  # noqa: E402
from harness import (  # noqa: E402
    Child,
    database_name,
    ensure_database,
    free_port,
    fresh_folder,
    fresh_schema,
    log,
    machine,
    phase_line,
    remove,
    rows,
    scalar,
    table,
)

SOURCE = "bench"
SECRET = "bench-two-instances-secret"
CHUNK = 5_000
LATE_DUPLICATES = 3.0
CONFIG = """
[nurture]
quiet_hours = "off"
daily_cap = 1000

[channels.webhook.sources.{source}]
url = "{url}"
"""


class Receiver:
    """The provider's reply endpoint: records every POST (time, instance, delivery key) and answers 200."""

    def __init__(self) -> None:
        self.received: list[tuple[float, str, str]] = []
        self.keys: set[str] = set()
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{instance}", self.hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def hook(self, request: web.Request) -> web.Response:
        await request.read()
        key = request.headers.get("X-Kindling-Delivery", "")
        self.received.append((time.time(), request.match_info["instance"], key))
        self.keys.add(key)
        return web.json_response({"ok": True})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def load(url: str, n: int) -> str:
    """N leads, webhook conversations and enrollments due tomorrow; returns the flow version."""
    from sqlalchemy import text

    from flows.spec import flow_version
    from storage.db import create_engine
    from storage.models import Conversation, Enrollment, FlowVersion, Lead

    now = datetime.now(UTC)
    version = flow_version(FLOW)
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                FlowVersion.__table__.insert(), [{"slug": SLUG, "version": version, "source": FLOW, "created_at": now}]
            )
        for start in range(0, n, CHUNK):
            ids = range(start, min(n, start + CHUNK))
            async with engine.begin() as connection:
                await connection.execute(Lead.__table__.insert(), [lead_row(i, now) for i in ids])
                await connection.execute(
                    Conversation.__table__.insert(),
                    [
                        {
                            "id": i + 1, "lead_id": i + 1, "channel": "webhook", "external_id": f"{SOURCE}:c{i + 1}",
                            "owner": "bot", "contact_requested": False, "created_at": now, "last_message_at": None,
                        }
                        for i in ids
                    ],
                )  # fmt: skip
                await connection.execute(
                    Enrollment.__table__.insert(),
                    [
                        {
                            "id": i + 1, "lead_id": i + 1, "flow_slug": SLUG, "flow_version": version, "step_index": 0,
                            "due_at": now + timedelta(days=1), "status": "active", "exit_reason": None,
                            "lease_until": None, "enrolled_at": now, "updated_at": now,
                        }
                        for i in ids
                    ],
                )  # fmt: skip
        async with engine.begin() as connection:
            for table_name in ("lead", "conversation", "enrollment"):
                await connection.execute(text(f"SELECT setval(pg_get_serial_sequence('{table_name}', 'id'), {n})"))
        async with engine.connect() as connection:
            await (await connection.execution_options(isolation_level="AUTOCOMMIT")).execute(text("ANALYZE"))
    finally:
        await engine.dispose()
    return version


async def make_due(url: str) -> float:
    """Every enrollment due a second ago, in one statement; returns the time of its commit."""
    from sqlalchemy import text

    from storage.db import create_engine

    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            due = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)  # stored as naive UTC
            await connection.execute(text("UPDATE enrollment SET due_at = :due"), {"due": due})
        return time.time()
    finally:
        await engine.dispose()


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def backend_cpu(url: str) -> float:
    """CPU seconds of the PostgreSQL backends connected to this benchmark's database (their whole life)."""
    name = url.rsplit("/", 1)[-1]
    query = "SELECT pid FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
    pids = await rows(url, query, name=name)
    return sum(proc_cpu(pid) for (pid,) in pids)


async def start_instance(name: str, url: str, folder: Path, templates: Path, receiver: Receiver) -> Child:
    """`python -m bot serve` on a free port, replying to this instance's path on the receiver."""
    config = folder / f"config-{name}.toml"
    config.write_text(CONFIG.format(source=SOURCE, url=f"{receiver.url}/hook/{name}"), encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith("KINDLING_")}
    env.update(
        KINDLING_DATABASE_URL=url,
        KINDLING_CONFIG=str(config),
        KINDLING_TEMPLATES=str(templates),
        KINDLING_SECRET_KEY="bench-secret-key",
        KINDLING_WEBHOOK_SECRET_BENCH=SECRET,
    )
    port = free_port()
    command = [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return await Child.start(f"kindling {name}", command, env)


async def phase(url: str, n: int, instances: int, timeout: float) -> dict:
    """Fresh data, `instances` servers, every step due at once; until all N have arrived (or timeout)."""
    folder = fresh_folder("kindling-two-")
    templates = bench_templates(folder)
    receiver = Receiver()
    await receiver.start()
    await fresh_schema(url)
    started = time.perf_counter()
    version = await load(url, n)
    log(f"  loaded {n:,} leads and enrollments in {time.perf_counter() - started:.1f} s")
    servers: list[Child] = []
    try:
        for name in "ab"[:instances]:  # started together, as a deployment would; each migrates in turn
            servers.append(await start_instance(name, url, folder, templates, receiver))
        for server in servers:
            await server.wait_for_line("Running on http://127.0.0.1:")
        load_before = os.getloadavg()
        cpu_before = [proc_cpu(server.process.pid) for server in servers]
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        pg_before = await backend_cpu(url)
        ticks_before = machine_ticks()
        t0 = await make_due(url)
        deadline = time.monotonic() + timeout
        last_note = time.monotonic()
        while len(receiver.keys) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            if time.monotonic() - last_note > 15:
                last_note = time.monotonic()
                log(f"  {len(receiver.keys):,} of {n:,} received after {time.time() - t0:.0f} s")
        done_at = time.time()
        ticks_after = machine_ticks()
        await asyncio.sleep(LATE_DUPLICATES)
        cpu = [proc_cpu(server.process.pid) - before for server, before in zip(servers, cpu_before, strict=True)]
        pg_cpu = await backend_cpu(url) - pg_before
        own = resource.getrusage(resource.RUSAGE_SELF)
        load_after = os.getloadavg()
    finally:
        for server in servers:
            await server.stop()
        await receiver.stop()
        remove(folder)
    expected = {f"flow:{i + 1}:{version}:{STEP}" for i in range(n)}
    counts = Counter(key for _, _, key in receiver.received)
    last = max((t for t, _, _ in receiver.received), default=t0)
    span = (last if len(receiver.keys) >= n else done_at) - t0
    statuses = dict(await rows(url, "SELECT status, count(*) FROM delivery GROUP BY status"))
    enrollments = dict(await rows(url, "SELECT status, count(*) FROM enrollment GROUP BY status"))
    return {
        "instances": instances,
        "n": n,
        "seconds": span,
        "rate": len(receiver.keys & expected) / span if span > 0 else 0.0,
        "first_after": min((t for t, _, _ in receiver.received), default=t0) - t0,
        "received": len(receiver.received),
        "distinct": len(receiver.keys),
        "missing": len(expected - receiver.keys),
        "unexpected": len(receiver.keys - expected),
        "duplicates": sum(count - 1 for count in counts.values() if count > 1),
        "by_instance": dict(Counter(instance for _, instance, _ in receiver.received)),
        "server_cpu_s": cpu,
        "pg_backend_cpu_s": pg_cpu,
        "bench_cpu_s": own.ru_utime + own.ru_stime - own_before.ru_utime - own_before.ru_stime,
        "deliveries": statuses,
        "enrollments": enrollments,
        "max_delivery_attempts": await scalar(url, "SELECT max(attempts) FROM delivery"),
        "machine_busy": (ticks_after[0] - ticks_before[0]) / max(ticks_after[1] - ticks_before[1], 1),
        "load_before": load_before,
        "load_after": load_after,
    }


def report(one: dict, two: dict, url: str) -> None:
    def per_send(seconds: float, result: dict) -> str:
        return f"{1000 * seconds / max(result['distinct'], 1):.2f} ms"

    def loads(result: dict) -> str:
        return f"{result['load_before'][0]:.1f} -> {result['load_after'][0]:.1f}"

    header = ("", "one instance", "two instances", "two / one")
    table_rows = [
        ("due steps (leads)", f"{one['n']:,}", f"{two['n']:,}", ""),
        ("time, all due -> last received", f"{one['seconds']:,.1f} s", f"{two['seconds']:,.1f} s", ""),
        ("sends / s", f"{one['rate']:,.0f}", f"{two['rate']:,.0f}", f"{two['rate'] / one['rate']:.2f}x"),
        ("first message after", f"{one['first_after']:.2f} s", f"{two['first_after']:.2f} s", ""),
        ("received (distinct / all)", f"{one['distinct']:,} / {one['received']:,}",
         f"{two['distinct']:,} / {two['received']:,}", ""),
        ("duplicates", f"{one['duplicates']:,}", f"{two['duplicates']:,}", ""),
        ("sent by instance", fmt_split(one), fmt_split(two), ""),
        ("server CPU per send (all servers)", per_send(sum(one["server_cpu_s"]), one),
         per_send(sum(two["server_cpu_s"]), two), ""),
        ("PostgreSQL backends' CPU per send", per_send(one["pg_backend_cpu_s"], one),
         per_send(two["pg_backend_cpu_s"], two), ""),
        ("receiver (this process) CPU per send", per_send(one["bench_cpu_s"], one),
         per_send(two["bench_cpu_s"], two), ""),
        ("server CPU / wall time", cpu_share(one), cpu_share(two), ""),
        ("machine CPU busy (both cores, everyone)", f"{one['machine_busy']:.0%}", f"{two['machine_busy']:.0%}", ""),
        ("load average (1 min) before -> after", loads(one), loads(two), ""),
    ]  # fmt: skip
    print()
    print(f"machine: {machine()['nproc']} CPUs, Python {machine()['python']}; {database_name(url)}; webhook channel")
    print(table(header, table_rows))
    problems = []
    for result in (one, two):
        label = f"{result['instances']} instance(s)"
        if result["missing"] or result["unexpected"] or result["duplicates"]:
            problems.append(f"{label}: {result['missing']} missing, {result['unexpected']} unexpected, "
                            f"{result['duplicates']} duplicates")  # fmt: skip
        if result["deliveries"] != {"sent": result["n"]} or result["enrollments"] != {"done": result["n"]}:
            problems.append(f"{label}: deliveries {result['deliveries']}, enrollments {result['enrollments']}")
    for problem in problems:
        print("CHECK FAILED:", problem)
    if not problems:
        print("checks: every step sent exactly once (receiver and database agree), every enrollment done")


def fmt_split(result: dict) -> str:
    return " / ".join(f"{name} {count:,}" for name, count in sorted(result["by_instance"].items()))


def cpu_share(result: dict) -> str:
    return " + ".join(f"{cpu / result['seconds']:.2f}" for cpu in result["server_cpu_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=20_000, help="due steps, one lead each (default 20,000)")
    parser.add_argument(
        "--pg",
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/kindling_bench",
        help="the PostgreSQL database (its name must contain 'bench'; it is reset)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on a phase after this many seconds")
    parser.add_argument("--quick", action="store_true", help="2,000 leads (under a minute a phase)")
    args = parser.parse_args()
    if args.quick:
        args.leads = 2_000
    ensure_database(args.pg)
    results = []
    for instances in (1, 2):
        log(f"{instances} instance(s): {args.leads:,} due steps on {database_name(args.pg)}")
        result = asyncio.run(phase(args.pg, args.leads, instances, args.timeout))
        log(f"  {result['distinct']:,} sent in {result['seconds']:.1f} s = {result['rate']:,.0f}/s")
        phase_line(f"{instances}-instance", result)
        results.append(result)
    report(*results, args.pg)


if __name__ == "__main__":
    main()
