"""What the server benchmarks share: real `kindling serve` processes, the fake Bot API process, databases, tables.

The benchmarks in this folder that drive a running server (inbound.py, telegram_pacing.py, speed_to_lead.py)
start every server as its own child process, as an operator would (`python -m bot serve` with KINDLING_*
settings in the environment), and talk to it over HTTP on 127.0.0.1 only. The Bot API is a fake one
(fake_bot_api.py, also a child process) so no traffic leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
TOKEN = "123456789:AAFakeTokenForKindlingBench"
SECRET = "bench-webhook-secret"
OPERATORS_CHAT = -1001234567890
START_TIMEOUT = 90.0
# Settings every server benchmark uses: nothing held back by quiet hours, the daily cap or business hours.
CONFIG = """
[nurture]
quiet_hours = "off"
daily_cap = 1000

[handoff]
business_hours = "always"
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def phase_line(phase: str, figures: dict) -> None:
    """One JSON line per phase on stdout, for whoever collects the results."""
    print(json.dumps({"phase": phase, **figures}, default=str), flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine() -> dict:
    return {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of values, or None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f} ms"


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A plain text table, the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return " | ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))

    return "\n".join([line(header), "-+-".join("-" * width for width in widths), *(line(row) for row in rows)])


# --- databases -----------------------------------------------------------------------------------


def database_name(url: str) -> str:
    """sqlite, or postgresql and the database's name: what a table shows."""
    return "SQLite" if url.startswith("sqlite") else f"PostgreSQL ({url.rsplit('/', 1)[-1]})"


def ensure_database(url: str) -> None:
    """A PostgreSQL benchmark database exists (created with psql if not); refuses names without 'bench'."""
    if url.startswith("sqlite"):
        return
    sys.path.insert(0, str(BENCH))
    from drip_engine import ensure_pg_database

    ensure_pg_database(url)


async def fresh_schema(url: str) -> None:
    """Drop everything and migrate to head (as `kindling migrate` on an empty database)."""
    from storage.db import create_engine
    from storage.migrate import recreate

    engine = create_engine(url)
    try:
        await recreate(engine)
    finally:
        await engine.dispose()


async def fill_postgres(url: str, steps: list[tuple[str, str]], params: dict, seed: float) -> None:
    """A benchmark database filled inside PostgreSQL: created if missing (a name with 'bench' in it), emptied and
    migrated to head, then each step's `;`-separated statements run with the parameters they name (no foreign key
    checks meanwhile; `setseed(seed)` first, so a fill is the same every time), each step's time printed, and
    VACUUM ANALYZE at the end."""
    from sqlalchemy import text

    from storage.db import create_engine
    from storage.migrate import recreate

    ensure_database(url)
    engine = create_engine(url)
    try:
        await recreate(engine)
        async with engine.connect() as connection:
            await connection.execute(text("SET session_replication_role = replica"))
            await connection.execute(text("SELECT setseed(:seed)"), {"seed": seed})
            for name, sql in steps:
                started = time.perf_counter()
                for statement in filter(str.strip, sql.split(";")):
                    used = {key: value for key, value in params.items() if f":{key}" in statement}
                    await connection.execute(text(statement), used)
                await connection.commit()
                print(f"  fill {name}: {time.perf_counter() - started:.1f} s", flush=True)
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            started = time.perf_counter()
            await autocommit.execute(text("VACUUM ANALYZE"))
            print(f"  vacuum analyze: {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        await engine.dispose()


async def scalar(url: str, sql: str, **params: object) -> object:
    """One value from the database (for the checks at the end of a run)."""
    from sqlalchemy import text

    from storage.db import create_engine

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return (await connection.execute(text(sql), params)).scalar()
    finally:
        await engine.dispose()


async def rows(url: str, sql: str, **params: object) -> list[tuple]:
    from sqlalchemy import text

    from storage.db import create_engine

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return [tuple(row) for row in (await connection.execute(text(sql), params)).all()]
    finally:
        await engine.dispose()


# --- child processes -----------------------------------------------------------------------------


@dataclass
class Child:
    """A child process whose stderr is read all along (so its pipe never fills) and kept for errors."""

    name: str
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task | None = None

    @classmethod
    async def start(cls, name: str, command: list[str], env: dict[str, str] | None = None) -> Child:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        child = cls(name, process)
        child.reader = asyncio.create_task(child._read())
        return child

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            if len(self.lines) < 20_000:
                self.lines.append(line.decode(errors="replace"))

    def tail(self, count: int = 40) -> str:
        kept = [line for line in self.lines if "HTTP Request:" not in line]
        return "".join(kept[-count:])

    async def wait_for_line(self, marker: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not any(marker in line for line in self.lines):
            if self.process.returncode is not None:
                raise SystemExit(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: no {marker!r} after {timeout:.0f} s:\n{self.tail()}")
            await asyncio.sleep(0.1)

    def rss_mb(self) -> float | None:
        """The process's current resident memory."""
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the process has used so far."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds (a server with a long outbox backlog drains slowly)."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout=grace)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.reader is not None:
            await self.reader


def server_env(database_url: str, folder: Path, telegram_url: str, operators_chat: int | None = None) -> dict:
    """This environment without KINDLING_ settings of its own, plus the benchmark's."""
    config = folder / "config.toml"
    config.write_text(CONFIG, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if not key.startswith("KINDLING_")}
    env.update(
        KINDLING_DATABASE_URL=database_url,
        KINDLING_TELEGRAM_TOKEN=TOKEN,
        KINDLING_TELEGRAM_SECRET=SECRET,
        KINDLING_TELEGRAM_API_URL=telegram_url,
        KINDLING_CONFIG=str(config),
        KINDLING_TEMPLATES=str(ROOT / "templates"),
        KINDLING_SECRET_KEY="bench-secret-key",
    )
    if operators_chat is not None:
        env["KINDLING_OPERATORS_CHAT"] = str(operators_chat)
    return env


async def start_kindling(env: dict, name: str = "kindling") -> tuple[Child, str]:
    """`python -m bot serve` on a free port; returns the process and its base URL once it listens."""
    port = free_port()
    command = [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)]
    child = await Child.start(name, command, env)
    await child.wait_for_line(f"Running on http://127.0.0.1:{port}")
    return child, f"http://127.0.0.1:{port}"


async def start_fake_bot_api(*limits: str) -> tuple[Child, str]:
    """fake_bot_api.py on a free port (with `--limits` it enforces Telegram's); returns it and its URL."""
    port = free_port()
    command = [sys.executable, str(BENCH / "fake_bot_api.py"), "--port", str(port), "--token", TOKEN, *limits]
    child = await Child.start("fake Bot API", command)
    await child.wait_for_line("listening")
    return child, f"http://127.0.0.1:{port}"


async def bot_api_calls(url: str) -> list[dict]:
    """Every call the fake Bot API answered so far: t (Unix time), method, chat_id, status, text."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/_bench/calls") as response:
        return await response.json()


def fresh_folder(prefix: str) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix))


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def run_sync(command: list[str]) -> str:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout


# --- a nurture backlog, bulk-inserted --------------------------------------------------------------

FIRST_CHAT = 5_000_000_000  # private chats (Telegram user ids) of the backlog's leads
CHUNK = 5_000


async def load_backlog(
    url: str, chats: int, messages: list[int], channel: str = "telegram", first: int = FIRST_CHAT
) -> dict:
    """`chats` leads on `channel` (with an identity and a bot-owned conversation whose lead wrote just now;
    lead i's address is `first + i`), then one pending nurture delivery per entry of `messages` (the entry
    is the lead's index), due a minute ago, text "bench nurture <i>" and key "bench:<i>", in that order of
    id."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import text

    from storage.db import create_engine, is_sqlite
    from storage.models import Conversation, Delivery, Identity, Lead

    now = datetime.now(UTC)
    due = now - timedelta(minutes=1)
    engine = create_engine(url)
    try:
        for start in range(0, chats, CHUNK):
            stop = min(chats, start + CHUNK)
            async with engine.begin() as connection:
                await connection.execute(
                    Lead.__table__.insert(),
                    [
                        {
                            "id": i + 1,
                            "created_at": now,
                            "updated_at": now,
                            "first_name": f"Lead{i + 1}",
                            "last_name": None,
                            "email": None,
                            "phone": None,
                            "locale": "en",
                            "timezone": None,
                            "stage": "lead",
                            "stage_at": now,
                            "score": 0.0,
                            "first_touch": {},
                            "last_touch": {},
                            "tags": [],
                            "merged_into_id": None,
                            "opted_out_at": None,
                        }  # fmt: skip
                        for i in range(start, stop)
                    ],
                )
                await connection.execute(
                    Identity.__table__.insert(),
                    [
                        {
                            "id": i + 1,
                            "lead_id": i + 1,
                            "kind": channel,
                            "value": str(first + i),
                            "created_at": now,
                        }  # fmt: skip
                        for i in range(start, stop)
                    ],
                )
                await connection.execute(
                    Conversation.__table__.insert(),
                    [
                        {
                            "id": i + 1,
                            "lead_id": i + 1,
                            "channel": channel,
                            "external_id": str(first + i),
                            "owner": "bot",
                            "contact_requested": True,
                            "created_at": now,
                            "last_message_at": now,
                        }  # fmt: skip
                        for i in range(start, stop)
                    ],
                )
        for start in range(0, len(messages), CHUNK):
            async with engine.begin() as connection:
                await connection.execute(
                    Delivery.__table__.insert(),
                    [
                        {
                            "id": i + 1,
                            "lead_id": lead + 1,
                            "conversation_id": lead + 1,
                            "channel": channel,
                            "address": str(first + lead),
                            "kind": "nurture",
                            "priority": 2,
                            "text": f"bench nurture {i}",
                            "buttons": [],
                            "idempotency_key": f"bench:{i}",
                            "enrollment_id": None,
                            "flow_slug": None,
                            "step": None,
                            "status": "pending",
                            "attempts": 0,
                            "not_before": due,
                            "lease_until": None,
                            "last_error": None,
                            "provider_message_id": None,
                            "created_at": due,
                            "sent_at": None,
                        }  # fmt: skip
                        for i, lead in enumerate(messages[start : start + CHUNK], start)
                    ],
                )
        if not is_sqlite(url):
            async with engine.begin() as connection:
                for table_name, count in (
                    ("lead", chats), ("identity", chats), ("conversation", chats), ("delivery", len(messages))
                ):  # fmt: skip
                    if count:
                        await connection.execute(
                            text(f"SELECT setval(pg_get_serial_sequence('{table_name}', 'id'), {count})")
                        )
            async with engine.connect() as connection:
                await (await connection.execution_options(isolation_level="AUTOCOMMIT")).execute(text("ANALYZE"))
    finally:
        await engine.dispose()
    return {"leads": chats, "deliveries": len(messages)}
