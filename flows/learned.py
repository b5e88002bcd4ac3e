"""Learned scoring: what a lead looked like at its cut-off, as factors, and a fitted model's reading of them.

A lead's **cut-off** is `window` after it arrived (or now, for a younger lead). Its factors count only what
happened before the cut-off; its outcome is whether it reached the goal stage within `horizon` after it. The
fit itself (scikit-learn, the optional `kindling[scoring]` extra) is in flows/learned_fit.py; this module needs
nothing beyond the standard library, so the server can explain and score one lead without the extra.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from storage.learned import History

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

HOURS = (("night", 0), ("morning", 6), ("afternoon", 12), ("evening", 18))  # UTC hour each part of the day starts
FIRST_MESSAGE = ((300, "within 5 minutes"), (3600, "within an hour"), (86400, "within a day"), (None, "later"))
INSTALL = 'learned scoring needs scikit-learn: pip install "kindling[scoring]" (or: pip install scikit-learn)'


@dataclass(frozen=True)
class LearnedScoring:
    """`[scoring]` goal, horizon, window and min_outcomes: what success is and when it is measured."""

    goal: str = "customer"
    horizon: timedelta = timedelta(days=30)
    window: timedelta = timedelta(days=7)
    min_outcomes: int = 50


@dataclass(frozen=True)
class Factor:
    """One factor of one lead: how many times, the model's weight, and the points it adds to the likelihood."""

    name: str
    count: float
    weight: float
    points: int

    @property
    def text(self) -> str:
        """`+18 visited /pricing twice`."""
        return f"{self.points:+d} {describe(self.name, self.count)}"


def value(count: float) -> float:
    """A count as the model reads it: log(1 + n), so the second visit adds less than the first."""
    return math.log1p(count)


def probability(intercept: float, weights: Mapping[str, float], counts: Mapping[str, float]) -> float:
    """The model's chance of success for one lead's factor counts (factors it does not know add nothing)."""
    z = intercept + sum(weights.get(name, 0.0) * value(count) for name, count in counts.items())
    return _sigmoid(z)


def likelihood(intercept: float, weights: Mapping[str, float], counts: Mapping[str, float]) -> int:
    """The chance in whole percent, 0-100."""
    return round(100 * probability(intercept, weights, counts))


def explain(
    intercept: float, weights: Mapping[str, float], counts: Mapping[str, float], limit: int = 5
) -> list[Factor]:
    """The factors that move this lead's likelihood most, each with the points it would lose without it."""
    z = intercept + sum(weights.get(name, 0.0) * value(count) for name, count in counts.items())
    factors = []
    for name, count in counts.items():
        weight = weights.get(name, 0.0)
        if weight and count:
            points = round(100 * (_sigmoid(z) - _sigmoid(z - weight * value(count))))
            factors.append(Factor(name, count, weight, points))
    factors.sort(key=lambda factor: (-abs(factor.points), -abs(factor.weight)))
    return [factor for factor in factors if factor.points][:limit]


def explanation_text(factors: list[Factor]) -> str:
    """`+18 visited /pricing twice, +9 came from google/cpc, -7 no reply to 2 steps`."""
    return ", ".join(factor.text for factor in factors) or "nothing stands out"


def describe(name: str, count: float | None = None) -> str:
    """A factor in words: `page:/pricing` seen twice is `visited /pricing twice` (no count: `visited /pricing`)."""
    kind, _, subject = name.partition(":")
    n = None if count is None else int(count)
    phrases = {
        "page": lambda: f"visited {subject} {_times(n)}",
        "event": lambda: _event_words(subject, n),
        "custom": lambda: f"{subject} {_times(n)}",
        "from": lambda: f"came from {subject}",
        "campaign": lambda: f"campaign {subject}",
        "channel": lambda: f"came through {subject}",
        "locale": lambda: f"speaks {subject}",
        "flow": lambda: f"got {_times(n, 'step')} of {subject}",
        "step": lambda: f"got step {subject}",
        "replied": lambda: f"replied to {_times(n, 'step')}",
        "no_reply": lambda: f"no reply to {_times(n, 'step')}",
        "first_message": lambda: f"first wrote {subject}",
        "handoff": lambda: f"a handoff closed {subject}" if subject else f"handed to a human {_times(n)}",
        "hour": lambda: f"active {'at night' if subject == 'night' else 'in the ' + subject} (UTC) {_times(n)}",
        "weekend": lambda: f"active at weekends {_times(n)}",
    }
    return phrases[kind]().strip() if kind in phrases else name


