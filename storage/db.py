"""Database setup for SQLite (default) and PostgreSQL, and the one way to run a transaction."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

log = logging.getLogger(__name__)
T = TypeVar("T")
# Pooled connections per engine: kept open, extra under load, and how long a request waits for a free one
# before it is refused with 503 (DatabaseUnavailable); SQLite's are SQLAlchemy's defaults (writers take turns).
POOL_SIZE = {"postgresql": 10, "sqlite": 5}
POOL_OVERFLOW = {"postgresql": 10, "sqlite": 10}
POOL_TIMEOUT = 30.0
IDLE_PING_SECONDS = 5.0  # a pooled PostgreSQL connection unused this long is checked before it is used again
# SQLite: a commit checkpoints the write-ahead log itself only once it holds this many pages (SQLite's
# default is 1,000); `Checkpoints` does it well before, in a thread beside the writers.
WAL_BACKSTOP_PAGES = 10_000
CHECKPOINT_ATTEMPTS, CHECKPOINT_RETRY_SECONDS = 5, 0.05  # an erasure's checkpoint, when another one is running
WRITER_WAIT_SECONDS = 30.0  # SQLite: how long a transaction waits for its turn (as the busy timeout below)
_WRITERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # SQLite engine -> its transactions' turn
Sessions = async_sessionmaker[AsyncSession]


class DatabaseUnavailable(Exception):
    """The database could not be reached or refused the write; the caller should answer 503."""


# What a request can meet when the database cannot serve it, to be answered with 503: the pool's
# TimeoutError comes straight from reads outside `transaction` when every connection stays busy.
UNAVAILABLE = (DatabaseUnavailable, PoolTimeout)


class Deadlocked(DatabaseUnavailable):
    """Each attempt lost a deadlock with concurrent transactions (PostgreSQL); running it again may succeed."""


class Conflict(Exception):
    """A concurrent transaction committed what this one was deciding on (PostgreSQL, READ COMMITTED): run it again."""


def is_sqlite(url: str) -> bool:
    """Whether a database URL names SQLite."""
    return url.startswith("sqlite")


def sqlite_file(url: str) -> str | None:
    """The file a SQLite database URL names; None for PostgreSQL or an in-memory database."""
    if not is_sqlite(url) or ":///" not in url:
        return None
    path = url.split(":///", 1)[1]
    return path if path and path != ":memory:" else None


def create_engine(url: str) -> AsyncEngine:
    """Create an async engine; on SQLite every transaction takes the write lock at BEGIN."""
    if not is_sqlite(url):
        engine = create_async_engine(url, **_pool("postgresql"))
        _ping_when_idle(engine)
        return engine
    file = sqlite_file(url)
    if file is not None:
        Path(file).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # In memory: one connection (StaticPool), no pool to size.
    engine = create_async_engine(url, connect_args={"timeout": 30}, **(_pool("sqlite") if file else {}))

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed in the file: erasure is for real
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")  # see Checkpoints
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # IMMEDIATE: two writers never both read then fail to upgrade their lock.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def inbox_url(url: str) -> str:
    """Where the inbox (bot/intake/inbox.py) lives: on SQLite a file of its own beside the database, else the database.

    SQLite has one writer per file: in the database's own file, storing an update before its answer would
    wait for intake's transactions, which are what the inbox is there not to wait for.
    """
    path = sqlite_file(url)
    if path is None:
        return url
    prefix = url.split(":///", 1)[0]
    database = Path(path)
    suffix = database.suffix or ".db"
    return f"{prefix}:///{database.with_name(f'{database.stem}-inbox{suffix}')}"


def _pool(kind: str) -> dict[str, float]:
    return {"pool_size": POOL_SIZE[kind], "max_overflow": POOL_OVERFLOW[kind], "pool_timeout": POOL_TIMEOUT}


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Check a pooled connection before use when it sat unused for a while, as a restarted server leaves dead ones.

    `pool_pre_ping` checks at every checkout: two more round trips for every transaction, which under load
    cost more than the short transactions themselves. A connection in steady use is not checked; one
    that dies while in use fails its request with 503 and SQLAlchemy then replaces the pool's connections.
    """

    @event.listens_for(engine.sync_engine, "checkin")
    def _checkin(_dbapi_connection, record):  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checkout(dbapi_connection, record, _proxy):  # type: ignore[no-untyped-def]
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since > IDLE_PING_SECONDS:
            try:
                dbapi_connection.ping()
            except Exception as exc:  # whatever went wrong, this connection is no use: the pool takes another
                raise DisconnectionError(str(exc)) from exc


def sessionmaker(engine: AsyncEngine) -> Sessions:
    """Sessions whose objects stay readable after commit."""
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


@asynccontextmanager
async def database(url: str) -> AsyncIterator[Sessions]:
    """Sessions on a database for one command line run; the engine is closed afterwards."""
    engine = create_engine(url)
    try:
        yield sessionmaker(engine)
    finally:
        await engine.dispose()


def _reason(exc: BaseException) -> str:
    """The database's own words: SQLAlchemy's text may open with a note on autoflush instead."""
    text = str(getattr(exc, "orig", None) or exc)
    return (text.splitlines() or [type(exc).__name__])[0]


