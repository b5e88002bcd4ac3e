"""What the widget draws: `GET /widget/config.json`, asked for by `/widget.js` before it shows anything.

The answer is `[widget]` from `config.toml` (title, subtitle, colour, position, avatar, pre-chat form) and the
widget's texts in one language, from `templates/_widget/<language>.toml`: adding a language is adding a file.
A language file may leave texts out; English (`en.toml`, which must be complete) fills them in.

The language: the page's `data-lang` (`?lang=`), else `widget.language` unless it is "auto", else the browser's
(`?browser=`, `navigator.language`), else `server.default_locale`, the first of them with a texts file (`zh-CN`
takes `zh.toml` when there is no `zh-cn.toml`), else English. `locale` in the answer is the tag that chose it: the
widget sends it in its hello as the visitor's locale, so the bot's own messages come in the language the widget
speaks.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.config import LANGUAGE_TAG, WidgetSettings

log = logging.getLogger(__name__)
CONFIG_PATH = "/widget/config.json"
FOLDER = "_widget"
FALLBACK = "en"
MAX_TAG = 35
SERVED = ("title", "intro", "prechat_consent")  # texts the answer itself falls back to: English must have them


class WidgetTextError(Exception):
    """A widget texts file is missing, unreadable or has a text the widget does not know; names the file."""


class WidgetTexts:
    """The widget's texts per language, read from the templates folder (again when a file changes)."""

    def __init__(self, templates: Path) -> None:
        self.folder = templates / FOLDER
        self.cache: dict[Path, tuple[float, dict[str, str]]] = {}

    def languages(self) -> list[str]:
        """The languages with a texts file, by file name (`ru.toml` -> `ru`)."""
        return sorted(path.stem.lower() for path in self.folder.glob("*.toml"))

    def texts(self, language: str) -> dict[str, str]:
        """Every text in `language`, English where its file has none."""
        english = self.read(FALLBACK)
        return english if language == FALLBACK else {**english, **self.read(language, set(english))}

    def read(self, language: str, known: set[str] | None = None) -> dict[str, str]:
        """One file's texts, checked: strings only, and (given `known`) only texts English has."""
        path = self.folder / f"{language}.toml"
        try:
            mtime = path.stat().st_mtime
            if path in self.cache and self.cache[path][0] == mtime:
                return self.cache[path][1]
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WidgetTextError(f"{path}: missing; Kindling ships it in templates/{FOLDER}/") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise WidgetTextError(f"{path}: {exc}") from exc
        for key, value in data.items():
            if not isinstance(value, str):
                raise WidgetTextError(f"{path}: {key} must be a string")
            if known is not None and key not in known:
                raise WidgetTextError(f"{path}: unknown text {key!r}; the texts are those of {FALLBACK}.toml")
        self.cache[path] = (mtime, data)
        return data

    def check(self, settings: WidgetSettings) -> None:
        """Read every language, so a broken file stops start-up; `widget.language` must have one."""
        missing = [name for name in SERVED if name not in self.read(FALLBACK)]
        if missing:
            raise WidgetTextError(f"{self.folder / FALLBACK}.toml: needs {', '.join(missing)}")
        for language in self.languages():
            self.texts(language)
        if settings.language != "auto" and self.resolve(settings.language) is None:
            raise WidgetTextError(f"widget.language = {settings.language!r}: no {self.folder / settings.language}.toml")

    def resolve(self, tag: str, languages: list[str] | None = None) -> str | None:
        """The texts file for a language tag: the tag's own, else its language's (`zh-CN` -> `zh`), else None."""
        tag = tag.lower().replace("_", "-")
        languages = self.languages() if languages is None else languages
        return next((each for each in (tag, tag.split("-")[0]) if each in languages), None)

    def choose(
        self, settings: WidgetSettings, page: str | None, browser: str | None, default: str = FALLBACK
    ) -> tuple[str, str]:
        """(the language of the texts, the locale the widget says hello with): see the module's docstring.

        `default` is `server.default_locale`: a browser in a language we have no texts for reads the texts the
        bot's own messages to it will be in."""
        configured = None if settings.language == "auto" else settings.language
        languages = self.languages()  # one look at the folder per request
        for tag in (page, configured, browser, default):
            language = self.resolve(tag, languages) if tag else None
            if language is not None:
                return language, tag  # type: ignore[return-value]  (tag is set when language is)
        return FALLBACK, FALLBACK


class WidgetConfig:
    """Serves the widget's configuration and texts."""

    def __init__(self, settings: WidgetSettings, templates: Path, default_locale: str = FALLBACK) -> None:
        self.settings, self.texts, self.default_locale = settings, WidgetTexts(templates), default_locale

    def routes(self, app: web.Application) -> None:
        app.router.add_get(CONFIG_PATH, self.config)

    def check(self) -> None:
        """At start-up: every texts file reads, and the configured language has one."""
        self.texts.check(self.settings)

    async def config(self, request: web.Request) -> web.Response:
        """`?lang=` (the page's data-lang) and `?browser=` (navigator.language) pick the language."""
        page, browser = _tag(request, "lang"), _tag(request, "browser")
        language, locale = self.texts.choose(self.settings, page, browser, self.default_locale)
        try:
            texts = self.texts.texts(language)
        except WidgetTextError as exc:  # edited since start-up and broken now: English until it is fixed
            log.error("widget texts: %s", exc)
            language, texts = FALLBACK, self.texts.texts(FALLBACK)
        body = _answer(self.settings, language, locale, texts)
        headers = {"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"}
        return web.json_response(body, headers=headers)


def _answer(settings: WidgetSettings, language: str, locale: str, texts: dict[str, str]) -> dict[str, Any]:
    """The JSON the widget reads; an empty title, subtitle or consent text is the language's own."""
    return {
        **asdict(settings),
        "title": settings.title or texts["title"],
        "subtitle": settings.subtitle or texts["intro"],
        "consent_text": settings.consent_text or texts["prechat_consent"],
        "prechat": list(settings.prechat),
        "language": language,
        "locale": locale,
        "texts": texts,
    }


def _tag(request: web.Request, name: str) -> str | None:
    """A language tag from the query; 400 for anything else."""
    value = request.query.get(name, "").strip()
    if value and (len(value) > MAX_TAG or not LANGUAGE_TAG.fullmatch(value)):
        raise web.HTTPBadRequest(text=f"{name}: a language tag like ru or zh-CN, got {value[:MAX_TAG]!r}")
    return value or None
