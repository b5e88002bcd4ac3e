"""Email send benchmark: nurture email through Kindling's EmailChannel against a local aiosmtpd sink, next to a
naive sender that opens one smtplib connection per message, in the same run.

    .venv/bin/python bench/email_send.py [--messages 10000] [--rate 200] [--paced 2000] [--quick]

The sink is aiosmtpd in its own process (this file with `--sink`): it accepts everything and records, for
each message, when it arrived (CLOCK_MONOTONIC, shared by every process on the machine) and its Message-ID.
A fresh sink serves each phase.

  * kindling: N leads with an email conversation and one pending nurture delivery each (subject, Markdown
    body) are bulk-inserted into a fresh SQLite database; the real app (`create_app`, the shipped layout,
    quiet hours off, `email.rate` = 1e9, i.e. unpaced) is started in this process and its outbox loop
    (`dispatch_due` until nothing is due, as the app's tick does) sends them: the opt-out check, composing
    (Markdown to HTML in the layout, text part, headers), the relay connections, and recording each result
    in the database are all in the time.
  * naive: the same N messages (composed with EmailMessage, text only), each sent by `smtplib.SMTP(...)`,
    `send_message`, `quit`: one connection per message, one at a time.
  * paced: M deliveries through Kindling again with `email.rate` = R; the rate the sink saw,
    (M - 1) / (last arrival - first arrival), against R.

Checks: the sink received every message exactly once (N distinct Message-IDs, N messages), and every
delivery row is `sent`. Figures: messages/s for both senders and their ratio (target: at least 5x),
and the pacing error (target: within 10%). Each phase prints a JSON line; the table follows.
`--quick` runs N = 1000, M = 300.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import smtplib
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import ROOT, free_port, fresh_folder, fresh_schema, log, machine, phase_line, remove, table  # noqa: E402

FROM = "Acme <hello@acme.example>"
CHUNK = 5_000
BODY = "Hi **{name}**,\n\nhere is [our pricing](https://acme.example/pricing) and a short case study.\n\nTalk soon."


# --- the sink (its own process) ----------------------------------------------------------------------


def sink(port: int, out: Path) -> None:
    """Accept every message on 127.0.0.1:port; on SIGTERM write `<arrival> <Message-ID>` lines to `out`."""
    from aiosmtpd.controller import Controller

    seen: list[tuple[float, str]] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            content = envelope.original_content or b""
            start = content.lower().find(b"\nmessage-id:")
            end = content.find(b"\n", start + 1)
            seen.append((time.monotonic(), content[start + 12 : end].strip().decode()))
            return "250 2.0.0 queued"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port, server_hostname="sink.bench")
    controller.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    controller.stop()
    out.write_text("".join(f"{at} {message_id}\n" for at, message_id in seen))


class Sink:
    """A sink process for one phase."""

    def __init__(self, folder: Path, name: str) -> None:
        self.port, self.out = free_port(), folder / f"{name}.sink"
        command = [sys.executable, __file__, "--sink", str(self.port), str(self.out)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"

    def stop(self) -> list[tuple[float, str]]:
        """Stop it; what it received, in order of arrival."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        lines = self.out.read_text().splitlines()
        return [(float(at), message_id) for at, _, message_id in (line.partition(" ") for line in lines)]


# --- Kindling --------------------------------------------------------------------------------------


