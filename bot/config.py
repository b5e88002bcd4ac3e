"""Settings: read `config.toml` once, apply environment overrides, validate, freeze."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from email.utils import parseaddr
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email

from flows.answers import AnswersPolicy
from flows.clock import time_zones
from flows.durations import parse_duration
from flows.expressions import ExpressionError
from flows.handoff import INTENT_WORDS, HandoffPolicy
from flows.hours import BusinessHours
from flows.learned import LearnedScoring
from flows.locales import BASE, is_code
from flows.outgoing import WEBHOOK_EVENTS
from flows.safety import Policy, QuietHours
from flows.scoring import Cap, ScoreRule, Scoring
from flows.stages import DEFAULT_ORDER, Stages
from flows.whatsapp_rules import CATEGORIES, WhatsAppTemplate

DEFAULT_PATH = Path("config.toml")
_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ConfigError(Exception):
    """A setting is wrong; the message names the key."""


@dataclass(frozen=True)
class WebhookSource:
    """A third-party chat provider posting signed JSON to us."""

    name: str
    secret: str
    url: str | None


@dataclass(frozen=True)
class WebhookEndpoint:
    """A CRM (or anything) that gets Kindling's outgoing webhooks, signed with its own secret."""

    name: str
    url: str
    secret: str
    events: frozenset[str]


@dataclass(frozen=True)
class ConsoleSettings:
    """The operator console: how long a login lasts, login throttling, what marketers may read."""

    session_hours: int = 12
    login_attempts_per_minute: int = 5
    marketers_read_conversations: bool = False


@dataclass(frozen=True)
class EmailSettings:
    """Email: the SMTP relay mail goes out through, where replies come in, pacing and consent."""

    smtp_url: str | None = None  # smtp://user:pass@host:587 (STARTTLS) or smtps://user:pass@host:465 (TLS)
    from_address: str | None = None  # `Acme <hello@acme.example>`
    reply_domain: str | None = None  # replies go to reply+<signed token>@<reply_domain>
    inbound: tuple[str, int] | None = None  # the built-in SMTP receiver's address, if on
    rate: float = 10.0  # messages a second: the relay's limit
    require_consent: bool = True  # nurture email only to leads who gave email consent
    mailgun_signing_key: str | None = None  # Mailgun's webhook signing key: its routes' and webhooks' signature
    postmark_inbound_auth: str | None = None  # user:pass Postmark's inbound and bounce webhooks log in with

    def disabled(self) -> str | None:
        """None when email can be sent, else why not (for the one log line at start)."""
        if not self.smtp_url:
            return "KINDLING_SMTP_URL is not set"
        if not self.from_address:
            return "KINDLING_EMAIL_FROM is not set"
        return None


@dataclass(frozen=True)
class MetaSettings:
    """Meta's platforms (WhatsApp Cloud API, Messenger, Instagram): the Graph API and the webhooks' secrets."""

    graph_api_url: str = "https://graph.facebook.com/v21.0"
    app_secret: str | None = None  # signs every webhook POST (X-Hub-Signature-256)
    verify_token: str | None = None  # what Meta's webhook verification GET must bring
    whatsapp_token: str | None = None
    whatsapp_phone_id: str | None = None
    whatsapp_business_id: str | None = None  # the WhatsApp Business Account, for `kindling whatsapp templates`
    whatsapp_rate: float = 80.0  # messages a second per phone number
    whatsapp_recipient_gap: timedelta = timedelta(seconds=1)  # at least this between two messages to one person
    whatsapp_templates: tuple[WhatsAppTemplate, ...] = ()
    whatsapp_consent_buttons: tuple[str, ...] = ("Yes, send me offers",)  # pressed in chat: marketing consent
    whatsapp_stop_buttons: tuple[str, ...] = ("Stop promotions",)  # Meta's opt-out button: consent withdrawn
    messenger_page_token: str | None = None

    def whatsapp_missing(self) -> list[str]:
        """The settings WhatsApp needs that are not set (empty: it is on)."""
        needed = {
            "KINDLING_WHATSAPP_TOKEN": self.whatsapp_token,
            "KINDLING_WHATSAPP_PHONE_ID": self.whatsapp_phone_id,
            "KINDLING_META_APP_SECRET": self.app_secret,
            "KINDLING_META_VERIFY_TOKEN": self.verify_token,
        }
        return [name for name, value in needed.items() if not value]

    def messenger_missing(self) -> list[str]:
        """The settings Messenger and Instagram need that are not set (empty: they are on)."""
        needed = {
            "KINDLING_MESSENGER_PAGE_TOKEN": self.messenger_page_token,
            "KINDLING_META_APP_SECRET": self.app_secret,
            "KINDLING_META_VERIFY_TOKEN": self.verify_token,
        }
        return [name for name, value in needed.items() if not value]


