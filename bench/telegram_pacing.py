"""Telegram pacing benchmark: Kindling's outbox against a fake Bot API that enforces Telegram's send limits.

    .venv/bin/python bench/telegram_pacing.py [--messages 1500] [--pg URL] [--quick]

The fake Bot API (fake_bot_api.py --limits, its own process) accepts at most 30 messages in any 1-second
window overall and 1 per private chat in any 1-second window, and answers anything beyond that with
429 and `parameters.retry_after`, without delivering it. Two workloads, each run against every sender:

  * fan-out: N messages to N different chats (only the overall 30/s binds);
  * per-chat: N messages to N/10 chats, 10 each, in shuffled order (each chat's 1/s binds too).

Senders, all measured in this one invocation on this machine:

  * Kindling: N pending nurture deliveries (priority 2, due now, one lead and Telegram conversation per
    chat) are bulk-inserted into a fresh database, then `python -m bot serve` is started on it with
    KINDLING_TELEGRAM_API_URL pointing at the fake. Its own ticks (dispatch_due every second) and pacing
    (TelegramPacing: in-process on SQLite, the shared budget in the `pace` table on PostgreSQL) send them.
    Nothing else is going on. Run once on SQLite and, with --pg, once on PostgreSQL.
  * naive: a client with 10 concurrent workers and no pacing, sending as fast as the fake answers; on a
    429 a worker waits `retry_after` and sends the same message again.
  * the allowed rate itself: the fewest seconds the limits allow for the same N messages, sent evenly:
    (N - 1) / 30, or (most messages to one chat - 1) / 1 if that is longer.

Measured from the fake's log (time of reception of each call): the span from the first to the last
accepted message, the rate (N - 1) / span as a share of the allowed rate, the 429s as a share of all
sendMessage calls, and the most messages accepted in any 1-second window. Checks at the end of every run:
each of the N messages was accepted exactly once (by its unique text), and for Kindling every delivery
row is `sent` (none pending, dead or skipped).

Each phase prints one JSON line on stdout; the table follows. `--quick` runs N = 300 (a few seconds each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from harness import (  # noqa: E402
    FIRST_CHAT,
    TOKEN,
    Child,
    bot_api_calls,
    database_name,
    ensure_database,
    fresh_folder,
    fresh_schema,
    load_backlog,
    log,
    machine,
    phase_line,
    remove,
    rows,
    server_env,
    start_fake_bot_api,
    start_kindling,
    table,
)

OVERALL, PER_CHAT = 30, 1
NAIVE_WORKERS = 10


def workload(name: str, n: int, seed: int = 7) -> tuple[int, list[int]]:
    """(number of chats, the chat index of each message in send order)."""
    if name == "fan-out":
        return n, list(range(n))
    chats = max(1, n // 10)
    order = [index % chats for index in range(n)]
    random.Random(seed).shuffle(order)
    return chats, order


def allowed_span(n: int, order: list[int]) -> float:
    """The fewest seconds from first to last message under 30/s overall and 1/s per chat, sent evenly."""
    most_to_one_chat = max(Counter(order).values())
    return max((n - 1) / OVERALL, (most_to_one_chat - 1) / PER_CHAT)


def analyse(calls: list[dict], n: int, order: list[int]) -> dict:
    """Figures and checks from the fake's log of sendMessage calls whose text is "bench nurture <i>"."""
    sends = [call for call in calls if call["method"] == "sendMessage" and call["text"].startswith("bench nurture ")]
    accepted = [call for call in sends if call["status"] == 200]
    refused = [call for call in sends if call["status"] == 429]
    other = [call for call in sends if call["status"] not in (200, 429)]
    times = sorted(call["t"] for call in accepted)
    span = times[-1] - times[0] if len(times) > 1 else None
    per_text = Counter(call["text"] for call in accepted)
    expected = {f"bench nurture {i}" for i in range(n)}
    wrong_chat = [
        call for call in accepted if call["chat_id"] != str(FIRST_CHAT + order[int(call["text"].rsplit(" ", 1)[1])])
    ]
    busiest, start = 0, 0
    for end, moment in enumerate(times):  # most accepted in any 1 s window
        while times[start] <= moment - 1.0:
            start += 1
        busiest = max(busiest, end - start + 1)
    gaps = sorted(later - earlier for earlier, later in zip(times, times[1:], strict=False))
    allowed = allowed_span(n, order)
    rate = (len(times) - 1) / span if span else None
    return {
        "accepted": len(accepted),
        "refused_429": len(refused),
        "other_errors": len(other),
        "share_429": len(refused) / len(sends) if sends else None,
        "span_s": span,
        "allowed_span_s": allowed,
        "rate": rate,
        "allowed_rate": (n - 1) / allowed if allowed else None,
        "of_allowed": allowed / span if span else None,
        "busiest_second": busiest,
        "median_gap_s": gaps[len(gaps) // 2] if gaps else None,
        "pauses_over_0_5_s": sum(1 for gap in gaps if gap > 0.5),
        "longest_pause_s": gaps[-1] if gaps else None,
        "missing": len(expected - set(per_text)),
        "doubled": sum(1 for count in per_text.values() if count > 1),
        "wrong_chat": len(wrong_chat),
    }


async def wait_for_sends(fake_url: str, n: int, timeout: float, server: Child | None = None) -> list[dict]:
    """Poll the fake until n distinct bench messages were accepted (or timeout); then 2 s more for late extras."""
    deadline = time.monotonic() + timeout
    last_note = time.monotonic()
    while True:
        calls = await bot_api_calls(fake_url)
        done = {c["text"] for c in calls if c["status"] == 200 and c["text"].startswith("bench nurture ")}
        if len(done) >= n or time.monotonic() > deadline:
            break
        if server is not None and server.process.returncode is not None:
            raise SystemExit(f"the server exited:\n{server.tail()}")
        if time.monotonic() - last_note > 15:
            last_note = time.monotonic()
            log(f"    {len(done):,} of {n:,} accepted")
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)
    return await bot_api_calls(fake_url)


