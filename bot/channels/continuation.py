"""Continue on a messenger: links that take a web visitor to WhatsApp, Messenger or Telegram as the same lead.

The widget's welcome frame carries one link per channel that has an address in `config.toml`
(`continue_links`): Telegram `https://t.me/<bot>?start=<payload>`, Messenger `https://m.me/<page>?ref=<payload>`,
and for WhatsApp a Kindling URL, `GET /continue/whatsapp?p=<payload>&sig=<signature>`, that redirects to
`https://wa.me/<number>?text=<prefilled text with a short code>`.

The payload. Telegram allows only `A-Za-z0-9_-` and 64 characters in `start` (Messenger's `ref` allows more),
so it is `<key>-<value>` pairs joined by `_`: `v` = the widget's signed visitor link (`<visitor id>-<signature>`,
`bot.web.signing.visitor_link`), `s` = utm source, `m` = utm medium, `c` = utm campaign; e.g.
`v-0123456789abcdef-0a1b2c3d4e5f_s-google_c-spring`. Values keep `A-Za-z0-9-` only, and are shortened to fit.
Unknown keys are ignored; a malformed payload is ignored as a whole.

WhatsApp's `wa.me` carries no payload, only a text the person sees and may edit, so the WhatsApp link carries a
short code (`CODE_LENGTH` characters of `ALPHABET`: no 0/O, 1/I/L look-alikes, at least one digit, so no word
is one). It is made on the click, not with the page, so page views do not fill the table; the same visitor on
the same source gets the same code while it lives (`channels.whatsapp.code_lifetime`).

Trust. A correctly signed visitor link (in a payload or an email link) names that visitor, a verified identity:
only our server can sign one, and it gave it to that visitor's own browser, so nobody attaches themselves to a
visitor whose id they merely guessed. A code is verified for the same reason (our redirect put it into the
visitor's own WhatsApp), with three limits because it is typed text: only a lead's first WhatsApp message may
claim one (the WhatsApp channel asks only then), one WhatsApp number claims it (that number asking again, as
when Meta redelivers the message, gets the same answer; another gets nothing), and it expires. Guessing one is
a one-in-10^11 try per live code, and each try costs a new WhatsApp number.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from urllib.parse import quote, urlencode

from aiohttp import web
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.config import Settings
from bot.intake.inbound import Touch
from bot.services import SERVICES
from bot.web.signing import read_visitor_link, same, visitor_link
from storage import continue_codes
from storage.db import transaction
from storage.leads import identity_owner

WHATSAPP_PATH = "/continue/whatsapp"
MAX_PAYLOAD = 64
ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 8
MAX_CANDIDATES = 5  # code-like words in one message that are looked up
_PAYLOAD = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fullmatch: match() and $ would let a trailing newline in
_VISITOR_LINK = re.compile(r"[0-9a-f]{16}-[0-9a-f]{12}")
_TOUCH_KEYS = {"s": "source", "m": "medium", "c": "campaign"}
_NOT_VALUE = re.compile(r"[^A-Za-z0-9-]+")
_WORD = re.compile(rf"(?<![A-Za-z0-9])[A-Za-z0-9]{{{CODE_LENGTH}}}(?![A-Za-z0-9])")


def build_payload(link: str | None, touch: Touch | None) -> str:
    """A payload for a visitor link and a touch's source, medium and campaign, within 64 characters."""
    pairs = [f"v-{link}"] if link else []
    values = touch.as_dict() if touch else {}
    for key, name in _TOUCH_KEYS.items():
        value = _NOT_VALUE.sub("-", values.get(name, "")).strip("-")
        prefix = f"_{key}-" if pairs else f"{key}-"
        room = MAX_PAYLOAD - len("_".join(pairs)) - len(prefix)
        if value and room > 0:
            pairs.append(f"{key}-{value[:room].rstrip('-')}")
    return "_".join(pairs)


def parse_payload(payload: str) -> tuple[str | None, Touch | None]:
    """The visitor link (signature not checked) and source/UTM in a payload (format in the module docstring)."""
    if not _PAYLOAD.fullmatch(payload):
        return None, None
    pairs = dict(pair.partition("-")[::2] for pair in payload.split("_"))
    visitor = pairs.get("v") if _VISITOR_LINK.fullmatch(pairs.get("v", "")) else None
    utm = {name: pairs[key] for key, name in _TOUCH_KEYS.items() if pairs.get(key)}
    return visitor, Touch(**utm) if utm else None


