"""Email send benchmark: nurture email through Kindling's EmailChannel against a local aiosmtpd sink, next to a
naive sender that opens one smtplib connection per message, in the same run, against two kinds of relay.

    .venv/bin/python bench/email_send.py [--messages 10000] [--outbox 2000] [--paced 1000] [--rate 50 200]
                                         [--relay plain tls] [--rtt 10 --distant 1000] [--quick]

The sink is aiosmtpd in its own process (this file with `--sink`): it accepts everything and records, for
each message, when it arrived (CLOCK_MONOTONIC, shared by every process on the machine) and its Message-ID.
A fresh sink serves each phase. Two kinds, every phase against each:

  * tls: as a submission relay on port 587 is (what `KINDLING_SMTP_URL=smtp://user:pass@host:587` means):
    STARTTLS required (a self-signed RSA-2048 certificate made with openssl for this run), then AUTH PLAIN or
    LOGIN, only over TLS. Kindling's relay is given a TLS context trusting that certificate; the naive sender too.
  * plain: plain TCP, no AUTH, where a new connection costs almost nothing on loopback.

Phases:
  * channel: N leads with an email conversation and one pending nurture delivery each (subject, Markdown
    body) are bulk-inserted into a fresh SQLite database; the real app (`create_app`, the shipped layout,
    quiet hours off, `email.rate` = 1e9, i.e. unpaced) is started in this process and `EmailChannel.send` is
    called for each delivery, as many at once as the dispatcher does: composing (Markdown to HTML in the
    layout, text part, headers), the pacer and the pooled relay connections are in the time.
  * naive: the same N messages (composed with EmailMessage, text only), each sent by `smtplib.SMTP(...)`,
    (`starttls`, `login`,) `send_message`, `quit`: one connection per message, one at a time.
  * outbox: the real outbox loop (`dispatch_due` until nothing is due), so claiming, the send-time checks and
    recording each result in the database are in the time too.
  * paced: M deliveries through the channel with `email.rate` = R; the rate the sink saw,
    (M - 1) / (last arrival - first arrival), against R.

With `--rtt MS`, the channel and the naive sender run once more (`--distant` emails each) against the STARTTLS +
AUTH sink holding back every reply MS milliseconds, as a relay that many milliseconds away answers each command
(the TCP and TLS handshakes themselves are not delayed, so the naive sender pays less than it would).

Checks: the sink received every message exactly once (N distinct Message-IDs, N messages), and every
delivery is `sent`. Figures: messages/s for both senders and their ratio (target: at least 5x),
and the pacing error (target: within 10%). Each phase prints a JSON line; the table follows.
Every lead gave email consent (the dispatcher checks it before each nurture send). `--quick` runs N = 1000,
M = 300, 300 through the outbox.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import smtplib
import ssl
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

USER, PASSWORD = "bench", "bench-secret"


def certificate(folder: Path) -> Path:
    """A self-signed RSA-2048 certificate for 127.0.0.1 (cert.pem, key.pem in `folder`), made with openssl."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", folder / "key.pem", "-out", folder / "cert.pem"],
        check=True, capture_output=True,
    )  # fmt: skip
    return folder / "cert.pem"


def trusting(cert: Path) -> ssl.SSLContext:
    """A client TLS context that trusts only the benchmark's certificate (and checks the host name)."""
    return ssl.create_default_context(cafile=str(cert))


def sink(port: int, out: Path, cert: Path | None, delay: float) -> None:
    """Accept every message on 127.0.0.1:port; on SIGTERM write `<arrival> <Message-ID>` lines to `out`.

    With `cert`, as a submission relay on port 587 is: STARTTLS required, then AUTH PLAIN/LOGIN (over TLS only).
    `delay` (seconds) holds back every reply, as a relay that far away would be (one round trip per command).
    """
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

    class Distant(SMTP):
        async def push(self, status: str) -> None:
            if status[3:4] != "-":  # a reply's last line (EHLO's lines go out together, as a relay sends them)
                await asyncio.sleep(delay)
            await super().push(status)

    class Sink(Controller):
        def factory(self) -> SMTP:
            return (Distant if delay else SMTP)(self.handler, **self.SMTP_kwargs)

    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd warns of its own deprecation at every AUTH

    seen: list[tuple[float, str]] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            content = envelope.original_content or b""
            start = content.lower().find(b"\nmessage-id:")
            end = content.find(b"\n", start + 1)
            seen.append((time.monotonic(), content[start + 12 : end].strip().decode()))
            return "250 2.0.0 queued"

    def authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        valid = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == USER
        return AuthResult(success=valid and auth_data.password.decode() == PASSWORD, auth_data=auth_data)

    secure = {}
    if cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, cert.with_name("key.pem"))
        secure = {"tls_context": context, "require_starttls": True, "auth_required": True,
                  "auth_require_tls": True, "authenticator": authenticator}  # fmt: skip
    controller = Sink(Handler(), hostname="127.0.0.1", port=port, server_hostname="sink.bench", **secure)
    controller.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    controller.stop()
    out.write_text("".join(f"{at} {message_id}\n" for at, message_id in seen))


