"""The events API for the site's backend: signup, cart, purchase, any name; and one lead's report."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web

from bot.api.auth import scope
from bot.channels.base import Inbound, Profile
from bot.contacts import normalize_email, normalize_phone
from bot.leadview import lead_report
from bot.middlewares import json_error
from bot.services import SERVICES

_EVENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_DEDUP_ID = re.compile(r"^[\w.:-]{1,128}$")


@scope("events:write")
async def post_event(request: web.Request) -> web.Response:
    """Record a backend event (signup, cart, purchase, any name) for a lead; repeats by `id` count once."""
    body = await request.json()
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
        properties={"properties": properties},
        profile=profile,
        lead_id=lead_id,
    )


def _lead_keys(lead: dict) -> tuple[int | None, Profile, tuple[tuple[str, str], ...]]:
    lead_id, email, phone, visitor = (lead.get(key) for key in ("id", "email", "phone", "visitor_id"))
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
    return at


@scope("leads:read")
async def get_lead(request: web.Request) -> web.Response:
    """One lead with score explanation, stages, conversations, events and deliveries."""
    try:
        lead_id = int(request.match_info["id"])
    except ValueError:
        return json_error(400, "a lead id is a number")
    services = request.app[SERVICES]
    return web.json_response(await lead_report(services.sessions, services.settings, lead_id, services.clock.now()))
