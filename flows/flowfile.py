"""Reading one flow file: front matter and step blocks into a FlowSpec, or the problems that prevent it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Template, TemplateSyntaxError, nodes

from flows.frontmatter import Header, read_header, split_front_matter
from flows.render import compile_tree, flow_environment
from flows.spec import FlowError, FlowSpec, Problem, StepSpec, flow_version
from flows.stages import DEFAULT_ORDER
from flows.stepblocks import find_steps

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class Draft:
    """Everything read from a flow file, usable or not: lint renders its steps even when the header is bad."""

    path: Path
    file: str
    text: str
    body: str
    header: Header | None = None
    template: Template | None = None
    steps: tuple[StepSpec, ...] = ()
    problems: list[Problem] = field(default_factory=list)

    @property
    def slug(self) -> str:
        """The flow's id: its file name without `.j2`."""
        return self.path.stem

    def spec(self) -> FlowSpec | None:
        """The FlowSpec, when nothing is wrong."""
        if self.problems or self.header is None or self.template is None:
            return None
        header = self.header
        return FlowSpec(
            slug=self.slug, path=self.path, name=header.name, trigger=header.trigger, steps=self.steps,
            version=flow_version(self.text), source=self.text, template=self.template, when=header.when,
            exits=header.exits, reenter=header.reenter, audience=header.audience, goal=header.goal,
        )  # fmt: skip


def read_flow(path: Path, templates_root: Path, stages: tuple[str, ...] = DEFAULT_ORDER) -> Draft:
    """Read and check a flow file's structure (front matter, step tags and options), without rendering."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Draft(path, file, "", "", problems=[Problem(file, 1, f"cannot read the file: {exc}")])
    return draft_from_text(path, text, templates_root, stages)


def draft_from_text(path: Path, text: str, templates_root: Path, stages: tuple[str, ...] = DEFAULT_ORDER) -> Draft:
    """Check a flow's text as if read from `path` (pinned versions are kept as text in the database)."""
    file = str(path)
    header, problems = read_header(text, file, stages)
    if not _SLUG.match(path.stem):
        problems.append(Problem(file, 1, f"file name {path.name!r}: use lowercase letters, digits and dashes"))
    body = split_front_matter(text).body
    template, steps = _read_body(body, template_name(path, templates_root), file, templates_root, stages, problems)
    return Draft(path, file, text, body, header, template, tuple(steps), sorted(problems))


def parse_flow(path: Path, templates_root: Path, stages: tuple[str, ...] = DEFAULT_ORDER) -> FlowSpec:
    """A FlowSpec from a file, structure checked but not rendered (use flows.lint for that); raise FlowError."""
    draft = read_flow(path, templates_root, stages)
    spec = draft.spec()
    if spec is None:
        raise FlowError(draft.problems)
    return spec


def spec_from_text(path: Path, text: str, templates_root: Path, stages: tuple[str, ...] = DEFAULT_ORDER) -> FlowSpec:
    """A FlowSpec from a flow's text; raise FlowError."""
    draft = draft_from_text(path, text, templates_root, stages)
    spec = draft.spec()
    if spec is None:
        raise FlowError(draft.problems)
    return spec


def template_name(path: Path, templates_root: Path) -> str:
    """The name Jinja knows a flow by: its path under the templates folder (`flows/x.j2`)."""
    try:
        return path.resolve().relative_to(templates_root.resolve()).as_posix()
    except ValueError:
        return path.name


def parse_tree(body: str, name: str, file: str, templates_root: Path) -> nodes.Template:
    """Parse a flow's Jinja body with the step tag; raise TemplateSyntaxError."""
    return flow_environment(templates_root).parse(body, name, file)


def _read_body(
    body: str, name: str, file: str, root: Path, stages: tuple[str, ...], problems: list[Problem]
) -> tuple[Template | None, list[StepSpec]]:
    env = flow_environment(root)
    try:
        tree = parse_tree(body, name, file, root)
        steps, found = find_steps(tree, file, stages)
        problems.extend(found)
        return compile_tree(env, tree, name, file), steps
    except TemplateSyntaxError as exc:
        problems.append(Problem(file, exc.lineno or 1, f"template error: {exc.message}"))
        return None, []
