"""The built-in SMTP receiver (KINDLING_EMAIL_INBOUND=host:port): replies, unsubscribes and bounces by mail.

aiosmtpd's SMTP protocol runs on the app's own event loop (not in a Controller thread), so a message is in
the inbox, durable, before the sending server hears 250. Refused at RCPT (550, nothing stored): any
recipient but `reply+<token>@`, `unsubscribe+<token>@` or `bounces@` at KINDLING_EMAIL_REPLY_DOMAIN, and a
token that is forged or expired; at DATA: a message over MAX_BYTES (552, aiosmtpd's limit), mail to
`bounces@` that is no delivery report (550). The database away: 451, the sender tries again later.
"""

from __future__ import annotations

import asyncio
import logging
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from bot.mail.bounces import dsn_bounces, record_bounces
from bot.mail.replies import Mail, Refused, automatic, fingerprint, recipient, take_mail
from bot.services import Services
from storage.db import DatabaseUnavailable

log = logging.getLogger(__name__)
MAX_BYTES = 25 * 1024 * 1024  # what the big mail services accept, and what the receiver announces (SIZE)


class Receiver:
    """aiosmtpd's handler: checks recipients as they are named, takes each message in before saying 250."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list) -> str:
        email, today = self.services.settings.email, self.services.clock.now().date()
        if recipient(self.services.secret_key, email.reply_domain, address, today) is None:
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        try:
            message: Any = BytesParser(policy=policy.default).parsebytes(raw)
            key = str(message.get("Message-ID") or "").strip() or fingerprint(raw)
            bounces = dsn_bounces(message, key)
            if bounces:
                await record_bounces(self.services, bounces)
                return "250 OK"
            taken = [await self._take(message, raw, address, envelope) for address in envelope.rcpt_tos]
        except DatabaseUnavailable:
            return "451 4.3.0 Try again later"
        except Refused as exc:
            return f"550 5.1.1 {exc}"
        if not any(taken):
            return "550 5.7.1 Only delivery reports are taken at this address"
        return "250 OK"

    async def _take(self, message: EmailMessage, raw: bytes, address: str, envelope: Envelope) -> bool:
        """Take one recipient's copy in; False for `bounces@` (nothing but reports goes there)."""
        email, today = self.services.settings.email, self.services.clock.now().date()
        found = recipient(self.services.secret_key, email.reply_domain, address, today)
        if found is not None and found.kind == "bounces":
            return False
        await take_mail(self.services, mail_of(message, raw, address, envelope.mail_from or ""))  # refuses the rest
        return True


def mail_of(message: EmailMessage, raw: bytes, address: str, sender: str) -> Mail:
    """What Kindling reads of a message: its text and HTML bodies, attachments by name and size."""
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    attachments = []
    for part in message.iter_attachments():
        payload = part.get_payload(decode=True) or b""  # decoded only to count its bytes, never looked into
        attachments.append((part.get_filename() or part.get_content_type(), len(payload)))
    return Mail(
        recipient=address,
        sender=str(message.get("From") or sender),
        subject=str(message.get("Subject") or ""),
        plain=_content(plain),
        html=_content(html),
        attachments=tuple(attachments),
        message_id=str(message.get("Message-ID") or "") or None,
        fingerprint=fingerprint(raw),
        automatic=automatic({name.lower(): str(value) for name, value in message.items()}),
    )


def _content(part: Any) -> str | None:
    """A text part's text; one in a charset Python does not know is read as UTF-8, whatever does not fit replaced."""
    if part is None:
        return None
    try:
        return part.get_content()
    except (LookupError, UnicodeError):
        return (part.get_payload(decode=True) or b"").decode("utf-8", "replace")


async def start_receiver(services: Services) -> asyncio.Server | None:
    """Listen on KINDLING_EMAIL_INBOUND; None when it is not set or there is no reply domain (one log line)."""
    email = services.settings.email
    if email.inbound is None:
        return None
    if not email.reply_domain:
        log.info("the email receiver is disabled: KINDLING_EMAIL_REPLY_DOMAIN is not set")
        return None
    host, port = email.inbound
    handler = Receiver(services)
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(handler, data_size_limit=MAX_BYTES, enable_SMTPUTF8=True, hostname=email.reply_domain),
        host,
        port,
    )
    host, port = server.sockets[0].getsockname()[:2]  # port 0 (tests) takes a free one: say which
    log.info("email receiver listening on %s:%d", host, port)
    return server
