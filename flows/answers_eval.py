"""How well quick answers match: precision and recall on a labelled question set (bench/answers_eval.py).

A question set is TOML: per language, `[expected answer name, question]` pairs, "none" for a question a
person should answer. Precision: of the questions answered, how many got the right answer. Recall: of the
questions that have an answer, how many got it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from flows.answers import Answers, AnswersPolicy

NONE = "none"


@dataclass(frozen=True)
class Case:
    """One labelled question."""

    language: str
    expected: str
    text: str


@dataclass(frozen=True)
class Scores:
    """Counts over a set of cases, and the figures they give."""

    cases: int = 0
    answerable: int = 0
    matched: int = 0
    right: int = 0

    @property
    def precision(self) -> float:
        return self.right / self.matched if self.matched else 1.0

    @property
    def recall(self) -> float:
        return self.right / self.answerable if self.answerable else 1.0

    def __add__(self, other: Scores) -> Scores:
        return Scores(*(getattr(self, f) + getattr(other, f) for f in ("cases", "answerable", "matched", "right")))


def read_cases(path: Path) -> list[Case]:
    """The labelled questions of a question set file."""
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    return [Case(language, expected, text) for language, rows in data.items() for expected, text in rows]


def score(answers: Answers, cases: list[Case], policy: AnswersPolicy) -> dict[str, Scores]:
    """Scores per language, and `all` of them together."""
    found: dict[str, Scores] = {}
    for case in cases:
        match = answers.match(case.text, case.language, policy)
        one = Scores(1, case.expected != NONE, match is not None, match is not None and match.name == case.expected)
        found[case.language] = found.get(case.language, Scores()) + one
    found["all"] = sum(found.values(), Scores())
    return found


def misses(answers: Answers, cases: list[Case], policy: AnswersPolicy) -> list[tuple[Case, str]]:
    """The cases answered wrongly or left unanswered, with what was matched (`-` for nothing)."""
    wrong = []
    for case in cases:
        match = answers.match(case.text, case.language, policy)
        got = match.name if match is not None else NONE
        if got != case.expected:
            wrong.append((case, got if match is not None else "-"))
    return wrong
