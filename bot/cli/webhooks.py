"""`kindling webhooks list|show|retry`: outgoing webhook deliveries from the command line."""

from __future__ import annotations

import json
import sys

from bot.config import Settings
from bot.leadview import webhook_line
from storage.db import database, transaction
from storage.models import WebhookDelivery
from storage.webhooks import NotDead, WebhookDeliveryNotFound, list_deliveries, requeue, summary


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
