"""Composing an email: headers, the Markdown as text/plain, and HTML rendered into the user's layout.

The HTML part is the Markdown rendered by markdown-it-py with raw HTML off (a `<script>` in a step is
shown as text, never run), inside `templates/_email/layout.html.j2`, rendered in a sandboxed, autoescaping
Jinja environment. A layout that fails to render is logged once and the built-in one is used, so a typo in
it never stops mail. The unsubscribe line's words are the bot's own texts (`_system/email_footer.j2` and
`_system/email_unsubscribe.j2`, bot.intake.messages), in the lead's language.

Two ways to the same bytes. `Composer.compose` builds an `EmailMessage` with the standard library, and
`message.as_bytes(policy=WIRE)` is the message as sent: the reference. `Composer.wire` writes those bytes
directly, because building and flattening an `EmailMessage` was most of the CPU an email cost (about 1.8 of
2.2 ms: every header value is parsed into a token tree when set and folded again from it when written, the
generator compiles a regular expression for every new MIME boundary). `wire` writes a header as
`Name: value` only when the value is one the standard library would write back unchanged (a pattern per
header below, narrower than what it accepts); any other value goes through the standard library's own code.
A part's body is encoded as `set_content` encodes it (its choice of 7bit, 8bit, quoted-printable or base64,
made the same way), the quoted-printable lines with the standard library's encoder, each distinct line once.
tests/test_email_out.py checks the two byte for byte, in all four encodings.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import random
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage, MIMEPart
from email.policy import SMTP, default
from email.utils import format_datetime, parseaddr
from functools import lru_cache
from pathlib import Path

from jinja2 import FileSystemLoader, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from markdown_it import MarkdownIt
from markupsafe import Markup

from bot.intake.messages import MessageError, SystemMessages
from flows.compiled import compiled

log = logging.getLogger(__name__)
LAYOUT = "_email/layout.html.j2"
RECURRING = 64  # header values kept parsed; those in every message stay, one-off ones (To, Date) pass through
BUILT_IN = """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ subject }}</title></head>
<body style="font-family: sans-serif; line-height: 1.5; max-width: 600px; margin: 0 auto; padding: 16px;">
{{ body }}
{% if unsubscribe_url %}<p style="font-size: 12px; color: #666;">
{{ footer }} <a href="{{ unsubscribe_url }}">{{ unsubscribe }}</a></p>{% endif %}
</body></html>
"""


FOOTER = ("You get these emails because you talked with us.", "Unsubscribe")  # when its texts are broken


class Headers(HeaderRegistry):
    """The standard library's headers, each class built once and each recurring header parsed once.

    `HeaderRegistry` makes a new class with `type()` on every lookup and parses every value, about 20 a message;
    most are the same in every message (From, MIME-Version, the parts' Content-Type), and headers are immutable.
    """

    def __init__(self) -> None:
        super().__init__()
        self.made: dict[str, type[BaseHeader]] = {}
        self.parsed = lru_cache(maxsize=RECURRING)(super().__call__)

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        if key not in self.made:
            self.made[key] = super().__getitem__(key)
        return self.made[key]

    def __call__(self, name: str, value: object) -> BaseHeader:
        return self.parsed(name, value) if isinstance(value, str) else super().__call__(name, value)


POLICY = default.clone(header_factory=Headers())  # the default policy, only faster
# The message as sent: CRLF line ends, headers folded only past RFC 5322's 998 characters (a List-Unsubscribe
# folded before its first link is valid, but some mail clients read it wrong).
WIRE = SMTP.clone(max_line_length=998)

# Header values the standard library writes back as given (parsing and folding them changes nothing), so
# `wire` can write them without either; anything else (non-ASCII, quoting, folding, encoded words) is the
# standard library's to write. Checked against it in tests/test_email_out.py.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDRESS = rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*"  # dot-atom@dot-atom: nothing to quote
_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")  # printable ASCII, single spaces, no encoded word (checked apart)
_AS_IS = {
    "to": re.compile(_ADDRESS),
    "reply-to": re.compile(_ADDRESS),
    "message-id": re.compile(rf"<{_ADDRESS}>"),
    "date": re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d [A-Z][a-z][a-z] \d{4} \d\d:\d\d:\d\d [+-]\d{4}"),
    "subject": _TEXT,
    "list-unsubscribe": _TEXT,
    "list-unsubscribe-post": _TEXT,
}
_LONGEST = 998  # RFC 5322's line limit, WIRE's: a header line up to this long is not folded
_NEWLINE = re.compile(r"\r\n|\r|\n")  # what the generator writes as CRLF in a part's body
_WIDTH = len(repr(sys.maxsize - 1))  # the generator's boundary: 15 "=", a random number this wide, "=="


@dataclass(frozen=True)
class Letter:
    """What goes into one email besides its body: who, about what, and the links it carries."""

    sender: str  # `Acme <hello@acme.example>`
    to: str
    subject: str
    now: datetime
    key: str  # the delivery's idempotency key: a retry carries the same Message-ID
    reply_to: str | None = None
    unsubscribe_url: str | None = None  # nurture only
    unsubscribe_mailto: str | None = None
    locale: str | None = None  # the lead's: the language of the unsubscribe line


class Composer:
    """Builds emails (the bytes as sent, or an EmailMessage); one per app, since it keeps the layout's Jinja
    environment."""

    def __init__(self, templates: Path, texts: SystemMessages) -> None:
        self.texts = texts
        self.env = SandboxedEnvironment(
            loader=FileSystemLoader(templates), autoescape=True, bytecode_cache=compiled("email")
        )
        self.markdown = MarkdownIt("commonmark", {"html": False})
        # Normalizing a link's URL (parse, punycode, percent-encode) is a pure function of it and a sixth of the
        # rendering; the links in a flow's steps are the same for every lead, so each is normalized once.
        self.markdown.normalizeLink = lru_cache(maxsize=256)(self.markdown.normalizeLink)  # type: ignore[method-assign]
        self._warned = False

    def compose(self, letter: Letter, markdown: str) -> EmailMessage:
        """The whole message: headers, a text/plain part, and its text/html alternative."""
        message = EmailMessage(policy=POLICY)
        for name, value in headers(letter):
            message[name] = value
        footer = self.footer(letter)
        message.set_content(plain(markdown, letter.unsubscribe_url, footer[1]))
        message.add_alternative(self.html(letter, markdown, footer), subtype="html")
        return message

    def wire(self, letter: Letter, markdown: str) -> bytes:
        """The message as sent: what `compose(...).as_bytes(policy=WIRE)` gives, but for its random boundary.

        Written the way the standard library's generator writes this message (multipart/alternative, a text
        part, then an HTML part that carries its own MIME-Version, as `add_alternative` leaves it): headers in
        the same order, each part's body encoded as `set_content` encodes it (7bit, 8bit, quoted-printable or
        base64, chosen the same way) with CRLF line ends, a boundary of the same form. About 6x faster.
        """
        footer = self.footer(letter)
        text = _part("plain", plain(markdown, letter.unsubscribe_url, footer[1]))
        html = _part("html", self.html(letter, markdown, footer), "MIME-Version: 1.0\r\n")
        boundary = _boundary(text + html)
        top = [*(_header(name, value) for name, value in headers(letter)), "MIME-Version: 1.0\r\n",
               f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n']  # fmt: skip
        body = f"\r\n--{boundary}\r\n{text}\r\n--{boundary}\r\n{html}\r\n--{boundary}--\r\n"
        return ("".join(top) + body).encode("ascii", "surrogateescape")  # as BytesGenerator: 8bit bodies as is

    def html(self, letter: Letter, markdown: str, footer: tuple[str, str] | None = None) -> str:
        """The Markdown rendered into the layout (or the built-in one, if the layout is broken)."""
        footer, unsubscribe = footer or self.footer(letter)
        values = {
            "subject": letter.subject,
            "body": Markup(self.markdown.render(markdown)),  # noqa: S704  (markdown-it escaped any raw HTML)
            "unsubscribe_url": letter.unsubscribe_url,
            "footer": footer,
            "unsubscribe": unsubscribe,
            "lang": self.texts.locales.of(letter.locale),
        }
        try:
            return self.env.get_template(LAYOUT).render(values)
        except (TemplateError, TypeError, ValueError, AttributeError) as exc:  # what a user's template can raise
            if not self._warned:
                self._warned = True
                log.error("email layout %s is broken, using the built-in one: %s", LAYOUT, exc)
            return self.env.from_string(BUILT_IN).render(values)

    def footer(self, letter: Letter) -> tuple[str, str]:
        """The unsubscribe line in the lead's language: why they get these emails, and the link's words."""
        if not letter.unsubscribe_url:
            return "", ""
        texts, locale = self.texts, letter.locale
        try:
            return texts.render("email_footer", locale), texts.render("email_unsubscribe", locale)
        except MessageError as exc:  # never stop mail for a typo: say it in English
            log.error("email footer: %s", exc)
            return FOOTER


def headers(letter: Letter) -> list[tuple[str, str]]:
    """The message's own headers, in order (the MIME ones follow)."""
    items = [("From", letter.sender), ("To", letter.to), ("Subject", letter.subject),
             ("Date", format_datetime(letter.now)), ("Message-ID", message_id(letter.key, letter.sender))]  # fmt: skip
    if letter.reply_to:
        items.append(("Reply-To", letter.reply_to))
    if letter.unsubscribe_url:
        links = [letter.unsubscribe_url, *([letter.unsubscribe_mailto] if letter.unsubscribe_mailto else [])]
        items.append(("List-Unsubscribe", ", ".join(f"<{link}>" for link in links)))
        items.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))  # RFC 8058
    return items


