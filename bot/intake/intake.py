"""Intake: one inbound becomes lead, conversation, event and reply rows in one transaction."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Settings
from bot.intake.contacts import find_email, find_phone, normalize_email, normalize_phone
from bot.intake.inbound import Inbound, own_words
from bot.intake.messages import SystemMessages
from bot.intake.names import introduction, note_asked, take_name
from bot.intake.readahead import identity_keys, read_ahead
from bot.intake.replies import plan_replies, reply_deliveries, reply_row
from bot.intake.warm import WarmSignals, visitor_notice
from flows import history
from flows.answers import Answers
from flows.channel_consent import WHATSAPP_CONSENT, set_channel_consent
from flows.clock import Clock
from flows.consent import CONSENT, set_email_consent
from flows.engine import Engine
from flows.handoff import WON_BY
from flows.optout import is_opt_out, opt_out
from flows.outgoing import Subscriptions
from flows.reactions import advance_stage, ledger, score_event
from storage import leads as q
from storage.db import DatabaseUnavailable, Deadlocked, Sessions, is_sqlite, transaction
from storage.known import keep, known
from storage.models import Conversation, Delivery, Event, Handoff, Lead, Message
from storage.operators import operator_at_console
from storage.privacy import suppressed_kinds
from storage.rowids import number_rows

log = logging.getLogger(__name__)
BATCH = 50  # inbounds stored together in one transaction at most (group commit)
CONTACT_KINDS = ("email", "phone")
# An inbound's property naming the contact kind its channel's own id is (WhatsApp: "phone"): that identity
# merges leads, but the person did not share it, so it is not recorded (nor thanked for) as shared.
IMPLIED = "implied_contact"
STUCK_SECONDS = 2.0  # a batch running this long no longer holds back other writers' inbounds of its people


@dataclass
class Received:
    """What intake did with an inbound: `duplicate` means it was stored before and nothing changed."""

    lead_id: int
    duplicate: bool = False
    event_id: int | None = None
    conversation_id: int | None = None
    message: Message | None = None
    delivery_ids: list[int] = field(default_factory=list)  # set once committed
    deliveries: list[Delivery] = field(default_factory=list, repr=False)
    handoff_id: int | None = None  # a handoff this inbound opened: operators are to be told
    handed: bool = False  # its conversation is with people (queued or human): the console's inbox is to reload
    won_handoff_ids: list[int] = field(default_factory=list)  # handoffs it closed as won (a purchase): off the queue


class Intake:
    """Stores inbounds and runs their reactions (scoring, stages, the bot's replies)."""

    def __init__(
        self, sessions: Sessions, settings: Settings, messages: SystemMessages, clock: Clock, engine: Engine | None
    ) -> None:
        self.sessions, self.settings, self.messages, self.clock = sessions, settings, messages, clock
        self.engine = engine
        self.secret_key = b""  # the app's secret key, set at start-up: suppression entries are keyed with it
        self.answers = Answers([])  # quick answers and small talk, loaded at start-up (templates/_answers)
        self.warm = WarmSignals(settings.handoff, engine) if engine is not None else None
        self.not_names = (*settings.handoff.intent_words, *settings.opt_out_words)  # never taken for a name
        # Group commit: inbounds wait here for a writer, which stores all that are waiting in one transaction.
        # SQLite has one writer at a time anyway; on PostgreSQL a few transactions run side by side.
        self.writers = 1 if is_sqlite(settings.database_url) else 4
        self._waiting: deque[tuple[Inbound, asyncio.Future[Received]]] = deque()
        self._writing = 0  # writers running; counted down by the writer itself, in the same step it sees no more work
        self._busy: dict[tuple, int] = {}  # the people (conversations, identities, leads) of the batches being stored
        self._stored = asyncio.Event()  # set (and replaced) each time a batch ends
        self._tasks: set[asyncio.Task] = set()

    async def receive(self, inbound: Inbound) -> Received:
        """Store an inbound exactly once; raises DatabaseUnavailable if it could not be stored.

        Returns only after the transaction that stored it has committed. Inbounds that arrive while
        other inbounds are being stored are stored together in the next transaction (group commit).
        """
        future: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._waiting.append((inbound, future))
        if self._writing < self.writers:
            self._writing += 1
            task = asyncio.create_task(self._write())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _write(self) -> None:
        """Store waiting inbounds, a batch per transaction, until none is left."""
        try:
            while self._waiting:
                batch = await self._next_batch()
                people = [key for inbound, _ in batch for key in _people(inbound)]
                for key in people:
                    self._busy[key] = self._busy.get(key, 0) + 1
                try:
                    await self._store(batch)
                finally:  # cancelled (shutting down): nobody may wait for ever
                    for _, future in batch:
                        _settle(future, DatabaseUnavailable("the server is shutting down"))
                    for key in people:
                        if (left := self._busy.pop(key) - 1) > 0:
                            self._busy[key] = left
                    self._stored.set()
                    self._stored = asyncio.Event()
        finally:
            self._writing -= 1

    async def _next_batch(self) -> list[tuple[Inbound, asyncio.Future[Received]]]:
        """The next inbounds to store together, none about a person whose inbounds a running batch stores.

        On PostgreSQL batches run side by side: two with the same person would both write their lead and
        conversation rows (the second waits for the first's commit), both insert a new person's identity
        (the second fails and runs again), or lock two such rows in opposite orders (a deadlock). Such an
        inbound waits for a later batch, in order with the person's others. When every inbound waiting is
        such a one, this writer waits for a running batch to end; should none end within STUCK_SECONDS
        (a batch held up by another instance's locks), it takes them all the same.
        """
        batch = self._take(apart=True)
        if batch or not self._waiting:
            return batch
        try:
            await asyncio.wait_for(self._stored.wait(), STUCK_SECONDS)
        except TimeoutError:
            return self._take(apart=False)
        return self._take(apart=True)  # maybe nothing: another writer took them, or took more of their people

    def _take(self, apart: bool) -> list[tuple[Inbound, asyncio.Future[Received]]]:
        """Up to BATCH waiting inbounds, in order; `apart`: leaving those about people a running batch has."""
        batch: list[tuple[Inbound, asyncio.Future[Received]]] = []
        later: list[tuple[Inbound, asyncio.Future[Received]]] = []
        held = set(self._busy) if apart else set()  # and the people of the inbounds left for later
        while self._waiting and len(batch) < BATCH:
            item = self._waiting.popleft()
            people = _people(item[0])
            if held.isdisjoint(people):
                batch.append(item)
            else:
                later.append(item)
                held.update(people)
        self._waiting.extendleft(reversed(later))  # back at the front, in their order
        return batch

    async def _store(self, batch: list[tuple[Inbound, asyncio.Future[Received]]]) -> None:
        """One transaction for the batch; if any inbound in it fails, each is stored on its own.

        A batch that lost a unique-key race (PostgreSQL: another batch or instance stored the same new
        person first) is run once more as a whole: it then finds what the other stored.
        """
        if len(batch) > 1:
            inbounds = [inbound for inbound, _ in batch]
            try:
                results = await transaction(self.sessions, lambda session: self._receive_all(session, inbounds), 2)
            except DatabaseUnavailable as exc:
                if not isinstance(exc, Deadlocked):
                    for _, future in batch:
                        _settle(future, exc)
                    return
                log.debug("a batch of %d inbounds deadlocked; storing each on its own", len(batch))
            except Exception as exc:  # a unique-key race or one bad inbound: the others must not fail with it
                log.debug("a batch of %d inbounds failed (%s); storing each on its own", len(batch), exc)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    _settle(future, _committed(result))
                return
        for inbound, future in batch:
            _settle(future, await self._receive_one(inbound))

    async def _receive_one(self, inbound: Inbound) -> Received | Exception:
        try:
            [received] = await transaction(self.sessions, lambda session: self._receive_all(session, [inbound]))
        except Exception as exc:  # handed to the caller, which maps it to an answer
            return exc
        return _committed(received)

    async def _receive_all(self, session: AsyncSession, inbounds: list[Inbound]) -> list[Received]:
        """Store inbounds in order in one transaction, reading ahead what they will look up."""
        await number_rows(session)
        keep(session, await read_ahead(session, inbounds, self.secret_key, self.clock.now()))
        return [await self._receive(session, inbound) for inbound in inbounds]

    async def _receive(self, session: AsyncSession, inbound: Inbound) -> Received:
        now = self.clock.now()
        if inbound.dedup_key:
            earlier = await q.stored_event(session, inbound.dedup_key)
            if earlier is not None:
                lead = await q.get_lead(session, earlier.lead_id)
                return Received(
                    lead_id=lead.id, duplicate=True, event_id=earlier.id, conversation_id=earlier.conversation_id
                )
        lead, created = await self._resolve_lead(session, inbound, now)
        conversation = await self._conversation(session, inbound, lead, now)
        first_touch = dict(lead.first_touch)
        self._update_profile(lead, inbound, now)
        if created:
            history.start(session, lead, inbound.channel)
        elif lead.first_touch != first_touch:
            await history.retouch(session, lead)
        event = Event(
            lead_id=lead.id,
            conversation_id=conversation.id if conversation else None,
            type=inbound.kind,
            name=inbound.name,
            payload=_payload(inbound),
            dedup_key=inbound.dedup_key,
            at=inbound.at,
        )
        await q.insert_event(session, event)  # a concurrent duplicate fails here; the retry then finds it above
        received = Received(lead_id=lead.id, event_id=event.id, conversation_id=event.conversation_id)
        score_before = lead.score
        first_message = conversation is not None and conversation.last_message_at is None
        if conversation is not None and inbound.kind in ("message", "button"):
            received.message = await self._store_message(session, conversation, lead, event, inbound)
        elif conversation is not None and inbound.kind == "start":  # the person spoke first: greeted now, not again
            conversation.last_message_at = inbound.at
        text = inbound.text or ""
        small_talk = inbound.kind == "message" and self.answers.is_small_talk(text)  # the bot's usual answer does
        named = None
        # "I'm Max Turner", or a name right after the greeting asked; "okay" is small talk, not a name.
        if conversation is not None and inbound.kind == "message" and own_words(inbound) and not small_talk:
            named = take_name(session, lead, conversation, text, self.not_names, now)
        captured, stop = await self._react(session, lead, inbound, event, conversation, now)
        received.won_handoff_ids = session.info.pop(WON_BY, [])
        if inbound.kind in ("message", "button") and not stop:  # for the flow report: did nurture get answers?
            await history.credit(session, lead.id, "replied_at" if inbound.kind == "message" else "button_at", now)
        handoff = None
        quick = None if captured or stop or small_talk else self._quick_answer(lead, conversation, inbound)
        if self.warm is not None and not stop:  # after scoring, so the handoff commits with its cause
            # The bot answers these itself (small talk, thanks, a quick answer, a greeting by name): no question.
            answered = small_talk or bool(captured) or quick is not None or named is not None or introduction(text)
            handoff = await self.warm.check(session, lead, conversation, event, score_before, now, answered)
        if conversation is not None:
            policy = self.settings.handoff
            online = handoff is not None and not policy.is_open(now) and await operator_at_console(session, now)
            if handoff is None and quick is not None:
                text, buttons = quick
                received.deliveries = [reply_row(text, lead, conversation, f"reply:{event.id}:answer", now, buttons)]
            else:
                received.deliveries = self._replies(
                    lead, conversation, event, captured, stop, first_message, now, handoff, online
                )
            session.add_all(received.deliveries)  # flushed with the rest: their ids are read after the commit
            note_asked(lead, conversation, received.deliveries)  # a greeting asking a name: the next message may be it
        received.handoff_id = handoff.id if handoff is not None else None
        received.handed = conversation is not None and conversation.owner in ("queued", "human")
        session.add(lead)
        return received

    async def _react(
        self,
        session: AsyncSession,
        lead: Lead,
        inbound: Inbound,
        event: Event,
        conversation: Conversation | None,
        now: datetime,
    ) -> tuple[list[Event], Event | bool]:
        """Contacts, points, stages, opt-out, flows. Returns the contact events and the opt-out (or a repeat)."""
        captured = await self._capture_contacts(session, lead, inbound, conversation, now)
        await _consent(session, lead, inbound, now)  # after the contacts: consent is for the address just given
        happened = [event, *captured]
        webhooks = self.engine.webhooks if self.engine is not None else Subscriptions()
        for each in list(happened):
            await score_event(session, self.settings.scoring, lead, each, now)
            if (change := await advance_stage(session, self.settings.stages, webhooks, lead, each, now)) is not None:
                happened.append(change)
        stop: Event | bool = False
        reason = _stop_reason(inbound, self.settings.opt_out_words)
        if reason is not None:
            stop = await opt_out(session, lead, reason, now) or True  # True: had opted out already
            if isinstance(stop, Event):
                happened.append(stop)
        if self.engine is not None:
            await self.engine.react(session, lead, happened, now)
        return captured, stop

    def _quick_answer(
        self, lead: Lead, conversation: Conversation | None, inbound: Inbound
    ) -> tuple[str, list[dict[str, str]]] | None:
        """A quick answer's (text, buttons) for a question in a chat the bot holds (docs/answers.md), else None."""
        if (
            inbound.kind != "message"
            or conversation is None
            or conversation.owner != "bot"
            or conversation.channel == "email"  # a reply to nurture is a person's to answer
            or not inbound.text
        ):
            return None
        return self.answers.reply(lead, inbound.text)

    def _replies(
        self,
        lead: Lead,
        conversation: Conversation,
        event: Event,
        captured: list[Event],
        stop: Event | bool,
        first_message: bool,
        now: datetime,
        handoff: Handoff | None = None,
        online: bool = False,
    ) -> list[Delivery]:
        if handoff is not None:  # the usual reply gives way to "a human is coming"
            notice = visitor_notice(self.messages, self.settings.handoff, handoff, lead, conversation, now, online)
            return [notice] if notice is not None else []
        if stop:  # the confirmation, once, to who asked (who blocked us cannot read it); nothing else answers a stop
            planned = [("opt_out_confirm", {}, [])] if isinstance(stop, Event) and event.type == "message" else []
            return reply_deliveries(self.messages, planned, lead, conversation, event, now)
        return plan_replies(self.messages, lead, conversation, event, captured, first_message, now)

    async def _resolve_lead(self, session: AsyncSession, inbound: Inbound, now: datetime) -> tuple[Lead, bool]:
        """The inbound's lead (merging the leads it turns out to be), and whether it is new."""
        identities = identity_keys(inbound)
        email = inbound.profile.email and normalize_email(inbound.profile.email)
        phone = inbound.profile.phone and normalize_phone(inbound.profile.phone)
        found = await q.leads_by_identities(session, identities)
        if inbound.lead_id is not None:
            named = await q.get_lead(session, inbound.lead_id)
            found = [named, *(lead for lead in found if lead.id != named.id)]
        if found:
            lead = found[0]
        else:  # with its profile, so it is stored once
            lead = Lead(created_at=now, updated_at=now, stage_at=now)
            self._update_profile(lead, inbound, now)
            lead = await q.create_lead(session, now, lead)
        for other in found[1:]:
            await self._merge(session, lead, other, now)
        lead.email = lead.email or email or None
        lead.phone = lead.phone or phone or None
        await self._suppress(session, lead, await q.attach_identities(session, lead, identities, now), now)
        return lead, not found

    async def _suppress(self, session: AsyncSession, lead: Lead, added: list[tuple[str, str]], now: datetime) -> None:
        """A new identity of someone who was erased: they may chat, but nothing is sent to them unasked."""
        if not added or lead.opted_out_at is not None:
            return
        kinds = await suppressed_kinds(session, self.secret_key, added)
        if kinds:  # the event names the kinds that matched, never the values
            await opt_out(session, lead, f"matches an erased person ({', '.join(kinds)})", now)

    async def _merge(self, session: AsyncSession, lead: Lead, other: Lead, now: datetime) -> None:
        await q.merge_leads(session, lead, other, now)
        session.add(Event(lead_id=lead.id, type="merged", payload={"merged_lead_id": other.id}, at=now))
        if self.settings.stages.rank(other.stage) > self.settings.stages.rank(lead.stage):
            lead.stage, lead.stage_at = other.stage, other.stage_at
        lead.score = self.settings.scoring.score(await ledger(session, lead.id), now)
        await history.merge(session, self.settings.stages, lead, other)

    async def _conversation(
        self, session: AsyncSession, inbound: Inbound, lead: Lead, now: datetime
    ) -> Conversation | None:
        if not inbound.external_id:
            return None
        conversation = await q.find_conversation(session, inbound.channel, inbound.external_id)
        if conversation is None:
            conversation = Conversation(
                lead_id=lead.id, channel=inbound.channel, external_id=inbound.external_id, created_at=now
            )
            await q.insert_now(session, conversation)
            if (answers := known(session)) is not None:
                answers.conversations[(inbound.channel, inbound.external_id)] = conversation
        return conversation

    def _update_profile(self, lead: Lead, inbound: Inbound, now: datetime) -> None:
        profile = inbound.profile
        lead.first_name = lead.first_name or profile.first_name
        lead.last_name = lead.last_name or profile.last_name
        if profile.locale and not (lead.locale or "").startswith(profile.locale):  # keep en-US over en
            lead.locale = profile.locale
        lead.timezone = profile.timezone or lead.timezone
        if inbound.touch is not None and inbound.touch.as_dict():
            touch = {**inbound.touch.as_dict(), "channel": inbound.channel, "at": inbound.at.isoformat()}
            lead.first_touch = lead.first_touch or touch
            lead.last_touch = touch
        lead.updated_at = now

    async def _store_message(
        self, session: AsyncSession, conversation: Conversation, lead: Lead, event: Event, inbound: Inbound
    ) -> Message:
        message = Message(
            conversation_id=conversation.id,
            lead_id=lead.id,
            direction="in",
            author="visitor",
            text=inbound.text or "",
            client_id=inbound.client_id,
            event_id=event.id,
            at=inbound.at,
        )
        conversation.last_message_at = inbound.at
        session.add_all([message, conversation])  # flushed with the batch's other rows
        return message

    async def _capture_contacts(
        self, session: AsyncSession, lead: Lead, inbound: Inbound, conversation: Conversation | None, now: datetime
    ) -> list[Event]:
        """Emails and phones the person shared become contact_shared events, once each.

        Verified ones (Telegram's contact button) are identities: `_resolve_lead` merged them already. One
        typed into a chat is only a claim (anyone can type anybody's address): see `_claim`.
        """
        implied = inbound.properties.get(IMPLIED)  # the channel's own id is this contact (WhatsApp: the number)
        shared = [
            (kind, value, True) for kind, value in inbound.identities if kind in CONTACT_KINDS and kind != implied
        ]
        if own_words(inbound):  # a forwarded text or someone else's card claims nothing for the sender
            text = inbound.text or ""
            typed = (("email", find_email(text)), ("phone", find_phone(text, lead.locale)))
            shared += [(kind, value, False) for kind, value in typed if value]
        if not shared:
            return []
        seen = {(kind, value) for kind, value, _ in await q.contacts_shared(session, lead.id)}
        events = []
        for kind, value, verified in shared:
            if (kind, value) in seen or not (verified or await self._claim(session, lead, kind, value, now)):
                continue
            seen.add((kind, value))
            if verified and getattr(lead, kind) is None:
                setattr(lead, kind, value)
            payload = {"kind": kind, "value": value, "channel": inbound.channel, "verified": verified}
            shared_event = Event(
                lead_id=lead.id,
                conversation_id=conversation.id if conversation else None,
                type="contact_shared",
                payload=payload,
                at=now,
            )
            session.add(shared_event)
            events.append(shared_event)
        if events:
            await session.flush()
        return events

    async def _claim(self, session: AsyncSession, lead: Lead, kind: str, value: str, now: datetime) -> bool:
        """Whether a typed address is a claim to record; never a reason to merge.

        It stays a claim on this lead: it is not an identity, so no verified source (the events API, say)
        is led to this lead by it later either, and operators see it (with the lead that owns it, if
        another does). Unowned, it may fill the lead's empty email or phone: people type their address to
        hear from us. An email link or code the person confirmed would make it an identity; not built yet.
        """
        owner = await q.identity_owner(session, kind, value)
        if owner == lead.id:  # theirs already, verified
            return False
        if owner is None:
            await self._suppress(session, lead, [(kind, value)], now)  # an erased person's: nothing sent unasked
            if getattr(lead, kind) is None:
                setattr(lead, kind, value)
        return True


def _committed(received: Received) -> Received:
    """After the commit: the ids of the replies it stored (the commit's flush gave them)."""
    received.delivery_ids = [delivery.id for delivery in received.deliveries if delivery.id is not None]
    return received


def _people(inbound: Inbound) -> list[tuple]:
    """Who an inbound is about, as far as one can tell before storing it: its conversation and identities."""
    people: list[tuple] = [("identity", *key) for key in identity_keys(inbound)]
    if inbound.external_id:
        people.append(("conversation", inbound.channel, inbound.external_id))
    if inbound.lead_id is not None:
        people.append(("lead", inbound.lead_id))
    return people


def _stop_reason(inbound: Inbound, words: Iterable[str]) -> str | None:
    """Why an inbound opts its lead out (asked to stop, blocked the bot), or None."""
    if inbound.kind == "blocked":  # the reason a failed send gives too (bot/delivery/dispatcher.py)
        return f"blocked us on {inbound.channel}"
    if inbound.kind == "message" and is_opt_out(inbound.text, words):
        return "asked to stop"
    return None


def _settle(future: asyncio.Future[Received], outcome: Received | Exception) -> None:
    """Hand a result or an error to a waiting `receive` (unless its caller went away)."""
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


async def _consent(session: AsyncSession, lead: Lead, inbound: Inbound, now: datetime) -> None:
    """Email consent the inbound gives or withdraws (the widget's consent frame, the events API's `consent`)."""
    consent = inbound.properties.get(CONSENT)
    source = {"webchat": "widget", "api": "api"}.get(inbound.channel, "chat")
    if isinstance(consent, bool):
        await set_email_consent(session, lead, consent, "widget" if inbound.channel == "webchat" else "api", now)
    whatsapp = inbound.properties.get(WHATSAPP_CONSENT)  # a consent button in WhatsApp, the events API, the widget
    if isinstance(whatsapp, bool):
        await set_channel_consent(session, lead, "whatsapp", whatsapp, source, now)


def _payload(inbound: Inbound) -> dict:
    payload: dict = {"channel": inbound.channel}
    if inbound.text is not None:
        payload["text"] = inbound.text
    if inbound.properties:
        payload.update(inbound.properties)
    if inbound.touch is not None and inbound.touch.as_dict():
        payload["touch"] = inbound.touch.as_dict()
    return payload
