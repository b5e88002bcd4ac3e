"""The pipeline board, `/console/pipeline`: leads as cards in a column per stage, moved by dragging.

Columns come in the configured stage order, each with its count, the median time in stage of the leads now
in it, and its first page of cards, newest activity first; "More" reads the next page after the last card
(keyset: `storage.pipeline`). Moving a card is the funnel's usual stage change (`flows.reactions.set_stage`:
a `stage_changed` event with the operator in its reason, stage history, webhooks, flows), so stage rules may
move the lead on later as always. Every stage change, whoever made it, reaches open boards over
`/console/pipeline/ws` (`bot.console.stagefeed`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy
from sqlmodel.ext.asyncio.session import AsyncSession
from yarl import URL

from bot.api.params import MAX_ID
from bot.console.auth import current, public, requires
from bot.console.leads import lead_id
from bot.console.live import HEARTBEAT
from bot.console.live import _Stream as Stream
from bot.console.login import STATIC
from bot.console.pages import refuse, render, wants_json
from bot.console.stagefeed import PIPELINE, publish_stage_changes
from bot.services import SERVICES, Services
from flows.engine import Engine
from flows.handoff import WON_BY
from flows.reactions import set_stage
from storage.db import transaction
from storage.leads import LeadNotFound, get_lead
from storage.pipeline import BoardFilter, Cursor, card_details, choices, column_page, columns, leads_on_board

PAGE_SIZE = 50
MAX_CARDS = 100  # leads asked for at once by the script
FILTERS = ("source", "campaign", "channel", "owner", "flow")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def routes(console: web.Application) -> None:
    """Mount the board, a column's next page, one card, moving a card, the board's socket and script."""
    services = console[SERVICES]
    publish_stage_changes(services.sessions, services.hub)
    console.router.add_get("/pipeline", board)
    console.router.add_get("/pipeline/stages/{stage}", column_more)
    console.router.add_get("/pipeline/cards", some_cards)
    console.router.add_post("/pipeline/leads/{id}/stage", move)
    console.router.add_get("/pipeline/ws", board_socket)
    console.router.add_get("/pipeline.js", script)


@requires("leads.read")
async def board(request: web.Request) -> web.Response:
    """Every stage's column with its count, median time in stage and first page of cards."""
    services, wanted = request.app[SERVICES], board_filter(request.query)
    order = services.settings.stages.order
    async with services.sessions() as session:
        summary = await columns(session, order, wanted, services.clock.now())
        pages = [await column_page(session, stage, wanted, None, PAGE_SIZE) for stage in order]
        details = await card_details(session, [lead.id for leads, _ in pages for lead in leads])
        picks = await choices(session)
    stages = [
        {"column": column, "leads": leads, "more": more_url(column.stage, wanted, cursor)}
        for column, (leads, cursor) in zip(summary, pages, strict=True)
    ]
    context = {"stages": stages, "details": details, "filters": wanted, "choices": picks}
    return render(request, "pipeline.html", {**context, **_common(services, wanted)})


@requires("leads.read")
async def column_more(request: web.Request) -> web.Response:
    """A column's next page after `after`; with `fragment=1` only its cards and "More" (for the board's script)."""
    services, wanted, stage = request.app[SERVICES], board_filter(request.query), request.match_info["stage"]
    if stage not in services.settings.stages.order:
        return refuse(request, 404, f"There is no stage “{stage}”.")
    after = cursor_of(request.query.get("after", ""))
    async with services.sessions() as session:
        leads, cursor = await column_page(session, stage, wanted, after, PAGE_SIZE)
        details = await card_details(session, [lead.id for lead in leads])
    context = {"stage": stage, "leads": leads, "details": details, "more": more_url(stage, wanted, cursor)}
    template = "pipeline_cards.html" if request.query.get("fragment") == "1" else "pipeline_column.html"
    return render(request, template, {**context, **_common(services, wanted)})


@requires("leads.read")
async def some_cards(request: web.Request) -> web.Response:
    """The cards of those leads in `ids` (up to 100, comma-separated) that the board with these filters shows.

    The board's script asks for the leads that moved live and are not on the page yet, a batch at a time."""
    services, wanted = request.app[SERVICES], board_filter(request.query)
    found = [int(raw) for raw in request.query.get("ids", "").split(",")[:MAX_CARDS] if _an_id(raw)]
    async with services.sessions() as session:
        leads = await leads_on_board(session, found, wanted)
        details = await card_details(session, [lead.id for lead in leads])
    context = {"leads": leads, "details": details, "more": None}
    return render(request, "pipeline_cards.html", {**context, **_common(services, wanted)})


