"""WhatsApp pacing benchmark: Kindling's outbox against a fake Graph API that enforces WhatsApp's throughput.

    .venv/bin/python bench/whatsapp_pacing.py [--messages 10000] [--recipients 2000] [--pg URL] [--pair] [--quick]

The fake Graph API (fake_graph_api.py, its own process) accepts at most 80 messages in any 1-second window
per phone number (Meta's default throughput) and answers anything beyond with HTTP 400 and Meta's error
JSON, code 130429 "Rate limit hit", without delivering it. With `--pair` it also enforces WhatsApp's pair
rate limit (one message every 6 s to one person, bursts of up to 45; beyond: 131056). The workload: N
messages to R recipients, N/R each, in shuffled order (default 10,000 to 2,000: 5 each).

Senders, all measured in this one invocation on this machine, each against a fresh fake:

  * Kindling: N pending nurture deliveries (priority 2, due now, one lead and WhatsApp conversation per
    recipient, the lead's last message just now so the 24-hour window is open and they go free-form) are
    bulk-inserted into a fresh database, then `python -m bot serve` is started on it with WhatsApp on and
    KINDLING_GRAPH_API_URL pointing at the fake (Telegram and email off). Its own ticks (dispatch_backlog) and
    pacing (bot/channels/meta.py `Pace`: 80/s per number and a 1 s gap per recipient, in-process on SQLite,
    the shared budgets of storage/pace.py on PostgreSQL) send them. Run once on SQLite and, with --pg,
    once on PostgreSQL.
  * naive: one request after another on one connection, no pacing: the next message is sent as soon as the
    fake answers the last one. On a 130429 or 131056 it sleeps NAIVE_WAIT (0.1 s) and sends the same
    message again, as many times as it takes; any other answer moves on to the next message.
  * the allowed rate itself: the fewest seconds the limits allow for the same N messages, sent evenly:
    (N - 1) / 80 (the pair limit's burst of 45 never binds 5 messages to one person).

Measured from the fake's log (time of reception of each call): the span from the first to the last
accepted message, the rate (N - 1) / span as a share of 80/s, the 130429s (and 131056s) as a share of all
messages calls, and the most messages accepted in any 1-second window. Checks at the end of every run:
each of the N messages was accepted exactly once (by its unique text), to its own recipient, and for
Kindling every delivery row is `sent` (none pending, dead or skipped).

Each phase prints one JSON line on stdout; the table follows. `--quick` runs N = 1,000 to 200 recipients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import aiohttp  # noqa: E402
from harness import (  # noqa: E402
    BENCH,
    Child,
    database_name,
    ensure_database,
    free_port,
    fresh_folder,
    fresh_schema,
    load_backlog,
    log,
    machine,
    phase_line,
    remove,
    rows,
    server_env,
    start_kindling,
    table,
)

from fake_graph import APP_SECRET, PHONE_ID, VERIFY_TOKEN, VERSION, WHATSAPP_TOKEN  # noqa: E402

RATE = 80  # messages a second per phone number, Meta's default
PAIR_INTERVAL, PAIR_BURST = 6.0, 45  # Meta's pair rate limit: one message every 6 s to one person, bursts of 45
FIRST_WA_ID = 16_505_550_000  # recipients' wa_ids (phone numbers without the +)
NAIVE_WAIT = 0.1  # seconds the naive sender waits after a throughput error before sending the same message again
PREFIX = "bench nurture "
CEILING = 100_000  # messages a second for --ceiling runs: a limit that never binds


def workload(n: int, recipients: int, seed: int = 7) -> list[int]:
    """The recipient index of each message in send order: n / recipients each, shuffled."""
    order = [index % recipients for index in range(n)]
    random.Random(seed).shuffle(order)
    return order


def allowed_span(n: int, order: list[int], pair: bool) -> float:
    """The fewest seconds from first to last message under 80/s (and the pair limit), sent evenly."""
    most_to_one = max(Counter(order).values())
    per_person = max(0, most_to_one - PAIR_BURST) * PAIR_INTERVAL if pair else 0.0
    return max((n - 1) / RATE, per_person)


def analyse(calls: list[dict], n: int, order: list[int], pair: bool) -> dict:
    """Figures and checks from the fake's log of messages calls whose text is "bench nurture <i>"."""
    sends = [call for call in calls if call["text"].startswith(PREFIX)]
    accepted = [call for call in sends if call["status"] == 200]
    rate_limited = [call for call in sends if call["code"] == 130429]
    pair_limited = [call for call in sends if call["code"] == 131056]
    other = [call for call in sends if call["status"] != 200 and call["code"] not in (130429, 131056)]
    times = sorted(call["t"] for call in accepted)
    span = times[-1] - times[0] if len(times) > 1 else None
    per_text = Counter(call["text"] for call in accepted)
    expected = {f"{PREFIX}{i}" for i in range(n)}
    wrong = [call for call in accepted if call["to"] != str(FIRST_WA_ID + order[int(call["text"].rsplit(" ", 1)[1])])]
    busiest, start = 0, 0
    for end, moment in enumerate(times):  # most accepted in any 1 s window
        while times[start] <= moment - 1.0:
            start += 1
        busiest = max(busiest, end - start + 1)
    gaps = sorted(later - earlier for earlier, later in zip(times, times[1:], strict=False))
    allowed = allowed_span(n, order, pair)
    return {
        "calls": len(sends),
        "accepted": len(accepted),
        "refused_130429": len(rate_limited),
        "refused_131056": len(pair_limited),
        "other_errors": len(other),
        "share_130429": len(rate_limited) / len(sends) if sends else None,
        "share_131056": len(pair_limited) / len(sends) if sends else None,
        "span_s": span,
        "allowed_span_s": allowed,
        "rate": (len(times) - 1) / span if span else None,
        "allowed_rate": (n - 1) / allowed if allowed else None,
        "of_allowed": allowed / span if span else None,
        "busiest_second": busiest,
        "median_gap_s": gaps[len(gaps) // 2] if gaps else None,
        "pauses_over_0_5_s": sum(1 for gap in gaps if gap > 0.5),
        "longest_pause_s": gaps[-1] if gaps else None,
        "missing": len(expected - set(per_text)),
        "doubled": sum(1 for count in per_text.values() if count > 1),
        "wrong_recipient": len(wrong),
    }


async def start_fake(pair: bool, rate: int = RATE) -> tuple[Child, str]:
    """fake_graph_api.py on a free port; returns it and its base URL (with the version)."""
    port = free_port()
    command = [sys.executable, str(BENCH / "fake_graph_api.py"), "--port", str(port), "--rate", str(rate)]
    if pair:
        command += ["--pair-interval", str(PAIR_INTERVAL), "--pair-burst", str(PAIR_BURST)]
    child = await Child.start("fake Graph API", command)
    await child.wait_for_line("listening")
    return child, f"http://127.0.0.1:{port}"


async def fetch(base: str, path: str) -> object:
    async with aiohttp.ClientSession() as session, session.get(f"{base}{path}") as response:
        return await response.json()


async def wait_for_sends(base: str, n: int, timeout: float, server: Child | None = None) -> list[dict]:
    """Poll the fake until n distinct bench messages were accepted (or timeout); then 2 s more for late extras."""
    deadline = time.monotonic() + timeout
    last_note = time.monotonic()
    while True:
        done = (await fetch(base, f"/_bench/accepted?prefix={PREFIX.replace(' ', '%20')}"))["accepted"]  # type: ignore[index]
        if done >= n or time.monotonic() > deadline:
            break
        if server is not None and server.process.returncode is not None:
            raise SystemExit(f"the server exited:\n{server.tail()}")
        if time.monotonic() - last_note > 15:
            last_note = time.monotonic()
            log(f"    {done:,} of {n:,} accepted")
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)
    return await fetch(base, "/_bench/calls")  # type: ignore[return-value]


