"""Signed tokens: a reply address names the conversation it answers, an unsubscribe link the lead it stops.

Both are HMAC-SHA256 with the app's secret key, truncated to 80 bits, in lowercase hex: mail servers may
change the case of an address's local part, and Telegram-style payload limits do not apply here, but a local
part may have at most 64 characters (RFC 5321). A reply token carries the day it was made and is refused
REPLY_DAYS later; an unsubscribe link never expires (RFC 8058 asks that it keep working).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import date
from email.utils import parseaddr

BOUNCES = "bounces"  # bounces@<reply domain>: the envelope sender of our email, where delivery reports come back
REPLY_DAYS = 400  # a year-old email can still be answered
_EPOCH = date(1970, 1, 1)
_REPLY = re.compile(r"([1-9][0-9]{0,15})-([0-9a-f]{1,6})-([0-9a-f]{20})")
_UNSUBSCRIBE = re.compile(r"([1-9][0-9]{0,15})-([0-9a-f]{20})")


def reply_token(secret: bytes, conversation_id: int, today: date) -> str:
    """`<conversation>-<day>-<signature>`: what follows `reply+` in a Reply-To address."""
    day = f"{(today - _EPOCH).days:x}"
    return f"{conversation_id}-{day}-{_sign(secret, f'reply:{conversation_id}:{day}')}"


def read_reply_token(secret: bytes, token: str, today: date) -> int | None:
    """The conversation a reply token names; None if it is forged, malformed or older than REPLY_DAYS."""
    match = _REPLY.fullmatch(token.lower())
    if match is None:
        return None
    conversation, day, signature = match.groups()
    if not hmac.compare_digest(signature, _sign(secret, f"reply:{conversation}:{day}")):
        return None
    age = (today - _EPOCH).days - int(day, 16)
    return int(conversation) if 0 <= age <= REPLY_DAYS else None


def reply_address(secret: bytes, conversation_id: int, domain: str, today: date) -> str:
    """`reply+<token>@<domain>`: where a lead's answer to an email goes."""
    return f"reply+{reply_token(secret, conversation_id, today)}@{domain}"


def token_in_address(address: str) -> str | None:
    """The token of `reply+<token>@domain` (any case), or None."""
    local = parseaddr(address)[1].rpartition("@")[0]
    tag, plus, token = local.partition("+")
    return token if plus and tag.lower() == "reply" and token else None


def unsubscribe_token(secret: bytes, lead_id: int) -> str:
    """`<lead>-<signature>`: the unsubscribe link's last part."""
    return f"{lead_id}-{_sign(secret, f'unsubscribe:{lead_id}')}"


def read_unsubscribe_token(secret: bytes, token: str) -> int | None:
    """The lead an unsubscribe token names; None if it is forged or malformed."""
    match = _UNSUBSCRIBE.fullmatch(token.lower())
    if match is None:
        return None
    lead, signature = match.groups()
    return int(lead) if hmac.compare_digest(signature, _sign(secret, f"unsubscribe:{lead}")) else None


def _sign(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()[:20]
