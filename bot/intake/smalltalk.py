"""Small talk: whole messages that need no person ("hi", "thanks", "ок", "谢谢"), from `templates/_answers/*.toml`.

One TOML table per language (`en.toml`, `ru.toml`, `zh.toml`...); its `small_talk` key lists phrases. Other
keys are left for other kinds of answers. A message is small talk when, in any case and without punctuation,
symbols or emoji, it is one of the phrases of any language (or nothing is left of it: a lone 👍).
"""

from __future__ import annotations

import tomllib
import unicodedata
from pathlib import Path

from bot.intake.messages import MessageError

FOLDER = "_answers"


class SmallTalkError(MessageError):
    """An answers file that cannot be read; names the file (start-up stops, as for a broken system message)."""


def bare(text: str) -> str:
    """Lower case, letters and digits only, single spaces: what small talk is matched on."""
    kept = (char if unicodedata.category(char)[0] in "LN" else " " for char in text.casefold())
    return " ".join("".join(kept).split())


class SmallTalk:
    """The small-talk phrases of every language under `<templates>/_answers/`."""

    def __init__(self, templates: Path) -> None:
        self.folder = templates / FOLDER
        self.phrases: frozenset[str] = frozenset()

    def load(self) -> None:
        """Read every `*.toml` file; raise SmallTalkError naming the file for a broken one."""
        phrases: set[str] = set()
        for path in sorted(self.folder.glob("*.toml")):
            phrases.update(_phrases(path))
        self.phrases = frozenset(phrases)

    def __contains__(self, text: object) -> bool:
        """Whether a message is small talk."""
        if not isinstance(text, str):
            return False
        found = bare(text)
        return not found or found in self.phrases


def _phrases(path: Path) -> set[str]:
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SmallTalkError(f"{path}: {exc}") from None
    listed = table.get("small_talk", [])
    if not isinstance(listed, list) or not all(isinstance(each, str) and bare(each) for each in listed):
        raise SmallTalkError(f"{path}: small_talk: a list of phrases")
    return {bare(each) for each in listed}
