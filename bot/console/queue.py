"""The handoff queue: waiting and claimed leads, most urgent first; Next lead, Take, and Take over from a lead."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bot.console.auth import current, requires
from bot.console.conversation import conversation_page, handoff_id
from bot.console.pages import refuse, render
from bot.handoff.handoffs import ClaimResult
from bot.handoff.inbox import PAGE_SIZE
from bot.services import SERVICES
from storage.leads import LeadNotFound

EMPTY = "The queue is empty: nobody is waiting for a person right now."
STATUS_ORDER = {"waiting": 0, "claimed": 1}

# What the row template is drawn from when console.js adds a row the page did not have.
BLANK_ROW: dict[str, Any] = {
    "id": 0, "lead_id": 0, "status": "waiting", "trigger": "", "reason": "", "name": None, "label": "", "score": 0,
    "likelihood": None, "channel": None, "sla_due_at": "", "sla_seconds_left": 0, "breached": False, "claimed_by": None,
}  # fmt: skip


def routes(console: web.Application) -> None:
    """Mount /console/queue, Next lead, Take, and Take over from a lead page."""
    console.router.add_get("/queue", queue_page)
    console.router.add_post("/queue/next", next_lead)
    console.router.add_post("/handoffs/{id}/take", take)
    console.router.add_post("/leads/{id}/take", take_over)


def urgent_first(handoffs: list[dict]) -> list[dict]:
    """Waiting before claimed; then the highest learned likelihood (leads without one after those with one), the
    nearest (or most overdue) SLA, the highest score, the oldest. console.js sorts live rows the same way."""
    return sorted(handoffs, key=lambda h: (STATUS_ORDER.get(h["status"], 2), *_likeliest(h), h["sla_due_at"],
                                           -(h["score"] or 0), h["id"]))  # fmt: skip


def _likeliest(handoff: dict) -> tuple[int, int]:
    likelihood = handoff.get("likelihood")
    return (1, 0) if likelihood is None else (0, -likelihood)


def page_number(raw: str | None) -> int | None:
    """`?page=N`: N (1 when absent), or None for anything but a number from 1."""
    if raw is None:
        return 1
    return int(raw) if raw.isdigit() and 0 < int(raw) < 10**6 else None


def page_of(handoffs: list[dict], page: int) -> list[dict]:
    """Page `page` (from 1) of the queue, most urgent first, PAGE_SIZE rows a page."""
    return urgent_first(handoffs)[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]


@requires("queue")
async def queue_page(request: web.Request) -> web.Response:
    """The queue, a page at a time, kept live by console.js over /console/ws."""
    page = page_number(request.query.get("page"))
    if page is None:
        return refuse(request, 400, f"page: a number from 1, not {request.query['page']!r}")
    everyone = await request.app[SERVICES].handoffs.queue()
    notice = EMPTY if request.query.get("empty") else ""
    pages = max(1, -(-len(everyone) // PAGE_SIZE))
    context = {"handoffs": page_of(everyone, page), "blank": BLANK_ROW, "notice": notice, "page": page, "pages": pages}
    return render(request, "queue.html", context | {"total": len(everyone), "size": PAGE_SIZE})


@requires("queue")
async def next_lead(request: web.Request) -> web.StreamResponse:
    """Claim the most urgent waiting handoff and open its conversation; say so when nobody waits."""
    result = await request.app[SERVICES].handoffs.next_for(current(request).operator.id)
    if result is None:
        raise web.HTTPSeeOther("/console/queue?empty=1")
    raise web.HTTPSeeOther(f"/console/handoffs/{result.handoff_id}")


@requires("conversations.reply")
async def take(request: web.Request) -> web.StreamResponse:
    """Claim one handoff; the operator who lost the race sees who has it."""
    found = handoff_id(request)
    return await _claimed(request, await request.app[SERVICES].handoffs.claim(found, current(request).operator.id))


@requires("conversations.reply")
async def take_over(request: web.Request) -> web.StreamResponse:
    """Pick a lead up from its page: open a handoff for it (or join its open one) and claim it."""
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise LeadNotFound(raw)
    result = await request.app[SERVICES].handoffs.open_for_lead(int(raw), current(request).operator.id)
    return await _claimed(request, result)


async def _claimed(request: web.Request, result: ClaimResult) -> web.StreamResponse:
    """To the conversation when the claim went through; its page with the reason (409) when not."""
    if result.ok:
        raise web.HTTPSeeOther(f"/console/handoffs/{result.handoff_id}")
    return await conversation_page(request, result.handoff_id, error=result.message, status=409)