class Sink:
    """A sink process for one phase; `cert`: with STARTTLS and AUTH; `delay`: each reply held back that long."""

    def __init__(self, folder: Path, name: str, cert: Path | None, delay: float = 0.0) -> None:
        self.port, self.out = free_port(), folder / f"{name}.sink"
        command = [sys.executable, __file__, "--sink", str(self.port), str(self.out), str(cert or "-"), str(delay)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"
        credentials = f"{USER}:{PASSWORD}@" if cert else ""
        self.url = f"smtp://{credentials}127.0.0.1:{self.port}"

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
                    [
                        dict(_lead(i), created_at=now, updated_at=now, stage_at=now, email_consent_at=now)
                        for i in numbers
                    ],
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
            "first_touch": {}, "last_touch": {}, "tags": [], "email_consent_source": "api"}  # fmt: skip


def _address(i: int) -> str:
    return f"lead{i}@example.com"


async def kindling(
    folder: Path, name: str, count: int, rate: float, outbox: bool, cert: Path | None, delay: float = 0.0
) -> dict:
    """Send `count` nurture deliveries with the real app's EmailChannel (`outbox`: through the outbox loop).

    With `cert`, through a STARTTLS + AUTH sink: the channel's relay is made again with a TLS context that
    trusts the benchmark's certificate (the app itself trusts the system's certificates only).
    """
    from aiohttp import web
    from harness import scalar
    from sqlmodel import select

    from bot.app import SEND_BATCH, create_app
    from bot.config import settings_from
    from bot.delivery.dispatcher import SEND_CONCURRENCY
    from bot.mail.smtp import Relay
    from bot.services import SERVICES
    from storage.models import Delivery

    url = f"sqlite+aiosqlite:///{folder / f'{name}.db'}"
    await fresh_schema(url)
    await load(url, count)
    sink_process = Sink(folder, name, cert, delay)
    env = {
        "KINDLING_DATABASE_URL": url,
        "KINDLING_TEMPLATES": str(ROOT / "templates"),
        "KINDLING_PUBLIC_URL": "https://kindling.example",
        "KINDLING_SMTP_URL": sink_process.url,
        "KINDLING_EMAIL_FROM": FROM,
        "KINDLING_EMAIL_REPLY_DOMAIN": "reply.acme.example",
    }
    data = {"nurture": {"quiet_hours": "off", "daily_cap": 1000}, "email": {"rate": rate}}
    runner = web.AppRunner(create_app(settings_from(data, env), ticks=False))
    await runner.setup()
    services = runner.app[SERVICES]
    channel = services.dispatcher.channels["email"]
    if cert is not None:
        await channel.relay.close()
        channel.relay = Relay(sink_process.url, channel.pacer, tls_context=trusting(cert))
    async with services.sessions() as session:
        deliveries = iter((await session.exec(select(Delivery).order_by(Delivery.id))).all())
    results: list = []

    async def worker() -> None:  # as many at once as the dispatcher sends
        for delivery in deliveries:
            results.append((await channel.send(delivery)).status)

    started = time.monotonic()
    try:
        if outbox:
            await services.dispatcher.dispatch_backlog(SEND_BATCH)  # what the app's outbox tick runs
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


def naive(folder: Path, name: str, count: int, cert: Path | None, delay: float = 0.0) -> dict:
    """One smtplib connection per message, one message at a time (with `cert`: STARTTLS and AUTH on each)."""
    sink_process = Sink(folder, name, cert, delay)
    context = trusting(cert) if cert else None
    started = time.monotonic()
    for i in range(1, count + 1):
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = FROM, _address(i), f"Pricing, lead {i}"
        message["Message-ID"] = f"<naive.{i}@acme.example>"
        message.set_content(BODY.format(name=f"Lead{i}"))
        with smtplib.SMTP("127.0.0.1", sink_process.port, local_hostname="bench.local") as smtp:
            if context is not None:
                smtp.starttls(context=context)
                smtp.login(USER, PASSWORD)
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
        cert = certificate(folder)
        results = [await relay_kind(folder, kind, cert if kind == "tls" else None, args) for kind in args.relay]
        if args.rtt:
            results.append(await distant(folder, cert, args))
    finally:
        remove(folder)
    phase_line("summary", {kind["relay"]: kind["ratio"] for kind in results} | {"machine": machine()})
    rows = [row for kind in results for row in kind["rows"]]
    print(table(("relay", "sender", "messages", "messages/s", "each exactly once"), rows))
    for kind in results:
        errors = ", ".join(f"{rate:g}/s: {error:.1%}" for rate, error in kind["pacing"]) or "not run"
        print(f"{kind['relay']}: kindling / naive {kind['ratio']:.2f}x (target >= 5x); pacing error {errors} (<= 10%)")
    ok = all(kind["ok"] for kind in results)
    return 0 if ok and all(kind["ratio"] >= 5 for kind in results) else 1


