"""The bot's own texts: `templates/_system/*.j2` (English) and their translations, `templates/_system/<language>/`.

Rendered in a sandbox with strict undefined, in the lead's language (flows.locales): its translation of a
text when the language's folder has one, else the English file. A language is its folder; adding one is
adding files. Start-up fails on a text (or translation) that does not render, naming the file; a missing
translation is only a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, TemplateNotFound
from jinja2.sandbox import ImmutableSandboxedEnvironment

from flows.compiled import compiled
from flows.locales import BASE, SYSTEM, Locales, available

log = logging.getLogger(__name__)
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
# Texts that are parts of messages rather than messages: a button's label, the out-of-hours time, the email footer.
SYSTEM_TEXTS = ("contact_button", "opening_time", "email_footer", "email_unsubscribe")
SAMPLE = {
    "lead": {"first_name": "Ann", "email": None, "phone": None},
    "contact": "ann@example.com",
    "opens": "Monday at 09:00 (Europe/Berlin)",
    "day": 0,
    "time": "09:00",
    "zone": "Europe/Berlin",
    "hours": 0,
    "minutes": 5,
}


class MessageError(Exception):
    """A system message template is missing or does not render; names the file."""


class SystemMessages:
    """Renders the bot's own messages from the templates folder, in the lead's language."""

    def __init__(self, folder: Path, default_locale: str = BASE) -> None:
        self.folder = Path(folder)
        self.env = ImmutableSandboxedEnvironment(
            loader=FileSystemLoader(folder),
            undefined=StrictUndefined,
            keep_trailing_newline=False,
            bytecode_cache=compiled("system"),
        )
        self.locales = Locales(available(self.folder), default_locale)

    def render(self, name: str, locale: str | None = None, **context: Any) -> str:
        """Render `<name>` in the language `locale` means, else English; raise MessageError naming the file.

        A translation that is missing, or broken since start-up (logged), gives way to the English text.
        """
        language = self.locales.of(locale)
        if language != BASE:
            try:
                return self.render_path(_path(name, language), context)
            except MessageError as exc:
                if not isinstance(exc.__cause__, TemplateNotFound) or exc.__cause__.name != _path(name, language):
                    log.error("%s; sending the English text instead", exc)
        return self.render_path(_path(name, BASE), context)

    def render_path(self, path: str, context: dict[str, Any]) -> str:
        """Render one template of the templates folder in this sandbox; raise MessageError naming `path:line`."""
        try:
            return self.env.get_template(path).render(**context).strip()
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            where = f"{path}:{line}" if line else path
            raise MessageError(f"{where}: {exc}") from exc

    def names(self) -> list[str]:
        """Every text there is: the ones the bot uses, and any other file in `_system/` (a newer message's)."""
        present = sorted(path.stem for path in (self.folder / SYSTEM).glob("*.j2"))
        return list(dict.fromkeys([*SYSTEM_MESSAGES, *SYSTEM_TEXTS, *present]))

    def check(self) -> list[str]:
        """Render every text in every language with a sample lead, so a broken one stops start-up.

        Returns warnings: translations missing (English is sent instead), or with no English file.
        """
        default = self.locales.default
        if default not in self.locales.known:
            where = f"{self.folder / SYSTEM}/{default}/"
            raise MessageError(f"server.default_locale: no language {default!r} (no folder {where}) in the templates")
        names, warnings = self.names(), []
        for language in self.locales.known:
            for name in names:
                path = _path(name, language)
                if language != BASE and not (self.folder / path).is_file():
                    warnings.append(f"{path}: no translation, {language} leads get {_path(name, BASE)}")
                elif not self.render_path(path, SAMPLE):
                    raise MessageError(f"{path}: renders empty")
            if language != BASE:
                strays = sorted({p.stem for p in (self.folder / SYSTEM / language).glob("*.j2")} - set(names))
                warnings += [f"{_path(name, language)}: no {_path(name, BASE)} it translates" for name in strays]
        return warnings


def _path(name: str, language: str) -> str:
    """Where a text is, under the templates folder: `_system/greeting.j2`, `_system/ru/greeting.j2`."""
    return f"{SYSTEM}/{name}.j2" if language == BASE else f"{SYSTEM}/{language}/{name}.j2"
