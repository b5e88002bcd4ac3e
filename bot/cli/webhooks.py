"""`kindling webhooks list|show|retry`: outgoing webhook deliveries from the command line."""

from __future__ import annotations

import argparse
import json
import sys

from bot.config import Settings
from bot.reports.leadview import webhook_line
from storage.db import database, transaction
from storage.models import WebhookDelivery
from storage.webhooks import STATUSES, NotDead, WebhookDeliveryNotFound, list_deliveries, requeue, summary


async def show_list(settings: Settings, output: str, limit: int, **filters: object) -> int:
    """Print deliveries newest first, one a line (or as JSON)."""
    async with database(settings.database_url) as sessions, sessions() as session:
        found = await list_deliveries(session, limit=limit, **filters)  # type: ignore[arg-type]
    rows = [summary(row) for row in found]
    if output == "json":
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        lines = [webhook_line(row) for row in rows]
        print("\n".join(lines) or "no webhook deliveries" + (" match" if any(filters.values()) else " yet"))
    return 0


async def show_one(settings: Settings, delivery_id: int) -> int:
    """Print one delivery with the body it sends."""
    async with database(settings.database_url) as sessions, sessions() as session:
        row = await session.get(WebhookDelivery, delivery_id)
        if row is None:
            print(f"webhooks show: no webhook delivery {delivery_id}", file=sys.stderr)
            return 1
    print(json.dumps({**summary(row), "body": row.body}, indent=2, ensure_ascii=False))
    return 0


async def retry(settings: Settings, delivery_ids: list[int]) -> int:
    """Requeue dead deliveries; the running server sends them within seconds."""
    status = 0
    async with database(settings.database_url) as sessions:
        for delivery_id in delivery_ids:
            try:
                row = await transaction(sessions, lambda s, i=delivery_id: requeue(s, i))
            except WebhookDeliveryNotFound:
                print(f"webhooks retry: no webhook delivery {delivery_id}", file=sys.stderr)
                status = 1
            except NotDead as exc:
                print(f"webhooks retry: {exc}", file=sys.stderr)
                status = 1
            else:
                print(f"#{row.id} {row.event_type} to {row.endpoint} is queued again")
    return status


def add_command(commands: argparse._SubParsersAction) -> None:
    """`kindling webhooks list|show|retry`."""
    webhooks = commands.add_parser("webhooks", help="outgoing webhook deliveries to CRMs")
    actions = webhooks.add_subparsers(dest="webhooks_command", required=True)
    listing = actions.add_parser("list", help="deliveries, newest first")
    listing.add_argument("--failed", action="store_true", help="only dead ones and those waiting to retry")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--endpoint", help="only this endpoint's (its name in config.toml)")
    listing.add_argument("--lead", type=int, help="only this lead's")
    listing.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    listing.add_argument("--format", choices=("text", "json"), default="text")
    show = actions.add_parser("show", help="one delivery with the body it sends")
    show.add_argument("id", type=int)
    retry = actions.add_parser("retry", help="send dead deliveries again")
    retry.add_argument("ids", type=int, nargs="+", metavar="ID")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run `kindling webhooks list|show|retry`."""
    if args.webhooks_command == "list":
        filters = {"failed": args.failed, "status": args.status, "endpoint": args.endpoint, "lead_id": args.lead}
        return await show_list(settings, args.format, limit=max(1, args.limit), **filters)
    if args.webhooks_command == "show":
        return await show_one(settings, args.id)
    return await retry(settings, args.ids)
