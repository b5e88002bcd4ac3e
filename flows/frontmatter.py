"""A flow file's TOML front matter between `+++` lines: split off, parsed and checked key by key."""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from flows.durations import Delay, parse_delay
from flows.expressions import ExpressionError
from flows.spec import EVENT_TRIGGERS, REACTIVE_EXITS, ExitRule, Expression, Problem, Trigger

FENCE = "+++"
KEYS = ("name", "trigger", "when", "exit", "reenter", "audience", "goal")
_TOML_WHERE = re.compile(r"\s*\(at (?:line (\d+), column \d+|end of document)\)\s*$")
_STAGE_EXIT = re.compile(r"^stage\s*(>=|==|>)\s*([\w-]+)$")
_SCORE = re.compile(r"^score\s*>=\s*(-?\d+(?:\.\d+)?)$")
_LIKELIHOOD = re.compile(r"^likelihood\s*>=\s*(-?\d+(?:\.\d+)?)$")
_WORD = re.compile(r"^[a-z][\w-]*$")
_EXIT_WORDS = (
    f"reply, handoff, opt_out, stage >= <stage>, an event type ({', '.join(EVENT_TRIGGERS)}), "
    "custom:<name>, stage:<stage>, score >= N, likelihood >= N, or an expression like \"'vip' in lead.tags\""
)


