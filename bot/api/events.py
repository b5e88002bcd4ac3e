"""Events: the site's backend reports signups, carts, purchases (any name); clients read them; one lead's report."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlmodel import select

from bot.api.auth import scope
from bot.api.leads import LIKELIHOOD, LIKELIHOOD_MODEL
from bot.api.paging import page_of
from bot.api.params import path_id, query_id, query_text
from bot.api.spec import (
    BAD_REQUEST,
    ID,
    NOT_FOUND,
    NULLABLE_TIME,
    PAGING,
    PATH_ID,
    TIME,
    TOO_LARGE,
    UNPROCESSABLE,
    ok,
    operation,
    page,
    query,
)
from bot.intake.contacts import normalize_email, normalize_phone
from bot.intake.inbound import Inbound, Profile
from bot.reports.leadview import lead_report
from bot.services import SERVICES
from bot.web.jsonbody import parse_json
from bot.web.middlewares import json_error
from bot.web.times import in_utc
from flows.channel_consent import WHATSAPP_CONSENT
from flows.consent import CONSENT
from flows.likelihood import lead_likelihood
from storage.leads import get_lead as find_lead
from storage.models import Event

_EVENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_DEDUP_ID = re.compile(r"^[\w.:-]{1,128}$")


@scope("events:write")
async def post_event(request: web.Request) -> web.Response:
    """Record a backend event (signup, cart, purchase, any name) for a lead; repeats by `id` count once."""
    body = parse_json(await request.read())
    services = request.app[SERVICES]
    try:
        inbound = event_inbound(body, services.clock.now())
    except ValueError as exc:
        return json_error(422, str(exc))
    received = await services.intake.receive(inbound)
    services.after_commit(received)  # e.g. a purchase that makes the lead warm: operators hear now
    answer = {"lead_id": received.lead_id, "event_id": received.event_id, "duplicate": received.duplicate}
    return web.json_response(answer, status=200 if received.duplicate else 201)


def event_inbound(body: Any, now: datetime) -> Inbound:
    """Validate an events API body; raise ValueError saying what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    name, lead, properties = body.get("type"), body.get("lead"), body.get("properties", {})
    if not isinstance(name, str) or not _EVENT_NAME.match(name):
        raise ValueError("'type' must be an event name like signup, cart, purchase (a-z, 0-9, _ . : -)")
    if not isinstance(lead, dict):
        raise ValueError("'lead' must be an object with id, email, phone or visitor_id")
    if not isinstance(properties, dict):
        raise ValueError("'properties' must be an object")
    dedup = body.get("id")
    if dedup is not None and (not isinstance(dedup, str) or not _DEDUP_ID.match(dedup)):
        raise ValueError("'id' must be a string of up to 128 letters, digits, _ . : -")
    lead_id, profile, identities = _lead_keys(lead)
    return Inbound(
        channel="api",
        external_id="",
        kind="custom",
        name=name,
        dedup_key=f"api:{dedup}" if dedup else None,
        identities=identities,
        at=_time(body.get("at"), now),
        properties={"properties": properties, **_consent(body.get("consent"))},
        profile=profile,
        lead_id=lead_id,
    )


def _consent(consent: Any) -> dict[str, bool]:
    """`"consent": {"email": true, "whatsapp": true}` (given on your site) or false (withdrawn), for the inbound."""
    if consent is None:
        return {}
    kinds = {"email": CONSENT, "whatsapp": WHATSAPP_CONSENT}
    if not isinstance(consent, dict) or not consent or not set(consent) <= set(kinds):
        raise ValueError('\'consent\' must be like {"email": true, "whatsapp": true} (given) or false (withdrawn)')
    if not all(isinstance(value, bool) for value in consent.values()):
        raise ValueError('\'consent\' must be like {"email": true, "whatsapp": true} (given) or false (withdrawn)')
    return {kinds[kind]: value for kind, value in consent.items()}


