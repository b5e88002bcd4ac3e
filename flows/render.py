"""Rendering flow steps: a size-limited Jinja sandbox with strict undefined and the `{% step %}` tag."""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import FileSystemLoader, StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateNotFound
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from flows.compiled import compiled

if TYPE_CHECKING:
    from flows.spec import FlowSpec, StepSpec

MAX_TEXT = 4096  # Telegram's limit for one message
MAX_OUTPUT = 64 * 1024  # raw output (before stripping) a render may produce before it is stopped
MAX_EMAIL = 100_000  # an email-only step's text: beyond this mail clients clip it and spam filters frown
MAX_SUBJECT = 200  # characters; inboxes show about 60
STEP_KEY = "kindling_step"
# The work one render may do: loop iterations plus calls (a macro, `range`, a method), and its time. Nested
# loops multiply (two of `range(100000)` are 10 billion turns), and a render runs on the event loop, where
# everything else waits for it; a step over either is refused by lint and skipped when it comes due.
RENDER_WORK = 100_000
RENDER_SECONDS = 0.5
_UNSAFE_STR_METHODS = frozenset({"format", "format_map", "center", "ljust", "rjust", "zfill", "expandtabs"})
_UNSAFE_FILTERS = ("format", "center", "indent")


class RenderError(Exception):
    """A step that cannot be rendered; names the file and line."""

    def __init__(self, file: str, line: int, message: str) -> None:
        self.file, self.line, self.message = file, line, message
        super().__init__(f"{file}:{line}: {message}")


class TooMuchWork(SecurityError):
    """A render went over its work or time budget (RENDER_WORK, RENDER_SECONDS)."""


class _Budget:
    """What is left of one render's work, and when its time is up."""

    __slots__ = ("left", "deadline")

    def __init__(self) -> None:
        self.left, self.deadline = RENDER_WORK, time.monotonic() + RENDER_SECONDS

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise TooMuchWork(f"too much work: more than {RENDER_WORK:,} loop turns and calls in one render")
        if time.monotonic() > self.deadline:
            raise TooMuchWork(f"too slow: rendering took more than {RENDER_SECONDS:g} s")


_BUDGET: ContextVar[_Budget | None] = ContextVar("kindling_render_budget", default=None)


@contextmanager
def _budgeted() -> Iterator[None]:
    """A fresh work and time budget for what is rendered (or evaluated) inside."""
    token = _BUDGET.set(_Budget())
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _spend() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.spend()


@dataclass(frozen=True)
class Rendered:
    """A step as the lead would see it."""

    text: str
    buttons: tuple[str, ...] = ()
    subject: str | None = None
    whatsapp: dict[str, Any] | None = None  # the WhatsApp template: name, language (or None), parameters rendered


class StepExtension(Extension):
    """`{% step "name", after="2d", ... %}body{% endstep %}`: the body renders only for the selected step."""

    tags = {"step"}

    def parse(self, parser: Parser) -> nodes.Node:
        """Turn a step block into `if <this step is selected>: body`, keeping its options in the call."""
        lineno = next(parser.stream).lineno
        name = parser.parse_expression()
        options = []
        while parser.stream.skip_if("comma"):
            key = parser.stream.expect("name")
            parser.stream.expect("assign")
            options.append(nodes.Keyword(key.value, parser.parse_expression(), lineno=key.lineno))
        body = parser.parse_statements(("name:endstep",), drop_needle=True)
        call = self.call_method("_selected", [nodes.ContextReference(), name], options, lineno=lineno)
        # An If (not a CallBlock) streams the body, so the output size limit applies inside its loops too.
        node = nodes.If(_selected_test(name, options) or call, body, [], [], lineno=lineno)
        node.kindling_step_call = call  # what lint and `find_steps` read the name and options from
        return node

    def _selected(self, context: Any, name: Any, **options: Any) -> bool:
        return context.get(STEP_KEY) == (name, options.get("variant"), options.get("locale"))


