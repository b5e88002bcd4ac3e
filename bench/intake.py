"""Intake alone: CPU per inbound taken in, in this process, without HTTP, the inbox or the replies' sends.

    .venv/bin/python bench/intake.py [--pg URL] [--updates 2000] [--rounds 3] [--users 2000] [--statements]
                                     [--profile FILE]

`bench/inbound.py` measures a whole server; its "CPU per update taken in" also holds the answers, the
inbox and the replies sent meanwhile (paced at 30/s, so the longer intake takes, the more of them). This
measures what intake itself costs. It builds the app as `kindling serve` does (the shipped templates and
flows, the benchmark settings of bench/harness.py, Telegram on; nothing is sent) on a fresh database
(SQLite in a temporary folder, or PostgreSQL with --pg; the name must contain "bench"), makes the same
Telegram updates as bench/inbound.py (`--users` people) and hands them to intake the way the inbox does:
chunks of 50, as many chunks at once as intake has writers (one on SQLite, four on PostgreSQL). After a
warm-up of 200, each round takes in `--updates` and prints the CPU per inbound of the event loop's thread
and of the whole process (SQLite's statements run in aiosqlite's thread), the rate, the statements sent
per inbound (`--statements`: by kind) and inbounds that failed. `--profile FILE`: cProfile of the rounds
with the thread's CPU clock. The first round makes most of the leads; later rounds find more of them.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web  # noqa: E402
from harness import CONFIG, ROOT, SECRET, TOKEN, ensure_database, fresh_folder, fresh_schema, remove  # noqa: E402
from inbound import Updates  # noqa: E402
from sqlalchemy import event  # noqa: E402

from bot.app import create_app  # noqa: E402
from bot.channels.telegram_plain import plain_message  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.intake.inbox import CHUNK  # noqa: E402
from bot.intake.intake import Intake  # noqa: E402
from bot.services import SERVICES  # noqa: E402

WARM_UP = 200


class Statements:
    """Statements sent to the database, by kind ("INSERT INTO message", "SELECT FROM lead", ...)."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.counts: Counter[str] = Counter()
        event.listen(engine.sync_engine, "before_cursor_execute", self._count)

    def _count(self, _conn, _cursor, statement: str, _params, _context, executemany: bool) -> None:  # type: ignore[no-untyped-def]
        words = statement.split()
        if words[0] == "SELECT" and "FROM" in words:
            kind = "SELECT FROM " + words[words.index("FROM") + 1]
        else:
            kind = " ".join(words[:3])
        self.counts[kind + (" (executemany)" if executemany else "")] += 1


async def take_in(intake: Intake, updates: Updates, count: int) -> tuple[dict, Counter[str]]:
    """Hand `count` updates to intake in chunks, `intake.writers` chunks at once; the CPU and time it took."""
    now = datetime.now(UTC)
    held = [plain_message(json.loads(updates.next()), now) for _ in range(count)]
    failed: Counter[str] = Counter()

    async def feed() -> None:
        while held:
            chunk, held[:] = held[:CHUNK], held[CHUNK:]
            for outcome in await asyncio.gather(*(intake.receive(i) for i in chunk), return_exceptions=True):
                if isinstance(outcome, Exception):
                    failed[str(outcome).splitlines()[0][:100]] += 1

    thread, process, wall = time.thread_time(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(feed() for _ in range(intake.writers)))
    figures = {
        "thread_cpu_s": time.thread_time() - thread,
        "process_cpu_s": time.process_time() - process,
        "wall_s": time.perf_counter() - wall,
    }
    return figures, failed


async def main(args: argparse.Namespace) -> None:
    folder = fresh_folder("kindling-intake-bench-")
    url = args.pg or f"sqlite+aiosqlite:///{folder}/kindling.db"
    try:
        ensure_database(url)
        await fresh_schema(url)
        config = folder / "config.toml"
        config.write_text(CONFIG, encoding="utf-8")
        env = {
            "KINDLING_DATABASE_URL": url,
            "KINDLING_TELEGRAM_TOKEN": TOKEN,
            "KINDLING_TELEGRAM_SECRET": SECRET,
            "KINDLING_TELEGRAM_API_URL": "http://127.0.0.1:9",  # never called: no site, no ticks, no sends
            "KINDLING_CONFIG": str(config),
            "KINDLING_TEMPLATES": str(ROOT / "templates"),
            "KINDLING_SECRET_KEY": "bench-secret-key",
        }
        app = create_app(load_settings(config, env), ticks=False)
        runner = web.AppRunner(app)
        await runner.setup()  # the app's start-up (flows loaded, secret key), without listening
        try:
            await rounds(args, app[SERVICES])
        finally:
            await runner.cleanup()
    finally:
        remove(folder)


async def rounds(args: argparse.Namespace, services) -> None:  # type: ignore[no-untyped-def]
    intake, updates = services.intake, Updates(args.users)
    statements = Statements(services.sessions.kw["bind"])
    await take_in(intake, updates, WARM_UP)
    profiler = cProfile.Profile(time.thread_time) if args.profile else None
    for number in range(1, args.rounds + 1):
        statements.counts.clear()
        if profiler is not None:
            profiler.enable()
        figures, failed = await take_in(intake, updates, args.updates)
        if profiler is not None:
            profiler.disable()
        n = args.updates
        print(
            f"round {number}: {n} inbounds, CPU per inbound {figures['thread_cpu_s'] / n * 1000:.2f} ms"
            f" (event loop's thread), {figures['process_cpu_s'] / n * 1000:.2f} ms (process);"
            f" {n / figures['wall_s']:.0f}/s; {sum(statements.counts.values()) / n:.2f} statements per inbound;"
            f" failed: {dict(failed) or 0}",
            flush=True,
        )
        if args.statements:
            for kind, count in statements.counts.most_common():
                print(f"    {count / n:6.3f}  {kind}")
    if profiler is not None:
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default="", help="PostgreSQL instead of SQLite (a database name with 'bench')")
    parser.add_argument("--updates", type=int, default=2_000, help="inbounds per round (default 2,000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds after the warm-up (default 3)")
    parser.add_argument("--users", type=int, default=2_000, help="different Telegram users sending")
    parser.add_argument("--statements", action="store_true", help="list the statements per inbound by kind")
    parser.add_argument("--profile", default="", help="write a cProfile of the rounds here (thread CPU clock)")
    asyncio.run(main(parser.parse_args()))
