"""Mail that comes back: a reply becomes the lead's message, a mail to `unsubscribe+` stops nurture email.

Both ways in (the SMTP receiver, bot/mail/receive.py, and the providers' webhooks, bot/mail/providers.py) read
a message into a `Mail` and hand it to `take_mail`. The recipient decides: `reply+<token>@<reply domain>`
names a conversation (the token is signed and dated; forged or expired ones are `Refused`, nothing stored),
`unsubscribe+<token>@<reply domain>` a lead. Only the new text of a reply becomes the message: quoted
history and signatures are cut (mail-parser-reply, in every language it knows, then any `>` quote it left
with the attribution line above it, which covers languages it does not know, Russian say); HTML-only mail is
turned into text; attachments are named in a note, never opened or kept.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import date
from email.utils import parseaddr
from html.parser import HTMLParser

from mailparser_reply import EmailReplyParser
from mailparser_reply.constants import MAIL_LANGUAGES
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.intake.inbound import Inbound
from bot.mail.tokens import BOUNCES, read_reply_token, read_unsubscribe_token, token_in_address
from bot.services import Services
from flows.optout import email_opt_out
from storage.db import transaction
from storage.models import Conversation, Lead

log = logging.getLogger(__name__)
MAX_TEXT = 10_000  # characters of a reply kept as the message: a reply is a few lines, never a whole book
BOUNCE_LOCALS = (BOUNCES,)  # `bounces@<reply domain>`: an envelope sender whose mail may only be delivery reports
_PARSER = EmailReplyParser(languages=list(MAIL_LANGUAGES))
_ATTRIBUTION = re.compile(r".*[:：]\s*$")  # "On Mon, ... wrote:", "пн, 7 дек. 2026 г. в 10:00, Acme <...>:"


class Refused(Exception):
    """Mail that is not for us: an unknown recipient, a forged or expired token, a conversation gone."""


@dataclass(frozen=True)
class Recipient:
    """Who a mail is for: kind `reply` (id: a conversation), `unsubscribe` (id: a lead) or `bounces`."""

    kind: str
    id: int | None = None


@dataclass(frozen=True)
class Mail:
    """One email as it came in, read by the SMTP receiver or from a provider's webhook."""

    recipient: str
    sender: str = ""
    subject: str = ""
    plain: str | None = None
    html: str | None = None
    stripped: str | None = None  # the provider's own reply text, quotes and signature cut, when it gives one
    attachments: tuple[tuple[str, int], ...] = ()  # (file name, bytes)
    message_id: str | None = None
    fingerprint: str = ""  # a hash of the message: its dedup key when it has no Message-ID
    automatic: bool = False  # an out-of-office or other auto-reply (RFC 3834): no answer from the person


def recipient(secret: bytes, domain: str | None, address: str, today: date) -> Recipient | None:
    """What an address at the reply domain stands for; None if it is not ours or its token does not hold."""
    local, _, at = parseaddr(address)[1].rpartition("@")
    if not domain or at.lower() != domain:
        return None
    if (token := token_in_address(address)) is not None:
        conversation = read_reply_token(secret, token, today)
        return Recipient("reply", conversation) if conversation is not None else None
    tag, plus, token = local.partition("+")
    if plus and tag.lower() == "unsubscribe":
        lead = read_unsubscribe_token(secret, token)
        return Recipient("unsubscribe", lead) if lead is not None else None
    return Recipient(BOUNCES) if local.lower() in BOUNCE_LOCALS else None


async def take_mail(services: Services, mail: Mail) -> str:
    """Store a reply (durably, through the inbox) or an unsubscribe; returns which. Raises Refused (nothing is
    stored) or DatabaseUnavailable (try again later)."""
    email = services.settings.email
    found = recipient(services.secret_key, email.reply_domain, mail.recipient, services.clock.now().date())
    if found is None or found.kind == "bounces":
        raise Refused("no such mailbox here, or its token is forged or expired")
    if mail.automatic and found.kind == "reply":  # "I'm away until Monday" must not end a flow or call a human
        log.info("an auto-reply to conversation %s was dropped", found.id)
        return "ignored"
    if found.kind == "unsubscribe":
        if not await transaction(services.sessions, lambda session: _unsubscribe(session, services, found.id)):
            raise Refused("no such lead")
        return "unsubscribed"
    conversation = await transaction(services.sessions, lambda session: session.get(Conversation, found.id))
    if conversation is None or conversation.channel != "email":
        raise Refused("no such conversation")
    await services.inbox.accept(reply_inbound(mail, conversation, services))
    return "reply"