async def relay_kind(folder: Path, kind: str, cert: Path | None, args: argparse.Namespace) -> dict:
    """Every phase against one kind of relay (plain TCP, or STARTTLS + AUTH): figures and table rows."""
    label = {"plain": "plain TCP", "tls": "STARTTLS + AUTH"}[kind]
    log(f"[{label}] channel: {args.messages} nurture emails through EmailChannel.send, unpaced")
    ours = await kindling(folder, f"{kind}-channel", args.messages, 1e9, outbox=False, cert=cert)
    phase_line(f"{kind}-channel", ours)
    log(f"[{label}] naive: {args.messages} emails, one smtplib connection each")
    baseline = await asyncio.to_thread(naive, folder, f"{kind}-naive", args.messages, cert)
    phase_line(f"{kind}-naive", baseline)
    log(f"[{label}] outbox: {args.outbox} nurture emails through the outbox (SQLite) and EmailChannel, unpaced")
    outbox = await kindling(folder, f"{kind}-outbox", args.outbox, 1e9, outbox=True, cert=cert)
    phase_line(f"{kind}-outbox", outbox)
    runs, pacing = [ours, outbox], []
    rows = [
        (label, "kindling EmailChannel", f"{ours['messages']:,}", f"{ours['per_second']:,.0f}", _once(ours)),
        (label, "naive (smtplib per message)", f"{baseline['messages']:,}", f"{baseline['per_second']:,.0f}",
         _once(baseline)),
        (label, "kindling outbox + EmailChannel", f"{outbox['messages']:,}", f"{outbox['per_second']:,.0f}",
         _once(outbox)),
    ]  # fmt: skip
    for rate in args.rate:
        log(f"[{label}] paced: {args.paced} nurture emails through EmailChannel.send at email.rate = {rate:g}")
        paced = await kindling(folder, f"{kind}-paced-{rate:g}", args.paced, rate, outbox=False, cert=cert)
        paced["pacing_error"] = abs(paced["sink_rate"] - rate) / rate
        phase_line(f"{kind}-paced-{rate:g}", paced)
        runs.append(paced)
        pacing.append((rate, paced["pacing_error"]))
        rows.append((label, f"kindling paced at {rate:g}/s", f"{paced['messages']:,}", f"{paced['sink_rate']:,.1f}",
                     _once(paced)))  # fmt: skip
    ok = all(c["exactly_once"] for c in [*runs, baseline]) and all(c["sent"] == c["messages"] for c in runs)
    ok = ok and all(error <= 0.10 for _, error in pacing)
    ratio = ours["per_second"] / baseline["per_second"]
    return {"relay": kind, "ratio": ratio, "rows": rows, "pacing": pacing, "ok": ok}


async def distant(folder: Path, cert: Path, args: argparse.Namespace) -> dict:
    """Kindling's channel and the naive sender against a STARTTLS + AUTH sink that answers each command `--rtt` late."""
    delay, label = args.rtt / 1000, f"STARTTLS + AUTH, replies {args.rtt:g} ms late"
    log(f"[{label}] channel and naive: {args.distant} emails each")
    ours = await kindling(folder, "distant-channel", args.distant, 1e9, outbox=False, cert=cert, delay=delay)
    phase_line("distant-channel", ours)
    baseline = await asyncio.to_thread(naive, folder, "distant-naive", args.distant, cert, delay)
    phase_line("distant-naive", baseline)
    rows = [
        (label, "kindling EmailChannel", f"{ours['messages']:,}", f"{ours['per_second']:,.0f}", _once(ours)),
        (label, "naive (smtplib per message)", f"{baseline['messages']:,}", f"{baseline['per_second']:,.1f}",
         _once(baseline)),
    ]  # fmt: skip
    ok = ours["exactly_once"] and baseline["exactly_once"] and ours["sent"] == ours["messages"]
    ratio = ours["per_second"] / baseline["per_second"]
    return {"relay": f"tls, {args.rtt:g} ms", "ratio": ratio, "rows": rows, "pacing": [], "ok": ok}


def _once(figures: dict) -> str:
    return "yes" if figures["exactly_once"] else f"NO ({figures['received']} received, {figures['distinct']} distinct)"


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--sink":
        sink(int(sys.argv[2]), Path(sys.argv[3]), None if sys.argv[4] == "-" else Path(sys.argv[4]), float(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="N: emails per sender")
    parser.add_argument("--rate", type=float, nargs="+", default=[50.0], help="R: email.rate for a paced run (each)")
    parser.add_argument("--relay", nargs="+", choices=("plain", "tls"), default=["plain", "tls"],
                        help="the sink: plain TCP, and/or STARTTLS + AUTH as a relay on port 587 is")  # fmt: skip
    parser.add_argument("--paced", type=int, default=1_000, help="M: emails in the paced run")
    parser.add_argument("--outbox", type=int, default=2_000, help="emails in the run through the outbox")
    parser.add_argument("--rtt", type=float, default=0.0, help="ms: also run both senders against a TLS sink this far")
    parser.add_argument("--distant", type=int, default=1_000, help="emails per sender against the distant sink")
    parser.add_argument("--quick", action="store_true", help="N = 1000, M = 300, 300 through the outbox")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.paced, args.outbox = 1_000, 300, 300
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
