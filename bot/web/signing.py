"""HMAC signatures: Kindling's webhooks, both ways (inbound from chat providers, outbound to them and to CRMs),
and the widget visitor's token and link.

`X-Kindling-Timestamp` is Unix seconds; `X-Kindling-Signature` is `sha256=<hex>` of
HMAC-SHA256(secret, "<timestamp>.<raw body>"), so a captured body cannot be replayed with another timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for a body sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def same(given: str, expected: str) -> bool:
    """Compare a secret a request carries with ours in constant time; any characters, never an exception.

    aiohttp hands over header bytes that are not UTF-8 as lone surrogates, which `str.encode()` refuses.
    """
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def signed_headers(secret: str, body: bytes, now: datetime) -> dict[str, str]:
    """Headers a sender puts on a body (what providers implement; tests use it too)."""
    timestamp = str(int(now.timestamp()))
    return {"X-Kindling-Timestamp": timestamp, "X-Kindling-Signature": sign(secret, timestamp, body)}


def token_for(secret: bytes, visitor: str) -> str:
    """The widget visitor's token: an HMAC of the visitor id."""
    return hmac.new(secret, f"visitor:{visitor}".encode(), hashlib.sha256).hexdigest()[:32]


def visitor_link(secret: bytes, visitor: str) -> str:
    """`<visitor>-<signature>`: short enough for a Telegram deep link, unguessable for another visitor."""
    return f"{visitor}-{hmac.new(secret, f'link:{visitor}'.encode(), hashlib.sha256).hexdigest()[:12]}"


def read_visitor_link(secret: bytes, link: str) -> str | None:
    """The visitor id in a link `visitor_link` made, or None when its signature is not ours."""
    visitor = link.partition("-")[0]
    return visitor if same(link, visitor_link(secret, visitor)) else None