async def run_kindling(url: str, workload_name: str, n: int, timeout: float) -> dict:
    chats, order = workload(workload_name, n)
    ensure_database(url)
    await fresh_schema(url)
    await load_backlog(url, chats, order)
    fake, fake_url = await start_fake_bot_api("--limits")
    folder = fresh_folder("kindling-pacing-")
    server = None
    try:
        server, _ = await start_kindling(server_env(url, folder, fake_url))
        started = time.monotonic()
        calls = await wait_for_sends(fake_url, n, timeout, server)
        elapsed = time.monotonic() - started
        cpu = server.cpu_seconds()
    finally:
        if server is not None:
            await server.stop()
        await fake.stop()
        remove(folder)
    statuses = dict(await rows(url, "SELECT status, count(*) FROM delivery GROUP BY status"))
    figures = analyse(calls, n, order)
    figures.update(
        sender="kindling",
        database=database_name(url),
        workload=workload_name,
        n=n,
        chats=chats,
        delivery_statuses=statuses,
        server_cpu_s=cpu,
        wall_s=elapsed,
    )
    return figures


async def run_naive(workload_name: str, n: int, timeout: float) -> dict:
    """No pacing: NAIVE_WORKERS workers send back to back; a 429 is retried after its retry_after."""
    chats, order = workload(workload_name, n)
    fake, fake_url = await start_fake_bot_api("--limits")
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(n):
        queue.put_nowait(index)
    deadline = time.monotonic() + timeout

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty() and time.monotonic() < deadline:
            index = queue.get_nowait()
            data = {"chat_id": FIRST_CHAT + order[index], "text": f"bench nurture {index}"}
            while time.monotonic() < deadline:
                async with session.post(f"{fake_url}/bot{TOKEN}/sendMessage", json=data) as response:
                    body = await response.json()
                if response.status != 429:
                    break
                await asyncio.sleep(body["parameters"]["retry_after"])

    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(worker(session) for _ in range(NAIVE_WORKERS)))
        calls = await bot_api_calls(fake_url)
    finally:
        await fake.stop()
    figures = analyse(calls, n, order)
    figures.update(sender="naive", database="-", workload=workload_name, n=n, chats=chats)
    return figures


