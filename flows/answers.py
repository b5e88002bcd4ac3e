"""Quick answers: `templates/_answers/<language>.toml`, common questions the bot answers without a person.

Each file holds `[[answer]]` tables (name, question variants, a Jinja text rendered with `lead`, optional
buttons offering a person) beside the inbox's `small_talk` list. `load_answers` reads and checks every file
(a broken one raises AnswersError naming file and line, as system messages stop start-up); `Answers.match`
finds the answer a message asks for with `flows.matcher`, or None when no answer is close enough or two are
too close to call (a person replies then); `Answers.is_small_talk` tells a message that needs no person. See
docs/answers.md and docs/console.md.
"""

from __future__ import annotations

import logging
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from flows.compiled import compiled, template_from_string
from flows.matcher import Index, pairs, ranked
from flows.reactions import lead_context
from flows.render import describe, error_location
from flows.samples import sample_lead
from flows.spec import Problem
from storage.models import Lead

log = logging.getLogger(__name__)
FOLDER = "_answers"
KEYS = {"name", "questions", "text", "buttons"}
TOP_KEYS = {"answer", "small_talk"}  # small_talk: the inbox's list of messages that need no reply
_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass(frozen=True)
class AnswersPolicy:
    """How close a question must be to an answer's variants (`answers.threshold`), and how much closer than the
    next answer (`answers.margin`), for the bot to answer it."""

    threshold: float = 0.3
    margin: float = 0.1


@dataclass(frozen=True)
class Answer:
    """One quick answer of one language file."""

    name: str
    language: str
    questions: tuple[str, ...]
    template: Template
    buttons: tuple[str, ...]
    where: str  # `_answers/en.toml:12`, for log lines


@dataclass(frozen=True)
class Match:
    """The answer a message asks for, with its cosine score (0-1)."""

    answer: Answer
    score: float

    @property
    def name(self) -> str:
        return self.answer.name


class AnswersError(Exception):
    """An answers file that cannot be loaded; carries every problem found (file:line: message)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(map(str, self.problems)))


class Answers:
    """Every language's quick answers, with one matcher index per language (and one over all of them)."""

    def __init__(
        self, answers: Sequence[Answer], policy: AnswersPolicy = AnswersPolicy(), small_talk: Iterable[str] = ()
    ) -> None:
        self.policy = policy
        self.small_talk = frozenset(bare(phrase) for phrase in small_talk)  # every language's, bare
        self.by_language: dict[str, dict[str, Answer]] = {}
        self._indexes: dict[str, Index] = {}
        for answer in answers:
            self.by_language.setdefault(answer.language, {})[answer.name] = answer

    def is_small_talk(self, text: str) -> bool:
        """Whether a whole message is small talk of any language ("Thank you!", "ДА", "你好！"), or nothing is left
        of it without punctuation, symbols and emoji (a lone 👍): the bot's greeting or "got it" answers it."""
        found = bare(text)
        return not found or found in self.small_talk

    def index(self, language: str) -> Index:
        """The matcher's index of one language, built when first asked for (most starts never match)."""
        built = self._indexes.get(language)
        if built is None:
            found = self.by_language[language]
            built = self._indexes[language] = Index(pairs((name, answer.questions) for name, answer in found.items()))
        return built

    @cached_property
    def everywhere(self) -> Index:
        """One index over every language, for leads whose language has no file (built when first needed)."""
        found = [answer for by_name in self.by_language.values() for answer in by_name.values()]
        return Index(pairs((f"{answer.language}:{answer.name}", answer.questions) for answer in found))

    def language_of(self, locale: str | None) -> str | None:
        """The file a locale reads: `pt-BR` -> `pt-br`, else `pt`; None when no file fits."""
        wanted = (locale or "").replace("_", "-").casefold()
        for language in (wanted, wanted.split("-")[0]):
            if language in self.by_language:
                return language
        return None

    def match(self, text: str, locale: str | None, policy: AnswersPolicy | None = None) -> Match | None:
        """The answer `text` asks for in the lead's language (every language when it has no file), or None."""
        policy = policy or self.policy
        language = self.language_of(locale)
        scores = (self.index(language) if language else self.everywhere).scores(text)
        best = ranked(scores)[:2]
        if not best or best[0][1] < policy.threshold:
            return None
        if len(best) > 1 and best[0][1] - best[1][1] < policy.margin:
            return None  # two answers fit about as well: a person decides
        label, score = best[0]
        of, name = (language, label) if language else label.split(":", 1)  # the all-languages index: `ru:pricing`
        return Match(self.by_language[of][name], score)

    def render(self, found: Match, lead: dict[str, Any]) -> str | None:
        """The answer's text for a lead's context, or None (logged) when its template fails: never sent raw."""
        try:
            return found.answer.template.render(lead=lead).strip() or None
        except TemplateError as exc:
            log.error("quick answer not sent: %s: %s", found.answer.where, exc)
            return None

    def reply(self, lead: Lead, text: str) -> tuple[str, list[dict[str, str]]] | None:
        """The bot's quick answer to `text` from `lead`: (rendered text, buttons for Delivery.buttons), or None.

        None when no answer matches (the message goes to a person: the inbox) or the matched answer does not
        render. Intake sends the pair as a reply: `if (quick := answers.reply(lead, text)) is not None:`
        `text, buttons = quick`. A button offers a person: it is one of `handoff.buttons`, so pressing it
        opens a handoff.
        """
        found = self.match(text, lead.locale)
        rendered = self.render(found, lead_context(lead)) if found is not None else None
        if rendered is None:
            return None
        return rendered, [{"type": "reply", "text": label} for label in found.answer.buttons]


