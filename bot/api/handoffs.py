"""Handoffs over the API: requests for a human, waiting, claimed or closed, newest first."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import not_
from sqlmodel import select

from bot.api.auth import scope
from bot.api.paging import page_of
from bot.api.params import query_choice
from bot.api.spec import BAD_REQUEST, NULLABLE_TIME, PAGING, TIME, ok, operation, page, query
from bot.handoff.notify import summary
from bot.services import SERVICES
from storage.leadsearch import handoff_needs_reply
from storage.models import Handoff

STATUSES = ("waiting", "claimed", "closed")
NEEDS_REPLY = (
    "true: only handoffs whose conversation needs a reply (waiting, or claimed and the lead wrote after the"
    " operator's last message); false: only the others"
)


@scope("handoffs:read")
async def list_handoffs(request: web.Request) -> web.Response:
    """Handoffs newest first, optionally of one status; each as the queue shows it, with its outcome."""
    status = query_choice(request, "status", STATUSES)
    needs = query_choice(request, "needs_reply", ("true", "false"))
    paging = page_of(request)
    services = request.app[SERVICES]
    now = services.clock.now()
    async with services.sessions() as session:
        statement = select(Handoff) if status is None else select(Handoff).where(Handoff.status == status)
        if needs is not None:
            statement = statement.where(handoff_needs_reply() if needs == "true" else not_(handoff_needs_reply()))
        rows = (await session.exec(paging.apply(statement, Handoff.id))).all()
        items = {row.id: await summary(session, row, now) for row in rows}
    for row in rows:
        items[row.id].update(
            closed_at=row.closed_at.isoformat() if row.closed_at else None,
            outcome=row.outcome,
            outcome_reason=row.outcome_reason,
        )
    return web.json_response(paging.body(rows, lambda row: items[row.id]))


_NUMBER_OR_NULL = {"type": ["number", "null"]}
_TEXT_OR_NULL = {"type": ["string", "null"]}
SCHEMAS = {
    "Handoff": {
        "type": "object",
        "required": ["id", "lead_id", "status", "trigger", "reason", "warm_at", "sla_due_at", "outcome"],
        "properties": {
            "id": {"type": "integer"},
            "lead_id": {"type": "integer"},
            "conversation_id": {"type": ["integer", "null"]},
            "status": {"type": "string", "enum": list(STATUSES)},
            "trigger": {"type": "string", "description": "score, intent, button, flow, operator or question"},
            "reason": {"type": "string"},
            "name": _TEXT_OR_NULL,
            "score": _NUMBER_OR_NULL,
            "likelihood": {
                "type": ["integer", "null"],
                "description": "the lead's learned likelihood now, 0-100 (null before a model scored it)",
            },
            "channel": _TEXT_OR_NULL,
            "warm_at": TIME,
            "sla_due_at": TIME,
            "sla_seconds_left": {"type": "number"},
            "waited_seconds": {"type": "number"},
            "breached": {"type": "boolean"},
            "claimed_by": _TEXT_OR_NULL,
            "claimed_at": NULLABLE_TIME,
            "console_after_seconds": _NUMBER_OR_NULL,
            "telegram_after_seconds": _NUMBER_OR_NULL,
            "notify_error": _TEXT_OR_NULL,
            "closed_at": NULLABLE_TIME,
            "outcome": {"type": ["string", "null"], "enum": ["won", "nurture", "lost", None]},
            "outcome_reason": _TEXT_OR_NULL,
        },
    },
}
OPENAPI = {
    "/api/handoffs": {
        "get": operation(
            "Handoffs, newest first, optionally of one status",
            "handoffs:read",
            {"200": ok("a page of handoffs", page("Handoff")), "400": BAD_REQUEST},
            [
                query("status", {"type": "string", "enum": list(STATUSES)}, "only handoffs in this status"),
                query("needs_reply", {"type": "string", "enum": ["true", "false"]}, NEEDS_REPLY),
                *PAGING,
            ],
        ),
    },
}
