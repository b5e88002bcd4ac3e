"""Points per event from configured rules, kept as a ledger, summed with decay, explained."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase

from flows.durations import parse_duration

_CAP = re.compile(r"^\s*(\d+)\s+per\s+(\S+)\s*$")


@dataclass(frozen=True)
class Cap:
    """A rule counts at most `times` in any `period` (`"3 per 1h"`): minor actions cannot add up to a warm lead."""

    times: int
    period: timedelta

    @classmethod
    def parse(cls, text: str) -> Cap:
        """`"3 per 1h"`; raise ValueError saying the form."""
        match = _CAP.match(str(text))
        if not match or int(match.group(1)) < 1:
            raise ValueError(f'bad cap {text!r}: use a count and a duration, like "3 per 1h"')
        return cls(int(match.group(1)), parse_duration(match.group(2)))


@dataclass(frozen=True)
class ScoreRule:
    """`points` for each event of type `event` whose subject matches the glob `match`."""

    name: str
    event: str
    points: float
    match: str | None = None
    cap: Cap | None = None

    def applies(self, event_type: str, event_name: str | None, subject: str | None) -> bool:
        """Whether an event earns this rule's points."""
        kind, _, wanted_name = self.event.partition(":")
        if kind != event_type or (wanted_name and wanted_name != event_name):
            return False
        if self.match is None:
            return True
        return subject is not None and fnmatchcase(subject.lower(), self.match.lower())


@dataclass(frozen=True)
class LedgerLine:
    """What the ledger says: a rule gave points at a time."""

    rule: str
    points: float
    at: datetime


@dataclass(frozen=True)
class Scoring:
    """The scoring rules and how fast points fade (`half_life` None: never)."""

    rules: tuple[ScoreRule, ...] = ()
    half_life: timedelta | None = None

    def earn(self, event_type: str, event_name: str | None, subject: str | None) -> list[ScoreRule]:
        """The rules an event earns points from."""
        return [rule for rule in self.rules if rule.applies(event_type, event_name, subject)]

    def within_caps(self, rules: list[ScoreRule], lines: list[LedgerLine], now: datetime) -> list[ScoreRule]:
        """The rules that may still give points now: a capped one has not counted `times` in its last `period`."""
        return [
            rule
            for rule in rules
            if rule.cap is None
            or sum(line.rule == rule.name and line.at > now - rule.cap.period for line in lines) < rule.cap.times
        ]

    def weight(self, line: LedgerLine, now: datetime) -> float:
        """A ledger line's points as they count at `now`."""
        if self.half_life is None:
            return line.points
        age = max((now - line.at).total_seconds(), 0.0)
        return line.points * math.pow(0.5, age / self.half_life.total_seconds())

    def score(self, lines: Iterable[LedgerLine], now: datetime) -> float:
        """The score at `now`, rounded to one decimal."""
        return round(sum(self.weight(line, now) for line in lines), 1)

    def explain(self, lines: Iterable[LedgerLine], now: datetime) -> list[dict]:
        """Reasons, biggest first: rule, how many times, points they count for now."""
        totals: dict[str, dict] = {}
        for line in lines:
            reason = totals.setdefault(line.rule, {"rule": line.rule, "times": 0, "points": 0.0})
            reason["times"] += 1
            reason["points"] += self.weight(line, now)
        reasons = sorted(totals.values(), key=lambda reason: -abs(reason["points"]))
        for reason in reasons:
            reason["points"] = round(reason["points"], 1)
        return reasons


def explanation_text(score: float, reasons: list[dict]) -> str:
    """`42 = pricing page x2 (+20), phone shared (+15)`."""
    if not reasons:
        return f"{_number(score)} = no points yet"
    parts = []
    for reason in reasons:
        times = f" x{reason['times']}" if reason["times"] > 1 else ""
        parts.append(f"{reason['rule']}{times} ({reason['points']:+g})")
    return f"{_number(score)} = " + ", ".join(parts)


def _number(value: float) -> str:
    return f"{value:g}"
