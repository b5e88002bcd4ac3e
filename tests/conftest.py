"""Fixtures: the real app on a real database (SQLite or PostgreSQL), a movable clock, no real network.

KINDLING_TEST_DATABASE_URL picks the database; the default is a fresh SQLite file per test.
For PostgreSQL the schema is migrated once per run and every table is emptied before each test.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel, select

from bot.app import create_app
from bot.cli import main as kindling
from bot.config import Settings, WebhookSource, load_settings
from bot.services import SERVICES, Services
from flows.clock import FrozenClock
from storage import models  # noqa: F401
from storage.db import create_engine, is_sqlite, sessionmaker
from storage.migrate import recreate

from fake_graph import fake_graph  # noqa: F401  (the Graph API fixture)
from fake_smtp import fake_smtp  # noqa: F401  (the SMTP relay fixture)
from fake_telegram import TOKEN, FakeTelegram, fake_telegram  # noqa: F401  (the fake Bot API fixture)

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-api-key"
PASSWORD = "correct horse battery"  # of the operators `add_operator` makes
TELEGRAM_SECRET = "test-telegram-secret"  # what `telegram_client`'s Telegram webhook expects
ACME = WebhookSource("acme", "test-webhook-secret", None)  # `telegram_client`'s webhook source (no reply URL)
# The flows Kindling ships; tests run on copies of these only, so flows a marketer adds never change a test.
SHIPPED_FLOWS = ("new-lead-7-in-7", "pricing-not-ready", "speed-to-lead", "stuck-reengage")
# Likewise the quick answers and widget texts it ships, one file a language.
SHIPPED_LANGUAGE_FILES = ("en.toml", "ru.toml", "zh.toml")


# --- no real network -------------------------------------------------------------------------


def _is_local(host: Any) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_real_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach a host other than this machine fails the test."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not _is_local(host):
            raise AssertionError(f"test tried to reach the network: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):  # type: ignore[no-untyped-def]
        if isinstance(address, tuple) and not _is_local(address[0]):
            raise AssertionError(f"test tried to reach the network: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


# --- database ----------------------------------------------------------------------------------


# Tests run one after another in one process when spread over several (`make test`: pytest-xdist, `--dist
# loadgroup`): each Chromium test and each test running `kindling serve` processes takes a core of its own, and two
# at once on a 2-core machine left each with half (the crash test's lease ran out mid-send, pages timed out).
SERVER_TESTS = {"test_burst", "test_crash_takeover", "test_two_instances"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group the heavy tests (above); with KINDLING_TEST_DATABASE_ONLY set (CI's PostgreSQL pass), skip what the
    SQLite pass covers.

    The tests that touch no test database behave the same on either; the browser tests (`test_*browser.py`)
    test what Chromium does with our pages and widget, while what they ask of the server is the same code the
    HTTP and WebSocket tests drive on this database. Chromium is a large share of a pass's CPU.
    """
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "browser" in fixtures or "new_page" in fixtures:
            item.add_marker(pytest.mark.xdist_group("browser"))
        elif item.path.stem in SERVER_TESTS:
            item.add_marker(pytest.mark.xdist_group("servers"))
    if not os.environ.get("KINDLING_TEST_DATABASE_ONLY"):
        return
    no_database = pytest.mark.skip(reason="touches no test database: the SQLite pass runs it")
    browser = pytest.mark.skip(reason="a browser test: the SQLite pass runs it")
    for item in items:
        if "migrated_database" not in getattr(item, "fixturenames", ()):
            item.add_marker(no_database)
        elif item.path.stem.endswith("browser"):
            item.add_marker(browser)


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database URL migrated to the newest schema once per test run."""
    url = os.environ.get("KINDLING_TEST_DATABASE_URL") or ""
    if not url:
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'template.db'}"
    elif worker := os.environ.get("PYTEST_XDIST_WORKER"):  # the run is spread over processes: one database each
        url = asyncio.run(_database_of_worker(url, worker))
    asyncio.run(_fresh_schema(url))
    return url


async def _database_of_worker(url: str, worker: str) -> str:
    """A database of its own for one worker process (`<name>_gw0`), made on the server of `url`."""
    base = make_url(url)
    name = f"{base.database}_{worker}"
    connection = await asyncpg.connect(base.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return base.set(database=name).render_as_string(hide_password=False)


async def _fresh_schema(url: str) -> None:
    engine = create_engine(url)
    try:
        await recreate(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def database_url(migrated_database: str, tmp_path: Path) -> str:
    """An empty, migrated database for one test."""
    if is_sqlite(migrated_database):
        template = Path(migrated_database.split(":///", 1)[1])
        copy = tmp_path / "kindling.db"
        shutil.copy(template, copy)
        return f"sqlite+aiosqlite:///{copy}"
    connection = await asyncpg.connect(migrated_database.replace("+asyncpg", "", 1))
    try:
        await connection.execute(await _emptying_script(connection))
    finally:
        await connection.close()
    return migrated_database


async def _emptying_script(connection: asyncpg.Connection) -> str:
    """One round trip that empties every table and restarts every id sequence.

    DELETE, children first, rather than TRUNCATE: the tables a test fills are small, and TRUNCATE's new files
    for every table cost about three times as much per test (the PostgreSQL run is the long pole of CI). With
    foreign-key triggers off for the transaction (`session_replication_role`): checked row by row, emptying
    what a 10,000-message test left took a core for tens of seconds.
    """
    sequences = await connection.fetch(
        "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences WHERE schemaname = current_schema()"
    )
    deletes = "".join(f'DELETE FROM "{table.name}";' for table in reversed(SQLModel.metadata.sorted_tables))
    restarts = "".join(f"ALTER SEQUENCE {name} RESTART;" for (name,) in sequences)
    return f"BEGIN;SET LOCAL session_replication_role = replica;{deletes}{restarts}COMMIT;"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Any]:
    """Sessions on the test database, for looking at what the app stored."""
    engine = create_engine(database_url)
    yield sessionmaker(engine)
    await engine.dispose()


# --- the app -----------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FrozenClock:
    """The time as the app sees it; tests move it with `clock.advance(...)`."""
    return FrozenClock()


@pytest.fixture(scope="session")
def shipped_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped templates with the shipped flows, copied once for the tests that only read them."""
    return shipped_templates(tmp_path_factory.mktemp("shipped") / "templates")