def _header(name: str, value: str) -> str:
    """One header as the generator writes it with WIRE: as given when that is what it would write."""
    pattern = _AS_IS.get(name.lower())
    line = f"{name}: {value}"
    if pattern is not None and pattern.fullmatch(value) and "=?" not in value and len(line) <= _LONGEST:
        return line + "\r\n"
    return _folded(name, value)


@lru_cache(maxsize=RECURRING)  # From, the same in every message, is folded once
def _folded(name: str, value: str) -> str:
    """The standard library's header (parsed as `compose` sets it: a line break is a ValueError), folded."""
    return POLICY.header_store_parse(name, value)[1].fold(policy=WIRE)


def _part(subtype: str, content: str, extra: str = "") -> str:
    """A text part as the generator writes it: headers, a blank line, the body encoded as set_content does."""
    encoding, body = _encoded(subtype, content)
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {encoding}\r\n{extra}\r\n{body}'
    )


def _encoded(subtype: str, content: str) -> tuple[str, str]:
    """The part's transfer encoding and its body with CRLF line ends, as `set_content` and the generator make them.

    `set_content` (email.contentmanager) writes lines that fit in 78 bytes as they are (7bit, or 8bit when not
    ASCII); otherwise it quoted-printable-encodes the first 10 lines and picks base64 if that is shorter. The
    quoted-printable encoder works line by line, so each line is encoded once, and the layout's lines are the
    same in every message. Base64 (long non-Latin lines) is left to `set_content` itself.
    """
    lines = content.encode().splitlines()
    if max(map(len, lines), default=0) <= POLICY.max_line_length:
        body = b"\r\n".join(lines) + b"\r\n"
        return ("7bit", body.decode("ascii")) if body.isascii() else ("8bit", body.decode("ascii", "surrogateescape"))
    encoded = [_quoted_printable(line.decode("latin-1")) for line in lines]
    first = encoded[:10]
    if sum(map(len, first)) + len(first) > len(binascii.b2a_base64(b"\n".join(lines[:10]) + b"\n")):
        part = MIMEPart(policy=POLICY)
        part.set_content(content, subtype=subtype)
        return part["Content-Transfer-Encoding"], _NEWLINE.sub("\r\n", part.get_payload())
    return "quoted-printable", "\r\n".join(encoded) + "\r\n"