async def transaction(sessions: Sessions, work: Callable[[AsyncSession], Awaitable[T]], attempts: int = 3) -> T:
    """Run `work` in one transaction, retrying when a concurrent writer won a unique key (or `work` saw one win).

    The retry sees the winner's rows, so work written as "look up, else insert" converges.
    Raises DatabaseUnavailable when the database cannot be reached.
    """
    for attempt in range(1, attempts + 1):
        try:
            async with _turn(sessions), sessions() as session, session.begin():
                return await work(session)
        except (IntegrityError, Conflict):
            if attempt == attempts:
                raise
            log.debug("unique key race, retrying (attempt %d)", attempt)
        except (OperationalError, DBAPIError, OSError, PoolTimeout) as exc:  # PoolTimeout: every connection busy
            if not _lost_race(exc):
                raise DatabaseUnavailable(_reason(exc)) from exc
            if attempt == attempts:
                raise Deadlocked(_reason(exc)) from exc
            log.debug("deadlock, retrying (attempt %d)", attempt)
    raise AssertionError("unreachable")


def _lost_race(exc: Exception) -> bool:
    """PostgreSQL chose this transaction to break a deadlock, or to fail a serialization conflict."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) in ("40P01", "40001")


@asynccontextmanager
async def _turn(sessions: Sessions) -> AsyncIterator[None]:
    """SQLite: wait for this process's previous transactions to end, first come first served.

    SQLite has one writer at a time, and every transaction here takes the write lock at BEGIN. Left to
    SQLite, waiting transactions sleep and poll in their threads (its busy handler), so a writer that starts
    again at once, such as intake under a flood of inbounds, keeps the dispatcher out for as long as the
    flood lasts. Queued here they take turns, and no thread sleeps. PostgreSQL needs nothing of the kind.
    """
    engine: AsyncEngine = sessions.kw["bind"]
    if engine.dialect.name != "sqlite":
        yield
        return
    turn = _WRITERS.setdefault(engine.sync_engine, asyncio.Lock())
    try:
        async with asyncio.timeout(WRITER_WAIT_SECONDS):
            await turn.acquire()
    except TimeoutError:
        raise DatabaseUnavailable(f"no turn to write within {WRITER_WAIT_SECONDS:g} s") from None
    try:
        yield
    finally:
        turn.release()


async def checkpoint(sessions: Sessions) -> bool:
    """SQLite: move the write-ahead log into the database file and empty it; False if a reader held it back.

    With `secure_delete` on, the file then holds zeros where deleted rows were (used after an erasure).
    A checkpoint `Checkpoints` is running meanwhile makes this one busy at once: it is tried again, a few
    times. PostgreSQL has nothing to do here: its dead rows wait for VACUUM.
    """
    engine: AsyncEngine = sessions.kw["bind"]
    if engine.dialect.name != "sqlite":
        return True
    async with engine.connect() as connection:  # no statement through SQLAlchemy: no BEGIN IMMEDIATE
        raw = await connection.get_raw_connection()
        for attempt in range(1, CHECKPOINT_ATTEMPTS + 1):
            started = time.monotonic()
            cursor = await raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy, _, _ = await cursor.fetchone()
            # Busy at once: another checkpoint. Busy after a wait: readers held it back for the busy timeout.
            if not busy or attempt == CHECKPOINT_ATTEMPTS or time.monotonic() - started > 1.0:
                return not busy
            await asyncio.sleep(CHECKPOINT_RETRY_SECONDS)
    raise AssertionError("unreachable")


class Checkpoints:
    """SQLite: moves the write-ahead log into the database file from a thread of its own (`kindling serve` ticks it).

    Left to SQLite, the commit that takes the log past 1,000 pages copies them into the database file and
    syncs it before it returns, still holding the one write lock: a batch of 200 due steps writes about
    470 pages, so every other batch paid for it, about 15% of its time (BENCHMARKS.md). Here one call
    (PASSIVE: it waits for no reader and no writer) does it beside the writers, which go on meanwhile. The
    commits still checkpoint themselves past WAL_BACKSTOP_PAGES, should this fall behind or not run (the
    command line tools do not run it). Nothing to do on PostgreSQL or an in-memory database.
    """

    SECONDS = 0.25  # how often `kindling serve` runs it

    def __init__(self, sessions: Sessions) -> None:
        self.path = sqlite_file(str(sessions.kw["bind"].url))
        self.thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoints")
        self.connection: sqlite3.Connection | None = None  # opened in the thread, used only there

    async def run(self) -> None:
        """Checkpoint what the log holds now; a failure is logged, and the commits' own checkpoint stays."""
        if self.path is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self.thread, self._checkpoint)
        except sqlite3.Error as exc:
            log.warning("checkpoint failed: %s", exc)

    def _checkpoint(self) -> None:
        if self.connection is None:  # mode=rw: a database file that is gone is not made again, empty
            uri = f"{Path(self.path).resolve().as_uri()}?mode=rw"
            self.connection = sqlite3.connect(uri, uri=True, timeout=WRITER_WAIT_SECONDS, isolation_level=None)
        self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    async def close(self) -> None:
        def close() -> None:
            if self.connection is not None:
                self.connection.close()
                self.connection = None

        if self.path is not None:  # in the thread, after a checkpoint that may still be running
            await asyncio.get_running_loop().run_in_executor(self.thread, close)
        self.thread.shutdown()