@dataclass(frozen=True)
class ContinueSettings:
    """Where the widget's "continue on WhatsApp / Messenger / Telegram" links lead; none: that link is not offered."""

    telegram_username: str | None = None  # the bot's username, without the @: t.me/<username>
    messenger_page: str | None = None  # the Facebook Page's username or id: m.me/<page>
    whatsapp_number: str | None = None  # the business number in international digits: wa.me/<number>
    whatsapp_text: str = "Hi! (ref {code})"  # the prefilled WhatsApp message; {code} is the visitor's short code
    code_lifetime: timedelta = timedelta(days=7)  # how long a WhatsApp code can be claimed


@dataclass(frozen=True)
class WidgetSettings:
    """How the website widget looks and what it asks first; an empty text means the language's own."""

    title: str = ""
    subtitle: str = ""
    color: str = "#4f46e5"
    position: str = "bottom-right"
    avatar: str = ""
    language: str = "auto"  # "auto": the browser's language; or a code like "ru"
    prechat: tuple[str, ...] = ()  # fields of the form shown before the chat: name, email, consent
    consent_text: str = ""


@dataclass(frozen=True)
class Settings:
    """Every setting Kindling uses, validated."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    max_body_bytes: int = 256 * 1024
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    default_locale: str = BASE  # the language of leads whose locale is unknown or none we have
    database_url: str = "sqlite+aiosqlite:///kindling.db"
    templates: Path = Path("templates")
    api_key: str | None = None
    secret_key: str | None = None
    webchat_enabled: bool = True
    allowed_origins: tuple[str, ...] = ()
    webchat_messages_per_minute: int = 20
    webchat_email_after: timedelta | None = timedelta(minutes=10)  # None: missed widget messages are not emailed
    telegram_token: str | None = None
    telegram_secret: str | None = None
    telegram_api_url: str = "https://api.telegram.org"
    webhook_sources: Mapping[str, WebhookSource] = field(default_factory=dict)
    webhook_endpoints: Mapping[str, WebhookEndpoint] = field(default_factory=dict)
    scoring: Scoring = Scoring()
    learned: LearnedScoring = LearnedScoring()  # [scoring] goal, horizon, window, min_outcomes: `kindling score fit`
    refit: timedelta | None = None  # [scoring] refit: fit again this often, by one instance (bot/scoring/refit.py)
    stages: Stages = Stages()
    policy: Policy = Policy()
    opt_out_words: tuple[str, ...] = ()
    console: ConsoleSettings = ConsoleSettings()
    handoff: HandoffPolicy = HandoffPolicy()
    answers: AnswersPolicy = AnswersPolicy()
    operators_chat: int | None = None
    outbox_lease: timedelta = timedelta(seconds=60)
    email: EmailSettings = EmailSettings()
    meta: MetaSettings = MetaSettings()
    continue_on: ContinueSettings = ContinueSettings()
    widget: WidgetSettings = WidgetSettings()

    def with_(self, **changes: Any) -> Settings:
        """A copy with some settings changed (tests, CLI flags)."""
        return replace(self, **changes)


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load settings from a TOML file (KINDLING_CONFIG or ./config.toml) and the environment."""
    env = os.environ if env is None else env
    path = path or Path(env.get("KINDLING_CONFIG", DEFAULT_PATH))
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    elif "KINDLING_CONFIG" in env:
        raise ConfigError(f"KINDLING_CONFIG: no such file {path}")
    return settings_from(data, env)