def answer_files(templates: Path) -> list[Path]:
    """`_answers/*.toml` under a templates folder, one per language."""
    return sorted((Path(templates) / FOLDER).glob("*.toml"))


def load_answers(templates: Path, policy: AnswersPolicy = AnswersPolicy(), buttons: Sequence[str] = ()) -> Answers:
    """Every answers file of a templates folder; AnswersError naming file and line if any is broken.

    `buttons`: the labels that open a handoff (`handoff.buttons`); an answer's button must be one of them.
    """
    answers, problems, small_talk = [], [], []
    for path in answer_files(templates):
        found, wrong, talk = read_answers(path, templates, buttons)
        answers.extend(found)
        problems.extend(wrong)
        small_talk.extend(talk)
    if problems:
        raise AnswersError(problems)
    return Answers(answers, policy, small_talk)


def read_answers(path: Path, templates: Path, buttons: Sequence[str]) -> tuple[list[Answer], list[Problem], list[str]]:
    """One language file's answers, its problems (with their lines) and its small-talk phrases."""
    try:
        source = path.read_text(encoding="utf-8")
        data = tomllib.loads(source)
    except (OSError, UnicodeDecodeError) as exc:
        return [], [Problem(str(path), 1, f"cannot be read: {exc}")], []
    except tomllib.TOMLDecodeError as exc:
        line = _TOML_LINE.search(str(exc))
        return [], [Problem(str(path), int(line.group(1)) if line else 1, f"not valid TOML: {exc}")], []
    reader = _Reader(path, _environment(templates), tuple(buttons))
    problems = [reader.problem(1, f"unknown key {key!r} (expected [[answer]] tables)") for key in set(data) - TOP_KEYS]
    talk = data.get("small_talk", [])
    if not isinstance(talk, list) or not all(isinstance(each, str) and bare(each) for each in talk):
        problems.append(reader.problem(_key_line(source, "small_talk"), "small_talk: a list of phrases"))
        talk = []
    tables = data.get("answer", [])
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        return [], [*problems, reader.problem(1, "`answer` must be [[answer]] tables")], talk
    lines = [number for number, text in enumerate(source.split("\n"), 1) if text.strip() == "[[answer]]"]
    answers: dict[str, Answer] = {}
    for number, table in enumerate(tables):
        line = lines[number] if number < len(lines) else 1
        answer, wrong = reader.answer(table, line, _text_line(source, line))
        if answer is not None and answer.name in answers:
            wrong = [reader.problem(line, f"answer {answer.name!r} is defined twice")]
        problems.extend(wrong)
        if answer is not None and not wrong:
            answers[answer.name] = answer
    return list(answers.values()), problems, talk