@dataclass(frozen=True)
class Header:
    """The front matter's values, typed; `lines` says where each key was written."""

    name: str
    trigger: Trigger
    when: Expression | None = None
    exits: tuple[ExitRule, ...] = ()
    reenter: Delay | None = None
    audience: Expression | None = None
    goal: str | None = None
    lines: dict[str, int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Split:
    """A flow file cut in two: front matter text (from line `first`) and the Jinja body, same line numbers."""

    front: str | None
    first: int
    body: str


def split_front_matter(text: str) -> Split:
    """Cut the front matter off, blanking its lines in the body so Jinja's line numbers match the file."""
    lines = text.split("\n")
    opening = next((i for i, line in enumerate(lines) if line.strip()), None)
    if opening is None or lines[opening].strip() != FENCE:
        return Split(None, 1, text)
    closing = next((i for i in range(opening + 1, len(lines)) if lines[i].strip() == FENCE), None)
    if closing is None:
        return Split(None, opening + 1, text)
    front = "\n".join(lines[opening + 1 : closing])
    return Split(front, opening + 2, "\n".join([""] * (closing + 1) + lines[closing + 1 :]))


def read_header(text: str, file: str, stages: tuple[str, ...]) -> tuple[Header | None, list[Problem]]:
    """Parse and check a flow's front matter; the Header is None when anything is wrong."""
    split = split_front_matter(text)
    if split.front is None:
        why = "front matter is never closed" if text.lstrip().startswith(FENCE) else "no front matter"
        hint = "start the file with a +++ line, TOML settings (name, trigger, ...), and another +++ line"
        return None, [Problem(file, split.first, f"{why}: {hint}")]
    try:
        table = tomllib.loads(split.front)
    except tomllib.TOMLDecodeError as exc:
        return None, [_toml_problem(exc, file, split.front, split.first)]
    checker = _Checker(file, stages, _key_lines(split.front, split.first))
    return checker.header(table), checker.problems


def _toml_problem(exc: tomllib.TOMLDecodeError, file: str, front: str, first: int) -> Problem:
    message = str(exc)
    where = _TOML_WHERE.search(message)
    at = int(where.group(1)) if where and where.group(1) else len(front.rstrip("\n").split("\n"))
    line = first + at - 1
    return Problem(file, line, f"front matter is not valid TOML: {_TOML_WHERE.sub('', message)}")


def _key_lines(front: str, first: int) -> dict[str, int]:
    lines: dict[str, int] = {}
    for number, line in enumerate(front.split("\n"), start=first):
        match = re.match(r"""^\s*["']?([\w-]+)["']?\s*=""", line)
        if match:
            lines.setdefault(match.group(1), number)
    return lines


class _Checker:
    """Turns a TOML table into a Header, collecting a Problem per bad key."""

    def __init__(self, file: str, stages: tuple[str, ...], lines: dict[str, int]) -> None:
        self.file, self.stages, self.lines = file, stages, lines
        self.problems: list[Problem] = []

    def fail(self, key: str, message: str) -> None:
        """Record a problem at the line where `key` is written."""
        self.problems.append(Problem(self.file, self.lines.get(key, min(self.lines.values(), default=1)), message))

    def header(self, table: dict[str, Any]) -> Header | None:
        """Check every key; a Header only when all are good."""
        for key in table:
            if key not in KEYS:
                close = difflib.get_close_matches(key, KEYS, n=1)
                hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(KEYS)}"
                self.fail(key, f"unknown key `{key}`: {hint}")
        name = self.text(table, "name", required=True)
        trigger = self.parse(table, "trigger", self.trigger, required=True)
        values = {
            "when": self.parse(table, "when", self.expression),
            "exits": tuple(self.exits(table.get("exit", []))),
            "reenter": self.parse(table, "reenter", _reenter),
            "audience": self.parse(table, "audience", self.expression),
            "goal": self.parse(table, "goal", self.stage),
        }
        self.audience_rules(trigger, values["audience"], "audience" in table)
        if self.problems or name is None or trigger is None:
            return None
        return Header(name=name, trigger=trigger, lines=self.lines, **values)

    def text(self, table: dict[str, Any], key: str, required: bool = False) -> str | None:
        """A string value; a problem when missing (if required) or not text."""
        value = table.get(key)
        if value is None:
            if required:
                self.fail(key, f"`{key}` is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"`{key}` must be non-empty text in quotes")
            return None
        return value.strip()

    def parse(self, table: dict[str, Any], key: str, parser: Any, required: bool = False) -> Any:
        """A string value run through `parser`; its ValueError becomes a problem at the key's line."""
        value = self.text(table, key, required)
        if value is None:
            return None
        try:
            return parser(value)
        except ValueError as exc:
            self.fail(key, f"`{key}`: {exc}")
            return None

    def expression(self, source: str) -> Expression:
        """A Jinja expression; a syntax error raises ValueError."""
        try:
            return Expression.compile(source)
        except ExpressionError as exc:
            raise ValueError(f"bad expression {exc}") from exc

    def stage(self, name: str) -> str:
        """A known stage name."""
        if name not in self.stages:
            raise ValueError(f"unknown stage {name!r} (stages are {', '.join(self.stages)})")
        return name

    def trigger(self, source: str) -> Trigger:
        """Parse a trigger: event type, `stage:X`, `stuck:X:7d`, `score >= N`, `likelihood >= N`, `schedule:<cron>`."""
        kind, _, rest = source.partition(":")
        if source in EVENT_TRIGGERS or (kind == "custom" and _WORD.match(rest)):
            return Trigger("event", source, event=kind, name=rest or None)
        if kind == "stage":
            return Trigger("stage", source, stage=self.stage(rest))
        if kind == "stuck":
            stage, _, after = rest.partition(":")
            return Trigger("stuck", source, stage=self.stage(stage), after=parse_delay(after))
        if kind == "schedule":
            CronTrigger.from_crontab(rest, timezone="UTC")
            return Trigger("schedule", source, cron=rest)
        score = _SCORE.match(source)
        if score:
            return Trigger("score", source, threshold=float(score.group(1)))
        likely = _LIKELIHOOD.match(source)
        if likely:
            return Trigger("likelihood", source, threshold=float(likely.group(1)))
        raise ValueError(
            f"unknown trigger {source!r}: use an event type ({', '.join(EVENT_TRIGGERS)}, custom:<name>), "
            "stage:<stage>, stuck:<stage>:<duration>, score >= N, likelihood >= N or schedule:<cron>"
        )

    def exits(self, value: Any) -> list[ExitRule]:
        """The `exit` list: reply, handoff, opt_out, `stage >= X`, what triggers accept, or expressions."""
        entries = [value] if isinstance(value, str) else value
        if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
            self.fail("exit", '`exit` must be a list of texts, like ["reply", "stage >= sql"]')
            return []
        rules = []
        for entry in entries:
            try:
                rules.append(self.exit_rule(entry.strip()))
            except ValueError as exc:
                self.fail("exit", f"`exit` {entry!r}: {exc}")
        return rules

    def exit_rule(self, entry: str) -> ExitRule:
        """One exit condition."""
        if entry in REACTIVE_EXITS:
            return ExitRule(entry, entry)
        stage = _STAGE_EXIT.match(entry)
        if stage:
            return ExitRule("stage", entry, op=stage.group(1), stage=self.stage(stage.group(2)))
        kind, colon, rest = entry.partition(":")
        if entry in EVENT_TRIGGERS or (colon and kind in ("custom", "stage", "stuck", "schedule")):
            return self.event_exit(entry, kind, rest)
        score = _SCORE.match(entry)
        if score:
            return ExitRule("expression", entry, expression=self.expression(f"lead.score >= {score.group(1)}"))
        likely = _LIKELIHOOD.match(entry)
        if likely:  # a lead no model has scored yet has no likelihood: it never matches
            held = f"lead.likelihood is not none and lead.likelihood >= {likely.group(1)}"
            return ExitRule("expression", entry, expression=self.expression(held))
        if re.fullmatch(r"[a-z_]+", entry) and entry not in ("true", "false"):
            raise ValueError(f"unknown exit: use {_EXIT_WORDS}")
        try:
            return ExitRule("expression", entry, expression=self.expression(entry))
        except ValueError as exc:
            raise ValueError(f"{exc} (an exit is {_EXIT_WORDS})") from exc

    def event_exit(self, entry: str, kind: str, rest: str) -> ExitRule:
        """An exit in the trigger vocabulary: an event type, `custom:<name>` or `stage:<stage>`."""
        if kind == "stage":
            return ExitRule("event", entry, event="stage_changed", stage=self.stage(rest))
        if kind in ("stuck", "schedule"):
            raise ValueError(f"{kind}: is a trigger only; an exit is {_EXIT_WORDS}")
        if kind == "custom" and rest and not _WORD.match(rest):
            raise ValueError(f"custom event {rest!r}: use lowercase letters, digits, - and _, like custom:purchase")
        return ExitRule("event", entry, event=kind, name=rest or None)

    def audience_rules(self, trigger: Trigger | None, audience: Expression | None, given: bool) -> None:
        """`audience` is required by schedule triggers and meaningless elsewhere."""
        if trigger is None:
            return
        if trigger.kind == "schedule" and not given:
            self.fail("trigger", "a schedule: trigger needs an `audience` expression (who gets the broadcast)")
        if trigger.kind != "schedule" and given:
            self.fail("audience", "`audience` is only for schedule: triggers; use `when` to filter other triggers")


def _reenter(source: str) -> Delay | None:
    if source == "never":
        return None
    if source.startswith("after "):
        return parse_delay(source[len("after ") :])
    raise ValueError(f'use "never" or "after <duration>" like "after 30d", not {source!r}')
