"""The `kindling` command line: its parser, serve, migrate and lead show; each other group has its module.

Commands: serve, migrate, lint, preview, simulate, report, lead, operator, apikey, webhooks, whatsapp, score.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from bot.app import create_app
from bot.cli import apikeys, leadlist, operators, privacy, reports, score, webhooks, whatsapp
from bot.cli.flows import lint, preview_flow, simulate_flow
from bot.config import ConfigError, Settings, load_settings
from bot.intake.messages import MessageError
from bot.reports.leadview import format_lead, lead_report
from flows.answers import AnswersError
from flows.clock import SystemClock
from flows.likelihood import lead_likelihood
from storage.db import create_engine, sessionmaker
from storage.leads import LeadNotFound, get_lead
from storage.migrate import upgrade
from storage.privacy import LeadErased

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
    lint = commands.add_parser("lint", help="check flow files; prints file:line: message, exit 1 on problems")
    lint.add_argument("files", nargs="*", type=Path, help="flow files (default: every flow in the templates folder)")
    preview = commands.add_parser("preview", help="show a flow's steps as a lead would see them, with send times")
    preview.add_argument("flow", help="the flow's slug (its file name without .j2) or its file (templates/flows/x.j2)")
    preview.add_argument("--step", help="only this step")
    who = preview.add_mutually_exclusive_group()
    who.add_argument("--lead", type=int, help="render for this lead from the database")
    who.add_argument("--sample", type=Path, help="a JSON or TOML file of lead fields over the sample lead")
    preview.add_argument("--locale", help="the lead's language, like ru or zh-CN: its steps' locale variants")
    sim = commands.add_parser("simulate", help="the timeline a made-up lead would get from a flow (sends nothing)")
    sim.add_argument("flow", help="the flow's slug or its file (templates/flows/x.j2)")
    sim.add_argument("--days", type=int, default=90, help="how far to look ahead (default 90)")
    sim.add_argument("--events", type=Path, help='a JSON list like [{"after": "2d", "type": "message"}]')
    sim.add_argument("--sample", type=Path, help="a JSON or TOML file of lead fields over the sample lead")
    sim.add_argument("--locale", help="the lead's language, like ru or zh-CN: its steps' locale variants")
    reports.add_command(commands)
    lead = commands.add_parser("lead", help="list, look at, export or erase leads").add_subparsers(
        dest="lead_command", required=True
    )
    leadlist.add_list(lead)
    show = lead.add_parser("show", help="a lead with score explanation, stages, conversations, events")
    show.add_argument("id", type=int)
    show.add_argument("--format", choices=("text", "json"), default="text")
    export = lead.add_parser("export", help="everything stored about a lead, as JSON (for a data access request)")
    export.add_argument("id", type=int)
    export.add_argument("--output", type=Path, help="write to this file instead of standard output")
    erase = lead.add_parser("erase", help="erase a lead everywhere, keeping only hashes so it is not contacted again")
    erase.add_argument("id", type=int)
    erase.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    operators.add_command(commands)
    apikeys.add_command(commands)
    webhooks.add_command(commands)
    whatsapp.add_command(commands)
    score.add_command(commands)
    return top


ON_THE_DATABASE = ("operator", "apikey", "webhooks", "lead", "report", "score")  # serve and migrate migrate anyway


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the exit status."""
    args = parser().parse_args(argv)
    chatty = args.command in ("serve", "migrate")  # the others print their own results
    level = logging.INFO if chatty else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every tick at INFO
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry the bot token in the URL
    try:
        settings = load_settings(args.config)
        if args.command in ON_THE_DATABASE:  # a fresh install's first `operator add` finds the tables made
            asyncio.run(migrate(settings))
        if args.command == "serve":
            return serve(settings.with_(host=args.host or settings.host, port=args.port or settings.port))
        if args.command == "migrate":
            asyncio.run(migrate(settings))
            print(f"database is up to date: {_safe_url(settings.database_url)}")
            return 0
        if args.command == "lint":
            return lint(settings, args.files)
        if args.command == "simulate":
            return simulate_flow(settings, args.flow, args.days, args.events, args.sample, args.locale)
        if args.command == "preview":
            return asyncio.run(preview_flow(settings, args.flow, args.step, args.lead, args.sample, args.locale))
        if args.command == "operator":
            return asyncio.run(operators.run(settings, args))
        if args.command == "report":
            return asyncio.run(reports.run(settings, args))
        if args.command == "apikey":
            return asyncio.run(apikeys.run(settings, args))
        if args.command == "webhooks":
            return asyncio.run(webhooks.run(settings, args))
        if args.command == "whatsapp":
            return asyncio.run(whatsapp.run(settings, args))
        if args.command == "score":
            return asyncio.run(score.run(settings, args))
        return asyncio.run(lead(settings, args))
    except LeadErased as exc:
        print(exc, file=sys.stderr)
        return 1
    except LeadNotFound as exc:
        print(f"no lead {exc.args[0]}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except (MessageError, AnswersError) as exc:
        print(f"template error: {exc}", file=sys.stderr)
        return 2
    except (OSError, SQLAlchemyError) as exc:
        print(f"database error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1


def serve(settings: Settings) -> int:
    """Migrate, then serve until interrupted."""
    asyncio.run(migrate(settings))
    log.info("database %s is up to date", _safe_url(settings.database_url))
    app = create_app(settings)
    app.on_startup.append(_freeze_what_startup_made)  # after the app's own start-up (its cleanup context)
    try:
        web.run_app(app, host=settings.host, port=settings.port, print=log.info)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(
            f"port {settings.port} on {settings.host} is taken by another program: stop it, "
            "or choose a free port with --port, KINDLING_PORT or [server] port in config.toml",
            file=sys.stderr,
        )
        return 1
    return 0


async def _freeze_what_startup_made(_app: web.Application) -> None:
    """Leave the objects made at start-up out of every later garbage collection.

    Modules, mappers, templates and flows live as long as the process, yet each full collection walked
    them all (70-100 ms with the event loop stopped, measured under a flood of Telegram updates), holding
    back every answer due meanwhile. Frozen, a full collection walks only what was made since (6-12 ms).
    """
    gc.collect()
    gc.freeze()


async def migrate(settings: Settings) -> None:
    """Apply pending migrations."""
    engine = create_engine(settings.database_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def lead(settings: Settings, args: argparse.Namespace) -> int:
    """Run `kindling lead list|show|export|erase`."""
    if args.lead_command == "list":
        return await leadlist.run(settings, args)
    if args.lead_command == "export":
        return await privacy.export(settings, args.id, args.output)
    if args.lead_command == "erase":
        return await privacy.erase(settings, args.id, args.yes)
    return await show_lead(settings, args.id, args.format)


async def show_lead(settings: Settings, lead_id: int, output: str) -> int:
    """Print one lead as text or JSON."""
    engine = create_engine(settings.database_url)
    now = SystemClock().now()
    try:
        sessions = sessionmaker(engine)
        report = await lead_report(sessions, settings, lead_id, now)
        async with sessions() as session:  # the learned likelihood, as the console and the API show it
            shown = await lead_likelihood(session, await get_lead(session, lead_id), now)
    except LeadNotFound:
        print(f"no lead {lead_id}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    report["likelihood"], report["likelihood_model"] = (shown["likelihood"], shown["model"]) if shown else (None, None)
    report["likelihood_factors"] = shown["factors"] if shown else []  # as GET /api/leads/{id} has them
    print(json.dumps(report, indent=2, ensure_ascii=False) if output == "json" else format_lead(report))
    return 0


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':')[0]}{at}{host}" if at else url
