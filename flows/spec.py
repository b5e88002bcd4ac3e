"""What a flow file says, as typed values: FlowSpec, its steps, trigger, exits and actions."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from jinja2 import Template

from flows.durations import Delay
from flows.expressions import Predicate, compile_predicate
from flows.stages import Stages
from flows.whatsapp_rules import TemplateStep

EVENT_TRIGGERS = ("message", "page_view", "button", "contact_shared", "custom", "start")
CHANNELS = ("webchat", "telegram", "webhook", "email", "whatsapp", "messenger", "instagram")
REACTIVE_EXITS = ("reply", "handoff", "opt_out")


@dataclass(frozen=True, order=True)
class Problem:
    """Something wrong in a flow file, at a line."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class FlowError(ValueError):
    """A flow file that cannot be loaded; carries every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


@dataclass(frozen=True)
class Expression:
    """A Jinja expression over `lead`, `event` and `now`; false when it fails at run time."""

    source: str
    predicate: Predicate = field(compare=False, repr=False)

    @classmethod
    def compile(cls, source: str) -> Expression:
        """Compile `source`; raise flows.expressions.ExpressionError on a syntax error."""
        return cls(source, compile_predicate(source))

    def holds(self, **context: Any) -> bool:
        """Evaluate with `lead=..., event=..., now=...`."""
        return self.predicate(**context)


@dataclass(frozen=True)
class Trigger:
    """What enrolls a lead: kind is `event`, `stage`, `stuck`, `score`, `likelihood` or `schedule`."""

    kind: str
    source: str
    event: str | None = None
    name: str | None = None
    stage: str | None = None
    after: Delay | None = None
    threshold: float | None = None
    cron: str | None = None

    def matches_event(self, event_type: str, event_name: str | None = None) -> bool:
        """Whether an event of this type (and custom name) may enroll a lead."""
        if self.kind != "event" or self.event != event_type:
            return False
        return self.name is None or self.name == event_name


@dataclass(frozen=True)
class ExitRule:
    """Why a lead leaves a flow: `reply`, `handoff`, `opt_out`, `stage` (op, stage), `event` (the trigger
    vocabulary: event type and custom name, or `stage_changed` to a stage) or `expression`."""

    kind: str
    source: str
    op: str | None = None
    stage: str | None = None
    expression: Expression | None = None
    event: str | None = None
    name: str | None = None

    def matches_event(self, event_type: str, event_name: str | None, moved_to: str | None = None) -> bool:
        """For an `event` rule: whether this event (a custom one's name; a stage change's new stage) ends the flow."""
        if self.kind != "event" or self.event != event_type:
            return False
        if event_type == "stage_changed":
            return moved_to == self.stage
        return self.name is None or self.name == event_name

    def stage_reached(self, stages: Stages, current: str) -> bool:
        """For a `stage` rule: whether a lead at stage `current` has left."""
        if self.kind != "stage" or self.stage is None:
            return False
        have, want = stages.rank(current), stages.rank(self.stage)
        return {">=": have >= want, ">": have > want, "==": have == want}[self.op or ">="]


@dataclass(frozen=True)
class Action:
    """What a step does besides talking: `handoff`, `exit`, `stage`, `tag` or `score` (with value)."""

    kind: str
    value: str | float | None = None


@dataclass(frozen=True)
class StepSpec:
    """One `{% step %}` block (one variant of a step)."""

    name: str
    line: int
    delay: Delay
    when: Expression | None = None
    channels: tuple[str, ...] = ()  # in order of preference; empty: wherever the lead can receive it now
    buttons: tuple[str, ...] = ()
    action: Action | None = None
    variant: str | None = None
    locale: str | None = None  # the language this block translates its step into (`ru`); None: the default block
    subject: str | None = None  # an email's subject, Jinja like the body
    whatsapp: TemplateStep | None = None  # the WhatsApp template it goes as outside the 24-hour window

    @property
    def may_whatsapp(self) -> bool:
        """Whether the step can go to WhatsApp (it names it, or leaves the channel to the engine)."""
        return not self.channels or "whatsapp" in self.channels

    @property
    def may_email(self) -> bool:
        """Whether the step can go by email (it names email, or leaves the channel to the engine)."""
        return not self.channels or "email" in self.channels

    @property
    def email_only(self) -> bool:
        """Whether the step goes by email or not at all (its text may then be longer than a chat's)."""
        return self.channels == ("email",)


@dataclass(frozen=True)
class FlowSpec:
    """A parsed, checked flow file, pinned by `version` (a hash of its text)."""

    slug: str
    path: Path
    name: str
    trigger: Trigger
    steps: tuple[StepSpec, ...]
    version: str
    source: str = field(repr=False)
    template: Template = field(compare=False, repr=False)
    when: Expression | None = None
    exits: tuple[ExitRule, ...] = ()
    reenter: Delay | None = None
    audience: Expression | None = None
    goal: str | None = None

    @cached_property
    def step_names(self) -> tuple[str, ...]:
        """Step names in order, each once (variants share a name); computed once, as a spec never changes."""
        return tuple(dict.fromkeys(step.name for step in self.steps if step.locale is None))

    @cached_property
    def _blocks(self) -> dict[str, tuple[StepSpec, ...]]:
        defaults = [step for step in self.steps if step.locale is None]
        return {name: tuple(step for step in defaults if step.name == name) for name in self.step_names}

    @cached_property
    def _translations(self) -> dict[tuple[str, str | None, str], StepSpec]:
        return {(step.name, step.variant, step.locale): step for step in self.steps if step.locale is not None}

    def variants(self, step_name: str, locale: str | None = None) -> tuple[StepSpec, ...]:
        """Every A/B variant of a step (one block, or several), each in `locale` where the flow has it so."""
        blocks = self._blocks.get(step_name, ())
        if locale is None:
            return blocks
        return tuple(self._translations.get((step_name, block.variant, locale), block) for block in blocks)

    def step_for(self, step_name: str, lead_id: int | str, locale: str | None = None) -> StepSpec:
        """The variant of a step this lead gets, in its language (`locale`) when the flow has one; KeyError if
        the flow has no such step. The A/B choice is the same in every language."""
        blocks = self.variants(step_name, locale)
        if not blocks:
            raise KeyError(f"flow {self.slug!r} has no step {step_name!r}")
        if len(blocks) == 1:
            return blocks[0]
        chosen = choose_variant(lead_id, self.slug, step_name, [block.variant or "" for block in blocks])
        return next(block for block in blocks if block.variant == chosen)

    def exits_on(self, kind: str) -> bool:
        """Whether the flow ends on `reply`, `handoff` or `opt_out`."""
        return any(rule.kind == kind for rule in self.exits)


def choose_variant(lead_id: int | str, flow_slug: str, step_name: str, variants: Sequence[str]) -> str:
    """The variant a lead gets: a stable hash of lead, flow and step, so every process agrees."""
    if not variants:
        raise ValueError("no variants to choose from")
    digest = hashlib.sha256(f"{flow_slug}\x1f{step_name}\x1f{lead_id}".encode()).digest()
    return variants[int.from_bytes(digest[:8], "big") % len(variants)]


def flow_version(text: str) -> str:
    """A flow file's version: the first 12 hex digits of the SHA-256 of its text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
