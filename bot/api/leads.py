"""Leads over the API: a filtered, paged list, and changing a lead's stage and tags.

PATCH takes `stage`, `add_tags` and `remove_tags` (not a whole new tag list), so a change made by
the API never undoes a tag a flow added meanwhile. A stage change is a `stage_changed` event with
reason "api", and flows triggered by that stage react to it like to any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.api.auth import scope
from bot.api.paging import page_of
from bot.api.params import path_id, query_choice, query_number, query_text
from bot.api.spec import (
    BAD_REQUEST,
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
    ref,
)
from bot.services import SERVICES
from bot.web.jsonbody import parse_json
from bot.web.middlewares import json_error
from flows.channel_consent import set_channel_consent
from flows.consent import email_state, set_email_consent
from flows.engine import Engine
from flows.handoff import WON_BY
from flows.reactions import lead_contacts, set_stage
from storage.db import transaction
from storage.leads import get_lead
from storage.leadsearch import LeadFilter, filtered_leads
from storage.models import Lead

TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
TAG_SCHEMA = {"type": "string", "pattern": TAG.pattern, "description": "letters, digits, _ . : - (up to 64)"}
MAX_TAGS = 50  # per add_tags or remove_tags list
CHANGES = ("stage", "add_tags", "remove_tags", "email_consent", "whatsapp_consent")


def lead_item(lead: Lead) -> dict[str, Any]:
    """A lead as lists show it; `score` is as of its last scored event (GET /api/leads/{id} decays it to now)."""
    return {
        "id": lead.id,
        **lead_contacts(lead),
        "stage": lead.stage,
        "stage_since": lead.stage_at.isoformat(),
        "score": lead.score,
        "likelihood": lead.likelihood,
        "likelihood_model": lead.likelihood_model,
        "tags": list(lead.tags),
        "source": lead.first_touch.get("source"),
        "first_touch": lead.first_touch,
        "last_touch": lead.last_touch,
        "opted_out_at": lead.opted_out_at.isoformat() if lead.opted_out_at else None,
        **email_state(lead),
        "channel_marketing": lead.channel_marketing,
        "created_at": lead.created_at.isoformat(),
        "updated_at": lead.updated_at.isoformat(),
    }


@scope("leads:read")
async def list_leads(request: web.Request) -> web.Response:
    """Leads newest first, filtered by stage, score range, tag and first-touch source; merged-away ones left out."""
    services = request.app[SERVICES]
    wanted = LeadFilter(
        stage=query_choice(request, "stage", services.settings.stages.order),
        min_score=query_number(request, "min_score"),
        max_score=query_number(request, "max_score"),
        tag=query_text(request, "tag"),
        source=query_text(request, "source", 200),
        page_only=query_choice(request, "page_only", ("true", "false")) != "false",
    )
    paging = page_of(request)
    async with services.sessions() as session:
        statement = paging.apply(filtered_leads(session.bind.dialect.name, wanted), Lead.id)
        rows = (await session.exec(statement)).all()
    return web.json_response(paging.body(rows, lead_item))


@dataclass(frozen=True)
class LeadChange:
    """What a PATCH asks for."""

    stage: str | None
    add_tags: frozenset[str]
    remove_tags: frozenset[str]
    email_consent: bool | None = None
    whatsapp_consent: bool | None = None


def lead_change(body: Any, stages: tuple[str, ...]) -> LeadChange:
    """Validate a PATCH body; raise ValueError saying what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(set(body) - set(CHANGES))
    if unknown:
        raise ValueError(f"unknown field {', '.join(map(repr, unknown))}: send {', '.join(CHANGES)}")
    if not body:
        raise ValueError(f"nothing to change: send {', '.join(CHANGES)}")
    stage, consent = body.get("stage"), body.get("email_consent")
    if stage is not None and stage not in stages:
        raise ValueError(f"unknown stage {stage!r}: the stages are {', '.join(stages)}")
    for name in ("email_consent", "whatsapp_consent"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise ValueError(f"'{name}' must be true (given) or false (withdrawn)")
    tags = _tags(body, "add_tags"), _tags(body, "remove_tags")
    return LeadChange(stage, *tags, consent, body.get("whatsapp_consent"))


def _tags(body: dict, field: str) -> frozenset[str]:
    tags = body.get(field, [])
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise ValueError(f"'{field}' must be a list of up to {MAX_TAGS} tags")
    for tag in tags:
        if not isinstance(tag, str) or not TAG.match(tag):
            raise ValueError(f"'{field}': {tag!r} is not a tag (letters, digits, _ . : -, up to 64)")
    return frozenset(tags)


@scope("leads:write")
async def patch_lead(request: web.Request) -> web.Response:
    """Change a lead's stage (through the funnel's usual stage change) and tags; answers the lead."""
    lead_id = path_id(request)
    services = request.app[SERVICES]
    body = parse_json(await request.read())  # malformed: 400, from the middleware
    try:
        change = lead_change(body, services.settings.stages.order)
    except ValueError as exc:
        return json_error(422, str(exc))
    now = services.clock.now()
    lead, won = await transaction(
        services.sessions, lambda session: _apply(session, services.engine, lead_id, change, now)
    )
    for handoff_id in won:  # stage `customer` closed the lead's handoff as won: off the console's queue
        await services.notifier.changed("closed", handoff_id)
    return web.json_response(lead_item(lead))


async def _apply(
    session: AsyncSession, engine: Engine, lead_id: int, change: LeadChange, now: datetime
) -> tuple[Lead, list[int]]:
    lead = await get_lead(session, lead_id)
    tags = sorted((set(lead.tags) | change.add_tags) - change.remove_tags)
    if tags != sorted(lead.tags):
        lead.tags, lead.updated_at = tags, now
        session.add(lead)
    if change.email_consent is not None:  # an operator's word: the lead said so on the phone, in a form, ...
        await set_email_consent(session, lead, change.email_consent, "operator", now)
    if change.whatsapp_consent is not None:
        await set_channel_consent(session, lead, "whatsapp", change.whatsapp_consent, "operator", now)
    if change.stage is not None and change.stage != lead.stage:
        moved = await set_stage(session, engine.stages, engine.webhooks, lead, change.stage, "api", now)
        await engine.react(session, lead, [moved], now)  # exits like `stage >= sql`, flows on `stage:<name>`
    await session.flush()
    return lead, session.info.pop(WON_BY, [])


LIKELIHOOD = {
    "type": ["integer", "null"],
    "minimum": 0,
    "maximum": 100,
    "description": "the learned chance in percent that the lead reaches the goal stage (`kindling score fit`);"
    " null until an accepted model scored it",
}
LIKELIHOOD_MODEL = {"type": ["integer", "null"], "description": "the version of the model that gave the likelihood"}
LEAD = {
    "type": "object",
    "required": ["id", "stage", "score", "tags", "created_at"],
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": ["string", "null"]},
        "email": {"type": ["string", "null"]},
        "phone": {"type": ["string", "null"]},
        "locale": {"type": ["string", "null"]},
        "timezone": {"type": ["string", "null"]},
        "stage": {"type": "string"},
        "stage_since": TIME,
        "score": {"type": "number", "description": "as of the lead's last scored event"},
        "likelihood": LIKELIHOOD,
        "likelihood_model": LIKELIHOOD_MODEL,
        "tags": {"type": "array", "items": {"type": "string"}},
        "source": {"type": ["string", "null"], "description": "the first touch's source"},
        "first_touch": {"type": "object"},
        "last_touch": {"type": "object"},
        "opted_out_at": NULLABLE_TIME,
        "email_consent": {"type": "boolean", "description": "nurture email may go (with email.require_consent on)"},
        "email_consent_at": NULLABLE_TIME,
        "email_consent_source": {"type": ["string", "null"], "enum": ["widget", "api", "operator", None]},
        "email_opted_out_at": {**NULLABLE_TIME, "description": "unsubscribed from email"},
        "email_bounced_at": {**NULLABLE_TIME, "description": "the address hard-bounced"},
        "channel_marketing": {
            "type": "object",
            "description": "per messenger (whatsapp): consent_at, consent_source, opted_out_at, opted_out_reason",
            "additionalProperties": {"type": "object"},
        },
        "created_at": TIME,
        "updated_at": TIME,
    },
}
SCHEMAS = {"Lead": LEAD}
_TAG_LIST = {"type": "array", "items": TAG_SCHEMA, "maxItems": MAX_TAGS}
OPENAPI = {
    "/api/leads": {
        "get": operation(
            "Leads, newest first, filtered; merged-away leads are left out",
            "leads:read",
            {"200": ok("a page of leads", page("Lead")), "400": BAD_REQUEST},
            [
                query("stage", ref("Stage"), "only leads at this stage"),
                query("min_score", {"type": "number"}, "only leads with at least this score"),
                query("max_score", {"type": "number"}, "only leads with at most this score"),
                query("tag", {"type": "string", "minLength": 1, "maxLength": 64}, "only leads with this tag"),
                query("source", {"type": "string", "minLength": 1, "maxLength": 200}, "first-touch source"),
                query(
                    "page_only",
                    {"type": "string", "enum": ["true", "false"], "default": "true"},
                    "false: leave out visitors who only viewed pages (no name, contact or action)",
                ),
                *PAGING,
            ],
        ),
    },
    "/api/leads/{id}": {
        "patch": operation(
            "Change a lead's stage (a stage_changed event with reason 'api'), add or remove tags, set email consent",
            "leads:write",
            {
                "200": ok("the lead after the change", ref("Lead")),
                "400": BAD_REQUEST,
                "404": NOT_FOUND,
                "413": TOO_LARGE,
                "422": UNPROCESSABLE,
            },
            [PATH_ID],
            body={
                "type": "object",
                "minProperties": 1,
                "additionalProperties": False,
                "properties": {
                    "stage": ref("Stage"),
                    "add_tags": _TAG_LIST,
                    "remove_tags": _TAG_LIST,
                    "email_consent": {"type": "boolean", "description": "give (true) or withdraw (false)"},
                    "whatsapp_consent": {
                        "type": "boolean",
                        "description": "give (true) or withdraw (false) consent to WhatsApp marketing templates",
                    },
                },
            },
            example={"stage": "sql", "add_tags": ["vip"], "remove_tags": ["cold"], "email_consent": True},
        ),
    },
}
