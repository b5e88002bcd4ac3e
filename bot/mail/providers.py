"""Hosted providers' webhooks: replies that Mailgun or Postmark received for us, and their bounce reports.

- Mailgun (on with KINDLING_MAILGUN_SIGNING_KEY): `POST /webhooks/email/mailgun` for a route's `forward()`
  (form fields: recipient, sender, from, subject, body-plain, stripped-text, body-html, Message-Id,
  attachment-N files), `POST /webhooks/email/mailgun/events` for its webhooks (JSON: `signature` object and
  `event-data`; `failed` events are bounces, `severity` permanent or temporary). Every request is signed:
  signature = hex HMAC-SHA256(signing key, timestamp + token).
- Postmark (on with KINDLING_POSTMARK_INBOUND_AUTH=user:pass): `POST /webhooks/email/postmark` for inbound
  mail (JSON: OriginalRecipient, ToFull, From, Subject, TextBody, HtmlBody, StrippedTextReply, Headers,
  Attachments) and `POST /webhooks/email/postmark/bounce` for its Bounce webhook (Type, TypeCode, Email).
  Postmark signs nothing: it logs in with HTTP basic auth, compared in constant time.

A provider that is off has no routes (404), with one log line at start. A bad signature or login: 403,
nothing stored. Mail we refuse (an unknown recipient, a forged or expired token) is answered 200 with
`{"status": "ignored"}`: both providers retry anything else for hours, and a retry cannot change the answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from typing import Any

from aiohttp import BodyPartReader, web

from bot.mail.bounces import Bounce, record_bounces
from bot.mail.receive import MAX_BYTES
from bot.mail.replies import Mail, Refused, automatic, fingerprint, recipient, take_mail
from bot.services import SERVICES, Services
from bot.web.middlewares import json_error
from bot.web.signing import same

log = logging.getLogger(__name__)
HARD_POSTMARK = frozenset({"HardBounce", "BadEmailAddress"})  # the address does not exist: never again


def routes(app: web.Application, services: Services) -> None:
    """Mount each provider whose secret is set; say once why another is off."""
    email = services.settings.email
    if email.mailgun_signing_key:
        app.router.add_post("/webhooks/email/mailgun", mailgun_inbound)
        app.router.add_post("/webhooks/email/mailgun/events", mailgun_events)
    else:
        log.info("mailgun email webhooks are disabled: KINDLING_MAILGUN_SIGNING_KEY is not set")
    if email.postmark_inbound_auth:
        app.router.add_post("/webhooks/email/postmark", postmark_inbound)
        app.router.add_post("/webhooks/email/postmark/bounce", postmark_bounce)
    else:
        log.info("postmark email webhooks are disabled: KINDLING_POSTMARK_INBOUND_AUTH is not set")


# --- Mailgun ---------------------------------------------------------------------------------------


def mailgun_signed(key: str, timestamp: Any, token: Any, signature: Any) -> bool:
    """Mailgun's signature: hex HMAC-SHA256(signing key, timestamp + token)."""
    if not all(isinstance(each, str) and each for each in (timestamp, token, signature)):
        return False
    expected = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return same(signature, expected)


async def mailgun_inbound(request: web.Request) -> web.Response:
    """A mail a Mailgun route forwarded: a reply or an unsubscribe."""
    services: Services = request.app[SERVICES]
    fields, attachments = await _form(request)
    if not mailgun_signed(services.settings.email.mailgun_signing_key or "", *_signature(fields)):
        return json_error(403, "bad signature")
    mail = Mail(
        recipient=_ours(services, fields.get("recipient", "").split(",")),
        sender=fields.get("from") or fields.get("sender", ""),
        subject=fields.get("subject", ""),
        plain=fields.get("body-plain"),
        html=fields.get("body-html"),
        stripped=fields.get("stripped-text"),
        attachments=tuple(attachments),
        message_id=fields.get("Message-Id") or fields.get("message-id"),
        fingerprint=fingerprint(json.dumps(fields, sort_keys=True).encode()),
        automatic=automatic(_mailgun_headers(fields)),
    )
    return await _taken(services, mail)


def _mailgun_headers(fields: dict[str, str]) -> dict[str, str]:
    """The mail's headers (names in lowercase) from `message-headers`, a JSON list of [name, value] pairs."""
    try:
        pairs = json.loads(fields.get("message-headers") or "[]")
    except json.JSONDecodeError:
        return {}
    return {str(pair[0]).lower(): str(pair[1]) for pair in _list(pairs) if isinstance(pair, list) and len(pair) == 2}


def _signature(fields: dict[str, Any]) -> tuple[Any, Any, Any]:
    return fields.get("timestamp"), fields.get("token"), fields.get("signature")


async def mailgun_events(request: web.Request) -> web.Response:
    """Mailgun's event webhook: a `failed` event is a bounce (permanent: hard); other events are ignored."""
    services: Services = request.app[SERVICES]
    body = await _json(request)
    signature = body.get("signature") if isinstance(body.get("signature"), dict) else {}
    if not mailgun_signed(services.settings.email.mailgun_signing_key or "", *_signature(signature)):
        return json_error(403, "bad signature")
    event = body.get("event-data")
    if not isinstance(event, dict) or event.get("event") != "failed" or not isinstance(event.get("recipient"), str):
        return web.json_response({"status": "ignored"})
    status = event.get("delivery-status") if isinstance(event.get("delivery-status"), dict) else {}
    reason = " ".join(
        str(each) for each in (status.get("code"), status.get("description") or status.get("message")) if each
    )
    bounce = Bounce(
        address=event["recipient"].lower(),
        hard=event.get("severity") == "permanent",
        reason=reason or str(event.get("reason") or "failed"),
        key=f"mailgun:{event.get('id') or signature.get('token')}",
    )
    return await _bounced(services, bounce)


