"""Inbound benchmark: Telegram webhook updates into `kindling serve`, against a bare aiohttp JSON echo server.

    .venv/bin/python bench/inbound.py [--updates 2000] [--rate 500] [--seconds 10] [--pg URL] [--quick]

Every target is its own child process on 127.0.0.1, driven by the same load generator in this process
(aiohttp client, one TCPConnector limited to 40 connections) in this one invocation:

  * echo (baseline): a bare aiohttp app that answers each POST with its JSON body echoed; no storage.
  * Kindling: `python -m bot serve` on a fresh database (SQLite, and PostgreSQL with --pg), Telegram enabled
    with a webhook secret and its Bot API pointed at a fake one (fake_bot_api.py, no limits), shipped
    templates and flows, quiet hours off. Each update is stored in one transaction (lead, identity,
    conversation, event, message, the bot's reply as an outbox row) before the 200, keyed by update_id.
    The replies are sent after the answer, paced at about 30/s, as in production; they are not waited for.

The updates are realistic Telegram `message` updates: private chats from `--users` different people
(first names, language codes), ordinary texts without handoff or opt-out words, distinct update_ids, each
POSTed to /webhooks/telegram with X-Telegram-Bot-Api-Secret-Token. Phases, per target:

  1. warm-up: 200 updates, closed loop (not counted in the figures).
  2. throughput (closed loop): 40 workers each POST the next update as soon as the last was answered,
     `--updates` in all; the figure is updates answered 200 per second, and the latency percentiles.
  3. latency (open loop): `--rate` updates/s offered for `--seconds`, each scheduled by the clock whatever
     the answers; latency counts from the scheduled send time, so a server that falls behind is charged
     for the queueing (no coordinated omission). Requests wait for one of the 40 connections. A request
     not answered within 60 s (waiting for a connection included) is given up and counted as timed out:
     the run is bounded in time even when a target falls far behind.

Checks at the end of every Kindling run: every update answered 200 is stored exactly once (one Event with
dedup_key telegram:update:<id> and one inbound Message each), no update is stored twice, and no answer
was an error (4xx/5xx). Updates the generator gave up on are reported (stored or not), not failed.
Each phase prints one JSON line on stdout; the table follows. `--quick`: 300 updates, 2 s at the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from harness import (  # noqa: E402
    SECRET,
    Child,
    database_name,
    ensure_database,
    free_port,
    fresh_folder,
    fresh_schema,
    log,
    machine,
    ms,
    percentile,
    phase_line,
    remove,
    rows,
    scalar,
    server_env,
    start_fake_bot_api,
    start_kindling,
    table,
)

from storage.db import inbox_url  # noqa: E402

CONNECTIONS = 40
WARM_UP = 200
TIMEOUT = 60.0  # seconds before the load generator gives up on a request (counted as "timed out")
FIRST_USER = 700_000_000
FIRST_UPDATE = 400_000_000
NAMES = ("Ana", "Ben", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena", "Mia")
LANGUAGES = ("en", "en", "de", "ru", "es", "pt-br", None)
TEXTS = (
    "Hi! I saw your ad, what do you do exactly?",
    "hello",
    "Do you work with small teams?",
    "Is there a free trial?",
    "We use spreadsheets for this today, would your tool replace them?",
    "thanks",
    "How long does it take to set up?",
    "Can it export to CSV?",
    "ok, sounds good",
    "Do you have an API?",
    "What about data privacy, where is it hosted?",
    "I'll think about it",
)


# --- the updates ---------------------------------------------------------------------------------


class Updates:
    """Telegram message updates from `users` people, in a random order, with distinct update_ids."""

    def __init__(self, users: int, seed: int = 11) -> None:
        self.users = users
        self.rng = random.Random(seed)
        self.next_update = FIRST_UPDATE
        self.message_ids = [0] * users

    def next(self) -> bytes:
        index = self.rng.randrange(self.users)
        self.message_ids[index] += 1
        user_id = FIRST_USER + index
        name = NAMES[index % len(NAMES)]
        user = {"id": user_id, "is_bot": False, "first_name": name}
        language = LANGUAGES[index % len(LANGUAGES)]
        if language:
            user["language_code"] = language
        update = {
            "update_id": self.next_update,
            "message": {
                "message_id": self.message_ids[index],
                "from": user,
                "chat": {"id": user_id, "first_name": name, "type": "private"},
                "date": int(time.time()),
                "text": self.rng.choice(TEXTS),
            },
        }
        self.next_update += 1
        return json.dumps(update).encode()

    @property
    def sent(self) -> int:
        return self.next_update - FIRST_UPDATE


# --- the load generator --------------------------------------------------------------------------


class Load:
    """POSTs updates to one target over at most CONNECTIONS connections; records status and latency."""

    def __init__(self, url: str, updates: Updates) -> None:
        self.url, self.updates = url + "/webhooks/telegram", updates
        self.headers = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET}
        self.session: aiohttp.ClientSession | None = None
        self.ok: set[int] = set()  # update_ids answered 200

    async def __aenter__(self) -> Load:
        connector = aiohttp.TCPConnector(limit=CONNECTIONS)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)  # counting the wait for a free connection
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def post(self, body: bytes) -> int:
        assert self.session is not None
        try:
            async with self.session.post(self.url, data=body, headers=self.headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        if status == 200:
            self.ok.add(json.loads(body)["update_id"])
        return status

    async def closed(self, count: int) -> dict:
        """CONNECTIONS workers, each sending the next update as soon as the previous one is answered."""
        latencies: list[float] = []
        errors: dict[int, int] = {}
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                body = self.updates.next()
                started = time.perf_counter()
                status = await self.post(body)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors[status] = errors.get(status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        elapsed = time.perf_counter() - started
        return summary("closed", count, elapsed, latencies, errors)

    async def open(self, rate: float, seconds: float) -> dict:
        """`rate` updates/s scheduled by the clock for `seconds`; latency from each scheduled time."""
        total = round(rate * seconds)
        latencies: list[float] = []
        errors: dict[int, int] = {}
        loop = asyncio.get_running_loop()

        async def one(body: bytes, scheduled: float) -> None:
            status = await self.post(body)
            latencies.append(loop.time() - scheduled)
            if status != 200:
                errors[status] = errors.get(status, 0) + 1

        tasks = []
        start = loop.time() + 0.05
        for index in range(total):
            scheduled = start + index / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(self.updates.next(), scheduled)))
        late_start = loop.time() - (start + (total - 1) / rate)
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
        result = summary("open", total, elapsed, latencies, errors)
        result["offered_rate"] = rate
        result["generator_lag_s"] = late_start  # how late the last request was issued (generator overload)
        return result


def summary(kind: str, count: int, elapsed: float, latencies: list[float], errors: dict[int, int]) -> dict:
    answered = count - sum(errors.values())
    return {
        "loop": kind,
        "updates": count,
        "ok": answered,
        "errors": errors,
        "elapsed_s": elapsed,
        "rate": answered / elapsed if elapsed else None,
        "p50_s": percentile(latencies, 50),
        "p90_s": percentile(latencies, 90),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies) if latencies else None,
    }


# --- the echo baseline (a child process) ---------------------------------------------------------


def echo_server(port: int) -> None:
    """The baseline: POST /webhooks/telegram answers the JSON body echoed, nothing stored."""
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await request.json())

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/webhooks/telegram", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("listening", file=sys.stderr, flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


async def start_echo() -> tuple[Child, str]:
    port = free_port()
    child = await Child.start("echo", [sys.executable, str(Path(__file__).resolve()), "--echo-port", str(port)])
    await child.wait_for_line("listening")
    return child, f"http://127.0.0.1:{port}"


# --- one target ----------------------------------------------------------------------------------


async def drive(
    name: str, server: Child, url: str, args: argparse.Namespace, updates: Updates, database: str | None = None
) -> dict:
    """Warm-up, closed loop, open loop against one running target; CPU and memory of its process.

    With `database` (Kindling), each phase also waits until intake has taken in everything the phase left
    in the inbox, and counts that time and the server's CPU until then.
    """
    async with Load(url, updates) as load:
        log(f"{name}: warm-up, {WARM_UP} updates")
        await load.closed(WARM_UP)
        await taken_in(database, time.perf_counter())
        phases = {}
        for phase in ("closed", "open"):
            cpu0, started = server.cpu_seconds(), time.perf_counter()
            if phase == "closed":
                log(f"{name}: closed loop, {args.updates:,} updates over {CONNECTIONS} connections")
                result = await load.closed(args.updates)
            else:
                log(f"{name}: open loop, {args.rate:g} updates/s for {args.seconds:g} s")
                result = await load.open(args.rate, args.seconds)
            cpu1 = server.cpu_seconds()
            result["taken_in_s"] = await taken_in(database, started)
            cpu2 = server.cpu_seconds()
            result["server_cpu_s"] = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None
            result["server_cpu_taken_in_s"] = (cpu2 - cpu0) if cpu0 is not None and cpu2 is not None else None
            phase_line(f"{name} {phase}", result)
            phases[phase] = result
        ok = load.ok
    return {"target": name, **phases, "rss_mb": server.rss_mb(), "ok_ids": ok}


async def taken_in(database: str | None, since: float) -> float | None:
    """Wait until the inbox is empty (intake took in every answered update); seconds since `since`.

    None without a database (the echo server). Reads without taking SQLite's write lock, as the server's
    own engine would (BEGIN IMMEDIATE) at every poll.
    """
    if database is None:
        return None
    while await inbox_size(database):
        await asyncio.sleep(0.1)
    return time.perf_counter() - since


async def inbox_size(database: str) -> int:
    if database.startswith("sqlite"):
        path = inbox_url(database).split(":///", 1)[1]  # a file of its own beside the database

        def count() -> int:
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
                    return connection.execute("SELECT count(*) FROM inbox").fetchone()[0]
            except sqlite3.OperationalError:  # code from before the inbox: answered means taken in
                return 0

        return await asyncio.to_thread(count)
    try:
        return int(await scalar(database, "SELECT count(*) FROM inbox") or 0)
    except Exception:  # no inbox table: code from before the inbox
        return 0


async def run_echo(args: argparse.Namespace) -> dict:
    server, url = await start_echo()
    try:
        result = await drive("echo", server, url, args, Updates(args.users))
    finally:
        await server.stop()
    result.pop("ok_ids")
    return result


async def run_kindling(url: str, args: argparse.Namespace) -> dict:
    ensure_database(url)
    await fresh_schema(url)
    fake, fake_url = await start_fake_bot_api()
    folder = fresh_folder("kindling-inbound-")
    server = None
    name = f"Kindling on {database_name(url).split(' ')[0]}"
    updates = Updates(args.users)
    try:
        server, base = await start_kindling(server_env(url, folder, fake_url))
        result = await drive(name, server, base, args, updates, url)
    finally:
        if server is not None:
            await server.stop()
        await fake.stop()
        remove(folder)
    result["database"] = database_name(url)
    result["checks"] = await stored_checks(url, result.pop("ok_ids"), updates.sent)
    result["outbox"] = dict(await rows(url, "SELECT status, count(*) FROM delivery GROUP BY status"))
    phase_line(f"{name} checks", {"checks": result["checks"], "outbox": result["outbox"]})
    return result


async def stored_checks(url: str, ok: set[int], sent: int) -> dict:
    """Each update answered 200 stored exactly once, as one event and one inbound message."""
    keys = await rows(url, "SELECT dedup_key, count(*) FROM event WHERE dedup_key LIKE 'telegram:update:%' GROUP BY 1")
    stored = {int(key.rsplit(":", 1)[1]): count for key, count in keys}
    inbound = await scalar(url, "SELECT count(*) FROM message WHERE direction = 'in'")
    return {
        "sent": sent,
        "answered_200": len(ok),
        "events": sum(stored.values()),
        "missing": len(ok - set(stored)),
        "doubled": sum(1 for count in stored.values() if count > 1),
        "stored_unanswered": len(set(stored) - ok),
        "inbound_messages": inbound,
    }


# --- the report ----------------------------------------------------------------------------------


def report(results: list[dict], args: argparse.Namespace) -> bool:
    print()
    print(f"machine: {results[0]['machine']['nproc']} CPUs, Python {results[0]['machine']['python']}")
    echo = results[0]
    header = ("", *(r["target"] for r in results))
    ratio_row = ("throughput / echo", "1.00x")
    ratio_row += tuple(f"{r['closed']['rate'] / echo['closed']['rate']:.2f}x" for r in results[1:])
    body = [
        ("closed loop: updates answered", *(f"{r['closed']['ok']:,}" for r in results)),
        ("closed loop: updates / s", *(f"{r['closed']['rate']:,.0f}" for r in results)),
        ratio_row,
        ("closed loop: p50 latency", *(ms(r["closed"]["p50_s"]) for r in results)),
        ("closed loop: p99 latency", *(ms(r["closed"]["p99_s"]) for r in results)),
        ("closed loop: server CPU per update answered", *(cpu_per(r["closed"]) for r in results)),
        ("closed loop: all taken in after", *(seconds(r["closed"]["taken_in_s"]) for r in results)),
        ("closed loop: taken in / s", *(per_second(r["closed"]) for r in results)),
        ("closed loop: server CPU per update taken in", *(cpu_per(r["closed"], "taken_in") for r in results)),
        (f"open loop {args.rate:g}/s: answered", *(f"{r['open']['ok']:,}" for r in results)),
        (f"open loop {args.rate:g}/s: achieved / s", *(f"{r['open']['rate']:,.0f}" for r in results)),
        (f"open loop {args.rate:g}/s: p50 latency", *(ms(r["open"]["p50_s"]) for r in results)),
        (f"open loop {args.rate:g}/s: p90 latency", *(ms(r["open"]["p90_s"]) for r in results)),
        (f"open loop {args.rate:g}/s: p99 latency", *(ms(r["open"]["p99_s"]) for r in results)),
        (f"open loop {args.rate:g}/s: max latency", *(ms(r["open"]["max_s"]) for r in results)),
        (f"open loop {args.rate:g}/s: all taken in after", *(seconds(r["open"]["taken_in_s"]) for r in results)),
        (f"open loop {args.rate:g}/s: taken in / s", *(per_second(r["open"]) for r in results)),
        ("server RSS at the end", *(f"{r['rss_mb']:,.0f} MB" if r["rss_mb"] else "-" for r in results)),
    ]
    print(table(header, body))
    problems = []
    for r in results:
        for phase in ("closed", "open"):
            refused = {status: count for status, count in r[phase]["errors"].items() if status}
            if refused:
                problems.append(f"{r['target']}, {phase} loop: answers other than 200: {refused}")
            if r[phase]["errors"].get(0):
                print(f"{r['target']}, {phase} loop: {r[phase]['errors'][0]:,} requests timed out (given up)")
        if "checks" in r:
            c = r["checks"]
            print(f"{r['target']}: outbox after the run {r['outbox']} (replies are paced at ~30/s; not waited for)")
            if c["stored_unanswered"]:
                print(f"{r['target']}: {c['stored_unanswered']:,} updates given up on by the generator were stored")
            if c["missing"] or c["doubled"]:
                problems.append(f"{r['target']}: {c}")
            if c["inbound_messages"] != c["events"]:
                problems.append(f"{r['target']}: {c['inbound_messages']} inbound messages for {c['events']} events")
    for problem in problems:
        print("CHECK FAILED:", problem)
    if not problems:
        print("checks: every update answered 200 is stored exactly once (one event, one inbound message)")
    return not problems


async def main_async(args: argparse.Namespace) -> list[dict]:
    results = [await run_echo(args)]
    folder = fresh_folder("kindling-inbound-db-")
    try:
        results.append(await run_kindling(f"sqlite+aiosqlite:///{folder / 'kindling.db'}", args))
        if args.pg:
            results.append(await run_kindling(args.pg, args))
    finally:
        remove(folder)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=2_000, help="closed loop: updates to send (default 2,000)")
    parser.add_argument("--rate", type=float, default=500.0, help="open loop: updates offered per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="open loop: for this long (default 10)")
    parser.add_argument("--users", type=int, default=2_000, help="different Telegram users sending")
    parser.add_argument("--pg", default="", help="also run Kindling on this PostgreSQL database (name with 'bench')")
    parser.add_argument("--quick", action="store_true", help="300 updates closed, 2 s open, 200 users")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--echo-port", type=int, default=0, help=argparse.SUPPRESS)  # the baseline's child
    args = parser.parse_args()
    if args.echo_port:
        echo_server(args.echo_port)
        return
    if args.quick:
        args.updates, args.seconds, args.users = 300, 2.0, 200
    results = asyncio.run(main_async(args))
    results[0]["machine"] = machine()
    ok = report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    sys.exit(0 if ok else 1)


def cpu_per(phase: dict, until: str = "") -> str:
    cpu = phase.get(f"server_cpu_{until}_s" if until else "server_cpu_s")
    return "-" if cpu is None or not phase["ok"] else f"{cpu / phase['ok'] * 1000:.2f} ms"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def per_second(phase: dict) -> str:
    """Updates taken in per second: from the phase's start until the inbox was empty."""
    return "-" if not phase.get("taken_in_s") else f"{phase['ok'] / phase['taken_in_s']:,.0f}"


if __name__ == "__main__":
    main()
