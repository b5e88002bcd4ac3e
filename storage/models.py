"""Tables. Every row that must survive a crash lives here; the process keeps nothing else."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, SmallInteger, Text, TypeDecorator, UniqueConstraint, text
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator):
    """Stores naive UTC, returns aware UTC, on SQLite and PostgreSQL alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def _time(nullable: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


# SQLite numbers a row one above the largest id left, so an erased newest lead's id went to the next person:
# ids that users and APIs see are never reused (migration 0011 says why for each table).
NEVER_REUSED = {"sqlite_autoincrement": True}


def _json(default: Any) -> Any:
    def fresh() -> Any:  # not `default` itself: pydantic reads the factory's signature for every row made,
        return default()  # and for a builtin such as dict that means parsing its text signature each time

    fresh.__signature__ = inspect.Signature()  # type: ignore[attr-defined]  # read as is, not worked out each time
    return Field(default_factory=fresh, sa_column=Column(JSON, nullable=False))


class Lead(SQLModel, table=True):
    """One person across channels."""

    __table_args__ = (
        # The console's pipeline board (migration 0019): a stage's leads by last activity (keyset pages), and by
        # time in stage (its counts and median); leads merged into another are never on it.
        Index(
            "ix_lead_board",
            "stage",
            "updated_at",
            "id",
            sqlite_where=text("merged_into_id IS NULL"),
            postgresql_where=text("merged_into_id IS NULL"),
        ),
        Index(
            "ix_lead_stage_at",
            "stage",
            "stage_at",
            sqlite_where=text("merged_into_id IS NULL"),
            postgresql_where=text("merged_into_id IS NULL"),
        ),
        NEVER_REUSED,
    )
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = _time()
    updated_at: datetime = _time()
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    locale: str | None = None
    timezone: str | None = None
    stage: str = "visitor"
    stage_at: datetime = _time()
    score: float = 0.0
    first_touch: dict = _json(dict)
    last_touch: dict = _json(dict)
    tags: list = _json(list)
    merged_into_id: int | None = Field(default=None, foreign_key="lead.id", index=True)
    opted_out_at: datetime | None = _time(nullable=True)
    # Email (migration 0012): nurture email needs consent (email.require_consent), stops at an RFC 8058
    # unsubscribe, and never goes to an address that hard-bounced.
    email_consent_at: datetime | None = _time(nullable=True)
    email_consent_source: str | None = None  # widget | api | operator
    email_opted_out_at: datetime | None = _time(nullable=True)
    email_bounced_at: datetime | None = _time(nullable=True)
    email_bounce_reason: str | None = None
    # Messengers (migration 0014): per channel, marketing consent and opt-out, as ISO times with how or why:
    # {"whatsapp": {"consent_at", "consent_source", "opted_out_at", "opted_out_reason"}}. See flows.channel_consent.
    channel_marketing: dict = _json(dict)
    note: str | None = Field(default=None, sa_type=Text)  # an operator's note, edited in the console (0017)
    # Learned scoring (migration 0020): the chance in percent, 0-100, that the lead reaches the goal stage, from
    # the accepted model `likelihood_model` (a ScoringModel id); None until a model is accepted (flows/learned.py).
    likelihood: int | None = Field(default=None, sa_type=SmallInteger)
    likelihood_model: int | None = None


class Identity(SQLModel, table=True):
    """A key that points at a lead: email, phone, telegram user id, widget visitor id, ..."""

    __table_args__ = (UniqueConstraint("kind", "value"),)
    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id", index=True)
    kind: str
    value: str
    created_at: datetime = _time()


class Conversation(SQLModel, table=True):
    """One thread on one channel; `owner` is bot, queued, human or closed."""

    __table_args__ = (UniqueConstraint("channel", "external_id"), NEVER_REUSED)
    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id", index=True)
    channel: str
    external_id: str
    owner: str = "bot"
    contact_requested: bool = False
    name_asked: bool = False  # the greeting asked for a name: the next message may be it (migration 0017)
    created_at: datetime = _time()
    last_message_at: datetime | None = _time(nullable=True)


_SKIPPED = "type = 'step_skipped'"


class Event(SQLModel, table=True):
    """Anything that happened to a lead; append-only."""

    __table_args__ = (
        Index("ix_event_lead_at", "lead_id", "at"),
        # The flow report reads skipped steps; they are few, so a partial index finds them without the rest.
        Index("ix_event_step_skipped", "at", sqlite_where=text(_SKIPPED), postgresql_where=text(_SKIPPED)),
        NEVER_REUSED,
    )
    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id")
    conversation_id: int | None = Field(default=None, foreign_key="conversation.id")
    type: str
    name: str | None = None
    payload: dict = _json(dict)
    dedup_key: str | None = Field(default=None, unique=True)
    at: datetime = _time()


class Message(SQLModel, table=True):
    """The transcript of a conversation: what the visitor said and what was sent to them."""

    __table_args__ = (Index("ix_message_conversation", "conversation_id", "id"), NEVER_REUSED)
    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(foreign_key="conversation.id")
    lead_id: int = Field(foreign_key="lead.id", index=True)
    direction: str  # in | out
    author: str  # visitor | bot | operator
    text: str
    buttons: list = _json(list)
    client_id: str | None = None
    event_id: int | None = Field(default=None, foreign_key="event.id")
    delivery_id: int | None = Field(default=None, foreign_key="delivery.id", unique=True)
    at: datetime = _time()


class PointsEntry(SQLModel, table=True):
    """One line of the append-only points ledger behind a lead's score."""

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id", index=True)
    event_id: int | None = Field(default=None, foreign_key="event.id")
    rule: str
    points: float
    at: datetime = _time()


_NURTURE = "kind = 'nurture'"
_UNSEEN = "channel = 'webchat' AND seen_at IS NULL AND emailed_at IS NULL"  # what the missed-message digest scans


class Delivery(SQLModel, table=True):
    """Outbox row: one message to send, exactly once, keyed by `idempotency_key`."""

    __table_args__ = (
        Index("ix_delivery_due", "status", "not_before"),
        Index("ix_delivery_nurture", "created_at", sqlite_where=text(_NURTURE), postgresql_where=text(_NURTURE)),
        Index("ix_delivery_unseen", "sent_at", sqlite_where=text(_UNSEEN), postgresql_where=text(_UNSEEN)),
        NEVER_REUSED,
    )
    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id", index=True)
    conversation_id: int = Field(foreign_key="conversation.id")
    channel: str
    address: str  # the recipient on the channel: visitor id, Telegram chat id, source:thread
    kind: str  # reply | system | nurture | operator
    priority: int = 1  # 0 operator, 1 system, 2 nurture
    text: str
    buttons: list = _json(list)
    idempotency_key: str = Field(unique=True)
    enrollment_id: int | None = Field(default=None, foreign_key="enrollment.id", index=True)
    flow_slug: str | None = None
    step: str | None = None
    status: str = "pending"  # pending | sending | sent | skipped | dead
    attempts: int = 0
    not_before: datetime = _time()
    lease_until: datetime | None = _time(nullable=True)
    last_error: str | None = None
    provider_message_id: str | None = Field(default=None, index=True)  # migration 0014: statuses find it
    created_at: datetime = _time()
    sent_at: datetime | None = _time(nullable=True)
    subject: str | None = None  # an email's subject
    # A WhatsApp template to send instead outside the 24-hour window (migration 0014): name, language, parameters.
    template: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # How far it got, as far as its channel can tell (migration 0012): the channel has it (the relay accepted
    # the email, the widget got the frame, the Bot API took the message), the person saw it, or it bounced.
    delivered_at: datetime | None = _time(nullable=True)
    seen_at: datetime | None = _time(nullable=True)
    bounced_at: datetime | None = _time(nullable=True)
    # A widget message the visitor had not seen went by email in a missed-message digest (migration 0013).
    emailed_at: datetime | None = _time(nullable=True)
    # What the flow report counts, filled as it happens (see flows.history): the A/B variant sent, and
    # what the lead did within 24 h of this nurture message, credited to the last one sent before it.
    variant: str | None = None
    replied_at: datetime | None = _time(nullable=True)
    button_at: datetime | None = _time(nullable=True)
    handed_off_at: datetime | None = _time(nullable=True)
    opted_out_at: datetime | None = _time(nullable=True)


class FlowVersion(SQLModel, table=True):
    """The text of each flow version that enrolled someone: enrollments stay on the version they began."""

    slug: str = Field(primary_key=True)
    version: str = Field(primary_key=True)
    source: str
    created_at: datetime = _time()


class FlowRevision(SQLModel, table=True):
    """A flow's running version as it changed: published in the console, rolled back, or edited on disk.

    The history the console shows with diffs and rolls back from. A version published on one instance is
    written to the flow file by every other instance whose file is still at `base` (bot/console/flowedit.py).
    """

    __table_args__ = (Index("ix_flowrevision_slug", "flow_slug", "id"), NEVER_REUSED)
    id: int | None = Field(default=None, primary_key=True)
    flow_slug: str
    version: str
    base: str | None = None  # the version it replaced (the file's, when it was published), None for a new flow
    source: str
    action: str  # publish | rollback | file (seen on disk) | delete
    author: str  # the operator's name, or "file on disk"
    created_at: datetime = _time()


class FlowDraft(SQLModel, table=True):
    """One person's unpublished edit of a flow, and the version of the file it started from."""

    __table_args__ = (UniqueConstraint("flow_slug", "operator_id"),)
    id: int | None = Field(default=None, primary_key=True)
    flow_slug: str
    operator_id: int = Field(foreign_key="operator.id", index=True)
    source: str
    base: str | None = None  # the file's version when the draft was started; None: a new flow
    updated_at: datetime = _time()


class AuditEntry(SQLModel, table=True):
    """Who did what in the console that changes how Kindling behaves (flow edits and publishes): for admins."""

    __tablename__ = "audit"
    __table_args__ = NEVER_REUSED
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _time(index=True)
    actor: str  # an operator's name
    action: str  # flow.draft | flow.publish | flow.rollback | flow.create
    subject: str  # what it acted on: a flow's slug
    detail: dict = _json(dict)


_LIVE = "status IN ('active', 'paused')"


class Enrollment(SQLModel, table=True):
    """A lead in a flow: the version it is pinned to, the next step and when it is due."""

    __table_args__ = (
        Index("ix_enrollment_due", "status", "due_at"),
        Index("ix_enrollment_enrolled", "enrolled_at"),
        # At most one live enrollment per lead and flow, whichever instance enrolls.
        Index(
            "uq_enrollment_live",
            "lead_id",
            "flow_slug",
            unique=True,
            sqlite_where=text(_LIVE),
            postgresql_where=text(_LIVE),
        ),
        NEVER_REUSED,
    )
    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id", index=True)
    flow_slug: str
    flow_version: str
    step_index: int = 0
    due_at: datetime = _time()
    status: str = "active"  # active | paused | done | exited
    exit_reason: str | None = None
    lease_until: datetime | None = _time(nullable=True)
    enrolled_at: datetime = _time()
    updated_at: datetime = _time()
    goal: str | None = None  # the flow version's goal stage, for the flow report
    goal_reached_at: datetime | None = _time(nullable=True)  # first reached the goal while in the flow (or 7 d after)
    handed_off_at: datetime | None = _time(nullable=True)  # a handoff paused or ended it


_FUNNEL_COLUMNS = ["source", "campaign", "channel", "stay_bucket", "stay_seconds"]


class StageEntry(SQLModel, table=True):
    """A lead reaching a funnel stage for the first time: what the funnel report counts.

    Written with every stage change (flows.history), so the report never reads the event log. A jump
    over stages enters the skipped ones at the same moment; moving back leaves the rows as they are.
    The breakdown dimensions are the lead's, copied into every row and kept in step when they change.
    """

    __table_args__ = (
        UniqueConstraint("lead_id", "stage"),
        # Covering on PostgreSQL: the funnel reads a period's rows from the index alone, wherever they lie.
        Index("ix_stageentry_cohort", "cohort_at", "stage", postgresql_include=_FUNNEL_COLUMNS),
    )
    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id")
    stage: str
    entered_at: datetime = _time()
    left_at: datetime | None = _time(nullable=True)  # first reached a later stage
    stay_seconds: float | None = None  # left_at - entered_at when the lead moved on (flows.history.stay)
    stay_bucket: int | None = Field(default=None, sa_type=SmallInteger)  # stay_seconds on a log scale
    cohort_at: datetime = _time()  # when the lead arrived (its created_at): the report's period picks leads by it
    source: str = "(none)"  # first touch's source
    campaign: str = "(none)"  # first touch's campaign
    channel: str = "(none)"  # first touch's channel, else the channel the lead first came through


class Operator(SQLModel, table=True):
    """A person who works the console: operator, marketer or admin."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    role: str  # operator | marketer | admin
    password_hash: str
    telegram_user_id: str | None = Field(default=None, unique=True)  # links replies in the operators' group
    created_at: datetime = _time()
    removed_at: datetime | None = _time(nullable=True)


class OperatorSession(SQLModel, table=True):
    """A console login; only the token's hash is stored, and logout deletes the row."""

    token_hash: str = Field(primary_key=True)
    operator_id: int = Field(foreign_key="operator.id", index=True)
    csrf_token: str
    created_at: datetime = _time()
    expires_at: datetime = _time()
    seen_at: datetime | None = _time(nullable=True)  # last console request or live-socket check: "online"


class LoginFailure(SQLModel, table=True):
    """A failed console login, per client address or operator name; shared by every instance."""

    __table_args__ = (Index("ix_loginfailure_key_at", "key", "at"),)
    id: int | None = Field(default=None, primary_key=True)
    key: str  # "ip:<address>" or "name:<operator name>"
    at: datetime = _time()


_OPEN = "status IN ('waiting', 'claimed')"


class Handoff(SQLModel, table=True):
    """A request for a human: why, the context card, the SLA, and who took it with what outcome."""

    __table_args__ = (
        Index("ix_handoff_queue", "status", "sla_due_at"),
        Index("ix_handoff_warm", "warm_at"),
        # At most one open handoff per lead, whichever instance saw the warm signal.
        Index("uq_handoff_open", "lead_id", unique=True, sqlite_where=text(_OPEN), postgresql_where=text(_OPEN)),
        NEVER_REUSED,
    )
    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id", index=True)
    conversation_id: int | None = Field(default=None, foreign_key="conversation.id")
    trigger: str  # score | intent | button | flow | operator | question
    reason: str
    card: dict = _json(dict)
    status: str = "waiting"  # waiting | claimed | closed
    warm_at: datetime = _time()  # when the warm signal arrived: speed-to-lead counts from here
    created_at: datetime = _time()
    sla_due_at: datetime = _time()
    console_notified_at: datetime | None = _time(nullable=True)
    telegram_notified_at: datetime | None = _time(nullable=True)
    telegram_message_id: str | None = None  # the card in the operators' group; replies to it are relayed
    notify_error: str | None = None
    notify_lease_until: datetime | None = _time(nullable=True)  # one instance announces it at a time
    breached_at: datetime | None = _time(nullable=True)
    escalated_at: datetime | None = _time(nullable=True)  # operators last reminded of the missed SLA
    claimed_by_id: int | None = Field(default=None, foreign_key="operator.id")
    claimed_at: datetime | None = _time(nullable=True)
    first_reply_at: datetime | None = _time(nullable=True)
    closed_at: datetime | None = _time(nullable=True)
    outcome: str | None = None  # won | nurture | lost
    # The lead's breakdown values, as in its stage history (flows.history), for the handoff report
    source: str = "(none)"
    campaign: str = "(none)"
    channel: str = "(none)"
    outcome_reason: str | None = None


class ApiKeyRecord(SQLModel, table=True):
    """An API key made with `kindling apikey add`: only its SHA-256 is stored, with a short prefix to recognise it."""

    __tablename__ = "apikey"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    key_hash: str = Field(unique=True)
    prefix: str  # the key's first characters, shown by `kindling apikey list`
    scopes: list = _json(list)
    created_at: datetime = _time()
    last_used_at: datetime | None = _time(nullable=True)
    revoked_at: datetime | None = _time(nullable=True)


class Setting(SQLModel, table=True):
    """Values the instances share, such as the generated signing secret."""

    key: str = Field(primary_key=True)
    value: str


class Pace(SQLModel, table=True):
    """A send budget every instance shares (PostgreSQL): when its next slot is free (see storage/pace.py)."""

    key: str = Field(primary_key=True)  # "telegram" overall, "telegram:<chat id>" per chat
    tat: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))  # theoretical arrival time