# --- Postmark --------------------------------------------------------------------------------------


def postmark_login(request: web.Request, expected: str) -> bool:
    """Whether the request logs in with Postmark's configured user:pass (HTTP basic auth)."""
    wanted = "Basic " + base64.b64encode(expected.encode()).decode()
    return same(request.headers.get("Authorization", ""), wanted)


async def postmark_inbound(request: web.Request) -> web.Response:
    """A mail Postmark received for us: a reply or an unsubscribe."""
    services: Services = request.app[SERVICES]
    if not postmark_login(request, services.settings.email.postmark_inbound_auth or ""):
        return json_error(403, "bad login")
    body = await _json(request)
    headers = {
        str(each.get("Name", "")).lower(): str(each.get("Value", ""))
        for each in _list(body.get("Headers"))
        if isinstance(each, dict)
    }
    to = [each.get("Email") for each in _list(body.get("ToFull")) if isinstance(each, dict)]
    attachments = [
        (str(each.get("Name") or ""), _size_of(each))
        for each in _list(body.get("Attachments"))
        if isinstance(each, dict)
    ]
    mail = Mail(
        recipient=_ours(services, [body.get("OriginalRecipient"), *to]),
        sender=str(body.get("From") or ""),
        subject=str(body.get("Subject") or ""),
        plain=_text(body.get("TextBody")),
        html=_text(body.get("HtmlBody")),
        stripped=_text(body.get("StrippedTextReply")),
        attachments=tuple(attachments),
        message_id=headers.get("message-id") or (f"postmark:{body['MessageID']}" if body.get("MessageID") else None),
        fingerprint=fingerprint(json.dumps(body, sort_keys=True).encode()),
        automatic=automatic(headers),
    )
    return await _taken(services, mail)


async def postmark_bounce(request: web.Request) -> web.Response:
    """Postmark's Bounce webhook: a HardBounce (or a bad address) marks the address, the rest are events."""
    services: Services = request.app[SERVICES]
    if not postmark_login(request, services.settings.email.postmark_inbound_auth or ""):
        return json_error(403, "bad login")
    body = await _json(request)
    if body.get("RecordType", "Bounce") != "Bounce" or not isinstance(body.get("Email"), str):
        return web.json_response({"status": "ignored"})
    bounce = Bounce(
        address=body["Email"].lower(),
        hard=body.get("Type") in HARD_POSTMARK or body.get("TypeCode") == 1,
        reason=" ".join(str(body.get(key)) for key in ("Type", "Details") if body.get(key)) or "bounced",
        key=f"postmark:{body.get('ID') or body.get('MessageID')}",
    )
    return await _bounced(services, bounce)


# --- shared ----------------------------------------------------------------------------------------


def _ours(services: Services, addresses: list[Any]) -> str:
    """The first of a mail's recipients that is a reply or unsubscribe address of ours, else the first one."""
    email, today = services.settings.email, services.clock.now().date()
    named = [each.strip() for each in addresses if isinstance(each, str) and each.strip()]
    for address in named:
        if recipient(services.secret_key, email.reply_domain, address, today) is not None:
            return address
    return named[0] if named else ""


async def _taken(services: Services, mail: Mail) -> web.Response:
    try:
        status = await take_mail(services, mail)
    except Refused as exc:
        return web.json_response({"status": "ignored", "reason": str(exc)})
    return web.json_response({"status": status})


async def _bounced(services: Services, bounce: Bounce) -> web.Response:
    found = await record_bounces(services, [bounce])
    return web.json_response({"status": "recorded" if found else "ignored"})


async def _json(request: web.Request) -> dict[str, Any]:
    """A JSON object body, up to MAX_BYTES (Postmark sends attachments inside it); 400 or 413 otherwise."""
    if (request.content_length or 0) > MAX_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BYTES, actual_size=request.content_length or 0)
    raw = await request.clone(client_max_size=MAX_BYTES).read()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="the body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body is not a JSON object")
    return body


async def _form(request: web.Request) -> tuple[dict[str, str], list[tuple[str, int]]]:
    """A form's fields, and its files by name and size (read and dropped, never kept)."""
    if (request.content_length or 0) > MAX_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BYTES, actual_size=request.content_length or 0)
    if request.content_type != "multipart/form-data":
        form = await request.clone(client_max_size=MAX_BYTES).post()
        return {key: str(value) for key, value in form.items() if isinstance(value, str)}, []
    fields: dict[str, str] = {}
    attachments: list[tuple[str, int]] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            continue
        if part.filename is not None:
            attachments.append((part.filename, await _size(part)))
        else:
            fields[part.name] = await part.text()
    return fields, attachments


async def _size(part: BodyPartReader) -> int:
    size = 0
    while chunk := await part.read_chunk():
        size += len(chunk)
    return size


def _size_of(attachment: dict[str, Any]) -> int:
    """An attachment's ContentLength, else the size its base64 Content decodes to."""
    length = attachment.get("ContentLength")
    if isinstance(length, int) and length >= 0:
        return length
    content = attachment.get("Content")
    return len(content) * 3 // 4 if isinstance(content, str) else 0


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None
