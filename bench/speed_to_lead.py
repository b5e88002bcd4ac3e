"""Speed-to-lead under load: a warm lead's card in the operators' group, with and without a nurture backlog.

    .venv/bin/python bench/speed_to_lead.py [--backlog 10000] [--warm 40] [--every 4] [--pg URL] [--quick]

`python -m bot serve` runs with Telegram enabled, an operators' group (KINDLING_OPERATORS_CHAT) and its Bot
API pointed at a fake one that enforces Telegram's limits (fake_bot_api.py --limits: 30 messages/s overall,
1/s per private chat, 20/min per group; 429 with retry_after beyond them). Two phases in this one run, each
on a fresh database and a fresh server and fake:

  * baseline, no backlog: nothing else to send.
  * backlog: `--backlog` pending nurture deliveries (priority 2, due now, one lead and Telegram conversation
    each) are bulk-inserted before the server starts, so its sender is busy with nurture throughout; the
    warm leads start once the fake has accepted 60 of them.

In each phase `--warm` new leads write "Hi, can I talk to a human please?" to the bot (a Telegram update
POSTed to /webhooks/telegram), one every `--every` seconds (20/min is the group's limit). That is a warm
signal: Kindling opens a handoff, posts the lead's card to the operators' group (sendMessage to the group)
and sends the lead "a human is coming" (a system delivery, priority 1). Measured, from the moment the
update is POSTed to the moment the fake Bot API receives the message (both on this machine's clock):

  * card latency: to the operators' group (the figure the issue sets: p50 <= 1 s, p99 <= 5 s);
  * notice latency: the lead's "a human is coming";
  * the nurture rate the fake accepted while the warm leads came in (how busy the sender was).

Checks at the end of every run: each warm lead got exactly one card and one notice, every update was
answered 200, no nurture message was accepted twice, no delivery row is dead. Kindling's own record of the
card delay (the handoff_notified event's seconds_since_warm) is shown next to the measured one.
Each phase prints one JSON line on stdout; the table follows. `--quick`: 1,000 backlog, 5 warm leads, 2 s apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from harness import (  # noqa: E402
    OPERATORS_CHAT,
    SECRET,
    bot_api_calls,
    database_name,
    ensure_database,
    fresh_folder,
    fresh_schema,
    load_backlog,
    log,
    machine,
    ms,
    percentile,
    phase_line,
    remove,
    rows,
    server_env,
    start_fake_bot_api,
    start_kindling,
    table,
)

FIRST_WARM_USER = 9_000_000_000
WARM_TEXT = "Hi, can I talk to a human please?"
BUSY_AFTER = 60  # nurture messages accepted before the warm leads start (the sender is busy by then)
LATE = 60.0  # seconds to wait for the last warm lead's card and notice


def warm_update(index: int) -> dict:
    user_id = FIRST_WARM_USER + index
    name = warm_name(index)
    return {
        "update_id": 800_000_000 + index,
        "message": {
            "message_id": 1,
            "from": {"id": user_id, "is_bot": False, "first_name": name, "language_code": "en"},
            "chat": {"id": user_id, "first_name": name, "type": "private"},
            "date": int(time.time()),
            "text": WARM_TEXT,
        },
    }


def warm_name(index: int) -> str:
    return f"Warm{index:04d}"


async def wait_for_nurture(fake_url: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = await bot_api_calls(fake_url)
        if sum(1 for c in calls if c["status"] == 200 and c["text"].startswith("bench nurture ")) >= count:
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"the server did not start sending its backlog within {timeout:.0f} s")


async def send_warm_leads(base: str, count: int, every: float) -> tuple[dict[int, float], Counter]:
    """POST the warm updates `every` seconds apart; the time each was POSTed, and the answers' statuses."""
    posted: dict[int, float] = {}
    statuses: Counter = Counter()
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(index: int) -> None:
            posted[index] = time.time()
            try:
                async with session.post(f"{base}/webhooks/telegram", json=warm_update(index), headers=headers) as r:
                    await r.read()
                    statuses[r.status] += 1
            except (aiohttp.ClientError, TimeoutError):
                statuses[0] += 1

        tasks = []
        for index in range(count):
            await asyncio.sleep(max(0.0, start + index * every - loop.time()))
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
    return posted, statuses