async def load(url: str, count: int) -> None:
    """`count` leads, each with an email conversation and one pending nurture delivery, due a minute ago."""
    from storage.db import create_engine
    from storage.models import Conversation, Delivery, Lead

    now = datetime.now(UTC)
    due = now - timedelta(minutes=1)
    engine = create_engine(url)
    try:
        for start in range(0, count, CHUNK):
            numbers = range(start + 1, min(count, start + CHUNK) + 1)
            async with engine.begin() as connection:
                await connection.execute(
                    Lead.__table__.insert(),
                    [dict(_lead(i), created_at=now, updated_at=now, stage_at=now) for i in numbers],
                )
                await connection.execute(
                    Conversation.__table__.insert(),
                    [
                        {"id": i, "lead_id": i, "channel": "email", "external_id": _address(i), "owner": "bot",
                         "contact_requested": False, "created_at": now, "last_message_at": None}
                        for i in numbers
                    ],
                )  # fmt: skip
                await connection.execute(
                    Delivery.__table__.insert(),
                    [
                        {"id": i, "lead_id": i, "conversation_id": i, "channel": "email", "address": _address(i),
                         "kind": "nurture", "priority": 2, "text": BODY.format(name=f"Lead{i}"), "buttons": [],
                         "idempotency_key": f"bench:{i}", "status": "pending", "attempts": 0, "not_before": due,
                         "created_at": due, "subject": f"Pricing, lead {i}"}
                        for i in numbers
                    ],
                )  # fmt: skip
    finally:
        await engine.dispose()


def _lead(i: int) -> dict:
    return {"id": i, "first_name": f"Lead{i}", "email": _address(i), "stage": "lead", "score": 0.0,
            "first_touch": {}, "last_touch": {}, "tags": [], "email_consent_at": None}  # fmt: skip


def _address(i: int) -> str:
    return f"lead{i}@example.com"


async def kindling(folder: Path, name: str, count: int, rate: float, outbox: bool) -> dict:
    """Send `count` nurture deliveries with the real app's EmailChannel (`outbox`: through the outbox loop)."""
    from aiohttp import web
    from harness import scalar
    from sqlmodel import select

    from bot.app import SEND_BATCH, create_app
    from bot.config import settings_from
    from bot.delivery.dispatcher import SEND_CONCURRENCY
    from bot.services import SERVICES
    from storage.models import Delivery

    url = f"sqlite+aiosqlite:///{folder / f'{name}.db'}"
    await fresh_schema(url)
    await load(url, count)
    sink_process = Sink(folder, name)
    env = {
        "KINDLING_DATABASE_URL": url,
        "KINDLING_TEMPLATES": str(ROOT / "templates"),
        "KINDLING_PUBLIC_URL": "https://kindling.example",
        "KINDLING_SMTP_URL": f"smtp://127.0.0.1:{sink_process.port}",
        "KINDLING_EMAIL_FROM": FROM,
        "KINDLING_EMAIL_REPLY_DOMAIN": "reply.acme.example",
    }
    data = {"nurture": {"quiet_hours": "off", "daily_cap": 1000}, "email": {"rate": rate}}
    runner = web.AppRunner(create_app(settings_from(data, env), ticks=False))
    await runner.setup()
    services = runner.app[SERVICES]
    async with services.sessions() as session:
        deliveries = iter((await session.exec(select(Delivery).order_by(Delivery.id))).all())
    results: list = []

    async def worker() -> None:  # as many at once as the dispatcher sends
        for delivery in deliveries:
            results.append((await services.dispatcher.channels["email"].send(delivery)).status)

    started = time.monotonic()
    try:
        if outbox:
            while await services.dispatcher.dispatch_due(SEND_BATCH):  # what the app's outbox tick runs
                pass
        else:
            await asyncio.gather(*(worker() for _ in range(SEND_CONCURRENCY)))
        elapsed = time.monotonic() - started
    finally:
        await runner.cleanup()
    received = sink_process.stop()
    if outbox:
        sent = await scalar(url, "SELECT count(*) FROM delivery WHERE status = 'sent'")
    else:
        sent = results.count("sent")
    return {**_received(received, count), "seconds": elapsed, "per_second": count / elapsed, "sent": sent}


# --- the naive baseline ------------------------------------------------------------------------------