def _event_words(kind: str, n: int | None) -> str:
    """`wrote 2 messages`, `pressed 1 button`, `opt out once`."""
    if kind == "message":
        return f"wrote {_times(n, 'message')}"
    if kind == "button":
        return f"pressed {_times(n, 'button')}"
    return f"{kind.replace('_', ' ')} {_times(n)}"


def _times(n: int | None, noun: str | None = None) -> str:
    """`twice`, `2 steps`; without a count (a factor across leads) `` and `steps`."""
    if noun is not None:
        return f"{noun}s" if n is None else f"{n} {noun}" + ("" if n == 1 else "s")
    return "" if n is None else {1: "once", 2: "twice"}.get(n, f"{n} times")


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class FactorCounts:
    """Factor counts per lead, filled from storage/learned.py's rows; `rows` maps lead id -> {factor: count}."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, float]] = {}
        self.arrivals: dict[int, tuple[float, float | None]] = {}
        self.points: dict[int, float] = {}

    def start(self, lead_id: int) -> None:
        """A lead to count factors for; factors of leads not started are left out."""
        self.rows.setdefault(lead_id, {})

    def arrived(self, lead_id: int, created: float, goal_at: float | None) -> None:
        """When a lead arrived and first reached the goal stage (seconds since 1970; None: never)."""
        self.arrivals[lead_id] = (created, goal_at)

    def rule_points(self, lead_id: int, points: float) -> None:
        """The rule score's points the lead had earned by its cut-off (not faded: the baseline)."""
        self.points[lead_id] = points

    def add(self, lead_id: int, name: str, count: float = 1) -> None:
        """Count `count` more of a factor for a lead."""
        mine = self.rows.get(lead_id)
        if count and mine is not None:
            mine[name] = mine.get(name, 0) + count

    def lead(self, lead_id: int, source: str | None, medium: str | None, campaign: str | None, channel: str | None,
             locale: str | None) -> None:  # fmt: skip
        """What a lead is from its arrival: first-touch source/medium and campaign, channel, language."""
        self.start(lead_id)
        if source or medium:
            self.add(lead_id, f"from:{(source or '(none)').lower()}/{(medium or '(none)').lower()}")
        if campaign:
            self.add(lead_id, f"campaign:{campaign.lower()}")
        if channel:
            self.add(lead_id, f"channel:{channel}")
        if locale:
            self.add(lead_id, f"locale:{locale.split('-')[0].split('_')[0].lower()}")

    def events(self, lead_id: int, kind: str, name: str | None, path: str | None, count: int, hours: list[int],
               weekend: int, first_seconds: float | None) -> None:  # fmt: skip
        """One group of a lead's events before its cut-off: of a type (a custom one's name, a page's path)."""
        if kind == "custom" and name:
            self.add(lead_id, f"custom:{name}", count)
        elif kind == "page_view" and path is not None:
            self.add(lead_id, f"page:{path_prefix(path)}", count)
        else:
            self.add(lead_id, f"event:{kind}", count)
        for (part, _), times in zip(HOURS, hours, strict=True):
            self.add(lead_id, f"hour:{part}", times)
        self.add(lead_id, "weekend", weekend)
        if kind == "message" and first_seconds is not None:
            label = next(label for limit, label in FIRST_MESSAGE if limit is None or first_seconds < limit)
            self.add(lead_id, f"first_message:{label}")

    def steps(self, lead_id: int, flow: str | None, step: str | None, count: int, replied: int) -> None:
        """Nurture steps a lead got before its cut-off, and how many of them it replied to before it."""
        if flow:
            self.add(lead_id, f"flow:{flow}", count)
            if step:
                self.add(lead_id, f"step:{flow}/{step}", count)
        self.add(lead_id, "replied", replied)
        self.add(lead_id, "no_reply", count - replied)

    def handoffs(self, lead_id: int, outcome: str | None, count: int) -> None:
        """Handoffs asked for before the cut-off, and the outcome of those closed before it."""
        self.add(lead_id, "handoff", count)
        if outcome:
            self.add(lead_id, f"handoff:{outcome}", count)


