"""`kindling lint`: a flow file's structure, its expressions and every step rendered against sample leads."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import TemplateError, TemplateSyntaxError, nodes
from jinja2.parser import Parser

from flows.flowfile import Draft, draft_from_text, parse_tree, read_flow
from flows.hints import field_hints, with_hint
from flows.locales import SYSTEM, available
from flows.messenger_rules import CHANNELS as MESSENGER_CHANNELS
from flows.messenger_rules import may_go_there, quick_reply_problem
from flows.render import RenderError, describe, flow_environment, render_block
from flows.samples import sample_contexts
from flows.spec import FlowSpec, Problem
from flows.stages import DEFAULT_ORDER
from flows.whatsapp_rules import WhatsAppTemplate, button_problems, template_problem

__all__ = [
    "Problem",
    "check_flow",
    "check_text",
    "flow_files",
    "lint_file",
    "lint_folder",
    "lint_paths",
    "messenger_problems",
    "problems_text",
    "templates_root_of",
    "unsafe_parts",
    "whatsapp_problems",
]
_NONE = re.compile(r"\bNone\b")
# Links in a step's Markdown: [text](target), <target>, and bare http(s) addresses.
_MARKDOWN_LINK = re.compile(r"\]\(\s*([^)\s]*)[^)]*\)")
_ANGLE_LINK = re.compile(r"<([a-z][a-z0-9+.-]*:[^>]*)>", re.IGNORECASE)
_BARE_LINK = re.compile(r"(?<![(<\w])(https?:[^\s<>()]*)", re.IGNORECASE)
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.I)


def check_flow(
    path: Path, templates_root: Path, stages: tuple[str, ...] = DEFAULT_ORDER
) -> tuple[FlowSpec | None, list[Problem]]:
    """Lint a flow file; the FlowSpec only when there is no problem at all."""
    return _check_draft(read_flow(path, templates_root, stages), templates_root)


def check_text(
    path: Path,
    text: str,
    templates_root: Path,
    stages: tuple[str, ...] = DEFAULT_ORDER,
    whatsapp: Mapping[str, tuple[WhatsAppTemplate, ...]] | None = None,
    messenger: bool = False,
) -> tuple[FlowSpec | None, list[Problem]]:
    """Lint a flow's text as if it were the file at `path`, with what `lint_paths` adds for the channels on
    (the console's editor lints what is typed, before anything is written); the FlowSpec only when no problem."""
    draft = draft_from_text(path, text, templates_root, stages)
    spec, problems = _check_draft(draft, templates_root)
    extra = messenger_problems(draft, messenger) + (whatsapp_problems(draft, whatsapp) if whatsapp is not None else [])
    if extra:
        return None, sorted({*problems, *extra})
    return spec, problems


def _check_draft(draft: Draft, templates_root: Path) -> tuple[FlowSpec | None, list[Problem]]:
    unsafe = _safety_problems(draft, templates_root)
    flagged = {(problem.file, problem.line) for problem in unsafe}
    rendered = [problem for problem in _render_problems(draft) if (problem.file, problem.line) not in flagged]
    found = {*draft.problems, *unsafe, *_expression_problems(draft, templates_root), *rendered}
    found.update(_language_problems(draft, templates_root))
    hints = field_hints(_trees(draft, templates_root))
    found = sorted({with_hint(problem, hints) for problem in found})
    return (draft.spec() if not found else None), found


def _language_problems(draft: Draft, root: Path) -> list[Problem]:
    """Locale variants in a language the templates folder does not have (a language is a folder of `_system/`)."""
    known = available(root)
    why = f"the languages here are {', '.join(known)}; add one as a folder {SYSTEM}/<code>/ in the templates folder"
    return [
        Problem(draft.file, step.line, f"step {step.name!r}: unknown locale {step.locale!r}: {why}")
        for step in draft.steps
        if step.locale is not None and step.locale not in known
    ]


def _trees(draft: Draft, root: Path) -> list[nodes.Node]:
    """The flow's Jinja: its steps, and each expression of its header and steps."""
    env = flow_environment(root)
    trees = [Parser(env, source, state="variable").parse_expression() for _, _, source in _expressions(draft)]
    try:
        return [parse_tree(draft.body, draft.path.name, draft.file, root), *trees]
    except TemplateSyntaxError:
        return trees  # already reported by read_flow


def lint_file(path: Path, templates_root: Path, stages: tuple[str, ...] = DEFAULT_ORDER) -> list[Problem]:
    """Every problem in one flow file, in line order."""
    return check_flow(Path(path), Path(templates_root), stages)[1]


def flow_files(templates_root: Path) -> list[Path]:
    """The flow files under a templates folder: `flows/*.j2`, except `_` partials."""
    folder = Path(templates_root) / "flows"
    return sorted(path for path in folder.glob("*.j2") if not path.name.startswith("_") and path.is_file())


def lint_folder(templates_root: Path, stages: tuple[str, ...] = DEFAULT_ORDER) -> list[Problem]:
    """Every problem in every flow of a templates folder."""
    return [problem for path in flow_files(templates_root) for problem in lint_file(path, templates_root, stages)]


def lint_paths(
    paths: Iterable[Path],
    templates_root: Path | None = None,
    stages: tuple[str, ...] = DEFAULT_ORDER,
    whatsapp: Mapping[str, tuple[WhatsAppTemplate, ...]] | None = None,
    messenger: bool = False,
) -> list[Problem]:
    """Lint files (or folders of flows); the templates folder is guessed from each path when not given.

    `whatsapp`: the configured WhatsApp templates by name, when WhatsApp is on: steps that may go there are
    checked against what WhatsApp allows (`whatsapp_problems`). `messenger`: Messenger and Instagram are on:
    steps that may go there are checked against their quick replies (`messenger_problems`; a step naming one
    of them is checked either way).
    """
    problems: list[Problem] = []
    for path in map(Path, paths):
        root = Path(templates_root) if templates_root else templates_root_of(path)
        files = flow_files(root) if path.is_dir() and (path / "flows").is_dir() else None
        if files is None and path.is_dir():
            files = sorted(p for p in path.glob("*.j2") if not p.name.startswith("_"))
        for file in files if files is not None else [path]:
            problems.extend(lint_file(file, root, stages))
            draft = read_flow(file, root, stages)
            if whatsapp is not None:
                problems.extend(whatsapp_problems(draft, whatsapp))
            problems.extend(messenger_problems(draft, messenger))
    return sorted(problems) if whatsapp is not None or messenger else problems


def whatsapp_problems(draft: Draft, templates: Mapping[str, tuple[WhatsAppTemplate, ...]]) -> list[Problem]:
    """Steps that may go to WhatsApp: buttons it cannot show, and templates unlike the configured ones."""
    problems = []
    for step in draft.steps:
        if not step.may_whatsapp:
            continue
        if step.buttons and (why := button_problems(step.buttons)) is not None:
            problems.append(Problem(draft.file, step.line, f"step {step.name!r}: {why}"))
        if step.whatsapp is not None and (why := template_problem(step.whatsapp, templates)) is not None:
            problems.append(Problem(draft.file, step.line, f"step {step.name!r}: {why}"))
    return problems


def messenger_problems(draft: Draft, enabled: bool = True) -> list[Problem]:
    """Steps that may go to Messenger or Instagram with buttons they cannot show as quick replies."""
    problems = []
    for step in draft.steps:
        named = any(channel in MESSENGER_CHANNELS for channel in step.channels)
        if not step.buttons or not (named or (enabled and may_go_there(step.channels))):
            continue
        if (why := quick_reply_problem(step.buttons)) is not None:
            problems.append(Problem(draft.file, step.line, f"step {step.name!r}: {why}"))
    return problems


def templates_root_of(path: Path) -> Path:
    """The templates folder a path is in: `templates/flows/x.j2` -> `templates`; a folder holding `flows/` is one."""
    if path.is_dir():
        return path if (path / "flows").is_dir() else path.parent
    return path.parent.parent if path.parent.name == "flows" else path.parent


# --- what the sandbox would refuse at run time, found before it runs ------------------------------


def unsafe_parts(tree: nodes.Node) -> Iterator[tuple[int, str]]:
    """(line, reason) for each attribute, item or filter that reaches for internals or formats strings."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name = _reached_name(node)
        if isinstance(node, nodes.Filter) and node.name == "attr" and name is None:
            yield node.lineno, "|attr(...) needs a name in quotes"
        elif name is not None and name.startswith("_"):
            yield node.lineno, f"{name!r}: names starting with _ are off limits in flows"
        elif isinstance(node, nodes.Getattr) and name in ("format", "format_map"):
            yield node.lineno, f".{name}() is not allowed in flows: put values in with {{{{ }}}}"


def _reached_name(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return node.arg.value
    if isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
        arg = node.args[0]
        return arg.value if isinstance(arg, nodes.Const) and isinstance(arg.value, str) else None
    return None


def _safety_problems(draft: Draft, root: Path) -> list[Problem]:
    """Unsafe parts in the flow and, followed by name, in the partials it includes or imports."""
    try:
        tree = parse_tree(draft.body, draft.path.name, draft.file, root)
    except TemplateSyntaxError:
        return []  # already reported by read_flow
    problems: list[Problem] = []
    _scan(tree, draft.file, root, problems, seen=set())
    return problems


def _scan(tree: nodes.Template, file: str, root: Path, problems: list[Problem], seen: set[str]) -> None:
    problems.extend(Problem(file, line, reason) for line, reason in unsafe_parts(tree))
    env = flow_environment(root)
    for node in tree.find_all((nodes.Include, nodes.Import, nodes.FromImport)):
        name = node.template.value if isinstance(node.template, nodes.Const) else None
        if not isinstance(name, str) or name in seen:
            continue
        seen.add(name)
        try:
            source, filename, _ = env.loader.get_source(env, name)
            _scan(env.parse(source, name, filename), filename or name, root, problems, seen)
        except TemplateError:
            continue  # a missing or broken partial shows up, with its line, when the step renders


# --- expressions and steps against sample leads ---------------------------------------------------


def _expressions(draft: Draft) -> Iterator[tuple[int, str, str]]:
    """(line, what, source) of every expression in the flow: header ones and step `when`s."""
    header = draft.header
    if header is not None:
        lines = header.lines
        for key, expression in (("when", header.when), ("audience", header.audience)):
            if expression is not None:
                yield lines.get(key, 1), f"`{key}`", expression.source
        for rule in header.exits:
            if rule.expression is not None:
                yield lines.get("exit", 1), f"`exit` {rule.source!r}", rule.expression.source
    for step in draft.steps:
        if step.when is not None:
            yield step.line, f"step {step.name!r} `when`", step.when.source


def _expression_problems(draft: Draft, root: Path) -> list[Problem]:
    """Evaluate every expression strictly with the samples: unknown names and unsafe parts are errors."""
    env = flow_environment(root)
    trigger = draft.header.trigger if draft.header else None
    problems = []
    for line, what, source in _expressions(draft):
        tree = Parser(env, source, state="variable").parse_expression()
        problems.extend(Problem(draft.file, line, f"{what}: {reason}") for _, reason in unsafe_parts(tree))
        evaluate = env.compile_expression(source, undefined_to_none=False)
        for label, context in sample_contexts(trigger):
            try:
                bool(evaluate(**context))
            except Exception as exc:  # user expression: any failure is a lint problem
                problems.append(Problem(draft.file, line, f"{what} fails for a {label}: {describe(exc)}"))
                break
    return problems


def _render_problems(draft: Draft) -> list[Problem]:
    """Render every step and variant with a full and an empty sample lead."""
    if draft.template is None:
        return []
    trigger = draft.header.trigger if draft.header else None
    flow = {"slug": draft.slug, "name": draft.header.name if draft.header else draft.slug}
    problems = []
    for step in draft.steps:
        texts: list[str] = []
        for label, context in sample_contexts(trigger):
            try:
                texts.append(render_block(draft.template, step, {**context, "flow": flow}).text)
            except RenderError as exc:
                problems.append(Problem(exc.file, exc.line, _for(exc.message, label, first=not texts)))
                break
        if len(texts) == 2 and _NONE.search(texts[1]) and not _NONE.search(texts[0]):
            why = 'shows "None" for a lead we know little about: write {{ lead.first_name or "there" }}'
            problems.append(Problem(draft.file, step.line, f"step {step.name!r} {why}"))
        if step.may_email:
            bad = next((link for text in texts for link in bad_links(text)), None)
            if bad is not None:
                why = "is not a valid absolute http(s) address (email needs full links, like https://example.com/x)"
                problems.append(Problem(draft.file, step.line, f"step {step.name!r}: link {bad!r} {why}"))
    return problems


def bad_links(text: str) -> list[str]:
    """The links in a step's Markdown that are not absolute http(s) (or mailto:) addresses."""
    links = [*_MARKDOWN_LINK.findall(text), *_ANGLE_LINK.findall(text)]
    links += [link.rstrip(".,;:!?'\"") for link in _BARE_LINK.findall(text)]
    return [link for link in links if not _valid_link(link)]


def _valid_link(link: str) -> bool:
    try:
        parts = urlsplit(link)
        host = parts.hostname
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError:
        return False
    if parts.scheme == "mailto":
        return "@" in parts.path and not any(c.isspace() for c in link)
    return parts.scheme in ("http", "https") and bool(host and _HOST.match(host)) and not any(c.isspace() for c in link)


def _for(message: str, label: str, first: bool) -> str:
    return message if first else f"{message} (for a {label})"


def problems_text(problems: Iterable[Any]) -> str:
    """Problems one per line, `file:line: message`, as `kindling lint` prints them."""
    return "\n".join(str(problem) for problem in problems)
