"""Bring a database to the newest schema with Alembic (run by `kindling serve` and `kindling migrate`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at our migrations folder and the given database."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


MIGRATION_LOCK = 0x4B696E646C  # any constant: the PostgreSQL advisory lock that serializes migrations


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply every pending migration (up to `revision`) over an open engine."""
    config = alembic_config(str(engine.url.render_as_string(hide_password=False)))

    def _upgrade(connection) -> None:  # type: ignore[no-untyped-def]
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.connect() as connection, foreign_keys_off(connection), connection.begin():
        if engine.dialect.name == "postgresql":
            # Instances started together migrate one at a time; the next finds the schema current.
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        await connection.run_sync(_upgrade)
        if engine.dialect.name == "sqlite":
            broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).all()
            if broken:  # raised inside the transaction: the migration is rolled back
                raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")


@asynccontextmanager
async def foreign_keys_off(connection: AsyncConnection) -> AsyncIterator[None]:
    """SQLite: no foreign key checks while migrating, which rebuilds tables others refer to (as SQLite advises).

    A rebuild drops the old table, and with checks on that deletes (or fails on) the rows referring to it.
    The pragma only takes effect outside a transaction, so it is set on the driver's connection before BEGIN.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    driver = (await connection.get_raw_connection()).driver_connection
    await driver.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        await driver.execute("PRAGMA foreign_keys=ON")


async def recreate(engine: AsyncEngine) -> None:
    """Drop everything and migrate from scratch; for tests and benchmarks only (SQLite: use a new file)."""
    if engine.dialect.name == "postgresql":
        async with engine.begin() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
    await upgrade(engine)