def settings_from(data: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Build Settings from parsed TOML and environment variables."""
    return _build(_Section(data, ""), env)


def setting_keys(data: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """Every dotted key the loader reads from this document, present or not (the docs tests list them)."""
    doc = _Section(data, "")
    _build(doc, env)
    return doc.read_keys()


def _build(doc: _Section, env: Mapping[str, str]) -> Settings:
    server, database = doc.section("server"), doc.section("database")
    channels = doc.section("channels")
    webchat, telegram = channels.section("webchat"), channels.section("telegram")
    token = env.get("KINDLING_TELEGRAM_TOKEN") or None
    settings = Settings(
        host=_env(env, "KINDLING_HOST", server.get("host", str, "127.0.0.1")),
        port=_port(env.get("KINDLING_PORT"), server.get("port", int, 8080)),
        public_url=_env(env, "KINDLING_PUBLIC_URL", server.get("public_url", str, "")).rstrip("/"),
        max_body_bytes=server.get("max_body_kb", int, 256) * 1024,
        trusted_proxies=_trusted_proxies(server, env),
        default_locale=_default_locale(server),
        database_url=_env(env, "KINDLING_DATABASE_URL", database.get("url", str, Settings.database_url)),
        templates=Path(_env(env, "KINDLING_TEMPLATES", doc.section("templates").get("path", str, "templates"))),
        api_key=env.get("KINDLING_API_KEY") or None,
        secret_key=env.get("KINDLING_SECRET_KEY") or None,
        webchat_enabled=webchat.get("enabled", bool, True),
        allowed_origins=tuple(webchat.get("allowed_origins", list, [])),
        webchat_messages_per_minute=_positive(webchat, "messages_per_minute", 20),
        webchat_email_after=_duration(webchat, "email_after", "10m", allow_off=True),
        telegram_token=token,
        telegram_secret=env.get("KINDLING_TELEGRAM_SECRET") or _derived_secret(token),
        telegram_api_url=_env(
            env, "KINDLING_TELEGRAM_API_URL", telegram.get("api_url", str, Settings.telegram_api_url)
        ).rstrip("/"),
        webhook_sources=_webhook_sources(channels.section("webhook").section("sources"), env),
        webhook_endpoints=_webhook_endpoints(doc.section("webhooks").section("outgoing"), env),
        scoring=_scoring(doc.section("scoring")),
        learned=_learned(doc.section("scoring")),
        refit=_duration(doc.section("scoring"), "refit", "off", allow_off=True),
        stages=_stages(doc.section("stages")),
        console=_console(doc.section("console")),
        **_nurture(doc.section("nurture"), env),
        handoff=_handoff(doc.section("handoff")),
        answers=_answers(doc.section("answers")),
        operators_chat=_operators_chat(env.get("KINDLING_OPERATORS_CHAT")),
        outbox_lease=_duration(doc.section("outbox"), "lease", "60s"),
        email=_email(doc.section("email"), env),
        meta=_meta(channels.section("meta"), channels.section("whatsapp"), env),
        continue_on=_continue_on(channels, env),
        widget=_widget(doc.section("widget")),
    )
    doc.reject_unknown()
    return _with_goal(settings)


def _with_goal(settings: Settings) -> Settings:
    """Learned scoring's goal: the last stage unless `scoring.goal` names another one."""
    learned, order = settings.learned, settings.stages.order
    if not learned.goal:
        return settings.with_(learned=replace(learned, goal=order[-1]))
    if learned.goal not in order:
        raise ConfigError(f"scoring.goal: {learned.goal!r} is not a stage in stages.order")
    return settings


class _Section:
    """A TOML table that remembers which keys were read, so unknown keys can be named."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a table")
        self.data, self.path, self.read, self.children = data, path, set(), []

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type, default: Any) -> Any:
        self.read.add(name)
        value = self.data.get(name, default)
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            wanted = getattr(kind, "__name__", "number")
            raise ConfigError(f"{self.key(name)}: expected {wanted}, got {value!r}")
        return value

    def section(self, name: str) -> _Section:
        """The table `name`; asked for twice (two parts read one table), the same one, so both parts' keys count."""
        self.read.add(name)
        key = self.key(name)
        for child in self.children:
            if child.path == key:
                return child
        child = _Section(self.data.get(name, {}), key)
        self.children.append(child)
        return child

    def item(self, name: str, index: int, data: Any) -> _Section:
        """The table at `index` of the array of tables `name` (like `[[scoring.rules]]`)."""
        child = _Section(data, f"{self.key(name)}[{index}]")
        self.children.append(child)
        return child

    def read_keys(self) -> list[str]:
        """Every key read here and below, dotted; tables in an array are written `name[]`."""
        below = {child.path for child in self.children}
        mine = [self.key(name) for name in sorted(self.read) if self.key(name) not in below]
        nested = [key for child in self.children for key in child.read_keys()]
        return sorted(set(mine + [re.sub(r"\[\d+\]", "[]", key) for key in nested]))

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown setting")
        for child in self.children:
            child.reject_unknown()


def _positive(section: _Section, name: str, default: int) -> int:
    value = section.get(name, int, default)
    if value < 1:
        raise ConfigError(f"{section.key(name)}: must be 1 or more")
    return value


def _env(env: Mapping[str, str], name: str, from_file: str) -> str:
    """An environment variable if set and not empty, else the file's value."""
    return env.get(name) or from_file


def _port(from_env: str | None, from_file: int) -> int:
    try:
        port = int(from_env) if from_env else from_file
    except ValueError:
        raise ConfigError(f"KINDLING_PORT: expected a number, got {from_env!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"server.port: {port} is not a port number")
    return port


def _trusted_proxies(server: _Section, env: Mapping[str, str]) -> tuple[IPv4Network | IPv6Network, ...]:
    """The proxies whose X-Forwarded-For is believed (KINDLING_TRUSTED_PROXIES: comma-separated)."""
    from_file = server.get("trusted_proxies", list, [])
    from_env = env.get("KINDLING_TRUSTED_PROXIES")
    key = "KINDLING_TRUSTED_PROXIES" if from_env else server.key("trusted_proxies")
    entries = [entry.strip() for entry in from_env.split(",") if entry.strip()] if from_env else from_file
    bad = next((entry for entry in entries if not _is_network(entry)), None)
    if bad is not None:
        raise ConfigError(f"{key}: {bad!r} is not an address or network like 127.0.0.1, ::1 or 10.0.0.0/8")
    return tuple(ip_network(entry) for entry in entries)


def _default_locale(server: _Section) -> str:
    """`server.default_locale`: a language code (`en`, `ru`); whether the templates have it is checked at start."""
    code = server.get("default_locale", str, BASE).strip().lower()
    if not is_code(code):
        raise ConfigError(f'server.default_locale: {code!r} is not a language code like "en", "ru" or "zh"')
    return code


def _is_network(entry: Any) -> bool:
    try:
        return isinstance(entry, str) and bool(ip_network(entry))
    except ValueError:  # not an address, or a network with host bits set (10.0.0.5/8)
        return False


def _derived_secret(token: str | None) -> str | None:
    # Every instance derives the same webhook secret from the token, so none is special.
    if not token:
        return None
    return hashlib.sha256(f"kindling-webhook:{token}".encode()).hexdigest()[:48]


def _webhook_sources(sources: _Section, env: Mapping[str, str]) -> dict[str, WebhookSource]:
    found = {}
    for name in list(sources.data):
        if not _SOURCE_NAME.match(name):
            raise ConfigError(f"{sources.key(name)}: use lower-case letters, digits, - and _")
        table = sources.section(name)
        url = table.get("url", str, "") or None
        secret = env.get(webhook_secret_env(name))
        if secret:
            found[name] = WebhookSource(name=name, secret=secret, url=url)
    return found


def webhook_secret_env(source: str) -> str:
    """The environment variable holding a webhook source's secret."""
    return "KINDLING_WEBHOOK_SECRET_" + source.upper().replace("-", "_")


def _webhook_endpoints(endpoints: _Section, env: Mapping[str, str]) -> dict[str, WebhookEndpoint]:
    found = {}
    for name in list(endpoints.data):
        if not _SOURCE_NAME.match(name):
            raise ConfigError(f"{endpoints.key(name)}: use lower-case letters, digits, - and _")
        table = endpoints.section(name)
        url = table.get("url", str, "")
        events = table.get("events", list, list(WEBHOOK_EVENTS))
        if not _is_http_url(url):
            raise ConfigError(f"{table.key('url')}: an http(s) URL like https://crm.example.com/hooks, got {url!r}")
        unknown = [event for event in events if event not in WEBHOOK_EVENTS]
        if unknown or not events:
            problem = f"{unknown[0]!r} is not an event" if unknown else "no events"
            raise ConfigError(f"{table.key('events')}: {problem}; choose from {', '.join(WEBHOOK_EVENTS)}")
        secret_env = outgoing_secret_env(name)
        if not env.get(secret_env):
            raise ConfigError(f"{endpoints.key(name)}: its signing secret is not set: export {secret_env}")
        found[name] = WebhookEndpoint(name=name, url=url, secret=env[secret_env], events=frozenset(events))
    return found


def _is_http_url(text: str) -> bool:
    try:
        url = urlsplit(text)
        return url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
    except ValueError:  # a bad port or IPv6 address
        return False


def outgoing_secret_env(endpoint: str) -> str:
    """The environment variable holding an outgoing webhook endpoint's signing secret."""
    return "KINDLING_OUTGOING_SECRET_" + endpoint.upper().replace("-", "_")


def _scoring(section: _Section) -> Scoring:
    half_life = section.get("half_life", str, "30d")
    rules = []
    for index, raw in enumerate(section.get("rules", list, [])):
        rule = section.item("rules", index, raw)
        rules.append(
            ScoreRule(
                name=rule.get("name", str, ""),
                event=rule.get("event", str, ""),
                points=float(rule.get("points", (int, float), 0)),
                match=rule.get("match", str, "") or None,
                cap=_cap(rule),
            )
        )
        if not rules[-1].name or not rules[-1].event:
            raise ConfigError(f"scoring.rules[{index}]: needs a name and an event")
    try:
        decay = None if half_life == "off" else parse_duration(half_life)
    except ValueError as exc:
        raise ConfigError(f"scoring.half_life: {exc}") from None
    return Scoring(rules=tuple(rules), half_life=decay)


def _learned(section: _Section) -> LearnedScoring:
    return LearnedScoring(
        goal=section.get("goal", str, ""),  # "": the last stage (see _with_goal)
        horizon=_duration(section, "horizon", "30d"),
        window=_duration(section, "window", "7d"),
        min_outcomes=_positive(section, "min_outcomes", 50),
    )


def _cap(rule: _Section) -> Cap | None:
    cap = rule.get("cap", str, "")
    try:
        return Cap.parse(cap) if cap else None
    except ValueError as exc:
        raise ConfigError(f"{rule.key('cap')}: {exc}") from None


def _nurture(section: _Section, env: Mapping[str, str]) -> dict[str, Any]:
    quiet = _env(env, "KINDLING_QUIET_HOURS", section.get("quiet_hours", str, "21:00-09:00"))
    cap = section.get("daily_cap", int, 2)
    zone = section.get("default_timezone", str, "UTC")
    words = section.get("opt_out_words", list, [])
    try:
        quiet_hours = QuietHours.parse(quiet)
    except ValueError as exc:
        raise ConfigError(f"nurture.quiet_hours: {exc}") from None
    if cap < 0:
        raise ConfigError("nurture.daily_cap: must be 0 or more")
    if zone not in time_zones():
        raise ConfigError(f"nurture.default_timezone: unknown time zone {zone!r}")
    if not all(isinstance(word, str) and word.strip() for word in words):
        raise ConfigError("nurture.opt_out_words: a list of words")
    policy = Policy(quiet_hours=quiet_hours, daily_cap=cap, default_timezone=zone)
    return {"policy": policy, "opt_out_words": tuple(words)}


def _email(section: _Section, env: Mapping[str, str]) -> EmailSettings:
    rate = section.get("rate", (int, float), EmailSettings.rate)
    if not rate > 0:
        raise ConfigError("email.rate: must be more than 0 (messages a second)")
    return EmailSettings(
        smtp_url=_smtp_url(env.get("KINDLING_SMTP_URL") or None),
        from_address=_from_address(env.get("KINDLING_EMAIL_FROM") or None),
        reply_domain=(env.get("KINDLING_EMAIL_REPLY_DOMAIN") or "").strip().lower() or None,
        inbound=_host_port("KINDLING_EMAIL_INBOUND", env.get("KINDLING_EMAIL_INBOUND") or None),
        rate=float(rate),
        require_consent=section.get("require_consent", bool, True),
        mailgun_signing_key=env.get("KINDLING_MAILGUN_SIGNING_KEY") or None,
        postmark_inbound_auth=_user_pass("KINDLING_POSTMARK_INBOUND_AUTH", env.get("KINDLING_POSTMARK_INBOUND_AUTH")),
    )


def _meta(meta: _Section, whatsapp: _Section, env: Mapping[str, str]) -> MetaSettings:
    url = _env(env, "KINDLING_GRAPH_API_URL", meta.get("graph_api_url", str, MetaSettings.graph_api_url)).rstrip("/")
    if not _is_http_url(url):
        raise ConfigError(f"channels.meta.graph_api_url: expected an http(s) URL, got {url!r}")
    rate = whatsapp.get("messages_per_second", (int, float), MetaSettings.whatsapp_rate)
    if not rate > 0:
        raise ConfigError("channels.whatsapp.messages_per_second: must be more than 0")
    return MetaSettings(
        graph_api_url=url,
        app_secret=env.get("KINDLING_META_APP_SECRET") or None,
        verify_token=env.get("KINDLING_META_VERIFY_TOKEN") or None,
        whatsapp_token=env.get("KINDLING_WHATSAPP_TOKEN") or None,
        whatsapp_phone_id=env.get("KINDLING_WHATSAPP_PHONE_ID") or None,
        whatsapp_business_id=env.get("KINDLING_WHATSAPP_BUSINESS_ID") or None,
        whatsapp_rate=float(rate),
        whatsapp_recipient_gap=_duration(whatsapp, "recipient_gap", "1s"),
        whatsapp_templates=_whatsapp_templates(whatsapp, "templates"),
        whatsapp_consent_buttons=_labels(whatsapp, "consent_buttons", MetaSettings.whatsapp_consent_buttons),
        whatsapp_stop_buttons=_labels(whatsapp, "stop_buttons", MetaSettings.whatsapp_stop_buttons),
        messenger_page_token=env.get("KINDLING_MESSENGER_PAGE_TOKEN") or None,
    )


def _labels(section: _Section, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    labels = section.get(name, list, list(default))
    if not all(isinstance(label, str) and label.strip() for label in labels):
        raise ConfigError(f"{section.key(name)}: a list of button labels")
    return tuple(labels)


def _whatsapp_templates(section: _Section, name: str) -> tuple[WhatsAppTemplate, ...]:
    """`[[channels.whatsapp.templates]]`: name, language, parameters, category."""
    entries = section.get(name, list, [])
    templates = []
    for index, entry in enumerate(entries):
        item = section.item(name, index, entry)
        template = WhatsAppTemplate(
            name=item.get("name", str, ""),
            language=item.get("language", str, ""),
            parameters=item.get("parameters", int, 0),
            category=item.get("category", str, "marketing").lower(),
        )
        if not template.name or not template.language:
            raise ConfigError(f"{item.path}: a template needs a name and a language")
        if template.parameters < 0 or template.category not in CATEGORIES:
            raise ConfigError(
                f"{item.path}: parameters must be 0 or more, category marketing, utility or authentication"
            )
        templates.append(template)
    return tuple(templates)


def _user_pass(name: str, text: str | None) -> str | None:
    if not text:
        return None
    user, colon, password = text.partition(":")
    if not (user and colon and password):
        raise ConfigError(f"{name}: expected user:password")
    return text


def _smtp_url(url: str | None) -> str | None:
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError("KINDLING_SMTP_URL: expected smtp://user:pass@host:587 or smtps://user:pass@host:465")
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise ConfigError("KINDLING_SMTP_URL: the port is not a number") from None
    return url


def _from_address(text: str | None) -> str | None:
    if text is None:
        return None
    _, address = parseaddr(text)
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        raise ConfigError(f"KINDLING_EMAIL_FROM: {text!r} is not an address like 'Acme <hello@acme.example>'") from None
    return text


def _host_port(name: str, text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"{name}: expected host:port, e.g. 0.0.0.0:2525, got {text!r}")
    return host.strip("[]"), int(port)


_TELEGRAM_USERNAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{4,31}")
_PAGE = re.compile(r"[A-Za-z0-9.]{1,100}")


def _continue_on(channels: _Section, env: Mapping[str, str]) -> ContinueSettings:
    telegram, messenger = channels.section("telegram"), channels.section("messenger")
    whatsapp = channels.section("whatsapp")
    username = _env(env, "KINDLING_TELEGRAM_USERNAME", telegram.get("username", str, "")).strip().removeprefix("@")
    page = _env(env, "KINDLING_MESSENGER_PAGE", messenger.get("page", str, "")).strip()
    number = _env(env, "KINDLING_WHATSAPP_NUMBER", whatsapp.get("number", str, ""))
    digits = re.sub(r"[\s()+.-]", "", number)
    text = whatsapp.get("prefilled_text", str, ContinueSettings.whatsapp_text)
    if username and not _TELEGRAM_USERNAME.fullmatch(username):
        raise ConfigError(f"channels.telegram.username: a bot's username like kindling_bot, got {username!r}")
    if page and not _PAGE.fullmatch(page):
        raise ConfigError(f"channels.messenger.page: the Page's username or id (m.me/<page>), got {page!r}")
    if digits and not re.fullmatch(r"[1-9][0-9]{6,14}", digits):
        raise ConfigError(f"channels.whatsapp.number: an international number like +1 555 010 0199, got {number!r}")
    if text.count("{code}") != 1 or len(text) > 500:
        raise ConfigError("channels.whatsapp.prefilled_text: a message of up to 500 characters with {code} once in it")
    return ContinueSettings(
        telegram_username=username or None,
        messenger_page=page or None,
        whatsapp_number=digits or None,
        whatsapp_text=text,
        code_lifetime=_duration(whatsapp, "code_lifetime", "7d"),
    )


_HEX_COLOR = re.compile(r"#(?:[0-9A-Fa-f]{3}|[0-9A-Fa-f]{6})")
LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8}){0,3}")
WIDGET_POSITIONS = ("bottom-right", "bottom-left")
PRECHAT_FIELDS = ("name", "email", "consent")


def _widget(section: _Section) -> WidgetSettings:
    color, position = section.get("color", str, WidgetSettings.color), section.get("position", str, "bottom-right")
    avatar, language = section.get("avatar", str, "").strip(), section.get("language", str, "auto")
    if not _HEX_COLOR.fullmatch(color):
        raise ConfigError(f"widget.color: a CSS hex colour like #4f46e5 or #0a7, got {color!r}")
    if position not in WIDGET_POSITIONS:
        raise ConfigError(f"widget.position: {' or '.join(WIDGET_POSITIONS)}, got {position!r}")
    if avatar and not (_is_http_url(avatar) or avatar.startswith("/") and not avatar.startswith("//")):
        raise ConfigError(
            f"widget.avatar: an image's http(s) URL or a path on this server like /logo.png, got {avatar!r}"
        )
    if language != "auto" and not LANGUAGE_TAG.fullmatch(language):
        raise ConfigError(
            f'widget.language: "auto" (the browser\'s language) or a code like ru or zh, got {language!r}'
        )
    return WidgetSettings(
        title=_short_text(section, "title", 80),
        subtitle=_short_text(section, "subtitle", 300),
        color=color,
        position=position,
        avatar=avatar,
        language=language,
        prechat=_prechat(section),
        consent_text=_short_text(section, "consent_text", 300),
    )


def _short_text(section: _Section, name: str, limit: int) -> str:
    text = section.get(name, str, "").strip()
    if len(text) > limit:
        raise ConfigError(f"{section.key(name)}: at most {limit} characters, got {len(text)}")
    return text


def _prechat(section: _Section) -> tuple[str, ...]:
    """`prechat = ["name", "email", "consent"]` (any of them, in that order on the form); `[]` or "off": none."""
    fields = section.get("prechat", object, [])  # checked here, for a message that says what it takes
    fields = [] if fields == "off" else fields
    if not isinstance(fields, list) or any(f not in PRECHAT_FIELDS for f in fields) or len(set(fields)) != len(fields):
        raise ConfigError(f'widget.prechat: "off" or a list of {", ".join(PRECHAT_FIELDS)}, got {fields!r}')
    if "consent" in fields and "email" not in fields:
        raise ConfigError('widget.prechat: "consent" is consent to email: it needs "email" on the form too')
    return tuple(field for field in PRECHAT_FIELDS if field in fields)


def _answers(section: _Section) -> AnswersPolicy:
    """How close a question must be to a quick answer (docs/answers.md)."""
    values = {}
    for name in ("threshold", "margin"):
        value = section.get(name, (int, float), getattr(AnswersPolicy, name))
        if isinstance(value, bool) or not 0 <= value <= 1:
            raise ConfigError(f"{section.key(name)}: a number from 0 to 1, got {value!r}")
        values[name] = float(value)
    return AnswersPolicy(**values)


def _console(section: _Section) -> ConsoleSettings:
    hours = section.get("session_hours", int, ConsoleSettings.session_hours)
    attempts = section.get("login_attempts_per_minute", int, ConsoleSettings.login_attempts_per_minute)
    marketers = section.get("marketers_read_conversations", bool, False)
    if hours < 1:
        raise ConfigError("console.session_hours: must be 1 or more")
    if attempts < 1:
        raise ConfigError("console.login_attempts_per_minute: must be 1 or more")
    return ConsoleSettings(
        session_hours=hours, login_attempts_per_minute=attempts, marketers_read_conversations=marketers
    )


def _stages(section: _Section) -> Stages:
    order = tuple(section.get("order", list, list(DEFAULT_ORDER)))
    rules = section.section("rules")
    sources = {name: rules.get(name, str, "") for name in list(rules.data)}
    try:
        return Stages.build(order, sources)
    except (ValueError, ExpressionError) as exc:
        raise ConfigError(f"stages.rules: {exc}") from None


def _handoff(section: _Section) -> HandoffPolicy:
    warm = section.get("warm_score", (int, float, str), 75)
    words, buttons = section.get("intent_words", list, []), section.get("buttons", list, list(HandoffPolicy.buttons))
    zone = section.get("timezone", str, "UTC")
    if zone not in time_zones():
        raise ConfigError(f"handoff.timezone: unknown time zone {zone!r}")
    for key, values in (("intent_words", words), ("buttons", buttons)):
        if not all(isinstance(value, str) and value.strip() for value in values):
            raise ConfigError(f"handoff.{key}: a list of words or phrases")
    if isinstance(warm, str) and warm != "off":
        raise ConfigError(f'handoff.warm_score: a number, or "off", got {warm!r}')
    return HandoffPolicy(
        warm_score=None if warm == "off" else float(warm),
        intent_words=INTENT_WORDS + tuple(words),
        buttons=tuple(buttons),
        sla=_duration(section, "sla", "5m"),
        hours=_hours(section, zone),
        escalation=_duration(section, "escalation", "15m", allow_off=True),
        questions=section.get("questions", bool, True),
    )


def _duration(section: _Section, name: str, default: str, allow_off: bool = False) -> Any:
    text = section.get(name, str, default)
    if allow_off and text == "off":
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{section.key(name)}: {exc}") from None


def _hours(section: _Section, zone: str) -> BusinessHours | None:
    try:
        return BusinessHours.parse(section.get("business_hours", str, "always"), zone)
    except ValueError as exc:
        raise ConfigError(f"handoff.business_hours: {exc}") from None


def _operators_chat(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"KINDLING_OPERATORS_CHAT: a Telegram chat id (like -1001234567890), got {value!r}") from None
