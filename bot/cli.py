"""The `kindling` command: serve, migrate, lead show."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from bot.app import create_app
from bot.config import ConfigError, Settings, load_settings
from bot.leadview import format_lead, lead_report
from bot.messages import MessageError
from flows.clock import SystemClock
from storage.db import create_engine, sessionmaker
from storage.leads import LeadNotFound
from storage.migrate import upgrade

log = logging.getLogger("kindling")


def parser() -> argparse.ArgumentParser:
    """The command line, one sub-command per task."""
    top = argparse.ArgumentParser(prog="kindling", description="Lead-nurturing chat server.")
    top.add_argument("--config", type=Path, help="settings file (default: $KINDLING_CONFIG or ./config.toml)")
    commands = top.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="migrate the database and run the server")
    serve.add_argument("--host", help="address to listen on (default from config)")
    serve.add_argument("--port", type=int, help="port to listen on (default from config)")
    commands.add_parser("migrate", help="bring the database to the newest schema")
    lead = commands.add_parser("lead", help="look at a lead").add_subparsers(dest="lead_command", required=True)
    show = lead.add_parser("show", help="a lead with score explanation, stages, conversations, events")
    show.add_argument("id", type=int)
    show.add_argument("--format", choices=("text", "json"), default="text")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every tick at INFO
    try:
        settings = load_settings(args.config)
        if args.command == "serve":
            return serve(settings.with_(host=args.host or settings.host, port=args.port or settings.port))
        if args.command == "migrate":
            asyncio.run(migrate(settings))
            print(f"database is up to date: {_safe_url(settings.database_url)}")
            return 0
        return asyncio.run(show_lead(settings, args.id, args.format))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except MessageError as exc:
        print(f"template error: {exc}", file=sys.stderr)
        return 2
    except (OSError, SQLAlchemyError) as exc:
        print(f"database error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1


def serve(settings: Settings) -> int:
    """Migrate, then serve until interrupted."""
    asyncio.run(migrate(settings))
    log.info("database %s is up to date", _safe_url(settings.database_url))
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=log.info)
    return 0


async def migrate(settings: Settings) -> None:
    """Apply pending migrations."""
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def show_lead(settings: Settings, lead_id: int, output: str) -> int:
    """Print one lead as text or JSON."""
    engine = create_engine(settings.database_url)
    try:
        report = await lead_report(sessionmaker(engine), settings, lead_id, SystemClock().now())
    except LeadNotFound:
        print(f"no lead {lead_id}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    print(json.dumps(report, indent=2, ensure_ascii=False) if output == "json" else format_lead(report))
    return 0


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':')[0]}{at}{host}" if at else url
