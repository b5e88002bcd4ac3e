"""Composing an email: headers, the Markdown as text/plain, and HTML rendered into the user's layout.

The HTML part is the Markdown rendered by markdown-it-py with raw HTML off (a `<script>` in a step is
shown as text, never run), inside `templates/_email/layout.html.j2`, rendered in a sandboxed, autoescaping
Jinja environment. A layout that fails to render is logged once and the built-in one is used, so a typo in
it never stops mail.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import default
from email.utils import format_datetime, parseaddr
from functools import lru_cache
from pathlib import Path

from jinja2 import FileSystemLoader, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from markdown_it import MarkdownIt
from markupsafe import Markup

log = logging.getLogger(__name__)
LAYOUT = "_email/layout.html.j2"
RECURRING = 64  # header values kept parsed; those in every message stay, one-off ones (To, Date) pass through
BUILT_IN = """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ subject }}</title></head>
<body style="font-family: sans-serif; line-height: 1.5; max-width: 600px; margin: 0 auto; padding: 16px;">
{{ body }}
{% if unsubscribe_url %}<p style="font-size: 12px; color: #666;">
<a href="{{ unsubscribe_url }}">Unsubscribe</a> from these emails.</p>{% endif %}
</body></html>
"""


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


class Composer:
    """Builds EmailMessages; one per app, since it keeps the layout's Jinja environment."""

    def __init__(self, templates: Path) -> None:
        self.env = SandboxedEnvironment(loader=FileSystemLoader(templates), autoescape=True)
        self.markdown = MarkdownIt("commonmark", {"html": False})
        self._warned = False

    def compose(self, letter: Letter, markdown: str) -> EmailMessage:
        """The whole message: headers, a text/plain part, and its text/html alternative."""
        message = EmailMessage(policy=POLICY)
        message["From"] = letter.sender
        message["To"] = letter.to
        message["Subject"] = letter.subject
        message["Date"] = format_datetime(letter.now)
        message["Message-ID"] = message_id(letter.key, letter.sender)
        if letter.reply_to:
            message["Reply-To"] = letter.reply_to
        if letter.unsubscribe_url:
            links = [letter.unsubscribe_url, *([letter.unsubscribe_mailto] if letter.unsubscribe_mailto else [])]
            message["List-Unsubscribe"] = ", ".join(f"<{link}>" for link in links)
            message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058
        message.set_content(plain(markdown, letter.unsubscribe_url))
        message.add_alternative(self.html(letter, markdown), subtype="html")
        return message

    def html(self, letter: Letter, markdown: str) -> str:
        """The Markdown rendered into the layout (or the built-in one, if the layout is broken)."""
        values = {
            "subject": letter.subject,
            "body": Markup(self.markdown.render(markdown)),  # noqa: S704  (markdown-it escaped any raw HTML)
            "unsubscribe_url": letter.unsubscribe_url,
        }
        try:
            return self.env.get_template(LAYOUT).render(values)
        except (TemplateError, TypeError, ValueError, AttributeError) as exc:  # what a user's template can raise
            if not self._warned:
                self._warned = True
                log.error("email layout %s is broken, using the built-in one: %s", LAYOUT, exc)
            return self.env.from_string(BUILT_IN).render(values)


def plain(markdown: str, unsubscribe_url: str | None) -> str:
    """The text part: the Markdown as written (links stay readable), and the unsubscribe link under it."""
    text = markdown.rstrip() + "\n"
    if unsubscribe_url:
        text += f"\n--\nUnsubscribe: {unsubscribe_url}\n"
    return text


def message_id(key: str, sender: str) -> str:
    """`<hash of the delivery's key@the From domain>`: the same for every attempt at one delivery."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "kindling.invalid"
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"
