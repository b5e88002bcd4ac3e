"""The bot's own messages: `templates/_system/*.j2`, rendered in a sandbox with strict undefined."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

SYSTEM_MESSAGES = (
    "greeting",
    "got_it",
    "contact_request",
    "contact_thanks",
    "opt_out_confirm",
    "handoff_coming",
    "handoff_out_of_hours",
    "handoff_holding",
    "question_received",
)
SAMPLE = {
    "lead": {"first_name": "Ann", "email": None, "phone": None},
    "contact": "ann@example.com",
    "opens": "Monday at 09:00 (Europe/Berlin)",
    "expected": "within 5 minutes",
}


class MessageError(Exception):
    """A system message template is missing or does not render; names the file."""


class SystemMessages:
    """Renders the bot's own messages from the templates folder."""

    def __init__(self, folder: Path) -> None:
        self.env = ImmutableSandboxedEnvironment(
            loader=FileSystemLoader(folder), undefined=StrictUndefined, keep_trailing_newline=False
        )

    def render(self, name: str, **context: Any) -> str:
        """Render `_system/<name>.j2`; raise MessageError naming the file."""
        path = f"_system/{name}.j2"
        try:
            return self.env.get_template(path).render(**context).strip()
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            where = f"{path}:{line}" if line else path
            raise MessageError(f"{where}: {exc}") from exc

    def check(self) -> None:
        """Render every system message with a sample lead, so a broken one stops start-up."""
        for name in SYSTEM_MESSAGES:
            if not self.render(name, **SAMPLE):
                raise MessageError(f"_system/{name}.j2: renders empty")
