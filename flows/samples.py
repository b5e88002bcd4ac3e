"""Sample leads and events for lint and preview: every key a real `lead` / `event` has, realistic values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flows.spec import Trigger

SAMPLE_NOW = datetime(2026, 3, 10, 14, 30, tzinfo=UTC)

SAMPLE_LEAD: dict[str, Any] = {
    "id": 1042,
    "first_name": "Ann",
    "last_name": "Lee",
    "email": "ann.lee@example.com",
    "phone": "+14155550123",
    "locale": "en",
    "timezone": "America/New_York",
    "stage": "lead",
    "score": 35.0,
    "likelihood": 64,
    "tags": ["webinar"],
    "first_touch": {
        "source": "google",
        "medium": "cpc",
        "campaign": "spring-launch",
        "term": "lead nurturing",
        "content": "ad-1",
        "referrer": "https://www.google.com/",
        "landing": "/pricing",
        "channel": "webchat",
        "at": "2026-03-01T09:15:00+00:00",
    },
    "last_touch": {
        "source": "newsletter",
        "medium": "email",
        "campaign": "march-digest",
        "landing": "/blog/speed-to-lead",
        "channel": "webchat",
        "at": "2026-03-09T18:40:00+00:00",
    },
}

# What a brand-new lead often looks like: nothing known yet, so `Hi {{ lead.first_name }}` shows "None". Its likelihood
# is a number all the same, low: lint evaluates expressions strictly, and `lead.likelihood >= 60` must pass it; a
# real lead no model scored has None there, and a comparison with None is false (flows/expressions.py).
SPARSE_LEAD: dict[str, Any] = {
    **{key: None for key in SAMPLE_LEAD},
    "id": 1043,
    "stage": "visitor",
    "score": 0.0,
    "likelihood": 3,
    "tags": [],
    "first_touch": {},
    "last_touch": {},
}

BLANK_EVENT: dict[str, Any] = {
    "type": None,
    "name": None,
    "path": None,
    "url": None,
    "text": None,
    "value": None,
    "properties": {},
    "channel": None,
}

_EVENTS: dict[str, dict[str, Any]] = {
    "message": {"text": "Hi, how much is the Pro plan?", "channel": "webchat"},
    "page_view": {"path": "/pricing", "url": "https://example.com/pricing?plan=pro", "channel": "webchat"},
    "button": {"value": "Send me a summary", "text": "Send me a summary", "channel": "telegram"},
    "contact_shared": {"value": "phone", "channel": "telegram"},
    "custom": {"name": "signup", "properties": {"plan": "trial", "amount": 0}},
    "start": {"text": "/start", "channel": "telegram"},
}


def sample_lead(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """SAMPLE_LEAD with some fields replaced (for `kindling preview --sample FILE`); unknown keys are refused."""
    unknown = sorted(set(overrides or {}) - set(SAMPLE_LEAD))
    if unknown:
        raise ValueError(f"unknown lead field(s): {', '.join(unknown)} (fields: {', '.join(SAMPLE_LEAD)})")
    return {**SAMPLE_LEAD, **(overrides or {})}


def sample_event(trigger: Trigger | None) -> dict[str, Any]:
    """The event that would enroll a lead by this trigger, with every key present."""
    if trigger is None or trigger.kind != "event" or trigger.event is None:
        kind = {"stage": "stage_changed"}.get(trigger.kind if trigger else "")
        return {**BLANK_EVENT, "type": kind}
    event = {**BLANK_EVENT, "type": trigger.event, **_EVENTS.get(trigger.event, {})}
    if trigger.name:
        event["name"] = trigger.name
    return event


def sample_contexts(trigger: Trigger | None) -> list[tuple[str, dict[str, Any]]]:
    """Contexts lint renders every step with: a filled-in lead, and one nothing is known about."""
    event = sample_event(trigger)
    return [
        ("sample lead", {"lead": SAMPLE_LEAD, "event": event, "now": SAMPLE_NOW}),
        ("lead with no name, contact or source", {"lead": SPARSE_LEAD, "event": event, "now": SAMPLE_NOW}),
    ]