CALLS_DIR: Path | None = None  # --calls: where each run's log of calls is written


def save_calls(name: str, calls: list[dict]) -> None:
    if CALLS_DIR is not None:
        CALLS_DIR.mkdir(parents=True, exist_ok=True)
        (CALLS_DIR / f"{name}.json").write_text(json.dumps(calls))


def whatsapp_env(database_url: str, folder: Path, graph_url: str, rate: int = RATE) -> dict:
    """The benchmarks' server settings, with WhatsApp on (pointed at the fake, `rate` a second) and Telegram off."""
    env = server_env(database_url, folder, "http://127.0.0.1:9")
    with (folder / "config.toml").open("a", encoding="utf-8") as config:
        config.write(f"\n[channels.whatsapp]\nmessages_per_second = {rate}\n")
    for key in ("KINDLING_TELEGRAM_TOKEN", "KINDLING_TELEGRAM_SECRET", "KINDLING_TELEGRAM_API_URL"):
        env.pop(key)
    env.update(
        KINDLING_WHATSAPP_TOKEN=WHATSAPP_TOKEN,
        KINDLING_WHATSAPP_PHONE_ID=PHONE_ID,
        KINDLING_META_APP_SECRET=APP_SECRET,
        KINDLING_META_VERIFY_TOKEN=VERIFY_TOKEN,
        KINDLING_GRAPH_API_URL=graph_url,
    )
    return env


