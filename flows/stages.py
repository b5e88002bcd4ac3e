"""Funnel stages: an ordered list and a Jinja rule per stage; leads only move forward by rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flows.expressions import Predicate, compile_predicate

DEFAULT_ORDER = ("visitor", "lead", "mql", "sql", "customer")


@dataclass(frozen=True)
class StageRule:
    """Enter `stage` when `source` (a Jinja expression over lead and event) is true."""

    stage: str
    source: str
    predicate: Predicate = field(compare=False, repr=False)


@dataclass(frozen=True)
class Stages:
    """The funnel: stage names in order, and the rules that move leads along it."""

    order: tuple[str, ...] = DEFAULT_ORDER
    rules: tuple[StageRule, ...] = ()

    @classmethod
    def build(cls, order: tuple[str, ...], rules: dict[str, str]) -> Stages:
        """Compile rules; raise ValueError naming an unknown stage or a bad expression."""
        compiled = []
        for stage, source in rules.items():
            if stage not in order:
                raise ValueError(f"rule for unknown stage {stage!r} (stages are {', '.join(order)})")
            compiled.append(StageRule(stage, source, compile_predicate(source)))
        return cls(order=order, rules=tuple(compiled))

    def rank(self, stage: str) -> int:
        """Position in the funnel; unknown stages rank first."""
        return self.order.index(stage) if stage in self.order else -1

    def advance(self, current: str, lead: Any, event: Any) -> StageRule | None:
        """The furthest stage beyond `current` whose rule holds, if any."""
        best: StageRule | None = None
        for rule in self.rules:
            if self.rank(rule.stage) <= self.rank(current):
                continue
            if best is not None and self.rank(rule.stage) <= self.rank(best.stage):
                continue
            if rule.predicate(lead=lead, event=event):
                best = rule
        return best