class Suppression(SQLModel, table=True):
    """An erased person's email, phone or identity as a keyed hash: never the value, so never contacted again."""

    id: int | None = Field(default=None, primary_key=True)
    hash: str = Field(unique=True)  # HMAC-SHA256(secret key, "kind:normalised value"), hex
    kind: str  # email | phone | telegram | visitor | ...: what was hashed, not what it was
    created_at: datetime = _time()


class Erasure(SQLModel, table=True):
    """The audit line of one erasure: which lead id, when, by whom and how many rows; no personal data."""

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(index=True)  # no foreign key on purpose: the lead is gone
    erased_at: datetime = _time()
    erased_by: str  # the API key's name, or "cli:<system user>"
    removed: dict = _json(dict)  # rows removed per table


_WAITING = "status IN ('pending', 'sending')"


class WebhookDelivery(SQLModel, table=True):
    """Outbox row of an outgoing webhook: one event for one endpoint, POSTed until it is delivered or dead."""

    __table_args__ = (
        UniqueConstraint("endpoint", "event_id"),
        Index("ix_webhookdelivery_due", "status", "next_attempt_at"),
        # A lead's undelivered rows per endpoint, oldest first: each waits for the one before it.
        Index("ix_webhookdelivery_waiting", "endpoint", "lead_id", "id", sqlite_where=text(_WAITING),
              postgresql_where=text(_WAITING)),
        NEVER_REUSED,
    )  # fmt: skip
    id: int | None = Field(default=None, primary_key=True)
    event_id: str  # a uuid: X-Kindling-Delivery and the body's `id`; receivers dedupe on it
    endpoint: str  # its name in config.toml ([webhooks.outgoing.<name>])
    event_type: str  # lead.warm | lead.stage_changed | handoff.closed
    lead_id: int = Field(foreign_key="lead.id", index=True)
    body: dict = _json(dict)  # the JSON sent, built when the event happened
    status: str = "pending"  # pending | sending | delivered | dead
    attempts: int = 0
    next_attempt_at: datetime = _time()
    lease_until: datetime | None = _time(nullable=True)
    last_attempt_at: datetime | None = _time(nullable=True)
    last_status: int | None = None  # the receiver's HTTP status on the last attempt (none if unreachable)
    last_error: str | None = None
    created_at: datetime = _time()
    delivered_at: datetime | None = _time(nullable=True)


