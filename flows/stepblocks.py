"""The `{% step %}` blocks of a parsed flow: where they are, their literal options, checked."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from jinja2 import nodes

from flows.durations import parse_delay
from flows.expressions import ExpressionError
from flows.locales import is_code
from flows.render import step_call
from flows.spec import CHANNELS, Action, Expression, Problem, StepSpec
from flows.whatsapp_rules import TemplateStep

OPTIONS = (
    "after",
    "at",
    "when",
    "channel",
    "subject",
    "buttons",
    "action",
    "variant",
    "locale",
    "whatsapp_template",
    "whatsapp_language",
    "whatsapp_parameters",
)
MAX_BUTTON = 64
_TOP_LEVEL_OK = (nodes.Macro, nodes.Import, nodes.FromImport, nodes.Assign, nodes.AssignBlock)
_SCORE = re.compile(r"^score:([+-]\d+(?:\.\d+)?)$")
_TAG = re.compile(r"^[\w-]+$")


class NotLiteral(ValueError):
    """A step option written as an expression instead of a constant."""


def find_steps(tree: nodes.Template, file: str, stages: tuple[str, ...]) -> tuple[list[StepSpec], list[Problem]]:
    """Every top-level step of a flow, plus problems with structure, options and names."""
    problems: list[Problem] = []
    steps: list[StepSpec] = []
    top = [node for node in tree.body if step_call(node) is not None]
    top_ids = {id(node) for node in top}
    for node in tree.body:
        if id(node) in top_ids:
            step = _step(node, file, stages, problems)
            steps.extend([step] if step else [])
        elif not _harmless(node):
            why = "text or tags outside a {% step %} are never sent: move them into a step"
            problems.append(Problem(file, _first_line(node), why))
    for node in tree.find_all(nodes.If):
        if step_call(node) is not None and id(node) not in top_ids:
            problems.append(Problem(file, node.lineno, "a {% step %} must be at the top level, not inside another tag"))
    for node in tree.find_all(nodes.Extends):
        problems.append(
            Problem(file, node.lineno, "flows cannot {% extends %}: include a partial that extends inside a step")
        )
    if not top:
        problems.append(Problem(file, 1, 'no steps: add {% step "hello", after="10m" %}...{% endstep %}'))
    problems.extend(_name_problems(steps, file))
    return steps, problems


def _harmless(node: nodes.Node) -> bool:
    """Top-level nodes that define things or are blank, so nothing outside steps gets lost."""
    if isinstance(node, _TOP_LEVEL_OK):
        return True
    return isinstance(node, nodes.Output) and all(
        isinstance(part, nodes.TemplateData) and not part.data.strip() for part in node.nodes
    )


def _first_line(node: nodes.Node) -> int:
    """Where visible content starts: blank lines (like the blanked front matter) don't count."""
    for part in getattr(node, "nodes", []):
        if isinstance(part, nodes.TemplateData):
            if part.data.strip():
                return part.lineno + part.data[: len(part.data) - len(part.data.lstrip())].count("\n")
        else:
            return part.lineno
    return node.lineno


def _step(node: nodes.If, file: str, stages: tuple[str, ...], problems: list[Problem]) -> StepSpec | None:
    call = step_call(node)
    assert call is not None
    line = node.lineno
    name = call.args[1]
    if not isinstance(name, nodes.Const) or not isinstance(name.value, str) or not name.value.strip():
        problems.append(Problem(file, line, 'a step needs a name in quotes first: {% step "hello", after="10m" %}'))
        return None
    before = len(problems)
    options = _options(call.kwargs, file, line, problems)
    if "after" not in options and not any(p.line == line for p in problems[before:]):
        problems.append(Problem(file, line, f'step {name.value!r} needs after="..." (like after="10m" or "2d")'))
    if len(problems) > before:
        return None
    try:
        return _build(name.value, line, options, stages)
    except ValueError as exc:
        problems.append(Problem(file, line, f"step {name.value!r}: {exc}"))
        return None