def report(results: list[dict]) -> None:
    print()
    m = results[0]["machine"] if results and "machine" in results[0] else {}
    if m:
        print(f"machine: {m['nproc']} CPUs, Python {m['python']}")
    for workload_name in ("fan-out", "per-chat"):
        runs = [r for r in results if r.get("workload") == workload_name]
        if not runs:
            continue
        first = runs[0]
        print(f"\n{workload_name}: {first['n']:,} messages to {first['chats']:,} chats")
        header = ("", "allowed (30/s, 1/s per chat)", *(label(r) for r in runs))
        body = [
            ("time first to last accepted", f"{first['allowed_span_s']:.1f} s", *(secs(r["span_s"]) for r in runs)),
            ("messages / s", f"{first['allowed_rate']:.1f}", *(num(r["rate"], 1) for r in runs)),
            ("share of the allowed rate", "1.00x", *(times_(r["of_allowed"]) for r in runs)),
            ("429 answers", "0", *(f"{r['refused_429']:,}" for r in runs)),
            ("429 share of sendMessage calls", "0%", *(pct(r["share_429"]) for r in runs)),
            ("most accepted in any 1 s", f"{OVERALL}", *(str(r["busiest_second"]) for r in runs)),
            ("median gap between messages", ms_(1 / OVERALL), *(ms_(r["median_gap_s"]) for r in runs)),
            (
                "pauses over 0.5 s (longest)",
                "0",
                *(f"{r['pauses_over_0_5_s']} ({secs(r['longest_pause_s'])})" for r in runs),
            ),
            ("accepted (distinct messages)", f"{first['n']:,}", *(f"{r['accepted']:,}" for r in runs)),
            ("server CPU time", "-", *(secs(r.get("server_cpu_s")) for r in runs)),
        ]
        print(table(header, body))


def label(result: dict) -> str:
    if result["sender"] == "naive":
        return f"naive ({NAIVE_WORKERS} workers)"
    return f"Kindling on {result['database'].split(' ')[0]}"


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} s"


def pauses(result: dict) -> str:
    return f"{result['pauses_over_0_5_s']} ({secs(result['longest_pause_s'])})"


def ms_(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f} ms"


def num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def times_(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def checks(results: list[dict]) -> bool:
    problems = []
    for r in results:
        name = f"{label(r)}, {r['workload']}"
        if r["missing"] or r["doubled"] or r["wrong_chat"] or r["other_errors"]:
            problems.append(
                f"{name}: {r['missing']} missing, {r['doubled']} sent twice, {r['wrong_chat']} to the wrong chat, "
                f"{r['other_errors']} other errors"
            )
        if r["sender"] == "kindling" and r["delivery_statuses"] != {"sent": r["n"]}:
            problems.append(f"{name}: delivery rows {r['delivery_statuses']}, expected all {r['n']} sent")
    for problem in problems:
        print("CHECK FAILED:", problem)
    if not problems:
        print("checks: every message accepted exactly once, to its chat; every Kindling delivery row is sent")
    return not problems


async def main_async(args: argparse.Namespace) -> list[dict]:
    folder = fresh_folder("kindling-pacing-db-")
    urls = ["sqlite", *([args.pg] if args.pg else [])]
    n = args.messages
    timeout = args.timeout or max(60.0, 4 * n / OVERALL)
    results = []
    try:
        for workload_name in ("fan-out", "per-chat"):
            for url in urls:
                if url == "sqlite":  # a new file for each run
                    url = f"sqlite+aiosqlite:///{folder / f'kindling-{workload_name}.db'}"
                log(f"{workload_name}: Kindling on {database_name(url)}, {n:,} messages")
                result = await run_kindling(url, workload_name, n, timeout)
                phase_line(f"kindling {workload_name}", result)
                results.append(result)
            log(f"{workload_name}: naive sender, {n:,} messages")
            result = await run_naive(workload_name, n, timeout)
            phase_line(f"naive {workload_name}", result)
            results.append(result)
    finally:
        remove(folder)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1500, help="N messages per workload (default 1500)")
    parser.add_argument("--pg", default="", help="also run Kindling on this PostgreSQL database (name with 'bench')")
    parser.add_argument("--quick", action="store_true", help="N = 300: a few seconds per run")
    parser.add_argument("--timeout", type=float, default=0.0, help="give up on a run after this many seconds")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.messages = 300
    results = asyncio.run(main_async(args))
    if results:
        results[0]["machine"] = machine()
    report(results)
    ok = checks(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