def _lead_keys(lead: dict) -> tuple[int | None, Profile, tuple[tuple[str, str], ...]]:
    lead_id, email, phone, visitor = (lead.get(key) for key in ("id", "email", "phone", "visitor_id"))
    if any(isinstance(value, str) and "\x00" in value for value in lead.values()):
        raise ValueError("'lead' fields must not contain NUL characters")  # PostgreSQL text cannot hold them
    if lead_id is not None and (not isinstance(lead_id, int) or isinstance(lead_id, bool)):
        raise ValueError("'lead.id' must be a number")
    if email is not None and not (isinstance(email, str) and normalize_email(email)):
        raise ValueError(f"'lead.email' is not a valid email address: {email!r}")
    if phone is not None and not (isinstance(phone, str) and normalize_phone(phone)):
        raise ValueError(f"'lead.phone' is not a valid phone number in international form: {phone!r}")
    if visitor is not None and not isinstance(visitor, str):
        raise ValueError("'lead.visitor_id' must be a string")
    if lead_id is None and not (email or phone or visitor):
        raise ValueError("'lead' needs at least one of id, email, phone, visitor_id")
    names = {key: lead.get(key) if isinstance(lead.get(key), str) else None for key in ("first_name", "last_name")}
    identities = (("visitor", visitor),) if visitor else ()
    return lead_id, Profile(email=email, phone=phone, **names), identities


def _time(value: Any, now: datetime) -> datetime:
    if value is None:
        return now
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'at' must be an ISO 8601 time with a zone, got {value!r}") from None
    if at.tzinfo is None:
        raise ValueError("'at' needs a time zone, like 2026-01-05T12:00:00Z")
    return in_utc(at, "'at'")


@scope("leads:read")
async def get_lead(request: web.Request) -> web.Response:
    """One lead with score explanation, stages, conversations, events and deliveries."""
    lead_id = path_id(request)
    services = request.app[SERVICES]
    now = services.clock.now()
    report = await lead_report(services.sessions, services.settings, lead_id, now)
    async with services.sessions() as session:
        lead = await find_lead(session, report["id"])
        shown = await lead_likelihood(session, lead, now)
    report["likelihood"], report["likelihood_model"] = lead.likelihood, lead.likelihood_model
    report["likelihood_factors"] = shown["factors"] if shown else []
    return web.json_response(report)


def event_item(event: Event) -> dict[str, Any]:
    """An event as stored: type, custom name, what it carried, when."""
    return {
        "id": event.id,
        "lead_id": event.lead_id,
        "conversation_id": event.conversation_id,
        "type": event.type,
        "name": event.name,
        "payload": event.payload,
        "at": event.at.isoformat(),
    }


@scope("leads:read")
async def list_events(request: web.Request) -> web.Response:
    """Events newest first (by when they were stored), of one lead and/or one type."""
    lead_id, event_type = query_id(request, "lead_id"), query_text(request, "type")
    paging = page_of(request)
    async with request.app[SERVICES].sessions() as session:
        statement = select(Event)
        if lead_id is not None:  # a merged-away id answers for the lead it became
            statement = statement.where(Event.lead_id == (await find_lead(session, lead_id)).id)
        if event_type is not None:
            statement = statement.where(Event.type == event_type)
        rows = (await session.exec(paging.apply(statement, Event.id))).all()
    return web.json_response(paging.body(rows, event_item))


