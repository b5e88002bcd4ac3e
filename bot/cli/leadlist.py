"""`kindling lead list`: leads filtered by stage, source, channel, needs-reply and activity, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, datetime, time
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Settings
from bot.reports.output import table
from bot.web.times import in_utc
from flows.clock import SystemClock
from flows.durations import parse_duration
from flows.reactions import lead_label
from storage.db import database
from storage.leadsearch import LeadFilter, filtered_leads, last_activity
from storage.models import Conversation, Lead

DEFAULT_LIMIT = 50
HEADER = ["id", "label", "stage", "score", "source", "channel", "last activity"]


class ListError(ValueError):
    """A filter that cannot be used; the message says what to write instead."""


def add_list(lead: argparse._SubParsersAction) -> None:
    """`kindling lead list [--stage S] [--source S] [--channel C] [--needs-reply] [--since T] [--limit N] [--json]`."""
    listing = lead.add_parser("list", help="leads, most recently active first, filtered")
    listing.add_argument("--stage", help="only leads at this stage")
    listing.add_argument("--source", help="only leads whose first touch came from this source")
    listing.add_argument("--channel", help="only leads with a conversation on this channel (webchat, telegram, ...)")
    listing.add_argument("--needs-reply", action="store_true", help="only leads waiting for an operator's answer")
    listing.add_argument("--since", help="only leads active since: a date (2026-01-31) or a duration ago (7d, 12h)")
    listing.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many (default {DEFAULT_LIMIT})"
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Print the matching leads; exit status 2 with a message for a filter that cannot be used."""
    now = SystemClock().now()
    try:
        wanted = LeadFilter(
            stage=_stage(args.stage, settings.stages.order),
            source=args.source,
            channel=args.channel,
            needs_reply=args.needs_reply,
            active_since=since(args.since, now) if args.since else None,
        )
        if args.limit < 1:
            raise ListError(f"--limit must be at least 1, not {args.limit}")
    except ListError as exc:
        print(f"lead list: {exc}", file=sys.stderr)
        return 2
    async with database(settings.database_url) as sessions, sessions() as session:
        found = await listed(session, wanted, args.limit)
    if args.json:
        print(json.dumps(found, indent=2, ensure_ascii=False))
    elif not found:
        print("no lead matches")
    else:
        rows = [[lead[key] if lead[key] is not None else "-" for key in _KEYS] for lead in found]
        print(table(HEADER, [[*row[:3], f"{row[3]:g}", *row[4:]] for row in rows]))
    return 0


_KEYS = ("id", "label", "stage", "score", "source", "channel", "last_activity")


async def listed(session: AsyncSession, wanted: LeadFilter, limit: int) -> list[dict[str, Any]]:
    """The matching leads, most recently active first, each as the command prints it."""
    active = last_activity().label("last_activity")
    matching = filtered_leads(session.bind.dialect.name, wanted).whereclause
    statement = select(Lead, active).where(matching).order_by(active.desc(), col(Lead.id).desc()).limit(limit)
    rows = (await session.exec(statement)).all()
    channels = await _channels(session, [lead.id for lead, _ in rows])
    return [
        {
            "id": lead.id,
            "label": lead_label(lead),
            "stage": lead.stage,
            "score": round(lead.score, 1),
            "source": lead.first_touch.get("source"),
            "channel": ",".join(channels.get(lead.id, [])) or None,
            "last_activity": f"{at:%Y-%m-%d %H:%M}" if at else None,
        }
        for lead, at in rows
    ]


async def _channels(session: AsyncSession, lead_ids: list[int]) -> dict[int, list[str]]:
    """Each lead's conversation channels, oldest conversation first."""
    statement = (
        select(Conversation.lead_id, Conversation.channel)
        .where(col(Conversation.lead_id).in_(lead_ids))
        .order_by(col(Conversation.id))
    )
    found: dict[int, list[str]] = {}
    for lead_id, channel in (await session.exec(statement)).all():
        if channel not in found.setdefault(lead_id, []):
            found[lead_id].append(channel)
    return found


def since(text: str, now: datetime) -> datetime:
    """`7d` (that long before `now`), `2026-01-31` (its start, UTC) or an ISO time; ListError otherwise."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.combine(date.fromisoformat(text), time()) if len(text) == 10 else datetime.fromisoformat(text)
        return in_utc(moment, "--since")
    except ValueError:
        raise ListError(f"--since must be a date (2026-01-31), a time or a duration (7d, 12h), not {text!r}") from None


def _stage(stage: str | None, stages: tuple[str, ...]) -> str | None:
    if stage is not None and stage not in stages:
        raise ListError(f"unknown stage {stage!r}: the stages are {', '.join(stages)}")
    return stage