def _selected_test(name: nodes.Expr, options: list[nodes.Keyword]) -> nodes.Expr | None:
    """`kindling_step == ("name", "variant", "locale")` when all are constants (lint requires it), else None.

    A plain comparison, not a call to `_selected`: every call from a template goes through the sandbox's
    checks, and each render tests every step block of the flow, so the call cost more than a short step's
    own text.
    """
    variant, locale = (
        next((o.value for o in options if o.key == key), nodes.Const(None)) for key in ("variant", "locale")
    )
    if not all(isinstance(part, nodes.Const) for part in (name, variant, locale)):
        return None
    wanted = nodes.Const((name.value, variant.value, locale.value), lineno=name.lineno)
    return nodes.Compare(nodes.Name(STEP_KEY, "load"), [nodes.Operand("eq", wanted)], lineno=name.lineno)


def step_call(node: nodes.Node) -> nodes.Call | None:
    """If `node` is a parsed `{% step %}` block, the call that holds its name and options."""
    return getattr(node, "kindling_step_call", None) if isinstance(node, nodes.If) else None


class FlowSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, also refusing operations that blow up memory or reformat strings."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Parse, then have every `{% for %}` (flows' and partials') iterate through `counted`, which spends budget."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            counted = nodes.EnvironmentAttribute("counted", lineno=loop.lineno)
            loop.iter = nodes.Call(counted, [loop.iter], [], None, None, lineno=loop.lineno)
        return tree

    @staticmethod
    def counted(iterable: Iterable[Any]) -> Iterator[Any]:
        """The items of a loop, each one spending a unit of the render's budget."""
        for item in iterable:
            _spend()
            yield item

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's names)
        """Every call from a template spends a unit of the render's budget (recursive macros, `range`, ...)."""
        _spend()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Check `*`, `**` and `%` before doing them."""
        if operator == "%" and isinstance(left, str):
            raise SecurityError("string % formatting is not allowed in flows: put values in with {{ }}")
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise SecurityError(f"exponent {right} is too large")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > 64**2:
            raise SecurityError("the power is too large")  # (9**64)**64**... grows past any budget in one step
        if operator == "*":
            sequence, times = (left, right) if isinstance(right, int) else (right, left)
            if (
                isinstance(sequence, str | list | tuple)
                and isinstance(times, int)
                and len(sequence) * times > MAX_OUTPUT
            ):
                raise SecurityError(f"repeating something {times} times makes it too large")
        return super().call_binop(context, operator, left, right)

    def make_globals(self, d: dict[str, Any] | None) -> dict[str, Any]:  # type: ignore[override]
        """A template's globals as a plain dict, not Jinja's ChainMap over the environment's.

        Every `{% import %}` compares the importing context's global names with the partial's, and on a
        ChainMap that walk cost more than the rest of a step's render. Our globals are fixed once the
        environment is built (`flow_environment`), so a copy sees the same names.
        """
        return {**self.globals, **(d or {})}

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        """Also refuse string methods that format or pad (memory bombs, format-string tricks)."""
        if isinstance(obj, str) and attr in _UNSAFE_STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)


@lru_cache(maxsize=16)
def flow_environment(templates_root: Path) -> FlowSandbox:
    """The sandbox for flows under `templates_root`; partials load from there by relative name.

    Loaded partials stay cached until `FlowLibrary.reload` sees one change and clears the cache: Jinja's own
    check (`auto_reload`) stats every imported file at every render, a quarter of a step's render time.
    """
    env = FlowSandbox(
        loader=FileSystemLoader(str(templates_root)),
        undefined=StrictUndefined,
        extensions=[StepExtension],
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        auto_reload=False,
        bytecode_cache=compiled("flows"),
    )
    for name in _UNSAFE_FILTERS:
        env.filters.pop(name, None)
    env.globals.pop("lipsum", None)
    return env


def compile_tree(env: FlowSandbox, tree: nodes.Template, name: str, filename: str) -> Template:
    """A Template from an already parsed (and inspected) tree."""
    code = env.compile(tree, name, filename)
    return env.template_class.from_code(env, code, env.make_globals(None))


def render_step(
    spec: FlowSpec, step_name: str, variant: str | None, context: dict[str, Any], locale: str | None = None
) -> Rendered:
    """Render one step (variant, in `locale` or the default block) of a flow for `context`; raise RenderError."""
    step = next((s for s in spec.steps if (s.name, s.variant, s.locale) == (step_name, variant, locale)), None)
    if step is None:
        which = f"step {step_name!r}" + (f" variant {variant!r}" if variant else "")
        which += f" in {locale!r}" if locale else ""
        raise RenderError(str(spec.path), 1, f"flow {spec.slug!r} has no {which}")
    full = {**context, "flow": {"slug": spec.slug, "name": spec.name}}
    return render_block(spec.template, step, full)


def render_block(template: Template, step: StepSpec, context: dict[str, Any]) -> Rendered:
    """Render a step block of a compiled flow: stripped text within limits, its buttons, and its subject."""
    file = template.filename or template.name or "<flow>"
    chunks, size = [], 0
    values = {
        **context,
        "step": {"name": step.name, "variant": step.variant},
        STEP_KEY: (step.name, step.variant, step.locale),
    }
    limit, output_limit = (MAX_EMAIL, MAX_EMAIL + MAX_OUTPUT) if step.email_only else (MAX_TEXT, MAX_OUTPUT)
    try:
        with _budgeted():
            for chunk in template.generate(values):
                size += len(chunk)
                if size > output_limit:
                    too_much = f"step {step.name!r} renders more than {output_limit} characters"
                    raise RenderError(file, step.line, too_much)
                chunks.append(chunk)
            subject = _subject(template, step, values)
            whatsapp = _whatsapp(template, step, values)
    except RenderError:
        raise
    except Exception as exc:  # template code is user code: any failure is a render error with a place
        where, line = error_location(exc, file, step.line)
        raise RenderError(where, line, f"step {step.name!r}: {describe(exc)}") from exc
    text = "".join(chunks).strip()
    if len(text) > limit:
        allows = "email allows" if step.email_only else "Telegram allows"
        raise RenderError(file, step.line, f"step {step.name!r} is {len(text)} characters; {allows} {limit}")
    if not text and (step.action is None or step.buttons):
        raise RenderError(file, step.line, f"step {step.name!r} renders no text (only steps with an action may)")
    if subject is not None and not subject:
        raise RenderError(file, step.line, f"step {step.name!r} renders an empty subject")
    if subject is not None and len(subject) > MAX_SUBJECT:
        raise RenderError(file, step.line, f"step {step.name!r}: the subject is over {MAX_SUBJECT} characters")
    if whatsapp is not None and not all(whatsapp["parameters"]):
        raise RenderError(file, step.line, f"step {step.name!r}: a WhatsApp template parameter renders empty")
    return Rendered(text, step.buttons, subject, whatsapp)


def _whatsapp(template: Template, step: StepSpec, values: dict[str, Any]) -> dict[str, Any] | None:
    """The step's WhatsApp template with its parameters rendered like the subject (one line each)."""
    if step.whatsapp is None:
        return None
    parameters = [
        " ".join(_subject_template(template.environment, source).render(values)[:MAX_OUTPUT].split())
        for source in step.whatsapp.parameters
    ]
    return {"name": step.whatsapp.name, "language": step.whatsapp.language, "parameters": parameters}


def _subject(template: Template, step: StepSpec, values: dict[str, Any]) -> str | None:
    """The step's subject rendered in the same sandbox and budget as its body, on one line."""
    if step.subject is None:
        return None
    rendered = _subject_template(template.environment, step.subject).render(values)
    return " ".join(rendered[:MAX_OUTPUT].split())


@lru_cache(maxsize=512)
def _subject_template(env: Any, source: str) -> Template:
    return env.from_string(source)


def error_location(exc: BaseException, file: str, default_line: int) -> tuple[str, int]:
    """The template file and line an exception came from (Jinja rewrites tracebacks to template lines)."""
    if isinstance(exc, TemplateSyntaxError) and exc.lineno:
        return exc.filename or exc.name or file, exc.lineno
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == file or f.filename.endswith(".j2")]
    if frames and frames[-1].lineno:
        return frames[-1].filename, frames[-1].lineno
    return file, default_line


def describe(exc: BaseException) -> str:
    """A one-line reason for a render failure."""
    if isinstance(exc, TemplateNotFound):
        return f"no template {exc.name!r} in the templates folder"
    if isinstance(exc, TemplateError):
        return exc.message or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
