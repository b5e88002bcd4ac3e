"""Alembic environment: runs migrations over the async engine Kindling uses."""

import asyncio

from alembic import context
from sqlmodel import SQLModel

from storage import models  # registers the tables
from storage.db import create_engine
from storage.migrate import foreign_keys_off

target_metadata = SQLModel.metadata


def _render_item(kind: str, obj: object, _context: object) -> str | bool:
    """A UTC column renders as the plain DateTime it stores: a migration imports no application code."""
    if kind == "type" and isinstance(obj, models.UTCDateTime):
        return "sa.DateTime()"
    return False


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection, foreign_keys_off(connection):
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_migrate(context.config.get_main_option("sqlalchemy.url")))
