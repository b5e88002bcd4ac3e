"""One handoff's conversation: the context card, the transcript, reply and hand back."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bot.console.auth import current, requires
from bot.console.pages import render, wants_json
from bot.delivery.hub import message_frame
from bot.delivery.states import states_by_delivery
from bot.handoff.handoffs import HandoffError, HandoffNotFound, NotHolder
from bot.handoff.notify import summary
from bot.services import SERVICES
from bot.web.middlewares import json_error
from flows.handoff_card import lead_flows
from storage.leadsearch import conversation_messages
from storage.models import Conversation, Handoff
from storage.receipts import reach_of

TRANSCRIPT_LIMIT = 200
MAX_REPLY = 4000  # what the widget accepts; Telegram allows a little more


def routes(console: web.Application) -> None:
    """Mount /console/handoffs/{id} with its reply and hand-back forms."""
    console.router.add_get("/handoffs/{id}", handoff_page)
    console.router.add_post("/handoffs/{id}/reply", reply)
    console.router.add_post("/handoffs/{id}/template", send_template)
    console.router.add_post("/handoffs/{id}/hand-back", hand_back)


def handoff_id(request: web.Request) -> int:
    """The handoff id in the path; anything else is an unknown handoff."""
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 9:
        raise HandoffNotFound(f"no handoff {raw}")
    return int(raw)


@requires("conversations.read")
async def handoff_page(request: web.Request) -> web.Response:
    """The conversation of one handoff, kept live by console.js over /console/ws."""
    return await conversation_page(request, handoff_id(request))


@requires("conversations.reply")
async def reply(request: web.Request) -> web.StreamResponse:
    """Send the operator's reply to the lead; console.js posts it as a script and gets JSON back."""
    found, form = handoff_id(request), await request.post()
    text = str(form.get("text", "")).strip()
    try:
        if len(text) > MAX_REPLY:
            raise HandoffError(f"a reply is at most {MAX_REPLY} characters")
        delivery_id = await request.app[SERVICES].handoffs.reply(found, current(request).operator.id, text)
    except HandoffNotFound:
        raise  # the 404 page
    except HandoffError as exc:
        status = _refused(exc)
        if wants_json(request):
            return json_error(status, str(exc))
        return await conversation_page(request, found, error=str(exc), status=status, draft=text)
    if wants_json(request):
        return web.json_response({"ok": True, "delivery_id": delivery_id})
    raise web.HTTPSeeOther(f"/console/handoffs/{found}")


@requires("conversations.reply")
async def send_template(request: web.Request) -> web.StreamResponse:
    """Send a chosen WhatsApp template (outside the 24-hour window the only thing that may go)."""
    found, form = handoff_id(request), await request.post()
    chosen = str(form.get("template", ""))
    name, _, language = chosen.partition(":")
    parameters = [line.strip() for line in str(form.get("parameters", "")).splitlines() if line.strip()]
    services = request.app[SERVICES]
    known = {(t.name, t.language): t for t in services.settings.meta.whatsapp_templates}
    try:
        template = known.get((name, language))
        if template is None:
            raise HandoffError(f"no WhatsApp template {chosen!r} is configured")
        if len(parameters) != template.parameters:
            raise HandoffError(
                f"template {name} takes {template.parameters} parameters, one a line; got {len(parameters)}"
            )
        text = f"(template {name}{': ' + ', '.join(parameters) if parameters else ''})"
        chosen_template = {"name": name, "language": language, "parameters": parameters}
        await services.handoffs.reply(found, current(request).operator.id, text, template=chosen_template)
    except HandoffNotFound:
        raise
    except HandoffError as exc:
        return await conversation_page(request, found, error=str(exc), status=_refused(exc))
    raise web.HTTPSeeOther(f"/console/handoffs/{found}")


@requires("conversations.reply")
async def hand_back(request: web.Request) -> web.StreamResponse:
    """Close the handoff with won / nurture (optionally into a flow) / lost (with a reason)."""
    found, form = handoff_id(request), await request.post()
    outcome = str(form.get("outcome", ""))
    reason = str(form.get("reason", "")).strip()[:500] or None
    flow = (str(form.get("flow", "")) or None) if outcome == "nurture" else None
    try:
        await request.app[SERVICES].handoffs.hand_back(found, current(request).operator.id, outcome, reason, flow)
    except HandoffNotFound:
        raise  # the 404 page
    except HandoffError as exc:
        return await conversation_page(request, found, error=str(exc), status=_refused(exc))
    raise web.HTTPSeeOther(f"/console/handoffs/{found}")


def _refused(exc: HandoffError) -> int:
    """The status for a handoff action that did not go through: someone else's (409) or a bad form (422)."""
    return 409 if isinstance(exc, NotHolder) else 422


async def conversation_page(
    request: web.Request, found: int, error: str = "", status: int = 200, draft: str = ""
) -> web.Response:
    """The handoff page, with an error from a form that did not go through."""
    services = request.app[SERVICES]
    async with services.sessions() as session:
        handoff = await session.get(Handoff, found)
        if handoff is None:
            raise HandoffNotFound(f"no handoff {found}")
        info = await summary(session, handoff, services.clock.now())
        messages, conversation = [], None
        if handoff.conversation_id is not None:
            messages = await conversation_messages(session, handoff.conversation_id, 0, TRANSCRIPT_LIMIT)
            conversation = await session.get(Conversation, handoff.conversation_id)
        states = states_by_delivery(await reach_of(session, [message.delivery_id for message in messages]))
        flows_now = await lead_flows(session, handoff.lead_id)
    dispatcher = services.dispatcher
    window = dispatcher.window(conversation) if conversation is not None else None
    refused = dispatcher.refusal(conversation, "operator") if conversation is not None else None
    channel = dispatcher.channels.get(conversation.channel) if conversation is not None else None
    context: dict[str, Any] = {
        "handoff": info,
        "card": handoff.card,
        "lead_flows": flows_now,  # the card's flows as they are now, not when the lead turned warm
        "outcome": (handoff.outcome, handoff.outcome_reason),
        "mine": handoff.status == "claimed" and handoff.claimed_by_id == current(request).operator.id,
        "messages": [{**message_frame(message), "state": states.get(message.delivery_id)} for message in messages],
        "flows": sorted((slug, spec.name) for slug, spec in services.library.flows.items()),
        "error": error,
        "draft": draft,
        "refused": refused,  # why a reply cannot go now (a messenger's window has closed)
        "offers": getattr(channel, "offers", []) if refused else [],  # the templates that may go instead
        "window": window,  # a messenger's window: open until when, or closed
    }
    return render(request, "handoff.html", context, status=status)
