"""Which of the bot's own messages answer an inbound; each becomes an outbox row."""

from __future__ import annotations

import logging
from datetime import datetime

from bot.intake.messages import MessageError, SystemMessages
from flows.reactions import lead_context
from storage.models import Conversation, Delivery, Event, Lead

log = logging.getLogger(__name__)
ANSWERED = ("message", "start", "button")


def plan_replies(
    messages: SystemMessages,
    lead: Lead,
    conversation: Conversation,
    event: Event,
    captured: list[Event],
    first_message: bool,
    now: datetime,
) -> list[Delivery]:
    """The bot's answers to `event`, or none while a human owns the conversation or on email."""
    # An emailed reply to a nurture email is answered by a person or the next step, not by a chat greeting
    # or "got it" mailed back (a handoff's notice and an opt-out's confirmation still go: see Intake._replies).
    if conversation.owner != "bot" or event.type not in ANSWERED or conversation.channel == "email":
        return []
    # One answer per thing said: thanks for a contact (it greets too), a greeting for the conversation's first
    # message (a `/start` included), else "got it"; the contact request may follow.
    planned: list[tuple[str, dict, list]] = []
    # Thanks for an address that is now the lead's; another lead's, kept as a claim, is not where we reach them.
    reachable = [each.payload["value"] for each in captured if each.payload["value"] in (lead.email, lead.phone)]
    if reachable:
        planned.append(("contact_thanks", {"contact": reachable[0]}, []))
    elif first_message:
        planned.append(("greeting", {}, []))
    else:
        planned.append(("got_it", {}, []))
    if not (lead.email or lead.phone or conversation.contact_requested or first_message):
        planned.append(("contact_request", {}, contact_button(messages, lead)))
        conversation.contact_requested = True
    return reply_deliveries(messages, planned, lead, conversation, event, now)


def contact_button(messages: SystemMessages, lead: Lead) -> list[dict]:
    """The share-my-phone-number button in the lead's language (`_system/contact_button.j2`); none if it is broken."""
    try:
        return [{"type": "contact", "text": messages.render("contact_button", lead.locale)}]
    except MessageError as exc:
        log.error("contact button left out: %s", exc)
        return []


def reply_deliveries(
    messages: SystemMessages,
    planned: list[tuple[str, dict, list]],
    lead: Lead,
    conversation: Conversation,
    event: Event,
    now: datetime,
) -> list[Delivery]:
    """Outbox rows for planned system messages (name, extra context, buttons); a broken one is left out."""
    deliveries = []
    for name, extra, buttons in planned:
        key = f"reply:{event.id}:{name}"
        delivery = system_message(messages, name, extra, lead, conversation, key, now, buttons, kind="reply")
        if delivery is not None:
            deliveries.append(delivery)
    return deliveries


def system_message(
    messages: SystemMessages,
    name: str,
    extra: dict,
    lead: Lead,
    conversation: Conversation,
    key: str,
    now: datetime,
    buttons: list | None = None,
    kind: str = "system",
) -> Delivery | None:
    """One of the bot's own messages, in the lead's language, as an outbox row keyed `key`; None (and a log line) if
    it does not render."""
    try:
        text = messages.render(name, lead.locale, lead=lead_context(lead), **extra)
    except MessageError as exc:  # never send raw template text; the error is in the log
        log.error("reply not sent: %s", exc)
        return None
    return reply_row(text, lead, conversation, key, now, buttons, kind)


def reply_row(
    text: str,
    lead: Lead,
    conversation: Conversation,
    key: str,
    now: datetime,
    buttons: list | None = None,
    kind: str = "reply",
) -> Delivery:
    """A message of the bot's into the conversation as an outbox row keyed `key`, sent first (priority 1)."""
    return Delivery(
        lead_id=lead.id,
        conversation_id=conversation.id,
        channel=conversation.channel,
        address=conversation.external_id,
        kind=kind,
        priority=1,
        text=text,
        buttons=buttons or [],
        idempotency_key=key,
        not_before=now,
        created_at=now,
    )