async def run_kindling(url: str, n: int, recipients: int, pair: bool, timeout: float, rate: int = RATE) -> dict:
    order = workload(n, recipients)
    ensure_database(url)
    await fresh_schema(url)
    await load_backlog(url, recipients, order, channel="whatsapp", first=FIRST_WA_ID)
    fake, base = await start_fake(pair, rate)
    folder = fresh_folder("kindling-wa-pacing-")
    server = None
    try:
        server, _ = await start_kindling(whatsapp_env(url, folder, f"{base}/{VERSION}", rate))
        started = time.monotonic()
        calls = await wait_for_sends(base, n, timeout, server)
        elapsed = time.monotonic() - started
        cpu = server.cpu_seconds()
    finally:
        if server is not None:
            await server.stop()
        await fake.stop()
        remove(folder)
    statuses = dict(await rows(url, "SELECT status, count(*) FROM delivery GROUP BY status"))
    errors = await rows(
        url, "SELECT last_error, count(*) FROM delivery WHERE last_error IS NOT NULL GROUP BY last_error LIMIT 5"
    )
    save_calls(f"kindling-{database_name(url).split(' ')[0]}-{rate}", calls)
    figures = analyse(calls, n, order, pair)
    figures.update(
        sender="kindling",
        database=database_name(url),
        n=n,
        recipients=recipients,
        pair=pair,
        ceiling=rate != RATE,
        delivery_statuses=statuses,
        delivery_errors=errors,
        server_cpu_s=cpu,
        wall_s=elapsed,
    )
    return figures


async def run_naive(n: int, recipients: int, pair: bool, timeout: float) -> dict:
    """One request after another, no pacing; a throughput error is retried after NAIVE_WAIT."""
    order = workload(n, recipients)
    fake, base = await start_fake(pair)
    deadline = time.monotonic() + timeout
    url = f"{base}/{VERSION}/{PHONE_ID}/messages"
    headers = {"Authorization": f"Bearer {WHATSAPP_TOKEN}"}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            for index in range(n):
                to = str(FIRST_WA_ID + order[index])
                data = {
                    "messaging_product": "whatsapp",
                    "recipient_type": "individual",
                    "to": to,
                    "type": "text",
                    "text": {"preview_url": False, "body": f"{PREFIX}{index}"},
                }
                while time.monotonic() < deadline:
                    async with session.post(url, json=data, headers=headers) as response:
                        body = await response.json()
                    if response.status == 200 or body["error"]["code"] not in (130429, 131056):
                        break
                    await asyncio.sleep(NAIVE_WAIT)
        calls = await fetch(base, "/_bench/calls")
    finally:
        await fake.stop()
    save_calls("naive", calls)  # type: ignore[arg-type]
    figures = analyse(calls, n, order, pair)  # type: ignore[arg-type]
    figures.update(sender="naive", database="-", n=n, recipients=recipients, pair=pair)
    return figures


def report(results: list[dict]) -> None:
    print()
    m = results[0].get("machine", {}) if results else {}
    if m:
        print(f"machine: {m['nproc']} CPUs, Python {m['python']}, load {m.get('load', '-')}")
    first = results[0]
    limits = f"{RATE}/s" + (", pair 1/6 s burst 45" if first["pair"] else "")
    print(
        f"\n{first['n']:,} messages to {first['recipients']:,} recipients "
        f"({first['n'] // first['recipients']} each, shuffled)"
    )
    header = ("", f"allowed ({limits})", *(label(r) for r in results))
    body = [
        ("time first to last accepted", secs(first["allowed_span_s"]), *(secs(r["span_s"]) for r in results)),
        ("messages / s", num(first["allowed_rate"], 1), *(num(r["rate"], 1) for r in results)),
        ("share of the allowed rate", "1.00x", *(times_(r["of_allowed"]) for r in results)),
        ("130429 answers", "0", *(f"{r['refused_130429']:,}" for r in results)),
        ("130429 share of messages calls", "0%", *(pct(r["share_130429"]) for r in results)),
        ("131056 answers", "0", *(f"{r['refused_131056']:,}" for r in results)),
        ("most accepted in any 1 s", f"{RATE}", *(str(r["busiest_second"]) for r in results)),
        ("median gap between messages", ms_(1 / RATE), *(ms_(r["median_gap_s"]) for r in results)),
        (
            "pauses over 0.5 s (longest)",
            "0",
            *(f"{r['pauses_over_0_5_s']} ({secs(r['longest_pause_s'])})" for r in results),
        ),
        ("accepted (distinct messages)", f"{first['n']:,}", *(f"{r['accepted'] - r['doubled']:,}" for r in results)),
        ("server CPU time", "-", *(secs(r.get("server_cpu_s")) for r in results)),
    ]
    print(table(header, body))


