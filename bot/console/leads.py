"""Read-only lead pages: search, and one lead with score, stages, flows, deliveries and transcript."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bot.console.auth import current, requires
from bot.console.pages import render
from bot.console.roles import allowed
from bot.reports.leadview import lead_report
from bot.services import SERVICES
from flows.handoff import QUESTION
from flows.likelihood import lead_likelihood
from storage.leads import LeadNotFound, get_lead
from storage.leadsearch import search_leads, transcript

PAGE_SIZE = 25
TRANSCRIPT_LIMIT = 200
CONVERSATION_KINDS = ("reply", "operator")  # deliveries that are part of a conversation, not a drip


def routes(console: web.Application) -> None:
    """Mount /console/leads and /console/leads/{id}."""
    console.router.add_get("/leads", leads_page)
    console.router.add_get("/leads/{id}", lead_page)


@requires("leads.read")
async def leads_page(request: web.Request) -> web.Response:
    """Search leads by name, email, phone or id; newest first, a page at a time."""
    query = request.query.get("q", "")[:200]
    page = _page_number(request.query.get("page"))
    visitors = request.query.get("visitors") == "1"  # page-only visitors too (hidden unless asked)
    async with request.app[SERVICES].sessions() as session:
        found = await search_leads(session, query, (page - 1) * PAGE_SIZE, PAGE_SIZE + 1, page_only=visitors)
    context = {
        "q": query,
        "page": page,
        "visitors": visitors,
        "leads": found[:PAGE_SIZE],
        "more": len(found) > PAGE_SIZE,
    }
    return render(request, "leads.html", context)


@requires("leads.read")
async def lead_page(request: web.Request) -> web.Response:
    """One lead; the transcript only for roles that may read conversations."""
    return await lead_page_for(request, lead_id(request.match_info["id"]))


async def lead_page_for(
    request: web.Request, found: int, error: str = "", typed: dict[str, str] | None = None, status: int = 200
) -> web.Response:
    """The lead page; with an edit that did not go through, its error and the values typed (kept in the form)."""
    services = request.app[SERVICES]
    report = await lead_report(services.sessions, services.settings, found, services.clock.now())
    messages = None
    if allowed(current(request).operator.role, "conversations.read", services.settings.console):
        async with services.sessions() as session:
            messages = await transcript(session, report["id"], TRANSCRIPT_LIMIT)
    else:
        report = _without_conversations(report)
    async with services.sessions() as session:  # the learned likelihood and its factors, if a model gave one
        likelihood = await lead_likelihood(session, await get_lead(session, report["id"]), services.clock.now())
    skipped = [event for event in report["events"] if event["type"] == "step_skipped"]
    states = {delivery["id"]: delivery["state"] for delivery in report["deliveries"]}  # how far each one got
    context: dict[str, Any] = {"lead": report, "messages": messages, "skipped": skipped, "states": states}
    context["likelihood"] = likelihood
    context["edit"] = {**_editable(report), **(typed or {})}
    context["error"] = error
    return render(request, "lead.html", context, status=status)


def _editable(report: dict[str, Any]) -> dict[str, str]:
    """The edit form's values as the lead has them now."""
    values = {name: report.get(name) or "" for name in ("first_name", "last_name", "email", "phone", "note")}
    return {**values, "tags": ", ".join(report["tags"])}


def _without_conversations(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what the visitor and the bot or operators said to each other."""
    events = [
        {**event, "payload": {key: value for key, value in event["payload"].items() if key not in _quoting(event)}}
        for event in report["events"]
    ]
    deliveries = [
        {**delivery, "text": None} if delivery["kind"] in CONVERSATION_KINDS else delivery
        for delivery in report["deliveries"]
    ]
    return {**report, "events": events, "deliveries": deliveries}


def _quoting(event: dict[str, Any]) -> tuple[str, ...]:
    """The keys of an event's payload that quote the conversation: a message's text, a question's reason."""
    if event["type"] == "message":
        return ("text",)
    if event["type"] == "handoff" and event["payload"].get("trigger") == QUESTION:
        return ("reason",)  # 'asked "..."' quotes the lead
    return ()


def _page_number(raw: str | None) -> int:
    """A page number from the query; 1 for anything odd."""
    return int(raw) if raw and raw.isdigit() and 0 < int(raw) < 10_000 else 1


def lead_id(raw: str) -> int:
    """The id in the path; a non-number is an unknown lead."""
    if not raw.isdigit():
        raise LeadNotFound(raw)
    return int(raw)