SCHEMAS = {
    "Event": {
        "type": "object",
        "required": ["id", "lead_id", "conversation_id", "type", "name", "payload", "at"],
        "properties": {
            "id": {"type": "integer"},
            "lead_id": {"type": "integer"},
            "conversation_id": {"type": ["integer", "null"]},
            "type": {"type": "string", "description": "message, page_view, button, custom, stage_changed, ..."},
            "name": {"type": ["string", "null"], "description": "a custom event's name (signup, purchase, ...)"},
            "payload": {"type": "object"},
            "at": TIME,
        },
    },
    "LeadReport": {
        "type": "object",
        "required": ["id", "stage", "score", "score_explained", "tags"],
        "properties": {
            "id": {"type": "integer"},
            "stage": {"type": "string"},
            "score": {"type": "number", "description": "decayed to now"},
            "score_explained": {"type": "string"},
            "likelihood": LIKELIHOOD,
            "likelihood_model": LIKELIHOOD_MODEL,
            "likelihood_factors": {
                "type": "array",
                "description": "the factors that move this lead's likelihood most (empty without a likelihood)",
                "items": {
                    "type": "object",
                    "required": ["factor", "count", "weight", "points", "text"],
                    "properties": {
                        "factor": {"type": "string", "description": "page:/pricing, from:google/cpc, no_reply, ..."},
                        "count": {"type": "number", "description": "how many times, before the lead's cut-off"},
                        "weight": {"type": "number", "description": "the model's weight, per log(1 + count)"},
                        "points": {"type": "integer", "description": "points of likelihood it would lose without it"},
                        "text": {"type": "string", "description": "+18 visited /pricing twice"},
                    },
                },
            },
            "tags": {"type": "array", "items": {"type": "string"}},
            "note": {
                "type": ["string", "null"],
                "description": "an operator's note (edited on the console's lead page)",
            },
            "opted_out_at": NULLABLE_TIME,
            "claims": {
                "type": "array",
                "description": "emails and phones the lead typed that are not its verified identities; "
                "`lead_id` names another lead that owns one (never merged automatically)",
                "items": {
                    "type": "object",
                    "properties": {
                        "kind": {"type": "string"},
                        "value": {"type": "string"},
                        "lead_id": {"type": ["integer", "null"]},
                    },
                },
            },
        },
    },
}
_EVENT_BODY = {
    "type": "object",
    "required": ["type", "lead"],
    "properties": {
        "id": {"type": "string", "pattern": _DEDUP_ID.pattern, "description": "repeats with this id count once"},
        "type": {"type": "string", "pattern": _EVENT_NAME.pattern, "description": "signup, cart, purchase, ..."},
        "lead": {
            "type": "object",
            "description": "at least one of id, email, phone, visitor_id",
            "properties": {
                "id": {"type": "integer"},
                "email": {"type": "string"},
                "phone": {"type": "string"},
                "visitor_id": {"type": "string"},
                "first_name": {"type": "string"},
                "last_name": {"type": "string"},
            },
        },
        "properties": {"type": "object"},
        "at": {"type": "string", "format": "date-time"},
        "consent": {
            "type": "object",
            "description": "email or WhatsApp marketing consent the lead gave (true) or withdrew (false) on your site",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {"email": {"type": "boolean"}, "whatsapp": {"type": "boolean"}},
        },
    },
}
_RECORDED = {
    "type": "object",
    "required": ["lead_id", "event_id", "duplicate"],
    "properties": {"lead_id": {"type": "integer"}, "event_id": {"type": "integer"}, "duplicate": {"type": "boolean"}},
}
OPENAPI = {
    "/api/events": {
        "post": operation(
            "Record a backend event (signup, cart, purchase, any name) for a lead",
            "events:write",
            {
                "201": ok("recorded", _RECORDED),
                "200": ok("a repeat of an event already recorded with this id; nothing changed", _RECORDED),
                "400": BAD_REQUEST,
                "404": NOT_FOUND,
                "413": TOO_LARGE,
                "422": UNPROCESSABLE,
            },
            body=_EVENT_BODY,
            example={"id": "order-1001", "type": "purchase", "lead": {"email": "bo@example.com"}, "properties": {}},
        ),
        "get": operation(
            "Events, newest first, of one lead and/or one type",
            "leads:read",
            {"200": ok("a page of events", page("Event")), "400": BAD_REQUEST, "404": NOT_FOUND},
            [
                query("lead_id", ID, "only this lead's events"),
                query("type", {"type": "string", "minLength": 1, "maxLength": 64}, "only events of this type"),
                *PAGING,
            ],
        ),
    },
    "/api/leads/{id}": {
        "get": operation(
            "One lead with score explanation, stage history, conversations, events and deliveries",
            "leads:read",
            {"200": ok("the lead", {"$ref": "#/components/schemas/LeadReport"}), "400": BAD_REQUEST, "404": NOT_FOUND},
            [PATH_ID],
        ),
    },
}