@pytest.fixture
def settings(database_url: str, shipped_folder: Path) -> Iterator[Settings]:
    """The shipped config.toml and flows, on the test database, with an API key.

    The templates folder is shared by the tests (each app start lints its flows once for all of them): a test
    that changes a file in it fails, and the folder is copied again for the next. Such a test makes its own:
    `shipped_templates(tmp_path / "templates")`.
    """
    before = _contents(shipped_folder)
    shipped = load_settings(ROOT / "config.toml", env={})
    yield shipped.with_(database_url=database_url, templates=shipped_folder, api_key=API_KEY)
    if _contents(shipped_folder) != before:
        shutil.rmtree(shipped_folder)
        shipped_templates(shipped_folder)
        pytest.fail(f"this test changed the shared templates folder {shipped_folder}: give it a copy of its own")


def _contents(folder: Path) -> str:
    """A digest of every file's name and bytes under `folder`."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def make_client(aiohttp_client, clock: FrozenClock) -> Callable:  # type: ignore[no-untyped-def]
    """Start the real app with given settings; returns its test client."""

    async def start(settings: Settings):  # type: ignore[no-untyped-def]
        return await aiohttp_client(create_app(settings, clock=clock, ticks=False))

    return start


@pytest.fixture
async def client(make_client, settings: Settings):  # type: ignore[no-untyped-def]
    """A client of the real app on the test database, Telegram and webhooks off."""
    return await make_client(settings)


@pytest.fixture
async def telegram_client(make_client, settings: Settings, fake_telegram: FakeTelegram):  # noqa: F811
    """A client of the real app with every inbound channel on: Telegram (on the fake Bot API) and `acme` webhooks."""
    return await make_client(
        settings.with_(
            telegram_token=TOKEN,
            telegram_secret=TELEGRAM_SECRET,
            telegram_api_url=fake_telegram.url,
            webhook_sources={"acme": ACME},
        )
    )


def templates_with(folder: Path, flows: dict[str, str]) -> Path:
    """A copy of the shipped templates (messages, partials, shipped answers and widget texts), given flows only."""
    shutil.copytree(ROOT / "templates", folder)
    for shipped in (folder / "flows").glob("*.j2"):
        shipped.unlink()
    for added in [*(folder / "_answers").glob("*"), *(folder / "_widget").glob("*")]:
        if added.name not in SHIPPED_LANGUAGE_FILES:
            added.unlink()
    for slug, source in flows.items():
        (folder / "flows" / f"{slug}.j2").write_text(source)
    return folder


def shipped_templates(folder: Path) -> Path:
    """A copy of the shipped templates with only the shipped flows (none a marketer added)."""
    shipped = {slug: (ROOT / "templates" / "flows" / f"{slug}.j2").read_text() for slug in SHIPPED_FLOWS}
    return templates_with(folder, shipped)


def services_of(client) -> Services:  # type: ignore[no-untyped-def]
    """The running app's services (to drain background sends or run a tick)."""
    app: web.Application = client.server.app
    return app[SERVICES]


async def rows(db, model, *where) -> list:  # type: ignore[no-untyped-def]
    """All rows of a table matching conditions, in id order."""
    async with db() as session:
        statement = select(model).where(*where)
        order = getattr(model, "id", None)
        if order is not None:
            statement = statement.order_by(order)
        return list((await session.exec(statement)).all())


# --- the console -------------------------------------------------------------------------------


@pytest.fixture
def run_kindling(monkeypatch, database_url, capsys):  # type: ignore[no-untyped-def]
    """Run `kindling ...` in-process on the test database; returns (exit status, stdout, stderr)."""
    monkeypatch.setenv("KINDLING_DATABASE_URL", database_url)
    monkeypatch.delenv("KINDLING_CONFIG", raising=False)

    async def run(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        status = await asyncio.to_thread(kindling, ["--config", str(ROOT / "config.toml"), *args])
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def add_operator(run_kindling):  # type: ignore[no-untyped-def]
    """`kindling operator add NAME --role ROLE --password-stdin`, which must succeed."""

    async def add(name: str, role: str, password: str = PASSWORD) -> None:
        status, out, err = await run_kindling(
            "operator", "add", name, "--role", role, "--password-stdin", stdin=password
        )
        assert status == 0, err

    return add
