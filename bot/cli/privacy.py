"""`kindling lead export|erase ID`: a person's data out of the database, or out of it for good."""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path

from bot.app import shared_secret_key
from bot.config import Settings
from bot.delivery.hub import PostgresHub, publish_erasure
from flows.clock import SystemClock
from storage.db import Sessions, create_engine, is_sqlite, sessionmaker, transaction
from storage.privacy import Erased, erase_everywhere, export_person, find_person

SQLITE_NOTE = (
    "note: a `kindling serve` running on this SQLite database is not told: a chat the person has open there "
    "stays open until it reconnects (DELETE /api/leads/ID closes it at once)"
)


async def export(settings: Settings, lead_id: int, output: Path | None) -> int:
    """Print (or write to `output`) everything stored about the lead as JSON; LeadNotFound if none."""
    engine = create_engine(settings.database_url)
    try:
        now = SystemClock().now()
        document = await transaction(sessionmaker(engine), lambda session: export_person(session, lead_id, now))
    finally:
        await engine.dispose()
    text = json.dumps(document, indent=2, ensure_ascii=False)
    if output is None:
        print(text)
    else:
        output.write_text(text + "\n", encoding="utf-8")
        print(f"lead {document['lead_id']} exported to {output}", file=sys.stderr)
    return 0


async def erase(settings: Settings, lead_id: int, yes: bool) -> int:
    """Erase the lead everywhere after a confirmation (skipped with `yes`); LeadNotFound if none."""
    engine = create_engine(settings.database_url)
    sessions = sessionmaker(engine)
    try:
        if not yes:
            async with sessions() as session:
                person = await find_person(session, lead_id)
            rows = person.counts()
            question = (
                f"Erase lead {person.lead_id} and everything stored about them ({sum(rows.values())} rows in "
                f"{len(rows)} tables)? This cannot be undone. Type 'yes' to erase: "
            )
            if not _confirmed(question):
                print("nothing erased", file=sys.stderr)
                return 1
        secret, by, now = await shared_secret_key(settings, sessions), f"cli:{_user()}", SystemClock().now()
        erased = await erase_everywhere(sessions, lead_id, secret, by, now)
        await _tell_running_instances(settings, sessions, erased)
    finally:
        await engine.dispose()
    removed = ", ".join(f"{table} {count}" for table, count in erased.removed.items())
    print(f"lead {erased.lead_id} erased; rows removed: {removed}")
    return 0


async def _tell_running_instances(settings: Settings, sessions: Sessions, erased: Erased) -> None:
    """On PostgreSQL, running instances hear of the erasure (NOTIFY) and close the person's open sockets.

    A SQLite server is another process this command cannot reach: its open sockets are not told, and the
    command says so (as docs/privacy.md does).
    """
    if is_sqlite(settings.database_url):
        print(SQLITE_NOTE, file=sys.stderr)
        return
    hub = PostgresHub(settings.database_url, sessions)
    await hub.start()
    try:
        publish_erasure(hub, erased)
        await hub.flush()
    except TimeoutError:  # the erasure itself is done: say what was not, rather than fail
        print("note: running instances did not hear of the erasure (no answer from NOTIFY)", file=sys.stderr)
    finally:
        await hub.stop()


def _confirmed(question: str) -> bool:
    print(question, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() == "yes"


def _user() -> str:
    """Who ran the command, for the audit line."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        return "unknown"