def _options(keywords: list[nodes.Keyword], file: str, line: int, problems: list[Problem]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for keyword in keywords:
        where = keyword.lineno or line
        if keyword.key not in OPTIONS:
            problems.append(
                Problem(file, where, f"unknown step option `{keyword.key}` (options: {', '.join(OPTIONS)})")
            )
            continue
        try:
            options[keyword.key] = literal(keyword.value)
        except NotLiteral:
            hint = ' (write expressions in quotes: when="lead.score < 50")' if keyword.key == "when" else ""
            problems.append(Problem(file, where, f"step option `{keyword.key}` must be a constant{hint}"))
    return options


def literal(node: nodes.Expr) -> Any:
    """The value of a constant (text, number, list of them); NotLiteral for anything computed."""
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.List | nodes.Tuple):
        return [literal(item) for item in node.items]
    raise NotLiteral(type(node).__name__)


def _build(name: str, line: int, options: dict[str, Any], stages: tuple[str, ...]) -> StepSpec:
    """Check each option's value and make the StepSpec; ValueError names the first bad one."""
    return StepSpec(
        name=name,
        line=line,
        delay=parse_delay(_text(options, "after"), at=_text(options, "at", None)),
        when=_when(_text(options, "when", None)),
        channels=_channels(options.get("channel")),
        buttons=_buttons(options.get("buttons", [])),
        action=parse_action(_text(options, "action", None), stages),
        variant=_text(options, "variant", None),
        locale=_locale(_text(options, "locale", None)),
        subject=_subject(options),
        whatsapp=_whatsapp(options),
    )


def _text(options: dict[str, Any], key: str, *default: Any) -> Any:
    value = options.get(key, *default) if default else options[key]
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"`{key}` must be text in quotes")
    return value


def _when(source: str | None) -> Expression | None:
    if source is None:
        return None
    try:
        return Expression.compile(source)
    except ExpressionError as exc:
        raise ValueError(f"`when` is not a valid expression: {exc}") from exc


def _locale(code: str | None) -> str | None:
    """A step block's language: a code like `ru` or `zh`, as the language's folder in templates/_system/ is named."""
    if code is not None and not is_code(code):
        raise ValueError(f'`locale` {code!r} is not a language code: write it like locale="ru" or locale="zh"')
    return code


def _channels(value: Any) -> tuple[str, ...]:
    """`"email"` or `["webchat", "email"]` (in order of preference) as a tuple; empty when left out."""
    if value is None:
        return ()
    channels = [value] if isinstance(value, str) else value
    if not isinstance(channels, list) or not channels or len(set(map(str, channels))) != len(channels):
        raise ValueError('`channel` must be a channel or a list of different ones, like channel=["webchat", "email"]')
    for channel in channels:
        if channel not in CHANNELS:
            raise ValueError(
                f"unknown channel {channel!r}: use {', '.join(CHANNELS)}, or leave it out for the best one"
            )
    return tuple(channels)


def _subject(options: dict[str, Any]) -> str | None:
    """An email step's subject: required when the step names email, refused on a chat-only step."""
    subject, channels = _text(options, "subject", None), _channels(options.get("channel"))
    if subject is None and "email" in channels:
        raise ValueError('an email step needs a subject: subject="..." (text or Jinja, like the body)')
    if subject is not None and channels and "email" not in channels:
        raise ValueError('`subject` is only for email: add "email" to `channel`, or drop the subject')
    return subject


def _whatsapp(options: dict[str, Any]) -> TemplateStep | None:
    """A step's WhatsApp template: its name, and optionally its language and Jinja parameters."""
    name = _text(options, "whatsapp_template", None)
    if name is None:
        if "whatsapp_language" in options or "whatsapp_parameters" in options:
            raise ValueError("`whatsapp_language` and `whatsapp_parameters` need `whatsapp_template`")
        return None
    channels = _channels(options.get("channel"))
    if channels and "whatsapp" not in channels:
        raise ValueError('`whatsapp_template` is only for WhatsApp: add "whatsapp" to `channel`, or drop it')
    parameters = options.get("whatsapp_parameters", [])
    if not isinstance(parameters, list) or not all(isinstance(p, str) for p in parameters):
        raise ValueError("`whatsapp_parameters` must be a list of texts (Jinja), one per {{1}}, {{2}}... of its body")
    return TemplateStep(name, _text(options, "whatsapp_language", None), tuple(parameters))