async def wait_for_cards(fake_url: str, count: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        calls = await bot_api_calls(fake_url)
        sent = [c for c in calls if c["method"] == "sendMessage" and c["status"] == 200]
        cards = {c["text"] for c in sent if c["chat_id"] == str(OPERATORS_CHAT)}
        notices = {c["chat_id"] for c in sent if int(c["chat_id"]) >= FIRST_WARM_USER}
        if len(cards) >= count and len(notices) >= count:
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(2.0)  # late duplicates
    return await bot_api_calls(fake_url)


def analyse(calls: list[dict], posted: dict[int, float], window: tuple[float, float]) -> dict:
    ok = [c for c in calls if c["method"] == "sendMessage" and c["status"] == 200]
    card_latency, notice_latency, cards_per_lead, notices_per_lead = [], [], Counter(), Counter()
    for index, at in posted.items():
        name, chat = warm_name(index), str(FIRST_WARM_USER + index)
        cards = [c for c in ok if c["chat_id"] == str(OPERATORS_CHAT) and f": {name} (" in c["text"]]
        notices = [c for c in ok if c["chat_id"] == chat]
        cards_per_lead[index], notices_per_lead[index] = len(cards), len(notices)
        if cards:
            card_latency.append(min(c["t"] for c in cards) - at)
        if notices:
            notice_latency.append(min(c["t"] for c in notices) - at)
    nurture = [c for c in ok if c["text"].startswith("bench nurture ")]
    in_window = [c for c in nurture if window[0] <= c["t"] <= window[1]]
    refused = [c for c in calls if c["method"] == "sendMessage" and c["status"] == 429]
    return {
        "warm": len(posted),
        "cards": sum(cards_per_lead.values()),
        "leads_without_card": sum(1 for n in cards_per_lead.values() if n == 0),
        "leads_with_two_cards": sum(1 for n in cards_per_lead.values() if n > 1),
        "leads_without_notice": sum(1 for n in notices_per_lead.values() if n == 0),
        "leads_with_two_notices": sum(1 for n in notices_per_lead.values() if n > 1),
        "card_p50_s": percentile(card_latency, 50),
        "card_p99_s": percentile(card_latency, 99),
        "card_max_s": max(card_latency) if card_latency else None,
        "notice_p50_s": percentile(notice_latency, 50),
        "notice_p99_s": percentile(notice_latency, 99),
        "notice_max_s": max(notice_latency) if notice_latency else None,
        "nurture_rate_during": len(in_window) / (window[1] - window[0]) if window[1] > window[0] else None,
        "nurture_accepted": len(nurture),
        "nurture_doubled": sum(1 for n in Counter(c["text"] for c in nurture).values() if n > 1),
        "refused_429": len(refused),
    }


async def run_phase(url: str, backlog: int, args: argparse.Namespace) -> dict:
    name = f"{'backlog' if backlog else 'no backlog'}, {database_name(url).split(' ')[0]}"
    ensure_database(url)
    await fresh_schema(url)
    if backlog:
        await load_backlog(url, backlog, list(range(backlog)))
    fake, fake_url = await start_fake_bot_api("--limits")
    folder = fresh_folder("kindling-stl-")
    server = None
    try:
        server, base = await start_kindling(server_env(url, folder, fake_url, OPERATORS_CHAT))
        if backlog:
            log(f"{name}: waiting for the sender to get busy with the backlog")
            await wait_for_nurture(fake_url, BUSY_AFTER)
        log(f"{name}: {args.warm} warm leads, one every {args.every:g} s")
        started = time.time()
        posted, statuses = await send_warm_leads(base, args.warm, args.every)
        calls = await wait_for_cards(fake_url, args.warm, LATE)
        ended = max(posted.values()) + args.every
    finally:
        if server is not None:
            await server.stop()
        await fake.stop()
        remove(folder)
    result = analyse(calls, posted, (started, ended))
    events = await rows(url, "SELECT payload FROM event WHERE type = 'handoff_notified'")
    payloads = [json.loads(payload) if isinstance(payload, str) else payload for (payload,) in events]
    recorded = [payload["seconds_since_warm"] for payload in payloads if payload["via"] == "telegram"]
    result.update(
        phase=name,
        database=database_name(url),
        backlog=backlog,
        answers=dict(statuses),
        recorded_card_p50_s=percentile(recorded, 50),
        recorded_card_p99_s=percentile(recorded, 99),
        delivery_statuses=dict(await rows(url, "SELECT status, count(*) FROM delivery GROUP BY status")),
    )
    phase_line(name, result)
    return result


def report(results: list[dict]) -> bool:
    print()
    m = machine()
    print(f"machine: {m['nproc']} CPUs, Python {m['python']}")
    print(f"{results[0]['warm']} warm leads per phase; latency from the update's POST to the Bot API receiving it")
    header = ("", *(r["phase"] for r in results))
    body = [
        ("nurture backlog at start", *(f"{r['backlog']:,}" for r in results)),
        ("nurture accepted / s meanwhile", *(f"{r['nurture_rate_during']:.1f}" for r in results)),
        ("card to operators: p50", *(ms(r["card_p50_s"]) for r in results)),
        ("card to operators: p99", *(ms(r["card_p99_s"]) for r in results)),
        ("card to operators: max", *(ms(r["card_max_s"]) for r in results)),
        ("  as Kindling recorded it: p50", *(ms(r["recorded_card_p50_s"]) for r in results)),
        ("  as Kindling recorded it: p99", *(ms(r["recorded_card_p99_s"]) for r in results)),
        ('lead\'s "a human is coming": p50', *(ms(r["notice_p50_s"]) for r in results)),
        ('lead\'s "a human is coming": p99', *(ms(r["notice_p99_s"]) for r in results)),
        ("429 answers from the fake", *(f"{r['refused_429']:,}" for r in results)),
    ]
    print(table(header, body))
    problems = []
    for r in results:
        bad = [
            f"{r[key]} {label}"
            for key, label in (
                ("leads_without_card", "leads without a card"),
                ("leads_with_two_cards", "leads with two cards"),
                ("leads_without_notice", "leads without a notice"),
                ("leads_with_two_notices", "leads with two notices"),
                ("nurture_doubled", "nurture messages accepted twice"),
            )
            if r[key]
        ]
        if r["answers"] != {200: r["warm"]}:
            bad.append(f"webhook answers {r['answers']}")
        if r["delivery_statuses"].get("dead"):
            bad.append(f"{r['delivery_statuses']['dead']} dead deliveries")
        problems += [f"{r['phase']}: {', '.join(bad)}"] if bad else []
    for problem in problems:
        print("CHECK FAILED:", problem)
    if not problems:
        print("checks: one card and one notice per warm lead, every update answered 200, no nurture sent twice")
    return not problems


async def main_async(args: argparse.Namespace) -> list[dict]:
    folder = fresh_folder("kindling-stl-db-")
    results = []
    try:
        for target in ["sqlite", *([args.pg] if args.pg else [])]:
            for backlog in (0, args.backlog):
                url = f"sqlite+aiosqlite:///{folder / f'kindling-{backlog}.db'}" if target == "sqlite" else target
                results.append(await run_phase(url, backlog, args))
    finally:
        remove(folder)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=10_000, help="pending nurture deliveries (default 10,000)")
    parser.add_argument("--warm", type=int, default=40, help="warm leads per phase (default 40)")
    parser.add_argument("--every", type=float, default=4.0, help="seconds between warm leads (default 4)")
    parser.add_argument("--pg", default="", help="also run on this PostgreSQL database (name with 'bench')")
    parser.add_argument("--quick", action="store_true", help="1,000 backlog, 5 warm leads 2 s apart")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.backlog, args.warm, args.every = 1_000, 5, 2.0
    results = asyncio.run(main_async(args))
    ok = report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
