"""`kindling report funnel|flows|handoffs`: the reports on the command line, as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import sys

from bot.config import Settings
from bot.reports import BY, REPORTS, ReportError, build_report, parse_query
from bot.reports.output import FORMATS, render
from flows.clock import SystemClock
from flows.library import FlowLibrary
from storage.db import create_engine, sessionmaker


def add_command(commands: argparse._SubParsersAction) -> None:
    """`kindling report NAME [--since D] [--until D] [--by source|campaign|channel] [--format F]`."""
    report = commands.add_parser("report", help="funnel, flow and handoff reports")
    report.add_argument("name", choices=REPORTS, help="which report")
    report.add_argument("--since", help="start of the period: 2026-01-01 or 2026-01-01T09:00Z (default: 30 days ago)")
    report.add_argument("--until", help="end of the period; a date means the end of that day (default: now)")
    report.add_argument("--by", choices=BY, help="break the funnel or handoff report down by this")
    report.add_argument("--format", choices=FORMATS, default="table", help="table (default), csv or json")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Print the report; exit status 2 with a message for a bad period or breakdown."""
    try:
        query = parse_query(args.since, args.until, args.by, SystemClock().now())
    except ReportError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    library = FlowLibrary(settings.templates, settings.stages.order)
    library.load()
    engine = create_engine(settings.database_url)
    try:
        report = await build_report(args.name, sessionmaker(engine), settings, library, query)
    except ReportError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    finally:
        await engine.dispose()
    sys.stdout.write(render(report, args.format).rstrip("\n") + "\n")
    return 0
