"""Funnel, flow and handoff reports: one place that the CLI, the API and the console all call, so they agree.

Reports read what was recorded for them as it happened (see flows.history), never the event log,
so they stay fast on millions of leads. Also one lead's whole story (`leadview.py`).
May import bot.config, bot.web, flows and storage; the CLI, the API and the console import it.
"""

from __future__ import annotations

from sqlalchemy import text

from bot.config import Settings
from bot.reports import flowreport
from bot.reports.funnel import funnel
from bot.reports.handoffs import handoffs
from bot.reports.period import BY, Query, ReportError, parse_query
from flows.library import FlowLibrary
from storage.db import Sessions

REPORTS = ("funnel", "flows", "handoffs")
_WORK_MEM = text("SET LOCAL work_mem = '64MB'")
_NO_JIT = text("SET LOCAL jit = off")

__all__ = ["BY", "REPORTS", "Query", "ReportError", "build_report", "parse_query"]


async def build_report(name: str, sessions: Sessions, settings: Settings, library: FlowLibrary, query: Query) -> dict:
    """The named report as plain data (what JSON shows; tables, CSV and charts are drawn from it)."""
    async with sessions() as session:
        if session.bind.dialect.name == "postgresql":
            # Percentiles sort in memory instead of spilling to disk, and no query is compiled: here JIT
            # compilation took longer (0.3 s) than it saved. Only for this read-only transaction.
            await session.exec(_WORK_MEM)
            await session.exec(_NO_JIT)
        if name == "funnel":
            return await funnel(session, settings.stages, query)
        if name == "flows":
            return await flowreport.flows(session, library, query)
        if name == "handoffs":
            return await handoffs(session, query)
    raise ReportError(f"unknown report {name!r}: {', '.join(REPORTS)}")
