"""Warm signals inside intake: intent words, a handoff button, the score crossing its threshold."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlmodel.ext.asyncio.session import AsyncSession

from bot.intake.messages import MessageError, SystemMessages
from bot.intake.replies import system_message
from flows.engine import Engine, lead_enrollments
from flows.handoff import QUESTION, HandoffPolicy, one_line, open_handoff, open_handoff_of, pause_nurture
from storage.models import Conversation, Delivery, Event, Handoff, Lead

log = logging.getLogger(__name__)
REASON_CHARS = 60  # a question is quoted in the handoff's reason up to this long
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
        answered: bool = False,
    ) -> Handoff | None:
        """The handoff this event opened, or None (not warm, or one is open already).

        `answered`: the bot answers the message itself (thanks for a shared contact, which flows may follow up, or
        a quick answer): no question for a person.
        """
        found = self.signal(event, score_before, lead.score)
        if found is None and await open_handoff_of(session, lead.id) is not None:  # a flow this event started waits too
            await pause_nurture(session, self.engine, lead.id, now)
            return None
        found = found or (None if answered else await self.question(session, lead, conversation, event, now))
        if found is None:
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

    async def question(
        self, session: AsyncSession, lead: Lead, conversation: Conversation | None, event: Event, now: datetime
    ) -> tuple[str, str] | None:
        """(`question`, reason) when a message in a chat the bot holds needs a person, else None.

        Not an email reply to nurture (answered by a person or the next step, never by the bot), and not a
        message a flow answers: one it started just now with a step due at once. What the bot answers itself
        (small talk among it) the caller leaves out with `check(answered=True)`.
        """
        text = event.payload.get("text") or ""
        if (
            not self.policy.questions
            or event.type != "message"
            or conversation is None
            or conversation.owner != "bot"
            or conversation.channel == "email"
            or await self._flow_answers(session, lead.id, now)
        ):
            return None
        return QUESTION, f'asked "{one_line(text, REASON_CHARS)}"'

    async def _flow_answers(self, session: AsyncSession, lead_id: int, now: datetime) -> bool:
        """Whether a flow enrolled the lead just now with a first step that is a message due at once."""
        for enrollment in await lead_enrollments(session, lead_id):
            if enrollment.status != "active" or enrollment.enrolled_at != now or enrollment.due_at > now:
                continue
            spec = await self.engine.spec_of(session, enrollment)
            if spec is not None and spec.step_for(spec.step_names[0], lead_id).action is None:
                return True
        return False


def visitor_notice(
    messages: SystemMessages,
    policy: HandoffPolicy,
    handoff: Handoff,
    lead: Lead,
    conversation: Conversation,
    now: datetime,
    online: bool = False,
) -> Delivery | None:
    """'A human is coming' (in hours, or an operator is online), else when to expect an answer; once per handoff.

    A question gets `question_received`: a person will reply, within the SLA or when the team is back.
    """
    key = f"handoff:{handoff.id}:coming"
    opens = None
    if not (online or policy.is_open(now) or policy.hours is None):
        try:
            zone = lead.timezone or policy.hours.timezone
            opens = opening_text(messages, policy.hours.next_open(now), zone, lead.locale)
        except MessageError as exc:
            log.error("out-of-hours notice not sent: %s", exc)
            return None
    if handoff.trigger == QUESTION:  # the template words the SLA in the lead's language
        hours, minutes = divmod(max(1, -(-int(policy.sla.total_seconds()) // 60)), 60)
        extra = {"opens": opens, "hours": hours, "minutes": minutes}
        return system_message(messages, "question_received", extra, lead, conversation, key, now)
    if opens is None:
        return system_message(messages, "handoff_coming", {}, lead, conversation, key, now)
    return system_message(messages, "handoff_out_of_hours", {"opens": opens}, lead, conversation, key, now)


def opening_text(messages: SystemMessages, moment: datetime, zone_name: str, locale: str | None) -> str:
    """`Monday at 09:00 (Europe/Berlin)` in the lead's language (`_system/opening_time.j2`), in its zone when known."""
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        zone, zone_name = ZoneInfo("UTC"), "UTC"
    local = moment.astimezone(zone)
    return messages.render("opening_time", locale, day=local.weekday(), time=f"{local:%H:%M}", zone=zone_name)