def path_prefix(path: str) -> str:
    """A page's first path segment: `/pricing/team?x=1` is `/pricing`."""
    first = path.split("?", 1)[0].split("#", 1)[0].strip("/").split("/", 1)[0]
    return "/" + first.lower()


async def gather(history: History, counts: FactorCounts) -> FactorCounts:
    """Count every lead's factors as of its cut-off from the database's history."""
    async with history:
        await _gather(history, counts)
    return counts


async def _gather(history: History, counts: FactorCounts) -> None:
    async for part in history.rows("leads"):
        for lead_id, created, source, medium, campaign, channel, locale, goal_at in part:
            counts.lead(lead_id, source, medium, campaign, channel, locale)
            counts.arrived(lead_id, float(created), None if goal_at is None else float(goal_at))
    async for part in history.rows("events"):
        for row in part:
            first = None if row[10] is None else float(row[10])
            counts.events(row[0], row[1], row[2], row[3], row[4], [int(n) for n in row[5:9]], int(row[9]), first)
    async for part in history.rows("steps"):
        for lead_id, flow, step, count, replied in part:
            counts.steps(lead_id, flow, step, count, int(replied or 0))
    async for part in history.rows("handoffs"):
        for lead_id, outcome, count in part:
            counts.handoffs(lead_id, outcome, count)
    async for part in history.rows("points"):
        for lead_id, points in part:
            counts.rule_points(lead_id, float(points or 0))


async def explain_lead(
    url: str, model: ScoredBy, lead_id: int, now: datetime, limit: int = 5, connection: AsyncConnection | None = None
) -> Explained | None:
    """One lead's likelihood from a stored model and the factors that move it most; None if no such lead.

    With `connection` (a page's own session) it reads there, not on a connection of its own.
    """
    window = timedelta(seconds=model.window_seconds)
    counts = await gather(History(url, model.goal, window, now, lead_id, connection), FactorCounts())
    if lead_id not in counts.rows:
        return None
    mine = counts.rows[lead_id]
    _, goal_at = counts.arrivals[lead_id]
    reached = goal_at is not None and goal_at <= now.timestamp()
    chance = 100 if reached else likelihood(model.intercept, model.weights, mine)
    return Explained(lead_id, chance, explain(model.intercept, model.weights, mine, limit), mine)


class ScoredBy(Protocol):
    """What explaining needs of a stored model (storage.models.ScoringModel)."""

    goal: str
    window_seconds: int
    intercept: float
    weights: dict
    counts: dict


@dataclass(frozen=True)
class Weighed:
    """A factor across all leads: the model's weight, and how many of the leads it learned from have it."""

    name: str
    weight: float
    leads: int

    @property
    def text(self) -> str:
        """`visited /pricing`."""
        return describe(self.name)


def top_factors(model: ScoredBy, limit: int = 10) -> tuple[list[Weighed], list[Weighed]]:
    """The `limit` factors that most raise success (largest weights first) and most lower it (most negative first)."""
    ranked = [Weighed(name, weight, int(model.counts.get(name, 0))) for name, weight in model.weights.items()]
    ranked.sort(key=lambda factor: factor.weight, reverse=True)
    raising = [factor for factor in ranked[:limit] if factor.weight > 0]
    return raising, [factor for factor in ranked[::-1][:limit] if factor.weight < 0]


@dataclass(frozen=True)
class Explained:
    """A lead's likelihood, its top factors, and every factor it has."""

    lead_id: int
    likelihood: int
    factors: list[Factor]
    counts: dict[str, float]