def label(result: dict) -> str:
    if result["sender"] == "naive":
        return "naive (one at a time)"
    unpaced = ", no limit" if result.get("ceiling") else ""
    return f"Kindling on {result['database'].split(' ')[0]}{unpaced}"


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} s"


def ms_(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.1f} ms"


def num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def times_(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def checks(results: list[dict]) -> bool:
    problems = []
    for r in results:
        name = label(r)
        if r["missing"] or r["doubled"] or r["wrong_recipient"] or r["other_errors"]:
            problems.append(
                f"{name}: {r['missing']} missing, {r['doubled']} sent twice, {r['wrong_recipient']} to the wrong "
                f"recipient, {r['other_errors']} other errors"
            )
        if r["sender"] == "kindling" and r["delivery_statuses"] != {"sent": r["n"]}:
            problems.append(f"{name}: delivery rows {r['delivery_statuses']}, expected all {r['n']} sent")
    for problem in problems:
        print("CHECK FAILED:", problem)
    if not problems:
        print("checks: every message accepted exactly once, to its recipient; every Kindling delivery row is sent")
    targets = [r for r in results if r["sender"] == "kindling" and not r.get("ceiling")]
    for r in targets:
        rate_ok = (r["of_allowed"] or 0) >= 0.9
        errors_ok = (r["share_130429"] or 0) <= 0.001
        print(
            f"targets, {label(r)}: {times_(r['of_allowed'])} of the allowed rate ({'met' if rate_ok else 'MISSED'}: "
            f">= 0.90x), 130429 {pct(r['share_130429'])} of calls ({'met' if errors_ok else 'MISSED'}: <= 0.10%)"
        )
    return not problems


async def main_async(args: argparse.Namespace) -> list[dict]:
    folder = fresh_folder("kindling-wa-pacing-db-")
    urls = ["sqlite", *([args.pg] if args.pg else [])]
    n, recipients = args.messages, args.recipients
    timeout = args.timeout or max(60.0, 4 * n / RATE)
    results = []
    try:
        for url in urls:
            for rate in (RATE, *([CEILING] if args.ceiling else [])):
                if url.startswith("sqlite"):  # a new file for each run
                    url = f"sqlite+aiosqlite:///{folder / f'kindling-{rate}.db'}"
                unpaced = f" with no limit to pace for ({rate:,}/s)" if rate != RATE else ""
                log(f"Kindling on {database_name(url)}{unpaced}, {n:,} messages to {recipients:,} recipients")
                result = await run_kindling(url, n, recipients, args.pair, timeout, rate)
                phase_line("kindling" if rate == RATE else "kindling ceiling", result)
                results.append(result)
        log(f"naive sender, {n:,} messages")
        result = await run_naive(n, recipients, args.pair, timeout)
        phase_line("naive", result)
        results.append(result)
    finally:
        remove(folder)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000, help="N messages (default 10,000)")
    parser.add_argument("--recipients", type=int, default=2_000, help="recipients (default 2,000)")
    parser.add_argument("--pg", default="", help="also run Kindling on this PostgreSQL database")
    parser.add_argument("--pair", action="store_true", help="the fake also enforces the pair rate limit (131056)")
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help=f"also run Kindling with the fake and itself at {CEILING:,}/s: how fast it sends when nothing binds",
    )
    parser.add_argument("--quick", action="store_true", help="N = 1,000 to 200 recipients")
    parser.add_argument("--timeout", type=float, default=0.0, help="give up on a run after this many seconds")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--calls", default="", help="write each run's log of calls (the fake's) to this folder")
    args = parser.parse_args()
    global CALLS_DIR
    CALLS_DIR = Path(args.calls) if args.calls else None
    if args.quick:
        args.messages, args.recipients = 1_000, 200
    load_before = os.getloadavg()
    results = asyncio.run(main_async(args))
    if results:
        results[0]["machine"] = {**machine(), "load": f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after"}
    report(results)
    ok = checks(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