@requires("leads.edit")
async def move(request: web.Request) -> web.StreamResponse:
    """Change the lead's stage as the operator: JSON `{lead, from, to}` for the script, else back to the board."""
    services, found, form = request.app[SERVICES], _lead_id(request), await request.post()
    stage = str(form.get("stage", ""))
    if stage not in services.settings.stages.order:
        stages = ", ".join(services.settings.stages.order)
        return refuse(request, 400, f"There is no stage “{stage[:60]}”: the stages are {stages}.")
    name, now = current(request).operator.name, services.clock.now()
    before, won = await transaction(
        services.sessions, lambda session: move_lead(session, services.engine, found, stage, name, now)
    )
    for handoff_id in won:  # stage `customer` closed the lead's handoff as won: off the console's queue
        await services.notifier.changed("closed", handoff_id)
    if wants_json(request):
        return web.json_response({"lead": found, "from": before, "to": stage})
    back = str(form.get("back", ""))
    raise web.HTTPSeeOther(back if back.startswith("/console/pipeline") else "/console/pipeline")


async def move_lead(
    session: AsyncSession, engine: Engine, found: int, stage: str, operator: str, now: datetime
) -> tuple[str, list[int]]:
    """The funnel's usual stage change, with the operator as its reason; the stage before, and handoffs won."""
    lead = await get_lead(session, found)
    before = lead.stage
    if stage != before:
        reason = f"moved by {operator} on the pipeline board"
        moved = await set_stage(session, engine.stages, engine.webhooks, lead, stage, reason, now)
        await engine.react(session, lead, [moved], now)  # exits like `stage >= sql`, flows on `stage:<name>`
        await session.flush()
    return before, session.info.pop(WON_BY, [])


@requires("leads.read")
async def board_socket(request: web.Request) -> web.StreamResponse:
    """Stream every stage change to an open board: `{"type": "stage", "lead", "from", "to"}`."""
    services = request.app[SERVICES]
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT)
    await ws.prepare(request)
    stream = Stream(services, ws, current(request).token_hash)  # closed as the console's other sockets are
    async with services.hub.watch(PIPELINE) as feed:
        forward = asyncio.create_task(_forward(stream, feed))
        try:
            await stream.run(queue=False, conversation_id=None, since=0)  # nothing else to watch: until it closes
        finally:
            forward.cancel()
    return ws


@public
async def script(request: web.Request) -> web.StreamResponse:
    """The board's script: dragging cards, "More" without a reload, live moves."""
    return web.FileResponse(STATIC / "pipeline.js", headers={"Cache-Control": "max-age=300"})


def board_filter(query: MultiDictProxy[str]) -> BoardFilter:
    """The filters in the query; empty ones are none."""
    values = {name: query.get(name, "").strip()[:200] or None for name in FILTERS}
    return BoardFilter(**values)


def cursor_of(raw: str) -> Cursor | None:
    """`after=MICROSECONDS-ID` (the last card's activity since 1970 and its id); anything else is the first page."""
    at, _, found = raw.partition("-")
    if not (f"{at}{found}".isascii() and at.isdigit() and found.isdigit() and len(at) < 20 and int(found) <= MAX_ID):
        return None
    return Cursor(EPOCH + timedelta(microseconds=int(at)), int(found))


def more_url(stage: str, wanted: BoardFilter, cursor: Cursor | None) -> str | None:
    """The link to the column's next page, if there is one."""
    if cursor is None:
        return None
    micros = (cursor.at - EPOCH) // timedelta(microseconds=1)
    query = {"after": f"{micros}-{cursor.lead_id}", **filter_query(wanted)}
    return str(URL(f"/console/pipeline/stages/{stage}").with_query(query))


def filter_query(wanted: BoardFilter) -> dict[str, str]:
    """The filters that are set, as query parameters."""
    return {name: value for name in FILTERS if (value := getattr(wanted, name)) is not None}


def stay_text(seconds: float | None) -> str:
    """A median time in stage as people read it: `3 d 4 h`, `5 h 2 min`, `12 min`, `40 s`."""
    if seconds is None:
        return "-"
    whole = max(int(seconds), 0)
    days, hours, minutes = whole // 86400, whole // 3600 % 24, whole // 60 % 60
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min" if minutes else f"{whole} s"


def _common(services: Services, wanted: BoardFilter) -> dict[str, Any]:
    """What every board template needs: the stages, the filters as a query string, the duration format."""
    query = filter_query(wanted)
    back = str(URL("/console/pipeline").with_query(query))
    return {"order": services.settings.stages.order, "query": query, "back": back, "stay_text": stay_text}


def _an_id(raw: str) -> bool:
    return raw.isascii() and raw.isdigit() and 0 < int(raw) <= MAX_ID


def _lead_id(request: web.Request) -> int:
    found = lead_id(request.match_info["id"])
    if found > MAX_ID:  # no such id: it must not reach the database (32-bit on PostgreSQL)
        raise LeadNotFound(found)
    return found


async def _forward(stream: Stream, feed: asyncio.Queue) -> None:
    while True:
        await stream.send(await feed.get())
