"""The inbox: an inbound is stored as it came before it is answered, and taken in (intake) right after.

Taking an inbound in (lead, conversation, event, scoring, stages, flows, handoff rules, the bot's reply)
costs milliseconds of CPU; storing it as it came costs a fraction of one. Telegram waits for our answer
before it sends a chat's next update and sends again whatever is not answered in time, so under a burst an
answer that waits for intake makes Telegram queue, then deliver twice. Here the answer goes out as soon as
the inbound is durable, and intake follows at its own pace (DESIGN.md: stored before the HTTP answer;
reactions right after the commit; what must survive a crash is a row).

- Nothing is lost. An entry is deleted once intake has committed its inbound. If the process dies first,
  or intake fails (the database went away), the entry stays, and once its lease has run out any instance's
  sweep takes it in (`sweep`, every few seconds; on SQLite, where one process is alone, also at start-up).
- Nothing is doubled. The dedup key (Telegram: the update_id) is unique here and on events: a redelivery
  still waiting here is answered 200 and not stored again, and an inbound taken in twice (a sweep racing a
  slow process, or a process that died between intake's commit and the entry's deletion) is found by its
  event the second time and changes nothing.
- Where. On PostgreSQL a table of the database; on SQLite a file of its own beside the database
  (`kindling-inbox.db` beside `kindling.db`): SQLite has one writer per file, and in the same file storing
  an update would wait for intake's transactions.
- Order. A process takes in what it received in the order it was stored.
- Memory. A process holds up to HELD inbounds for intake; under a longer flood it keeps only the keys of
  the rest and reads them back from the inbox, in order, as room frees (`_read_back`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.intake.inbound import Inbound, inbound_from_json, inbound_to_json
from bot.intake.intake import Intake, Received
from flows.clock import Clock
from storage.db import (
    POOL_TIMEOUT,
    DatabaseUnavailable,
    Sessions,
    create_engine,
    inbox_url,
    is_sqlite,
    sessionmaker,
    transaction,
)
from storage.models import InboxEntry, UTCDateTime

log = logging.getLogger(__name__)
LEASE = timedelta(seconds=60)  # the receiving process's time to take an entry in; then a sweep may
BATCH = 200  # entries stored by one INSERT (group commit), and taken over by one sweep
HELD = 10_000  # inbounds this process holds in memory for intake (about 1 KB each); beyond, it keeps their keys
OVERFLOW = 200_000  # keys (some 100 bytes each) of entries stored beyond HELD, read back as room frees; beyond, sweeps
READ_BACK = 200  # entries read back from the inbox at once
# Intake is handed one chunk at a time. Four side by side (intake's writers on PostgreSQL) locked the same
# conversations in different orders: deadlocks, each found only after PostgreSQL's deadlock_timeout (1 s), and a
# step of each chunk in every turn of the event loop, which the answers waited behind. Another chunk starts
# beside one only when that one has been at it for this long (seconds): then it is stuck, not busy.
STUCK = 3.0
CHUNK = 50  # inbounds handed to intake at once (its batch: 10 took 14.6 ms of CPU per update, 50 took 9.9)
# While updates keep arriving, intake pauses after each chunk for this share of the time the chunk took
# (1.0: intake gets at most about half of the process), so that answers stay quick under a flood; intake
# catches up when the flood ends. With no arrivals it runs flat out.
ANSWERS_FIRST = 1.0
APPLICATION_NAME = "kindling-inbox"  # PostgreSQL: the inbox's own connection, as pg_stat_activity shows it
MAX_ATTEMPTS = 5  # sweeps of one entry; then it stays, with its error, for a person to look at


class Inbox:
    """Stores inbounds before their answer and hands them to intake; `sweep` takes over forgotten ones."""

    def __init__(
        self,
        database_url: str,
        sessions: Sessions,
        clock: Clock,
        intake: Intake,
        taken_in: Callable[[Received], None],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
    ) -> None:
        self.clock, self.intake = clock, intake
        own = inbox_url(database_url)  # SQLite: a file of its own, so storing never waits for intake
        self.engine = create_engine(own) if own != database_url else None
        self.sessions = sessionmaker(self.engine) if self.engine is not None else sessions
        self.alone = is_sqlite(database_url)  # one process per SQLite database: what the inbox holds is ours
        self.writer = _writer(own, self.engine, self.sessions)
        self.taken_in = taken_in  # after intake's commit: show the message, send the replies (Services.after_commit)
        self.spawn = spawn
        self._held: deque[Inbound] = deque()  # stored, waiting for intake
        self._holding: set[str | None] = set()  # their dedup keys, and those in intake now: leases to renew
        self._overflow: deque[str] = deque()  # keys of entries stored while HELD were held, to read back in order
        self._feeding = 0  # tasks handing held inbounds to intake
        self._stuck = 0  # chunks in intake for over STUCK seconds
        self.answered = 0  # inbounds stored (and so answered) by this process
        self._waiting: deque[tuple[Inbound, asyncio.Future[None]]] = deque()
        self._writing = False

    async def start(self) -> None:
        """Make the SQLite inbox's table if need be, and take in what a previous run left (SQLite: all of it)."""
        if self.alone:  # SQLite's inbox is no migration's: its own file (or, in memory, the database itself)
            async with (self.engine or self.sessions.kw["bind"]).begin() as connection:
                await connection.run_sync(InboxEntry.metadata.create_all, tables=[InboxEntry.__table__])
        await self.sweep(leased_too=self.alone)

    async def stop(self) -> None:
        await self.writer.close()
        if self.engine is not None:
            await self.engine.dispose()

    async def accept(self, inbound: Inbound) -> None:
        """Store an inbound (it must have a dedup key), then take it in; raises DatabaseUnavailable.

        Returns once the entry has committed: the caller may answer. Entries that arrive while others
        are being written are written together by the next INSERT (group commit).
        """
        assert inbound.dedup_key, "only inbounds with a dedup key go through the inbox"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((inbound, future))
        if not self._writing:
            self._writing = True
            self.spawn(self._write())
        await future

    async def keep(self, dedup_key: str, channel: str, external_id: str | None, raw: dict, reason: str) -> bool:
        """Keep something received that no inbound can be made of, as it came, with why; raises DatabaseUnavailable.

        It is never taken in (it has had its attempts), stays for a person to look at (`held`, /metrics), and
        is erased with the person whose conversation `channel`/`external_id` names. A resend is kept once:
        returns False for it.
        """
        now = self.clock.now()
        row = {
            "dedup_key": dedup_key,
            "inbound": {"channel": channel, "external_id": external_id, "raw": raw},
            "received_at": now,
            "lease_until": now,
            "attempts": MAX_ATTEMPTS,
            "error": reason[:500],
        }
        insert = (sqlite if self.alone else postgresql).insert(InboxEntry.__table__).values(row)
        statement = insert.on_conflict_do_nothing(index_elements=["dedup_key"])
        return await transaction(self.sessions, lambda session: _inserted(session, statement))

    async def held(self) -> int:
        """Entries left for a person to look at: kept as they came (`keep`), or whose intake failed every sweep."""
        statement = select(func.count()).where(col(InboxEntry.attempts) >= MAX_ATTEMPTS)
        [[count]] = await transaction(self.sessions, lambda session: _returned(session, statement))
        return count

    async def _write(self) -> None:
        """Write waiting entries, a batch per transaction, until none is left."""
        try:
            while self._waiting:
                await self._write_batch([self._waiting.popleft() for _ in range(min(BATCH, len(self._waiting)))])
        finally:
            self._writing = False

    async def _write_batch(self, batch: list[tuple[Inbound, asyncio.Future[None]]]) -> None:
        """Store a batch; once committed, answer its callers and hand its inbounds to intake (even if a caller left)."""
        now = self.clock.now()
        rows = [
            {
                "dedup_key": inbound.dedup_key,
                "inbound": inbound_to_json(inbound),
                "received_at": now,
                "lease_until": now + LEASE,
                "attempts": 0,
            }
            for inbound, _ in batch
        ]
        outcome: Exception | None = None
        try:
            await self.writer.insert(rows)
        except DatabaseUnavailable as exc:
            outcome = exc
        except BaseException:  # a bug or shutting down: nobody may wait for ever
            outcome = DatabaseUnavailable("the inbound could not be stored")
            raise
        finally:
            for _, future in batch:
                if not future.done():
                    future.set_result(None) if outcome is None else future.set_exception(outcome)
        if outcome is not None:
            return
        self.answered += len(batch)
        for inbound, _ in batch:
            self._take_in(inbound)

    def _take_in(self, inbound: Inbound) -> None:
        """Hand an inbound to intake in the background; when too many are held, keep only its key (`_read_back`)."""
        if len(self._held) >= HELD or self._overflow:  # behind those read back later: a chat stays in order
            if len(self._overflow) < OVERFLOW and inbound.dedup_key:
                self._overflow.append(inbound.dedup_key)
            return
        self._held.append(inbound)
        self._holding.add(inbound.dedup_key)
        if not self._feeding or self._stuck:
            self._another_feeder()

    def _chunk_stuck(self, marker: list[bool]) -> None:
        """A chunk has been at it for STUCK seconds: what waits behind it (or comes) goes to another task."""
        marker.append(True)
        self._stuck += 1
        self._another_feeder()

    def _another_feeder(self) -> None:
        """Start a task handing held inbounds to intake, up to as many as intake stores at once."""
        if self._held and self._feeding < self.intake.writers:
            self._feeding += 1
            self.spawn(self._feed())

    async def _feed(self) -> None:
        """Hand held inbounds to intake, a chunk at a time (intake stores what waits together), until none is left.

        The entries of those taken in are then deleted, in one transaction per chunk. Should this process
        die in between, a sweep takes them in again, and intake finds them stored and changes nothing.
        One task does this while chunks go through; a chunk still at it after STUCK seconds (waiting for a
        lock another instance holds, say) has another task start on the chunks behind it.
        """
        loop = asyncio.get_running_loop()
        try:
            while self._held or self._overflow:
                if len(self._held) < CHUNK and self._overflow:
                    await self._read_back()
                    if not self._held:
                        continue
                chunk = [self._held.popleft() for _ in range(min(CHUNK, len(self._held)))]
                started, answered = loop.time(), self.answered
                marker: list[bool] = []
                stuck = loop.call_later(STUCK, self._chunk_stuck, marker)
                try:
                    taken = await asyncio.gather(*(self._intake(inbound) for inbound in chunk))
                finally:
                    stuck.cancel()
                    self._stuck -= len(marker)
                await self._forget([inbound.dedup_key for inbound, ok in zip(chunk, taken, strict=True) if ok])
                self._holding.difference_update(inbound.dedup_key for inbound in chunk)
                if self.answered != answered:  # updates kept coming meanwhile: let their answers have the CPU
                    await asyncio.sleep((loop.time() - started) * ANSWERS_FIRST)
        finally:
            self._feeding -= 1

    async def _read_back(self) -> None:
        """Read back, in the order stored, entries this process stored beyond HELD, as room frees.

        Their leases were renewed meanwhile, so they are still ours, unless a renewal failed and a sweep
        took one over (it has attempts then: it is the sweep's). If the database is away, they stay in the
        inbox for a sweep after their lease.
        """
        keys = [self._overflow.popleft() for _ in range(min(READ_BACK, len(self._overflow)))]
        now = self.clock.now()
        statement = (
            update(InboxEntry)
            .where(col(InboxEntry.dedup_key).in_(keys), col(InboxEntry.attempts) == 0)
            .values(lease_until=now + LEASE)
            .returning(col(InboxEntry.id), col(InboxEntry.dedup_key), col(InboxEntry.inbound))
        )
        try:
            rows = await transaction(self.sessions, lambda session: _returned(session, statement))
        except DatabaseUnavailable as exc:
            log.warning("%d inbox entries left to a sweep: %s", len(keys), exc)
            return
        for _, dedup_key, data in sorted(rows):
            if dedup_key not in self._holding:
                self._held.append(inbound_from_json(data))
                self._holding.add(dedup_key)

    async def _forget(self, keys: list[str | None]) -> None:
        """Delete the entries of inbounds taken in."""
        if not keys:
            return
        statement = delete(InboxEntry).where(col(InboxEntry.dedup_key).in_(keys))
        try:
            await transaction(self.sessions, lambda session: _execute(session, statement))
        except DatabaseUnavailable as exc:  # taken in all the same; a sweep would find them stored
            log.warning("taken-in inbox entries not deleted: %s", exc)

    async def _intake(self, inbound: Inbound) -> bool:
        """Take one inbound in; False if that failed (its entry stays, and a sweep tries again after the lease)."""
        try:
            received = await self.intake.receive(inbound)
        except Exception as exc:
            await self._failed(inbound, exc)
            return False
        self.taken_in(received)
        return True

    async def _failed(self, inbound: Inbound, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"[:500]
        log.error("inbound %s not taken in, retried after %s: %s", inbound.dedup_key, LEASE, error)
        statement = update(InboxEntry).where(col(InboxEntry.dedup_key) == inbound.dedup_key).values(error=error)
        with contextlib.suppress(DatabaseUnavailable):  # the entry is there all the same
            await transaction(self.sessions, lambda session: _execute(session, statement))

    async def sweep(self, leased_too: bool = False) -> int:
        """Take in entries whose lease ran out (their process died or held too many, or intake failed).

        `leased_too`: also those still leased, which only a process that knows it is alone may take
        (SQLite at start-up: whatever the inbox holds was left by this server's previous run).
        """
        room = min(BATCH, HELD - len(self._held))
        if room <= 0:
            return 0
        until = self.clock.now() + (LEASE if leased_too else timedelta(0))
        try:
            await self._renew()
            entries = await transaction(self.sessions, lambda session: self._claim(session, until, room))
        except DatabaseUnavailable as exc:  # the next sweep tries again
            log.warning("inbox sweep: %s", exc)
            return 0
        entries = [entry for entry in entries if entry[0] not in self._holding]  # ours already (a renewal lost)
        for dedup_key, attempts, data in entries:
            log.warning("taking over inbound %s (attempt %d)", dedup_key, attempts)
            self._take_in(inbound_from_json(data))
        return len(entries)

    async def _renew(self) -> None:
        """Renew the leases of what this process holds for intake, so that no sweep takes it over meanwhile.

        Under a long backlog intake may reach an entry only minutes after it was stored.
        """
        keys, now = [*self._holding, *self._overflow], self.clock.now()
        for start in range(0, len(keys), 1_000):
            statement = (
                update(InboxEntry)
                .where(col(InboxEntry.dedup_key).in_(keys[start : start + 1_000]))
                .where(col(InboxEntry.lease_until) < now + LEASE / 2)
                .values(lease_until=now + LEASE)
            )
            await transaction(self.sessions, lambda session: _execute(session, statement))  # noqa: B023 (awaited here)

    async def _claim(self, session: AsyncSession, until: datetime, limit: int) -> list[tuple[str, int, dict]]:
        now = self.clock.now()
        due = (
            select(InboxEntry.id)
            .where(col(InboxEntry.lease_until) <= until, col(InboxEntry.attempts) < MAX_ATTEMPTS)
            .order_by(col(InboxEntry.id))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(InboxEntry)
            .where(col(InboxEntry.id).in_(due.scalar_subquery()))
            .values(lease_until=now + LEASE, attempts=col(InboxEntry.attempts) + 1)
            .returning(col(InboxEntry.id), col(InboxEntry.dedup_key), col(InboxEntry.attempts), col(InboxEntry.inbound))
        )
        rows = sorted(await _returned(session, claim))
        for _, dedup_key, attempts, _ in rows:
            if attempts == MAX_ATTEMPTS:
                log.error("inbound %s: last attempt; if it fails it stays in the inbox table", dedup_key)
        return [(dedup_key, attempts, data) for _, dedup_key, attempts, data in rows]


class _AutocommitWriter:
    """SQLite in memory (tests): a batch of entries is one INSERT through the app's own engine, in autocommit."""

    def __init__(self, sessions: Sessions) -> None:
        self.engine = sessions.kw["bind"].execution_options(isolation_level="AUTOCOMMIT")
        self.statement = sqlite.insert(InboxEntry.__table__).on_conflict_do_nothing(index_elements=["dedup_key"])

    async def insert(self, rows: list[dict]) -> None:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(self.statement, rows)
        except (OperationalError, DBAPIError, OSError, PoolTimeout) as exc:
            raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc

    async def close(self) -> None:
        pass


class _PostgresWriter:
    """PostgreSQL: a batch of entries is one prepared INSERT, in autocommit, on a connection of the inbox's own.

    Through the app's engine each batch could wait for a pooled connection behind intake and the
    dispatcher, and SQLAlchemy compiled a multi-row INSERT for every batch. Here the batch goes to asyncpg
    as five arrays (`unnest`), prepared once, one round trip, and a busy pool does not hold the answers back.
    A connection the server closed is replaced before the next batch; one that fails during a batch fails
    that batch (503: Telegram sends it again) and is replaced for the next.
    """

    SQL = (
        "INSERT INTO inbox (dedup_key, inbound, received_at, lease_until, attempts)"
        " SELECT * FROM unnest($1::varchar[], $2::json[], $3::timestamp[], $4::timestamp[], $5::int[])"
        " ON CONFLICT (dedup_key) DO NOTHING"
    )
    UTC_COLUMN = UTCDateTime()

    def __init__(self, sessions: Sessions) -> None:
        engine = sessions.kw["bind"]
        _, self.connect_args = engine.dialect.create_connect_args(engine.url)
        for adapter_only in ("prepared_statement_cache_size", "prepared_statement_name_func"):  # SQLAlchemy's own
            self.connect_args.pop(adapter_only, None)
        settings = self.connect_args.setdefault("server_settings", {})
        settings.setdefault("application_name", APPLICATION_NAME)  # so pg_stat_activity tells it apart
        self.connection: asyncpg.Connection | None = None
        self.statement: asyncpg.prepared_stmt.PreparedStatement | None = None

    async def insert(self, rows: list[dict]) -> None:
        when = self.UTC_COLUMN.process_bind_param
        columns = (
            [row["dedup_key"] for row in rows],
            [json.dumps(row["inbound"]) for row in rows],
            [when(row["received_at"], None) for row in rows],
            [when(row["lease_until"], None) for row in rows],
            [row["attempts"] for row in rows],
        )
        try:
            statement = await self._statement()
            await statement.fetch(*columns)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            await self.close()  # whatever state it is in, the next batch starts on a fresh connection
            raise DatabaseUnavailable(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc

    async def _statement(self) -> asyncpg.prepared_stmt.PreparedStatement:
        if self.connection is None or self.connection.is_closed() or self.statement is None:
            await self.close()
            self.connection = await asyncpg.connect(**self.connect_args, timeout=POOL_TIMEOUT)
            self.statement = await self.connection.prepare(self.SQL)
        return self.statement

    async def close(self) -> None:
        connection, self.connection, self.statement = self.connection, None, None
        if connection is not None:
            connection.terminate()  # no goodbye round trip: it may be the broken one


class _SQLiteWriter:
    """SQLite: a batch of entries is written by one call into a thread of its own (BEGIN, INSERT, COMMIT).

    Through SQLAlchemy and aiosqlite the same batch took eight round trips between the event loop and
    the driver's thread, and under load each waited for whatever the loop was running (intake): the
    answers to Telegram waited for intake after all. Values are converted by the columns' own types, so
    SQLAlchemy reads the rows back as if it had written them.
    """

    SQL = (
        "INSERT INTO inbox (dedup_key, inbound, received_at, lease_until, attempts) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (dedup_key) DO NOTHING"
    )
    COLUMNS = ("dedup_key", "inbound", "received_at", "lease_until", "attempts")

    def __init__(self, url: str) -> None:
        self.path = url.split(":///", 1)[1]
        dialect = sqlite.dialect()
        table = InboxEntry.__table__
        self.convert = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in self.COLUMNS]
        self.thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inbox")
        self.connection: sqlite3.Connection | None = None  # opened in the thread, used only there

    async def insert(self, rows: list[dict]) -> None:
        values = [
            tuple(
                row[name] if convert is None else convert(row[name])
                for name, convert in zip(self.COLUMNS, self.convert, strict=True)
            )
            for row in rows
        ]
        try:
            await asyncio.get_running_loop().run_in_executor(self.thread, self._write, values)
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(str(exc)) from exc

    def _write(self, values: list[tuple]) -> None:
        connection = self.connection or self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(self.SQL, values)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # we say BEGIN
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            connection.close()
            raise
        self.connection = connection
        return connection

    async def close(self) -> None:
        def close() -> None:
            if self.connection is not None:
                self.connection.close()

        await asyncio.get_running_loop().run_in_executor(self.thread, close)
        self.thread.shutdown()


Writer = _SQLiteWriter | _PostgresWriter | _AutocommitWriter


def _writer(url: str, engine: AsyncEngine | None, sessions: Sessions) -> Writer:
    """How the inbox's INSERT is written: see each writer's docstring."""
    if engine is not None:
        return _SQLiteWriter(url)
    return _AutocommitWriter(sessions) if is_sqlite(url) else _PostgresWriter(sessions)


async def _execute(session: AsyncSession, statement: Any) -> None:
    await (await session.connection()).execute(statement)


async def _inserted(session: AsyncSession, statement: Any) -> bool:
    return (await (await session.connection()).execute(statement)).rowcount == 1


async def _returned(session: AsyncSession, statement: Any) -> list[Any]:
    return list((await (await session.connection()).execute(statement)).all())