def read_payload(secret: bytes, payload: str) -> tuple[str | None, Touch | None]:
    """The visitor a payload names, if its link is signed by us, and its source (Messenger's `ref` reads this)."""
    link, touch = parse_payload(payload)
    return (read_visitor_link(secret, link) if link else None), touch


def continue_links(settings: Settings, secret: bytes, visitor: str, touch: Touch | None) -> list[dict[str, str]]:
    """The widget's links, WhatsApp first, for the channels with an address: `{"channel", "label", "url"}`."""
    where = settings.continue_on
    payload = build_payload(visitor_link(secret, visitor), touch)
    links = []
    if where.whatsapp_number:
        query = urlencode({"p": payload, "sig": signature(secret, payload)})
        base = f"{settings.public_url}/" if settings.public_url else ""  # relative: the widget resolves it
        links.append(_link("whatsapp", "WhatsApp", f"{base}{WHATSAPP_PATH.lstrip('/')}?{query}"))
    if where.messenger_page:
        links.append(_link("messenger", "Messenger", f"https://m.me/{where.messenger_page}?ref={payload}"))
    if where.telegram_username:
        links.append(_link("telegram", "Telegram", f"https://t.me/{where.telegram_username}?start={payload}"))
    return links


def _link(channel: str, label: str, url: str) -> dict[str, str]:
    return {"channel": channel, "label": label, "url": url}


def signature(secret: bytes, payload: str) -> str:
    """The signature of a WhatsApp link's payload, so neither its visitor nor its source can be changed."""
    return hmac.new(secret, f"continue:whatsapp:{payload}".encode(), hashlib.sha256).hexdigest()[:16]


def new_code() -> str:
    """A random code: CODE_LENGTH characters of ALPHABET, at least one of them a digit."""
    while True:
        code = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
        if any(char.isdigit() for char in code):
            return code


def find_codes(text: str) -> list[str]:
    """The code-like words in a message, upper-cased (people may retype a code in lower case)."""
    found = []
    for word in _WORD.findall(text or ""):
        word = word.upper()
        if set(word) <= set(ALPHABET) and any(char.isdigit() for char in word) and word not in found:
            found.append(word)
    return found[:MAX_CANDIDATES]


def find_code(text: str) -> str | None:
    """The first code-like word in a message (a code only if `claim_code` finds it live), or None."""
    codes = find_codes(text)
    return codes[0] if codes else None


async def claim_code(session: AsyncSession, text: str, by: str, now: datetime) -> tuple[str | None, Touch | None]:
    """The visitor and source a lead's FIRST WhatsApp message claims with a live code, else (None, None).

    Args:
        session: the WhatsApp inbound's transaction (the claim commits or rolls back with it).
        text: the message's text, as the person sent it.
        by: the sender's WhatsApp id (`wa_id`): the same sender claiming again gets the same answer.
        now: the inbound's time.

    Returns:
        The visitor id, to add as the verified identity ("visitor", id), and the page's Touch (or None).
    """
    for code in find_codes(text):
        claimed = await continue_codes.claim_code(session, code, by, now)
        if claimed is not None:
            return claimed.visitor, Touch(**claimed.touch) if claimed.touch else None
    return None, None


def routes(app: web.Application) -> None:
    """Mount the WhatsApp link's redirect."""
    app.router.add_get(WHATSAPP_PATH, whatsapp_redirect)


async def whatsapp_redirect(request: web.Request) -> web.Response:
    """Check the link's signature, issue the visitor's code, and send the browser to wa.me with it."""
    services = request.app[SERVICES]
    where, secret = services.settings.continue_on, services.secret_key
    if not where.whatsapp_number:
        raise web.HTTPNotFound(text="WhatsApp is not offered here (channels.whatsapp.number is not set)")
    payload, given = request.query.get("p", ""), request.query.get("sig", "")
    visitor, touch = read_payload(secret, payload)
    if not same(given, signature(secret, payload)) or visitor is None:
        raise web.HTTPForbidden(text="this link was not made by this server, or it was changed")
    now = services.clock.now()

    async def issue(session: AsyncSession) -> str | None:
        lead_id = await identity_owner(session, "visitor", visitor)
        if lead_id is None:
            return None
        touch_fields = touch.as_dict() if touch else {}
        lifetime = where.code_lifetime
        return await continue_codes.issue_code(session, new_code, visitor, lead_id, touch_fields, now, lifetime)

    code = await transaction(services.sessions, issue)
    if code is None:
        raise web.HTTPGone(text="this visitor's chat no longer exists")
    text = where.whatsapp_text.replace("{code}", code)
    location = f"https://wa.me/{where.whatsapp_number}?text={quote(text, safe='')}"
    raise web.HTTPFound(location, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
