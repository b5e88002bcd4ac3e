"""Bring a database to the newest schema with Alembic (run by `kindling serve` and `kindling migrate`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at our migrations folder and the given database."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


MIGRATION_LOCK = 0x4B696E646C  # any constant: the PostgreSQL advisory lock that serializes migrations


async def upgrade(engine: AsyncEngine) -> None:
    """Apply every pending migration over an open engine."""
    config = alembic_config(str(engine.url.render_as_string(hide_password=False)))

    def _upgrade(connection) -> None:  # type: ignore[no-untyped-def]
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # Instances started together migrate one at a time; the next finds the schema current.
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        await connection.run_sync(_upgrade)


async def recreate(engine: AsyncEngine) -> None:
    """Drop everything and migrate from scratch; for tests and benchmarks only (SQLite: use a new file)."""
    if engine.dialect.name == "postgresql":
        async with engine.begin() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
    await upgrade(engine)