class InboxEntry(SQLModel, table=True):
    """An inbound stored as it came, before its answer; deleted when taken in (bot/intake/inbox.py)."""

    __tablename__ = "inbox"
    id: int | None = Field(default=None, primary_key=True)
    dedup_key: str = Field(unique=True)  # the inbound's (Telegram: telegram:update:<update_id>)
    inbound: dict = _json(dict)  # the Inbound, as bot.intake.inbound.inbound_to_json writes it
    received_at: datetime = _time()
    lease_until: datetime = _time(index=True)  # until then the process that received it takes it in
    attempts: int = 0  # times a sweep took it over
    error: str | None = None  # why taking it in failed last time


class ContinueCode(SQLModel, table=True):
    """A short code in a prefilled WhatsApp message: the web visitor who clicked, their page's source, until when.

    Made when the visitor clicks the widget's WhatsApp link; claimed by the first message of one WhatsApp
    number (bot/channels/continuation.py).
    """

    __tablename__ = "continue_code"
    code: str = Field(primary_key=True)  # 8 characters from an alphabet without look-alikes
    visitor: str = Field(index=True)  # the widget's visitor id
    lead_id: int = Field(foreign_key="lead.id", index=True)  # the visitor's lead then (so erasure takes it)
    touch: dict = _json(dict)  # source, medium, campaign of the page the link was on
    created_at: datetime = _time()
    expires_at: datetime = _time(index=True)
    claimed_at: datetime | None = _time(nullable=True)
    claimed_by: str | None = None  # the WhatsApp number (wa_id) whose first message carried it


class ScoringModel(SQLModel, table=True):
    """One `kindling score fit`: its figures, and its weights when it was accepted; the newest accepted one scores.

    Refused fits are kept too, with why, so the figures of every attempt can be read again (flows/learned.py).
    """

    __tablename__ = "scoringmodel"
    __table_args__ = NEVER_REUSED
    id: int | None = Field(default=None, primary_key=True)  # the model's version
    created_at: datetime = _time()
    accepted: bool = False
    verdict: str  # why it was accepted or refused, in a sentence
    goal: str  # the stage counted as success
    horizon_seconds: int  # success: the goal reached within this long of the cut-off
    window_seconds: int  # the cut-off: this long after the lead arrived
    successes: int = 0
    failures: int = 0
    figures: dict = _json(dict)  # held-out ROC AUC, Brier score, calibration by decile; the rule score's beside
    intercept: float = 0.0
    weights: dict = _json(dict)  # factor -> weight (log-odds per unit of log(1 + count))
    counts: dict = _json(dict)  # factor -> how many leads have it