def bare(text: str) -> str:
    """Lower case, letters and digits only, single spaces: what small talk is matched on."""
    kept = (char if unicodedata.category(char)[0] in "LN" else " " for char in text.casefold())
    return " ".join("".join(kept).split())


def _key_line(source: str, key: str) -> int:
    """The line a top-level key is set on (1 when not found)."""
    found = re.search(rf"^{re.escape(key)}\s*=", source, re.MULTILINE)
    return source.count("\n", 0, found.start()) + 1 if found else 1


@dataclass(frozen=True)
class _Reader:
    """Checks the `[[answer]]` tables of one file."""

    path: Path
    env: ImmutableSandboxedEnvironment
    buttons: tuple[str, ...]  # handoff.buttons; empty: not checked

    def problem(self, line: int, message: str) -> Problem:
        return Problem(str(self.path), line, message)

    def answer(self, table: dict, line: int, text_line: int) -> tuple[Answer | None, list[Problem]]:
        """One table checked: its keys and values, its text compiled and rendered with a sample lead."""
        named = f"answer {table.get('name', '?')!r}: "
        if (wrong := self.shape_problem(table)) is not None:
            return None, [self.problem(line, named + wrong)]
        try:
            template = template_from_string(self.env, table["text"])
            template.render(lead=sample_lead())
        except TemplateError as exc:
            at = text_line + error_location(exc, "<template>", 1)[1] - 1  # the text's own line, in the file
            return None, [self.problem(at, f"{named}`text`: {describe(exc)}")]
        questions, labels = tuple(table["questions"]), tuple(table.get("buttons", ()))
        return Answer(table["name"], self.path.stem, questions, template, labels, f"{self.path}:{line}"), []

    def shape_problem(self, table: dict) -> str | None:
        """What is wrong with a table's keys and values, if anything."""
        if unknown := sorted(set(table) - KEYS):
            return f"unknown key {unknown[0]!r} (keys: {', '.join(sorted(KEYS))})"
        name, questions, text, labels = (table.get(key) for key in ("name", "questions", "text", "buttons"))
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            return "`name` must be a short lower-case name like `pricing`"
        if (
            not isinstance(questions, list)
            or not questions
            or not all(isinstance(q, str) and q.strip() for q in questions)
        ):
            return "`questions` must be a list of question variants"
        if not isinstance(text, str) or not text.strip():
            return "`text` must be the answer's text"
        if not isinstance(labels or [], list) or not all(isinstance(label, str) for label in labels or []):
            return "`buttons` must be a list of button labels"
        allowed = {label.casefold() for label in self.buttons}
        odd = [label for label in labels or [] if self.buttons and label.casefold() not in allowed]
        return (
            f"button {odd[0]!r} opens no handoff: use one of handoff.buttons ({', '.join(self.buttons)})"
            if odd
            else None
        )


def _text_line(source: str, table_line: int) -> int:
    """The line where the `text` of the table starting at `table_line` begins (its first line of text)."""
    rows = source.split("\n")
    for number in range(table_line, len(rows)):
        row = rows[number].strip()
        if row == "[[answer]]":
            break
        if row.startswith("text"):
            opened = row.split("=", 1)[-1].strip()
            return number + 2 if opened in ('"""', "'''") else number + 1
    return table_line


def _environment(templates: Path) -> ImmutableSandboxedEnvironment:
    """The sandbox answers render in, as the bot's own messages do (partials load from the templates folder)."""
    return ImmutableSandboxedEnvironment(
        loader=FileSystemLoader(templates), undefined=StrictUndefined, bytecode_cache=compiled("answers")
    )