def automatic(headers: dict[str, str]) -> bool:
    """Whether headers (names in lowercase) mark an auto-reply: RFC 3834's Auto-Submitted, and what common
    responders put instead."""
    submitted = headers.get("auto-submitted", "no").strip().lower()
    precedence = headers.get("precedence", "").strip().lower()
    return (
        not submitted.startswith("no")
        or precedence in ("auto_reply", "bulk", "junk", "list")
        or any(name in headers for name in ("x-autoreply", "x-autorespond"))
    )


def reply_inbound(mail: Mail, conversation: Conversation, services: Services) -> Inbound:
    """The lead's message on its email conversation."""
    key = mail.message_id.strip() if mail.message_id and mail.message_id.strip() else f"sha256:{mail.fingerprint}"
    properties = {"subject": mail.subject[:300]} if mail.subject else {}
    return Inbound(
        channel="email",
        external_id=conversation.external_id,
        kind="message",
        dedup_key=f"email:{key}"[:400],
        identities=(),  # the signed address names the lead; a From line proves nothing
        at=services.clock.now(),
        text=reply_text(mail),
        properties=properties,
        lead_id=conversation.lead_id,
    )


def reply_text(mail: Mail) -> str:
    """The new text of a reply (the provider's stripped text, else parsed out), and a note per attachment."""
    text = (mail.stripped or "").strip() or new_text(mail.plain or html_to_text(mail.html or ""))
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT].rstrip() + " …"
    notes = [attachment_note(name, size) for name, size in mail.attachments]
    return "\n\n".join(part for part in (text, "\n".join(notes)) if part)


def new_text(text: str) -> str:
    """What the sender wrote this time: quoted history and signature cut."""
    text = text.replace("\r\n", "\n")
    replies = _PARSER.read(text).replies
    latest = replies[0].body if replies else text
    return _unquote(latest).strip() or text.strip()


def _unquote(text: str) -> str:
    """Drop `>` quoted lines, and an attribution line ("... wrote:") just above a quote."""
    lines = text.split("\n")
    kept: list[str] = []
    for index, line in enumerate(lines):
        if line.lstrip().startswith(">"):
            continue
        following = next((each for each in lines[index + 1 :] if each.strip()), "")
        if _ATTRIBUTION.match(line) and following.lstrip().startswith(">"):
            continue
        kept.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept))


def attachment_note(name: str, size: int) -> str:
    """`(attachment: offer.pdf, 120 KB)`."""
    if size < 1024:
        shown = f"{size} bytes"
    elif size < 1024 * 1024:
        shown = f"{round(size / 1024)} KB"
    else:
        shown = f"{size / 1024 / 1024:.1f} MB"
    return f"(attachment: {name or 'unnamed'}, {shown})"


def fingerprint(raw: bytes) -> str:
    """A message's hash: the dedup key of one without a Message-ID."""
    return hashlib.sha256(raw).hexdigest()


async def _unsubscribe(session: AsyncSession, services: Services, lead_id: int | None) -> bool:
    lead = await session.get(Lead, lead_id)
    if lead is None:
        return False
    if await email_opt_out(session, lead, "mailto", services.clock.now()) is not None:
        log.info("lead %s opted out of email by mail", lead.id)
    return True


class _Text(HTMLParser):
    """HTML to plain text: blocks on lines of their own, quoted history (`<blockquote>`), scripts and styles left
    out."""

    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "hr"})
    HIDDEN = frozenset({"script", "style", "head", "title", "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """The text of an HTML body, a line per block."""
    parser = _Text()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
