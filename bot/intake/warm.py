"""Warm signals inside intake: intent words, a handoff button, the score crossing its threshold."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlmodel.ext.asyncio.session import AsyncSession

from bot.intake.messages import MessageError, SystemMessages
from bot.intake.replies import system_message
from flows.engine import Engine
from flows.handoff import HandoffPolicy, open_handoff, open_handoff_of, pause_nurture
from storage.models import Conversation, Delivery, Event, Handoff, Lead

log = logging.getLogger(__name__)
# Scripts written without spaces between words: their terms match anywhere in the text.
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def intent_pattern(word: str) -> re.Pattern[str]:
    """A case-insensitive pattern for a whole word or phrase (a substring for CJK terms)."""
    if _UNSPACED.search(word):
        return re.compile(re.escape(word.strip()), re.IGNORECASE)
    body = r"\s+".join(re.escape(part) for part in word.split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


class WarmSignals:
    """Decides whether an inbound event makes the lead warm, and opens the handoff if so."""

    def __init__(self, policy: HandoffPolicy, engine: Engine) -> None:
        self.policy, self.engine = policy, engine
        self.intents = [(word, intent_pattern(word)) for word in policy.intent_words]
        self.buttons = {label.casefold() for label in policy.buttons}

    def signal(self, event: Event, score_before: float, score_after: float) -> tuple[str, str] | None:
        """(trigger, reason) when this event makes the lead warm, else None."""
        text = event.payload.get("text") or ""
        if event.type == "button" and str(event.payload.get("value", text)).casefold() in self.buttons:
            return "button", f'pressed "{event.payload.get("value", text)}"'
        if event.type == "message":
            word = next((word for word, pattern in self.intents if pattern.search(text)), None)
            if word is not None:
                return "intent", f'wrote "{word}"'
        threshold = self.policy.warm_score
        if threshold is not None and score_before < threshold <= score_after:
            return "score", f"score {score_after:g} reached {threshold:g}"
        return None

    async def check(
        self,
        session: AsyncSession,
        lead: Lead,
        conversation: Conversation | None,
        event: Event,
        score_before: float,
        now: datetime,
    ) -> Handoff | None:
        """The handoff this event opened, or None (not warm, or one is open already)."""
        found = self.signal(event, score_before, lead.score)
        if found is None:
            if await open_handoff_of(session, lead.id) is not None:  # a flow this event started waits too
                await pause_nurture(session, self.engine, lead.id, now)
            return None
        trigger, reason = found
        handoff, opened = await open_handoff(
            session,
            self.engine,
            lead,
            trigger=trigger,
            reason=reason,
            now=now,
            warm_at=event.at,
            conversation=conversation,
        )
        return handoff if opened else None


def visitor_notice(
    messages: SystemMessages,
    policy: HandoffPolicy,
    handoff: Handoff,
    lead: Lead,
    conversation: Conversation,
    now: datetime,
    online: bool = False,
) -> Delivery | None:
    """'A human is coming' (in hours, or an operator is online), else when to expect an answer; once per handoff."""
    key = f"handoff:{handoff.id}:coming"
    if online or policy.is_open(now) or policy.hours is None:
        return system_message(messages, "handoff_coming", {}, lead, conversation, key, now)
    zone = lead.timezone or policy.hours.timezone
    try:
        opens = opening_text(messages, policy.hours.next_open(now), zone, lead.locale)
    except MessageError as exc:
        log.error("out-of-hours notice not sent: %s", exc)
        return None
    return system_message(messages, "handoff_out_of_hours", {"opens": opens}, lead, conversation, key, now)


def opening_text(messages: SystemMessages, moment: datetime, zone_name: str, locale: str | None) -> str:
    """`Monday at 09:00 (Europe/Berlin)` in the lead's language (`_system/opening_time.j2`), in its zone when known."""
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        zone, zone_name = ZoneInfo("UTC"), "UTC"
    local = moment.astimezone(zone)
    return messages.render("opening_time", locale, day=local.weekday(), time=f"{local:%H:%M}", zone=zone_name)