def _buttons(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(b, str) and b.strip() for b in value):
        raise ValueError('`buttons` must be a list of texts, like buttons=["Yes", "Not now"]')
    too_long = [b for b in value if len(b) > MAX_BUTTON]
    if too_long:
        raise ValueError(f"button {too_long[0][:20]!r}... is longer than {MAX_BUTTON} characters")
    return tuple(value)


def parse_action(source: str | None, stages: tuple[str, ...]) -> Action | None:
    """`handoff`, `exit`, `stage:<name>`, `tag:<name>`, `score:+N` or `score:-N`; ValueError otherwise."""
    if source is None:
        return None
    kind, _, value = source.partition(":")
    if source in ("handoff", "exit"):
        return Action(source)
    if kind == "stage" and value in stages:
        return Action("stage", value)
    if kind == "tag" and _TAG.match(value):
        return Action("tag", value)
    score = _SCORE.match(source)
    if score:
        return Action("score", float(score.group(1)))
    if kind == "stage":
        raise ValueError(f"unknown stage {value!r} in action (stages are {', '.join(stages)})")
    raise ValueError(f"unknown action {source!r}: use handoff, exit, stage:<stage>, tag:<name>, score:+N or score:-N")


def _name_problems(steps: list[StepSpec], file: str) -> list[Problem]:
    """Per step name: its default blocks (one, or A/B variants) and the locale variants translating them."""
    problems = []
    by_name: dict[str, list[StepSpec]] = defaultdict(list)
    for step in steps:
        by_name[step.name].append(step)
    for name, blocks in by_name.items():
        defaults = [block for block in blocks if block.locale is None]
        problems.extend(_variant_problems(name, defaults, file))
        problems.extend(_locale_problems(name, defaults, [block for block in blocks if block.locale], file))
    return problems


def _variant_problems(name: str, blocks: list[StepSpec], file: str) -> list[Problem]:
    """Duplicate names are only allowed as A/B variants with distinct labels and the same timing."""
    problems = []
    for block in blocks[1:]:
        first = blocks[0]
        if first.variant is None or block.variant is None:
            why = "rename it, or give every block a variant= label for an A/B test"
            problems.append(Problem(file, block.line, f"duplicate step {name!r} (first at line {first.line}): {why}"))
        elif sum(b.variant == block.variant for b in blocks) > 1:
            problems.append(Problem(file, block.line, f"step {name!r} has variant {block.variant!r} twice"))
        elif block.delay != first.delay:
            problems.append(
                Problem(file, block.line, f"variants of step {name!r} must share after/at (line {first.line})")
            )
    return problems


def _locale_problems(name: str, defaults: list[StepSpec], translated: list[StepSpec], file: str) -> list[Problem]:
    """Each locale variant translates one default block (the same A/B variant), once, keeping its schedule."""
    problems, seen = [], set()
    for block in translated:
        which = f"step {name!r}" + (f" variant {block.variant!r}" if block.variant else "")
        original = next((b for b in defaults if b.variant == block.variant), None)
        if original is None:
            why = "add the default block (without locale=) that it translates"
            problems.append(
                Problem(file, block.line, f"locale {block.locale!r} of {which}: no such step to translate: {why}")
            )
        elif (block.variant, block.locale) in seen:
            problems.append(Problem(file, block.line, f"{which} has locale {block.locale!r} twice"))
        elif (differs := _schedule_differs(original, block)) is not None:
            where = f"the default block at line {original.line}"
            problems.append(Problem(file, block.line, f"locale {block.locale!r} of {which}: {differs} as {where}"))
        seen.add((block.variant, block.locale))
    return problems


def _schedule_differs(original: StepSpec, block: StepSpec) -> str | None:
    """What a translation changes that is not words: its timing, its action, how many buttons it has."""
    if block.delay != original.delay:
        return "must have the same after/at"
    if block.action != original.action:
        return "must have the same action"
    if len(block.buttons) != len(original.buttons):
        return f"must have as many buttons ({len(original.buttons)}, each translated)"
    return None