@lru_cache(maxsize=1024)
def _quoted_printable(line: str) -> str:
    """One line (no line end), as `quoprimime.body_encode` writes it in a body, soft line breaks as CRLF."""
    return quoprimime.body_encode(line, POLICY.max_line_length, eol="\r\n")


def _boundary(content: str) -> str:
    """A boundary of the generator's form that the parts do not contain (it tries the next number instead)."""
    while True:
        boundary = "=" * 15 + f"{random.randrange(sys.maxsize):0{_WIDTH}d}" + "=="
        if f"--{boundary}" not in content:
            return boundary


def plain(markdown: str, unsubscribe_url: str | None, unsubscribe: str = FOOTER[1]) -> str:
    """The text part: the Markdown as written (links stay readable), and the unsubscribe link under it."""
    text = markdown.rstrip() + "\n"
    if unsubscribe_url:
        text += f"\n--\n{unsubscribe}: {unsubscribe_url}\n"
    return text


def message_id(key: str, sender: str) -> str:
    """`<hash of the delivery's key@the From domain>`: the same for every attempt at one delivery."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@{_domain(sender)}>"


@lru_cache(maxsize=RECURRING)  # the From address is the same in every message: parsed once
def _domain(sender: str) -> str:
    return parseaddr(sender)[1].rpartition("@")[2] or "kindling.invalid"
