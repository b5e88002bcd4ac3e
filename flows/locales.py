"""Languages: which ones the templates folder has, and which of them a lead's locale means.

A language is a folder of translations beside the bot's own messages, named by its code: `templates/_system/ru/`,
`templates/_system/zh/`. The messages in `templates/_system/` itself are English (`en`). Adding a language is
adding a folder, no code; the folders are read at start. A lead's locale (`ru-RU`, `zh-Hans-CN`, `en`) means the
longest known language it starts with (`zh-hans-cn`, `zh-hans`, `zh`), else `server.default_locale`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BASE = "en"  # the language of the files in templates/_system/ (and of flow steps without `locale=`)
SYSTEM = "_system"
_CODE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$")


def is_code(text: str) -> bool:
    """Whether `text` is a language code as folders and `locale=` write it: `ru`, `zh`, `pt-br`."""
    return bool(_CODE.match(text))


def available(templates_root: Path) -> tuple[str, ...]:
    """The languages a templates folder has: English, and one per folder in `_system/` named by a code."""
    folder = Path(templates_root) / SYSTEM
    found = (
        {path.name for path in folder.iterdir() if path.is_dir() and is_code(path.name)} if folder.is_dir() else set()
    )
    return tuple(sorted({BASE, *found}))


def candidates(locale: str | None) -> list[str]:
    """The codes a locale may mean, longest first: `zh-Hans-CN` -> `zh-hans-cn`, `zh-hans`, `zh`."""
    parts = (locale or "").strip().lower().replace("_", "-").split("-")
    return ["-".join(parts[:size]) for size in range(len(parts), 0, -1)] if parts[0] else []


@dataclass(frozen=True)
class Locales:
    """The languages there are, and the one for leads whose locale is none of them."""

    known: tuple[str, ...] = (BASE,)
    default: str = BASE

    def of(self, locale: str | None) -> str:
        """The language a lead with this locale gets (`ru-RU` -> `ru`; unknown or none -> the default)."""
        return next((code for code in candidates(locale) if code in self.known), self.default)
