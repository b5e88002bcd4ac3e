"""Email out: each email Delivery is composed (bot.mail.compose) and handed to the SMTP relay (bot.mail.smtp).

On by `KINDLING_SMTP_URL`, `KINDLING_EMAIL_FROM` and `KINDLING_PUBLIC_URL` (a nurture email's unsubscribe link
points there). Sends keep to `email.rate` messages a second per instance. The relay's answer decides the
outcome: accepted is sent and delivered; a 4xx, a timeout or a relay that is down is retried later with
backoff (the outbox sends each delivery once, and only a 250 after DATA counts as sent); a 5xx to RCPT is a
bounce (no more email to that address); any other 5xx fails the delivery. The unsubscribe routes live in
bot.mail.unsubscribe, on even when email is off, so old links keep working.
"""

from __future__ import annotations

import logging
from email.utils import parseaddr

from aiohttp import web
from aiosmtplib import SMTPRecipientRefused, SMTPResponseException, SMTPServerDisconnected

from bot.delivery.channel import SendResult, buttons_as_text
from bot.mail.compose import Composer, Letter, message_id
from bot.mail.smtp import Pacer, Relay
from bot.mail.tokens import BOUNCES, reply_address, unsubscribe_token
from bot.mail.unsubscribe import unsubscribe_url
from bot.services import Services
from storage.models import Conversation, Delivery, Lead

log = logging.getLogger(__name__)
BACKOFF = 30.0  # seconds before the first retry when the relay is down or says "later"; doubles each attempt
MAX_BACKOFF = 3600.0


class EmailChannel:
    """Sends email through the configured SMTP relay, paced, over reused connections."""

    name = "email"

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings.email
        self.composer = Composer(services.settings.templates, services.intake.messages)
        self.pacer = Pacer(self.settings.rate)
        self.relay: Relay | None = None
        # The envelope sender is where relays send delivery reports: the built-in receiver takes them at
        # bounces@ the reply domain (bot.mail.replies); without one, the From address gets them.
        reply_domain = self.settings.reply_domain
        self.sender = f"{BOUNCES}@{reply_domain}" if reply_domain else parseaddr(self.settings.from_address or "")[1]

    @staticmethod
    def enabled(services: Services) -> str | None:
        """None when the relay, the From address and the public URL (for unsubscribe links) are set."""
        if reason := services.settings.email.disabled():
            return reason
        return None if services.settings.public_url else "KINDLING_PUBLIC_URL is not set (unsubscribe links need it)"

    def routes(self, app: web.Application) -> None:
        """None of its own: unsubscribe links are served whether or not email is on (bot.mail.unsubscribe)."""

    async def start(self) -> None:
        self.relay = Relay(self.settings.smtp_url or "", self.pacer)

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.close()

    async def send_known(self, delivery: Delivery, conversation: Conversation | None, lead: Lead) -> SendResult:
        """`send`, given the lead the dispatcher read (nurture): the unsubscribe line in its language."""
        return await self._send(delivery, lead.locale)

    async def send(self, delivery: Delivery) -> SendResult:
        """Compose, hand the message to the relay (which paces it); the relay's answer is the result.

        Whether this lead may get it now (consent, unsubscribed, bounced) the dispatcher checked right before.
        """
        return await self._send(delivery, None)

    async def _send(self, delivery: Delivery, locale: str | None) -> SendResult:
        letter = self._letter(delivery, locale)
        assert self.relay is not None, "channel not started"
        try:
            message = self.composer.wire(letter, buttons_as_text(delivery.text, delivery.buttons))  # bytes as sent
            await self.relay.send(self.sender, delivery.address, message)
        except SMTPRecipientRefused as exc:
            return _refused(exc, delivery, bounce=True)
        except SMTPResponseException as exc:
            return _refused(exc, delivery, bounce=False)
        except (SMTPServerDisconnected, ConnectionError, TimeoutError, OSError) as exc:
            return SendResult.retry(f"relay unreachable: {type(exc).__name__}: {exc}", after=_backoff(delivery))
        except UnicodeEncodeError:
            return SendResult.failed(f"{delivery.address} is not an ASCII address; the relay cannot take it")
        return SendResult.sent(message_id(letter.key, letter.sender), delivered=True)

    def _letter(self, delivery: Delivery, locale: str | None = None) -> Letter:
        """Headers for this delivery: Reply-To when replies have a domain; unsubscribe links on nurture."""
        secret, domain, now = self.services.secret_key, self.settings.reply_domain, self.services.clock.now()
        nurture = delivery.kind == "nurture"
        token = unsubscribe_token(secret, delivery.lead_id)
        return Letter(
            sender=self.settings.from_address or "",
            to=delivery.address,
            subject=delivery.subject or "",
            now=now,
            key=delivery.idempotency_key,
            reply_to=reply_address(secret, delivery.conversation_id, domain, now.date()) if domain else None,
            unsubscribe_url=unsubscribe_url(self.services.settings.public_url, token) if nurture else None,
            unsubscribe_mailto=f"mailto:unsubscribe+{token}@{domain}" if nurture and domain else None,
            locale=locale,
        )


def _refused(exc: SMTPResponseException, delivery: Delivery, bounce: bool) -> SendResult:
    """A relay's refusal: 4xx is retried later, 5xx is final (a bounce when it refused the recipient)."""
    error = f"relay answered {exc.code} {exc.message}"
    if exc.code < 500:
        return SendResult.retry(error, after=_backoff(delivery))
    return SendResult.failed(error, bounced=bounce)


def _backoff(delivery: Delivery) -> float:
    return min(BACKOFF * 2 ** max(delivery.attempts - 1, 0), MAX_BACKOFF)
