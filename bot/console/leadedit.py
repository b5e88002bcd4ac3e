"""Editing a lead from its console page: name, email, phone, tags and a note; each change a `lead_edited` event.

Emails and phones are checked as intake checks typed ones (`bot.intake.contacts`), tags as the API's
PATCH /api/leads/{id} checks them; a bad value gets the page back with the message (400) and changes
nothing. An operator's edit fills in what the lead is called and how to reach it: it never merges leads.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.api.leads import MAX_TAGS, TAG
from bot.console.auth import current, requires
from bot.console.leads import lead_id, lead_page_for
from bot.intake.contacts import locale_region, normalize_email, normalize_phone
from bot.services import SERVICES
from storage.db import transaction
from storage.leads import get_lead
from storage.models import Event, Operator

EDITED = "lead_edited"
FIELDS = ("first_name", "last_name", "email", "phone", "tags", "note")
MAX_NAME = 100
MAX_NOTE = 2000
_TAG_SEPARATORS = re.compile(r"[,\s]+")


class EditError(ValueError):
    """A value the form cannot take; the message says which and why, for the operator."""


def routes(console: web.Application) -> None:
    """Mount POST /console/leads/{id}/edit."""
    console.router.add_post("/leads/{id}/edit", edit)


@requires("leads.edit")
async def edit(request: web.Request) -> web.StreamResponse:
    """Apply the form; back to the lead page, or the page with the error and what was typed (400)."""
    services, found, form = request.app[SERVICES], lead_id(request.match_info["id"]), await request.post()
    typed = {name: str(form[name]) for name in FIELDS if name in form}
    operator, now = current(request).operator, services.clock.now()
    try:
        await transaction(services.sessions, lambda session: apply_edit(session, found, typed, operator, now))
    except EditError as exc:
        return await lead_page_for(request, found, error=str(exc), typed=typed, status=400)
    raise web.HTTPSeeOther(f"/console/leads/{found}")


async def apply_edit(
    session: AsyncSession, lead_id: int, typed: dict[str, str], operator: Operator, now: datetime
) -> Event | None:
    """Check and store the typed values; the `lead_edited` event with each changed field's before and after.

    None when nothing changed. Raises EditError (nothing stored) for a value that cannot be taken."""
    lead = await get_lead(session, lead_id)
    wanted = checked(typed, lead.locale)
    changes = {
        name: {"before": getattr(lead, name), "after": value}
        for name, value in wanted.items()
        if value != getattr(lead, name)
    }
    if not changes:
        return None
    for name, change in changes.items():
        setattr(lead, name, change["after"])
    if "email" in changes:  # a bounce was the old address's
        lead.email_bounced_at = lead.email_bounce_reason = None
    lead.updated_at = now
    payload = {"by": operator.name, "operator_id": operator.id, "changes": changes}
    edited = Event(lead_id=lead.id, type=EDITED, payload=payload, at=now)
    session.add_all([lead, edited])
    return edited


def checked(typed: dict[str, str], locale: str | None) -> dict[str, Any]:
    """The form's values as the lead stores them (empty: none); EditError for the first that cannot be."""
    values: dict[str, Any] = {}
    for name, raw in typed.items():
        text = raw.strip()
        if name in ("first_name", "last_name"):
            values[name] = _limited(text, MAX_NAME, "a name")
        elif name == "note":
            values[name] = _limited(text, MAX_NOTE, "the note")
        elif name == "email":
            values[name] = text and normalize_email(text)
            if values[name] is None:
                raise EditError(f"“{text}” is not an email address")
        elif name == "phone":
            values[name] = text and normalize_phone(text, locale_region(locale))
            if values[name] is None:
                raise EditError(
                    f"“{text}” is not a phone number: write it with its country code, like +44 20 7946 0958"
                )
        else:
            values[name] = _tags(text)
    return {name: value if value != "" else None for name, value in values.items()}


def _limited(text: str, limit: int, what: str) -> str:
    if len(text) > limit:
        raise EditError(f"{what} is at most {limit} characters")
    return text


def _tags(text: str) -> list[str]:
    """Tags separated by commas or spaces, each as the API takes them; in the order given, once each."""
    tags = list(dict.fromkeys(tag for tag in _TAG_SEPARATORS.split(text) if tag))
    if len(tags) > MAX_TAGS:
        raise EditError(f"at most {MAX_TAGS} tags")
    for tag in tags:
        if not TAG.match(tag):
            raise EditError(f"“{tag}” is not a tag: letters, digits, _ . : - (up to 64), separated by commas")
    return tags