def naive(folder: Path, count: int) -> dict:
    """One smtplib connection per message, one message at a time."""
    sink_process = Sink(folder, "naive")
    started = time.monotonic()
    for i in range(1, count + 1):
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = FROM, _address(i), f"Pricing, lead {i}"
        message["Message-ID"] = f"<naive.{i}@acme.example>"
        message.set_content(BODY.format(name=f"Lead{i}"))
        with smtplib.SMTP("127.0.0.1", sink_process.port, local_hostname="bench.local") as smtp:
            smtp.send_message(message)
    elapsed = time.monotonic() - started
    return {**_received(sink_process.stop(), count), "seconds": elapsed, "per_second": count / elapsed}


def _received(received: list[tuple[float, str]], count: int) -> dict:
    ids = [message_id for _, message_id in received]
    span = received[-1][0] - received[0][0] if len(received) > 1 else 0.0
    return {
        "messages": count,
        "received": len(ids),
        "distinct": len(set(ids)),
        "exactly_once": len(ids) == count == len(set(ids)),
        "sink_rate": (len(received) - 1) / span if span else None,
    }


# --- main --------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    folder = fresh_folder("kindling-email-bench-")
    try:
        log(f"channel: {args.messages} nurture emails through EmailChannel.send, unpaced")
        ours = await kindling(folder, "channel", args.messages, 1e9, outbox=False)
        phase_line("channel", ours)
        log(f"naive: {args.messages} emails, one smtplib connection each")
        baseline = await asyncio.to_thread(naive, folder, args.messages)
        phase_line("naive", baseline)
        log(f"outbox: {args.outbox} nurture emails through the outbox (SQLite) and EmailChannel, unpaced")
        outbox = await kindling(folder, "outbox", args.outbox, 1e9, outbox=True)
        phase_line("outbox", outbox)
        log(f"paced: {args.paced} nurture emails through EmailChannel.send at email.rate = {args.rate}")
        paced = await kindling(folder, "paced", args.paced, args.rate, outbox=False)
        paced["pacing_error"] = abs(paced["sink_rate"] - args.rate) / args.rate
        phase_line("paced", paced)
    finally:
        remove(folder)
    ratio = ours["per_second"] / baseline["per_second"]
    phase_line("summary", {"ratio": ratio, "machine": machine()})
    rows = [
        ("kindling EmailChannel", f"{ours['messages']:,}", f"{ours['per_second']:,.0f}", _once(ours)),
        ("naive (smtplib per message)", f"{baseline['messages']:,}", f"{baseline['per_second']:,.0f}", _once(baseline)),
        ("kindling outbox + EmailChannel", f"{outbox['messages']:,}", f"{outbox['per_second']:,.0f}", _once(outbox)),
        (f"kindling paced at {args.rate:g}/s", f"{paced['messages']:,}", f"{paced['sink_rate']:,.1f}", _once(paced)),
    ]
    print(table(("sender", "messages", "messages/s", "each exactly once"), rows))
    error = paced["pacing_error"]
    print(f"ratio kindling / naive: {ratio:.1f}x (target >= 5x); pacing error {error:.1%} (target <= 10%)")
    runs = [ours, outbox, paced]
    ok = all(c["exactly_once"] for c in [*runs, baseline]) and all(c["sent"] == c["messages"] for c in runs)
    return 0 if ok and ratio >= 5 and paced["pacing_error"] <= 0.10 else 1


def _once(figures: dict) -> str:
    return "yes" if figures["exactly_once"] else f"NO ({figures['received']} received, {figures['distinct']} distinct)"


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--sink":
        sink(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="N: emails per sender")
    parser.add_argument("--rate", type=float, default=50.0, help="R: email.rate for the paced run")
    parser.add_argument("--paced", type=int, default=1_000, help="M: emails in the paced run")
    parser.add_argument("--outbox", type=int, default=2_000, help="emails in the run through the outbox")
    parser.add_argument("--quick", action="store_true", help="N = 1000, M = 300, 300 through the outbox")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.paced, args.outbox = 1_000, 300, 300
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
